"""`sandbox up`: start every process of the stack on loopback, keep them running, stop them all.

Each service is a child process in its own process group (our Python services forked from the
supervisor with their common imports done, see `launcher`), so one signal stops it with anything it
spawned, and each dies with the supervisor even if the supervisor is killed outright (Linux parent
-death signal). A child that exits on its own is restarted with backoff, and the restart is
written to the candidate's logs, as a real platform's events would be.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from sandbox.layout import IncompleteWorld, WorldPaths, read_manifest
from sandbox.pipeline import deploy, registry
from sandbox.scenario import world_spec
from sandbox.services import launcher, stack, topology
from sandbox.services import prometheus as promstack
from sandbox.services.settings import Settings, SettingsError
from sandbox.services.simclock import DEFAULT_SPEED, SimClock, change_clock
from sandbox.services.spool import SpoolWriter, spool_path
from sandbox.services.topology import GATEWAY, MLFLOW, PROMETHEUS

HEARTBEAT_FILE = "sim-now"
# Set in every child's environment: the process that supervises the stack, whose process tree
# is the stack (`sandbox up` or `sandbox demo`, whichever started it).
SUPERVISOR_PID = "SANDBOX_SUPERVISOR_PID"
READY_TIMEOUT_S = 90.0
STOP_GRACE_S = 5.0
MAX_BACKOFF_S = 10.0
LISTEN_BACKLOG = 2048  # as uvicorn listens
HEALTH_WAIT_S = 5.0
FROZEN_SPEED = 1e-9


class StackError(RuntimeError):
    """The stack cannot start; the message says what to do."""


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | launcher.Forked | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    # Started when the gateway first asks for it (`stack.request_start`), then kept up as any other.
    on_demand: bool = False
    wanted: bool = True
    fds: tuple[int, ...] = ()  # listening sockets it inherits
    # One of our Python services: forked from the supervisor, its imports done (`launcher`).
    forked: bool = False


def listening(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) and listening; port 0 takes a free one. The supervisor holds
    one per service and hands it down: a port picked free and bound later by the child could be
    taken in between (by another stack starting at the same moment), and that stack's service
    would answer this one's requests."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_world(root: Path) -> WorldPaths:
    """Refuse a missing, half-built or outdated world with a clear message."""
    paths = WorldPaths(root)
    try:
        read_manifest(root)
    except IncompleteWorld as exc:
        raise StackError(f"{exc}; build one with: sandbox build --out {root}") from None
    missing = [
        p
        for p in (
            paths.duckdb,
            paths.mlflow,
            paths.indexes,
            paths.scenario,
            paths.deploy / deploy.MODEL_SERVER_RECORD,
        )
        if not p.exists()
    ]
    if missing or not deploy.online_snapshots(paths.online_store):
        lacking = ", ".join(str(m) for m in missing) or "online-store snapshots"
        raise StackError(
            f"{root} lacks what the running stack needs ({lacking}); "
            f"rebuild it with: sandbox build --out {root} --force"
        )
    unservable = registry.lacking_serving_forms(paths.mlflow)
    if unservable:
        raise StackError(
            f"{root} was built by an older version: its registry has no serving form for "
            f"{', '.join(unservable)}; rebuild it with: sandbox build --out {root} --force"
        )
    return paths


def mlflow_ui(mlflow_dir: Path, host: str, port: int, fd: int | None = None) -> Child:
    """The MLflow UI (`topology.mlflow_args`) serving this world's registry and artifacts (on
    the inherited listening socket `fd` when given)."""
    return Child(
        MLFLOW,
        on_demand=True,
        wanted=False,
        fds=() if fd is None else (fd,),
        argv=[sys.executable, *topology.mlflow_args(host, port, fd)],
        env=topology.mlflow_env(
            registry.tracking_uri(mlflow_dir), str((mlflow_dir / "artifacts").resolve())
        ),
    )


class Supervisor:
    def __init__(
        self,
        world: Path,
        host: str = "127.0.0.1",
        port: int = 8000,
        speed: float = DEFAULT_SPEED,
        say: Callable[[str], None] = print,
        prometheus: bool = False,
        listen_fd: int | None = None,  # the gateway's socket, bound by whoever started this
    ) -> None:
        self.paths = check_world(Path(world).resolve())
        self.prometheus = prometheus
        if prometheus:
            try:
                promstack.binaries()
            except promstack.PrometheusMissing as exc:
                raise StackError(str(exc)) from None
        self.host = host
        try:
            gateway = (
                listening(host, port) if listen_fd is None else socket.socket(fileno=listen_fd)
            )
        except OSError as exc:
            advice = ": choose another --port" if exc.errno == errno.EADDRINUSE else ""
            raise StackError(f"cannot listen on {host}:{port} ({exc.strerror}){advice}") from None
        self.sockets = {GATEWAY: gateway}  # held for the stack's life, restarts included
        self.port = gateway.getsockname()[1]
        self.speed = speed
        self.say = say
        self.children: dict[str, Child] = {}
        self.stopping = False
        self.calendar = world_spec(self.paths.scenario).calendar()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- start ------------------------------------------------------------------------------
    def start(self) -> None:
        run = self.paths.run
        run.mkdir(parents=True, exist_ok=True)
        launcher.preload()
        self.hold_time()
        stack.admin_token(self.paths)
        self.log = SpoolWriter(spool_path(run, "platform", "telemetry.logs"))
        started = [svc for svc in topology.SERVICES if svc.name != PROMETHEUS or self.prometheus]
        for svc in started:
            # Prometheus is not ours and binds its own port (the one race left, with --prometheus).
            if svc.name not in self.sockets and svc.name != PROMETHEUS:
                self.sockets[svc.name] = listening(self.host, 0)
        ports = {name: sock.getsockname()[1] for name, sock in self.sockets.items()}
        if self.prometheus:
            ports[PROMETHEUS] = free_port(self.host)
        fds = {name: sock.fileno() for name, sock in self.sockets.items()}
        url = {name: f"http://{self.host}:{port}" for name, port in ports.items()}
        stack.write_addresses(
            run,
            self.url,
            {
                svc.name: stack.ServiceAddress(url[svc.name], svc.health, svc.on_demand)
                for svc in started
                if svc.name != GATEWAY
            },
        )
        for svc in started:
            if svc.name == PROMETHEUS:
                self._add(self._prometheus(ports, started))
            elif svc.name == MLFLOW:
                self._add(mlflow_ui(self.paths.mlflow, self.host, ports[MLFLOW], fds[MLFLOW]))
            else:
                args = topology.python_args(
                    svc, str(self.paths.root), self.host, ports[svc.name], url, fds[svc.name]
                )
                argv = [sys.executable, *args]
                self._add(Child(svc.name, argv, fds=(fds[svc.name],), forked=True))
        stack.clear_start_requests(run)
        for child in self.children.values():
            if child.wanted:
                self._spawn(child)

    def hold_time(self) -> None:
        """Write the clock standing where this world's time starts or last stopped. A plain
        write: no service runs yet, so nothing else can be changing the clock."""
        heartbeat = self.paths.run / HEARTBEAT_FILE
        resume = None
        if heartbeat.exists():  # continue where the last run of this world left off
            with contextlib.suppress(ValueError):
                resume = dt.datetime.fromisoformat(heartbeat.read_text().strip())
        # Time stands still until every service is up (`start_time`): nothing happens in the
        # world while the stack is still starting.
        self.clock = SimClock.starting(self.calendar, FROZEN_SPEED, resume_at=resume)
        self.clock.save(self.paths.run)

    def start_time(self) -> None:
        """Set time moving from where the clock file has it: the interviewer may have moved it
        forward while the stack was starting."""
        _, self.clock = change_clock(self.paths.run, lambda c: c.moving(self.speed))

    def _prometheus(self, ports: dict[str, int], started: list[topology.Service]) -> Child:
        """History backfilled so that it ends now, then every service scraped live."""
        home = self.paths.run / "prometheus"
        if not (home / "data").exists():
            shift = dt.datetime.now(dt.UTC).replace(tzinfo=None) - self.clock.now()
            history = home / promstack.HISTORY_FILE
            samples = promstack.write_history(
                self.paths,
                self.calendar.midnight(self.calendar.last_production_day + 1),
                shift,
                history,
            )
            promstack.backfill(history, home / "data")
            self.say(f"prometheus: {samples:,} samples of history backfilled")
        scraped = {svc.name: f"{self.host}:{ports[svc.name]}" for svc in started if svc.scraped}
        promstack.write_config(scraped, home / "prometheus.yml")
        return Child(
            "prometheus",
            promstack.argv(
                home / "prometheus.yml",
                home / "data",
                self.host,
                ports[PROMETHEUS],
                f"{self.url}/services/prometheus/",
            ),
        )

    def _add(self, child: Child) -> None:
        self.children[child.name] = child

    def _spawn(self, child: Child) -> None:
        logs = self.paths.run / "process-logs"
        logs.mkdir(exist_ok=True)
        out = (logs / f"{child.name}.log").open("ab")
        env = {**child.env, "PYTHONUNBUFFERED": "1", SUPERVISOR_PID: str(os.getpid())}
        if child.forked and launcher.can_fork():
            child.process = launcher.fork_module(
                child.argv, env, out.fileno(), keep=child.fds, in_child=_die_with_parent
            )
        else:
            child.process = subprocess.Popen(
                child.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
                start_new_session=True,
                preexec_fn=_die_with_parent,
                pass_fds=child.fds,
            )
        out.close()
        child.started_at = time.monotonic()

    # -- run --------------------------------------------------------------------------------
    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        last: dict = {}
        # One client for all polls: a new one per poll costs more CPU than the services' checks.
        # Longer than the gateway's own probes: while a service is still starting, its socket
        # holds the connection until the probe times out, and the answer must still arrive.
        with httpx.Client(timeout=HEALTH_WAIT_S) as client:
            while time.monotonic() < deadline:
                if self.stopping:
                    raise StackError("stopped before the stack was healthy")
                self.tend()
                try:
                    r = client.get(self.url + "/-/health")
                    last = r.json()
                    if r.status_code == 200:
                        return last
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(0.25)
        failing = {k: v for k, v in last.get("services", {}).items() if v not in ("ok", "idle")}
        crashed = {
            c.name: f"exited {c.restarts} times" for c in self.children.values() if c.restarts
        }
        raise StackError(
            f"the stack did not become healthy within {timeout:.0f} s "
            f"(not ready: {failing or crashed or 'gateway'}); see {self.paths.run / 'process-logs'}"
        )

    def tend(self) -> None:
        """Restart children that exited; note the simulated time for a later resume."""
        now = time.monotonic()
        # The interviewer may move simulated time forward through the gateway: follow the file.
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.clock = SimClock.load(self.paths.run)
        for child in self.children.values():
            proc = child.process
            if proc is None and not child.wanted:
                if stack.start_requested(self.paths.run, child.name):
                    child.wanted = True
                    self._spawn(child)
                    self._event(
                        "info",
                        "service_started",
                        f"{child.name} started (pid {child.process.pid})",
                        service_name=child.name,
                    )
                continue
            if proc is None:
                if now >= child.next_start:
                    self._spawn(child)
                    self._event(
                        "info",
                        "service_restarted",
                        f"{child.name} restarted (pid {child.process.pid})",
                        service_name=child.name,
                        restarts=child.restarts,
                    )
                continue
            code = proc.poll()
            if code is None or self.stopping:
                continue
            child.restarts += 1
            # What the service started (the gateway's console workers) goes with it, so a
            # restart never runs beside its predecessor's leftovers.
            _signal_group(proc, signal.SIGKILL)
            # Quick crashes back off; a service that ran a while restarts at once.
            ran = now - child.started_at
            backoff = 0.5 if ran > 30 else min(MAX_BACKOFF_S, 0.5 * 2 ** min(child.restarts, 5))
            child.process = None
            child.next_start = now + backoff
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            self._event(
                "error",
                "service_exited",
                f"{child.name} exited ({how}); restarting",
                service_name=child.name,
                exit_code=code,
            )
        self._beat()

    def _beat(self) -> None:
        """The simulated now, where the next start resumes. Written whole (a rename), so a
        supervisor killed mid-write leaves the last one, never an empty file that would send
        the next start back to the beginning of live time."""
        tmp = self.paths.run / (HEARTBEAT_FILE + ".tmp")
        tmp.write_text(self.clock.now().isoformat())
        tmp.replace(self.paths.run / HEARTBEAT_FILE)

    def _event(self, level: str, event: str, message: str, **attrs: object) -> None:
        self.log.write(
            {
                "ts": self.clock.now().isoformat(),
                "service": "platform",
                "level": level,
                "event": event,
                "message": message,
                "attrs": json.dumps(attrs, sort_keys=True),
            }
        )

    def run_forever(self) -> None:
        while not self.stopping:
            self.tend()
            time.sleep(0.5)

    # -- stop -------------------------------------------------------------------------------
    def stop(self) -> None:
        self.stopping = True
        procs = [c.process for c in self.children.values() if c.process is not None]
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in procs:
            _signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
        with contextlib.suppress(OSError):
            self._beat()
        for sock in self.sockets.values():
            sock.close()

    def pids(self) -> dict[str, int]:
        return {n: c.process.pid for n, c in self.children.items() if c.process is not None}


def _signal_group(proc: subprocess.Popen | launcher.Forked, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _die_with_parent() -> None:
    """In the child: ask Linux to send SIGTERM when the supervisor dies, however it dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run(
    world: Path,
    host: str,
    port: int,
    speed: float,
    say: Callable[[str], None],
    on_ready: Callable[[Supervisor], None] | None = None,
    prometheus: bool = False,
    listen_fd: int | None = None,
) -> None:
    """Start the stack, report when it is healthy, and keep it up until Ctrl-C or SIGTERM."""
    try:  # every process reads these at its start: a bad value stops the stack before it starts
        Settings.from_env()
    except SettingsError as exc:
        raise StackError(str(exc)) from None
    sup = Supervisor(world, host, port, speed, say, prometheus=prometheus, listen_fd=listen_fd)

    def stop_signal(signum: int, frame: object) -> None:
        sup.stopping = True

    signal.signal(signal.SIGTERM, stop_signal)
    signal.signal(signal.SIGINT, stop_signal)
    started = time.monotonic()
    try:
        sup.start()
        sup.wait_ready()
        sup.start_time()
        say(f"stack healthy in {time.monotonic() - started:.1f} s; gateway on {sup.url}")
        if on_ready:
            on_ready(sup)
        sup.run_forever()
    finally:
        say("stopping the stack")
        sup.stop()
