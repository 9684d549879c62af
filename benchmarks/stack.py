"""Benchmark the running stack (`sandbox up`) against the README's performance budgets.

    python -m benchmarks.stack [--world DIR] [--scale X] [--keep]

Without --world the default scenario is built at --scale (default 1, the budgets' scale) by the
real CLI; a given world is copied first (without its run/), because the stack writes into it.
The stack is started twice by the real CLI in a subprocess, first with the world's, the venv's
and the standard library's files evicted from the page cache (cold), then again (warm). Each run
measures the seconds until `GET /-/health` answers 200 and the idle memory of the whole process
tree; the warm run also drives the model server with single-row `POST /predict` requests at
fixed open-loop rates (aiohttp, or httpx without it), directly and once through the gateway, and
times the same model in this process. Each run ends with SIGINT (Ctrl-C), and whatever of the
stack is still alive afterwards is reported.
The report goes to stdout and to benchmarks/reports/; nothing is asserted, but the exit status
is non-zero if the stack fails to start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.build import (
    GB,
    LOG_TAIL_LINES,
    PAGE_BYTES,
    REPORTS,
    _mem_total_gib,
    _scale_label,
    _table,
    busy_cpu_seconds,
    log_tail,
    read_manifest,
    sandbox_command,
)
from sandbox.services.launcher import command_line

MB = 1_000_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
POLL_SECONDS = 0.2  # process-tree sampling
HEALTH_POLL_SECONDS = 0.1
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
IDLE_SECONDS = 10.0
RATES = (50.0, 200.0)  # requests per second, open loop
GATEWAY_RATE = 50.0  # the gateway records every candidate request; it saturates early
PHASE_SECONDS = 20.0
WARMUP_REQUESTS = 200
MAX_IN_FLIGHT = 64
REQUEST_TIMEOUT_S = 5.0
BASELINE_CALLS = 2000
ID_SAMPLE = 5000
SEED = 20240601
HEALTHY_LINE = re.compile(r"stack healthy in (?P<s>[\d.]+) s")
LOG_PROBLEM = re.compile(r"error|exception|traceback|critical|warning|killed", re.IGNORECASE)
LOG_LINES_SHOWN = 8


@dataclass(frozen=True)
class Budget:
    what: str
    budget: float
    goal: float
    unit: str


# The README's performance budgets (2 cores, 24 GiB), which hold at scale 1.
STARTUP = Budget("`sandbox up` until health is green", 20, 8, "s")
IDLE_RSS = Budget("whole stack idle, RSS summed", 1.5, 0.8, "GB")
P99_AT_200 = Budget("model server p99 at 200 req/s (direct)", 25, 10, "ms")


# --- /proc ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    sid: int
    start: int  # start time in clock ticks since boot: with the pid, names one process
    cpu_s: float
    rss: int
    threads: int

    @property
    def key(self) -> tuple[int, int]:
        return self.pid, self.start


def proc_table() -> dict[int, Proc]:
    table: dict[int, Proc] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue  # exited between listing and reading
        # comm may contain spaces and ')' itself, so the fields start after the last ')'.
        fields = data[data.rindex(b")") + 2 :].split()
        if fields[0] == b"Z":
            continue  # exited; an orphan's zombie waits for an init that may never reap it
        pid = int(entry.name)
        table[pid] = Proc(
            pid=pid,
            ppid=int(fields[1]),
            sid=int(fields[3]),
            start=int(fields[19]),
            cpu_s=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
            rss=int(fields[21]) * PAGE_BYTES,
            threads=int(fields[17]),
        )
    return table


def descendants(table: dict[int, Proc], root: int) -> list[Proc]:
    """`root` and everything below it, by ppid links (this kernel lacks .../children)."""
    children: dict[int, list[int]] = defaultdict(list)
    for proc in table.values():
        children[proc.ppid].append(proc.pid)
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            found.append(table[pid])
            stack.extend(children[pid])
    return found


def _kib_field(path: str, name: str) -> int:
    """A `Name:   123 kB` line of a /proc file, in bytes (0 if absent or gone)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages split among their users, so it sums honestly."""
    return _kib_field(f"/proc/{pid}/smaps_rollup", "Pss")


def anon_bytes(pid: int) -> int:
    """Resident anonymous memory: the heap and such, which no page-out can take back here."""
    return _kib_field(f"/proc/{pid}/status", "RssAnon")


def describe(argv: list[str]) -> str:
    """A short name for a command line: `sandbox up`, `sandbox.services.traffic`, `mlflow server`."""
    if not argv:
        return "?"
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]
    if "-c" in argv[:-1]:
        code = argv[argv.index("-c") + 1]
        return "python -c " + (code[:48] + "…" if len(code) > 48 else code)
    exe = Path(argv[0]).name
    if exe.startswith("python") and len(argv) > 1 and not argv[1].startswith("-"):
        argv = argv[1:]
    words = [Path(argv[0]).name, *[a for a in argv[1:2] if not a.startswith("-")]]
    return " ".join(words)


def service_name(argv: list[str]) -> str:
    name = describe(argv).removeprefix("sandbox.services.")
    return {"uvicorn": "mlflow", "model_server": "model-server"}.get(name, name)


class Tree:
    """The stack's process tree: which service each process belongs to (by its supervisor child),
    and every process and session ever seen in it, to find leftovers after the stop."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[tuple[int, int], str] = {}  # process -> what it was
        self.sessions: set[int] = set()
        self._service: dict[tuple[int, int], str] = {}
        self._lock = threading.Lock()

    def snapshot(self, table: dict[int, Proc] | None = None) -> list[tuple[Proc, str]]:
        """(process, service) for the live tree; `table`: a `proc_table()` just read, which
        several trees can share (one scan of /proc costs milliseconds)."""
        table = proc_table() if table is None else table
        procs = descendants(table, self.root)
        out = []
        with self._lock:
            for proc in procs:
                if self._service.get(proc.key, "?") == "?":
                    self._service[proc.key] = self._service_of(table, proc)
                    self.seen[proc.key] = describe(command_line(proc.pid))
                if proc.pid != self.root:
                    self.sessions.add(proc.sid)
                out.append((proc, self._service[proc.key]))
        return out

    def _service_of(self, table: dict[int, Proc], proc: Proc) -> str:
        if proc.pid == self.root:
            return "supervisor"
        while proc.ppid != self.root and proc.ppid in table:
            proc = table[proc.ppid]
        command = describe(command_line(proc.pid))
        # Between its fork and its exec (or its new title) a child shows its parent's command line:
        # ask again later.
        pending = command in ("?", describe(command_line(self.root)))
        return "?" if pending else service_name(command_line(proc.pid))

    def leftovers(self) -> list[tuple[Proc, str]]:
        """Processes of the stack still alive: seen in the tree, or in one of its sessions."""
        mine = os.getsid(0)
        with self._lock:
            seen, sessions = dict(self.seen), set(self.sessions) - {mine}
        return [
            (proc, seen.get(proc.key) or describe(command_line(proc.pid)))
            for proc in proc_table().values()
            if proc.key in seen or proc.sid in sessions
        ]


class Sampler(threading.Thread):
    """Polls the tree in the background: peak RSS, and every process that ever belonged to it."""

    def __init__(self, tree: Tree) -> None:
        super().__init__(daemon=True)
        self.tree = tree
        self.peak_rss = 0
        self._finished = threading.Event()

    def run(self) -> None:
        while True:
            procs = self.tree.snapshot()
            self.peak_rss = max(self.peak_rss, sum(p.rss for p, _ in procs))
            if self._finished.wait(POLL_SECONDS):
                return

    def stop(self) -> None:
        self._finished.set()
        self.join()


@dataclass
class Usage:
    """CPU accounting at one moment, to charge a phase's CPU to the stack, to us, or to others."""

    at: float
    load1: float
    busy_s: float
    steal_s: float
    waiting_s: float  # CPU pressure: time some runnable task waited for a core
    self_s: float
    stack: dict[tuple[int, int], tuple[str, float]]

    @classmethod
    def now(cls, tree: Tree | None) -> Usage:
        me = resource.getrusage(resource.RUSAGE_SELF)
        procs = tree.snapshot() if tree else []
        return cls(
            at=time.perf_counter(),
            load1=os.getloadavg()[0],
            busy_s=busy_cpu_seconds(),
            steal_s=_steal_seconds(),
            waiting_s=_cpu_pressure_seconds(),
            self_s=me.ru_utime + me.ru_stime,
            stack={p.key: (svc, p.cpu_s) for p, svc in procs},
        )


def _steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests while ours wanted it."""
    with open("/proc/stat") as f:
        return int(f.readline().split()[8]) / CLOCK_TICKS


def _cpu_pressure_seconds() -> float:
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().rsplit("total=", 1)[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return float("nan")


@dataclass
class Phase:
    name: str
    before: Usage
    after: Usage

    @property
    def wall_s(self) -> float:
        return self.after.at - self.before.at

    def stack_cpu(self) -> dict[str, float]:
        """CPU seconds per service (processes that exited during the phase are not counted)."""
        out: dict[str, float] = defaultdict(float)
        for key, (svc, cpu) in self.after.stack.items():
            out[svc] += cpu - self.before.stack.get(key, (svc, 0.0))[1]
        return out

    @property
    def self_cpu(self) -> float:
        return self.after.self_s - self.before.self_s

    @property
    def other_cpu(self) -> float:
        busy = self.after.busy_s - self.before.busy_s
        return max(0.0, busy - sum(self.stack_cpu().values()) - self.self_cpu)


def damon_pageout() -> bool:
    """Whether a running DAMON context pages out cold memory (some VMs do, to give RAM back)."""
    for kdamond in Path("/sys/kernel/mm/damon/admin/kdamonds").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if (kdamond / "state").read_text().strip() != "on":
                continue
            for action in kdamond.glob("contexts/*/schemes/*/action"):
                if action.read_text().strip() == "pageout":
                    return True
    return False


# --- page cache -----------------------------------------------------------------------------


def python_files() -> list[Path]:
    """Where the stack's code comes from: the venv, the standard library, libpython."""
    paths = sysconfig.get_paths()
    roots = {Path(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    libdir, lib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    files = [Path(libdir) / lib] if libdir and lib and (Path(libdir) / lib).exists() else []
    files.append(Path(sys.executable).resolve())
    return files + [p for root in sorted(roots) for p in _files(root)]


def _files(root: Path) -> Iterable[Path]:
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


def evict(files: Iterable[Path], written: bool = False) -> None:
    """Drop these files' pages from the page cache (not the whole machine's cache). Only clean
    pages go, so files `written` lately are flushed first. Pages that a running process maps
    (a library another Python has loaded) stay resident."""
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if written:
                with contextlib.suppress(OSError):
                    os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_bytes(files: list[Path]) -> int | None:
    """Bytes of these files in the page cache, from util-linux's fincore (None without it)."""
    fincore = shutil.which("fincore")
    if fincore is None:
        return None
    total = 0
    for i in range(0, len(files), 2000):
        out = subprocess.run(
            [fincore, "-b", "-n", "-r", "-o", "RES", *map(str, files[i : i + 2000])],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        total += sum(int(x) for x in out.split() if x.isdigit())
    return total


# --- the stack ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcMemory:
    proc: Proc
    service: str
    command: str
    pss: int
    anon: int


@dataclass
class Memory:
    max_rss: int  # largest summed RSS seen while idling
    processes: list[ProcMemory]

    @property
    def rss(self) -> int:
        return sum(p.proc.rss for p in self.processes)

    @property
    def pss(self) -> int:
        return sum(p.pss for p in self.processes)

    @property
    def anon(self) -> int:
        return sum(p.anon for p in self.processes)


@dataclass
class Stop:
    seconds: float
    exit_code: int | None
    leftovers: list[tuple[Proc, str]]
    open_ports: list[int]
    killed: bool = False


@dataclass
class StackRun:
    label: str
    log: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    tree: Tree | None = None
    sampler: Sampler | None = None
    health_s: float | None = None
    first_answer_s: float | None = None
    service_ok_s: dict[str, float] = field(default_factory=dict)
    supervisor_s: float | None = None
    failure: str | None = None
    startup: Phase | None = None
    idle_phase: Phase | None = None
    memory: Memory | None = None
    stop: Stop | None = None
    resident_before: int | None = None
    resident_after: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_stack(world: Path, run: StackRun, extra: tuple[str, ...] = ()) -> StackRun:
    """Launch `sandbox up` and poll the gateway's health until 200 (or give up)."""
    cmd = [*sandbox_command(), "up", str(world), "--port", str(run.port), *extra]
    before = Usage.now(None)
    with run.log.open("wb") as log:
        started = time.perf_counter()
        run.process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our Ctrl-C must not reach it; we send SIGINT ourselves
            env={**os.environ, "TYPER_STANDARD_TRACEBACK": "1"},
        )
    run.tree = Tree(run.process.pid)
    run.sampler = Sampler(run.tree)
    run.sampler.start()
    with httpx.Client(timeout=2.0) as client:
        while True:
            elapsed = time.perf_counter() - started
            if run.process.poll() is not None:
                run.failure = f"`sandbox up` exited with code {run.process.returncode}"
                break
            if elapsed > START_TIMEOUT_S:
                run.failure = f"health not green after {START_TIMEOUT_S:.0f} s"
                break
            try:
                reply = client.get(run.url + "/-/health")
                body = reply.json()
            except (httpx.HTTPError, ValueError):
                reply = None
            if reply is not None:
                elapsed = time.perf_counter() - started
                if run.first_answer_s is None:
                    run.first_answer_s = elapsed
                for name, status in body.get("services", {}).items():
                    if status == "ok":
                        run.service_ok_s.setdefault(name, elapsed)
                if reply.status_code == 200:
                    run.health_s = elapsed
                    break
            time.sleep(HEALTH_POLL_SECONDS)
    run.startup = Phase("startup " + run.label, before, Usage.now(run.tree))
    return run


def supervisor_seconds(log: Path) -> float | None:
    m = HEALTHY_LINE.search(log.read_text(errors="replace"))
    return float(m["s"]) if m else None


def idle_memory(run: StackRun) -> None:
    """Let the stack idle, then sum RSS (and PSS) over its whole process tree."""
    assert run.tree is not None
    before = Usage.now(run.tree)
    peak = 0
    deadline = time.perf_counter() + IDLE_SECONDS
    while time.perf_counter() < deadline:
        peak = max(peak, sum(p.rss for p, _ in run.tree.snapshot()))
        time.sleep(1.0)
    memory = memory_now(run.tree)
    run.idle_phase = Phase("idle " + run.label, before, Usage.now(run.tree))
    memory.max_rss = max(peak, memory.rss)
    run.memory = memory


def memory_now(tree: Tree, table: dict[int, Proc] | None = None) -> Memory:
    """RSS, PSS and anonymous memory of every process of the tree now, largest RSS first."""
    rows = [
        ProcMemory(p, svc, describe(command_line(p.pid)), pss_bytes(p.pid), anon_bytes(p.pid))
        for p, svc in tree.snapshot(table)
    ]
    rows.sort(key=lambda r: -r.proc.rss)
    return Memory(sum(r.proc.rss for r in rows), rows)


def stop_stack(run: StackRun, world: Path) -> None:
    """Ctrl-C the supervisor, wait for it, and look for anything of the stack still alive."""
    proc, tree = run.process, run.tree
    if proc is None or tree is None or run.stop is not None:
        return
    ports = _stack_ports(world, run.port)
    tree.snapshot()
    started = time.perf_counter()
    killed = False
    proc.send_signal(signal.SIGINT)  # a no-op if it has already exited and been reaped
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        killed = True
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    seconds = time.perf_counter() - started
    if run.sampler is not None:
        run.sampler.stop()
    time.sleep(0.5)  # a grandchild told by its parent-death signal may take a moment
    leftovers = tree.leftovers()
    open_ports = [p for p in ports if _port_open(p)]
    run.stop = Stop(seconds, None if killed else proc.returncode, leftovers, open_ports, killed)
    run.supervisor_s = supervisor_seconds(run.log)
    for left, _ in leftovers:  # ours to clean up: this benchmark started them
        with contextlib.suppress(ProcessLookupError):
            os.kill(left.pid, signal.SIGKILL)


def _stack_ports(world: Path, gateway: int) -> list[int]:
    ports = [gateway]
    with contextlib.suppress(OSError, ValueError, KeyError):
        services = json.loads((world / "run" / "stack.json").read_text())["services"]
        ports += [int(s["url"].rsplit(":", 1)[1]) for s in services.values()]
    return ports


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- load -----------------------------------------------------------------------------------


@dataclass
class Load:
    target: str
    rate: float
    seconds: float
    latencies_ms: np.ndarray  # successful requests, from the scheduled send time
    lags_ms: np.ndarray  # scheduled send -> actually sent (our own queueing/lateness)
    statuses: Counter[str]
    elapsed_s: float
    phase: Phase | None = None
    others: int | None = None  # requests the model server answered that were not ours

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else np.nan


Post = Callable[[str, dict[str, Any]], Awaitable[str]]


def client_name() -> str:
    return "aiohttp" if importlib.util.find_spec("aiohttp") else "httpx"


@contextlib.asynccontextmanager
async def poster(headers: dict[str, str]) -> AsyncIterator[Post]:
    """`await post(url, body)` -> the reply's status, or the failure's name. aiohttp (it comes
    with mlflow) when present: it costs a fifth of httpx's client CPU per request (0.25 vs 1.2
    ms measured here), and the client shares the stack's two cores."""
    if client_name() == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=headers
        ) as session:

            async def post_aiohttp(url: str, body: dict[str, Any]) -> str:
                try:
                    async with session.post(url, json=body) as reply:
                        await reply.read()
                        return str(reply.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    return type(exc).__name__

            yield post_aiohttp
        return
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    async with httpx.AsyncClient(
        limits=limits, timeout=REQUEST_TIMEOUT_S, headers=headers
    ) as client:

        async def post_httpx(url: str, body: dict[str, Any]) -> str:
            try:
                return str((await client.post(url, json=body)).status_code)
            except httpx.HTTPError as exc:
                return type(exc).__name__

        yield post_httpx


async def open_loop(
    url: str, bodies: list[dict[str, Any]], rate: float, seconds: float, headers: dict[str, str]
) -> Load:
    """Send at fixed intervals whatever the replies do; latency counts from the scheduled time,
    so time spent waiting for a free slot (at most MAX_IN_FLIGHT in flight) counts as well."""
    n = int(rate * seconds)
    latency = np.full(n, np.nan)
    lag = np.full(n, np.nan)
    statuses: Counter[str] = Counter()
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    async with poster(headers) as post:

        async def one(i: int, due: float) -> None:
            async with slots:
                lag[i] = time.perf_counter() - due
                status = await post(url, bodies[i % len(bodies)])
            statuses[status] += 1
            if status == "200":
                latency[i] = time.perf_counter() - due

        tasks = []
        start = time.perf_counter() + 0.05
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    ok = ~np.isnan(latency)
    return Load(url, rate, seconds, latency[ok] * 1000, lag * 1000, statuses, elapsed)


def predict_requests(url: str, bodies: list[dict[str, Any]], count: int) -> Counter[str]:
    """Sequential requests to warm connections, the JIT-free paths and the server's caches."""
    statuses: Counter[str] = Counter()
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        for i in range(count):
            try:
                statuses[str(client.post(url, json=bodies[i % len(bodies)]).status_code)] += 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
    return statuses


def served_predictions(model_url: str) -> int | None:
    """The model server's own count of /predict requests (its Prometheus counter)."""
    try:
        text = httpx.get(model_url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    pattern = re.compile(r'^model_server_requests_total\{[^}]*endpoint="/predict"[^}]*\}\s+(\S+)')
    return int(sum(float(m[1]) for m in map(pattern.match, text.splitlines()) if m))


def measure_load(
    tree: Tree,
    label: str,
    url: str,
    model_url: str,
    bodies: list[dict[str, Any]],
    rate: float,
    headers: dict[str, str] | None = None,
) -> Load:
    print(f"  {label}: {rate:g} req/s for {PHASE_SECONDS:g} s…", file=sys.stderr)
    served = served_predictions(model_url)
    before = Usage.now(tree)
    result = asyncio.run(open_loop(url, bodies, rate, PHASE_SECONDS, headers or {}))
    result.phase = Phase(f"{label} {rate:g}/s", before, Usage.now(tree))
    result.target = label
    after = served_predictions(model_url)
    if served is not None and after is not None:
        result.others = max(0, after - served - result.sent)
    return result


# --- the same model in this process ---------------------------------------------------------


@dataclass
class Baseline:
    load_s: float
    times_ms: np.ndarray  # wall time per call
    cpu_ms: np.ndarray  # this thread's CPU time per call: wall minus waiting for a core
    phase: Phase | None = None

    def pct(self, q: float) -> float:
        return float(np.percentile(self.times_ms, q))


def in_process(world: Path, snapshot: Path, ids: list[int]) -> Baseline:
    """Time `predict_proba` of the model's serving form, which the server loads, on the rows the
    server scores."""
    import polars as pl

    from sandbox.layout import WorldPaths
    from sandbox.pipeline import deploy, registry
    from sandbox.pipeline.compiled import CompiledTrees

    paths = WorldPaths(world)
    record = deploy.read_model_deployment(paths.deploy)
    started = time.perf_counter()
    model = registry.load_serving(paths.mlflow, record.model_uri, CompiledTrees)
    load_s = time.perf_counter() - started
    frame = pl.read_parquet(snapshot)
    stored = [f for f in record.features if f in frame.columns]
    frame = frame.filter(pl.col("customer_id").is_in(ids)).select("customer_id", *stored)
    by_id = dict(zip(frame["customer_id"].to_list(), range(frame.height), strict=True))
    values = frame.select(pl.col(stored).cast(pl.Float64)).to_numpy()
    rows = np.full((len(ids), len(record.features)), np.nan)
    columns = [record.features.index(f) for f in stored]
    for i, cid in enumerate(ids):
        rows[i, columns] = values[by_id[cid]]
    times, cpu = np.empty(BASELINE_CALLS), np.empty(BASELINE_CALLS)
    for i in range(50):  # warm up
        model.predict_proba(rows[i % len(rows) : i % len(rows) + 1])
    for i in range(BASELINE_CALLS):
        row = np.ascontiguousarray(rows[i % len(rows) : i % len(rows) + 1])
        t0, c0 = time.perf_counter(), time.thread_time()
        model.predict_proba(row)
        times[i], cpu[i] = time.perf_counter() - t0, time.thread_time() - c0
    return Baseline(load_s, times * 1000, cpu * 1000)


# --- the world ------------------------------------------------------------------------------


@dataclass
class World:
    path: Path
    source: str
    build_s: float | None = None
    build_log: Path | None = None
    build_exit: int = 0
    manifest: dict[str, Any] | None = None


def prepare_world(args: argparse.Namespace, workdir: Path) -> World:
    world = World(workdir / "world", "")
    if args.world is not None:
        src = args.world.resolve()
        print(f"copying {src} (without the stack's run state) to {world.path}…", file=sys.stderr)
        shutil.copytree(
            src,
            world.path,
            ignore=lambda d, names: (
                {n for n in names if n == "run" or n.startswith("run-")}
                if Path(d) == src
                else set()
            ),
        )
        # MLflow keeps absolute artifact URIs, so the copy still loads models from `src`.
        world.source = f"copy of `{src}` (its MLflow artifacts are still read from there)"
    else:
        label = _scale_label(args.scale)
        world.build_log = workdir / "build.log"
        cmd = [*sandbox_command(), "build", "--out", str(world.path), "--scale", label, "--force"]
        print(f"building the default world at scale {label}…", file=sys.stderr)
        started = time.perf_counter()
        with world.build_log.open("wb") as log:
            world.build_exit = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=False
            ).returncode
        world.build_s = time.perf_counter() - started
        world.source = f"default scenario built at scale {label} in {world.build_s:.0f} s"
    world.manifest = read_manifest(world.path)
    return world


def request_ids(world: Path, model_url: str) -> tuple[list[int], Path, Path, int]:
    """Customer ids of the newest online-store snapshot that the snapshot the server reads now
    also holds (a newer customer would get a 404). Returns (ids, newest, in use, dropped)."""
    import polars as pl

    from sandbox.layout import WorldPaths
    from sandbox.pipeline import deploy

    snapshots = deploy.online_snapshots(WorldPaths(world).online_store)
    newest = snapshots[-1][1]
    in_use = newest
    with contextlib.suppress(httpx.HTTPError, KeyError, TypeError, ValueError):
        loaded = httpx.get(model_url + "/metadata", timeout=5).json()["online_store"]["loaded_at"]
        in_use = {t.isoformat(): p for t, p in snapshots}.get(loaded, newest)
    ids = pl.read_parquet(newest, columns=["customer_id"])["customer_id"].to_list()
    served = set(pl.read_parquet(in_use, columns=["customer_id"])["customer_id"].to_list())
    kept = [cid for cid in ids if cid in served]
    rng = np.random.default_rng(SEED)
    sample = rng.choice(kept, size=min(ID_SAMPLE, len(kept)), replace=False).tolist()
    return sample, newest, in_use, len(ids) - len(kept)


def create_candidate(world: Path, gateway: str) -> str | None:
    token = (world / "interviewer" / "operator-token").read_text().strip()
    try:
        reply = httpx.post(
            gateway + "/api/sessions",
            json={"candidate": "benchmark"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        reply.raise_for_status()
        return reply.json()["candidate_token"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def scan_events(run_dirs: dict[str, Path]) -> list[str]:
    """Warnings and errors the services wrote to the candidate's logs (the telemetry spool)."""
    rows = []
    for label, run_dir in run_dirs.items():
        found: Counter[tuple[str, str, str]] = Counter()
        example: dict[tuple[str, str, str], str] = {}
        for spool in sorted((run_dir / "spool").glob("*.telemetry.logs.jsonl")):
            for line in spool.read_text(errors="replace").splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("level", "info") in ("info", "debug"):
                    continue
                key = (event.get("service", "?"), event["level"], event.get("event", "?"))
                found[key] += 1
                example.setdefault(key, str(event.get("message", ""))[:160])
        rows += [[label, *key, str(n), f"`{example[key]}`"] for key, n in sorted(found.items())]
    if not rows:
        return ["", "No warning or error events in the structured logs."]
    header = ["run", "service", "level", "event", "count", "first message"]
    return ["", *_table(header, rows)]


def scan_logs(run_dirs: dict[str, Path]) -> list[str]:
    """Lines of the services' own stdout/stderr that look like trouble."""
    if not run_dirs:
        return ["", "(the stack did not run)"]
    lines: list[str] = []
    for label, run_dir in run_dirs.items():
        for log in sorted((run_dir / "process-logs").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()
            hits = [line for line in text if LOG_PROBLEM.search(line)]
            if not hits:
                continue
            lines += ["", f"`{label}` run, `{log.name}`: {len(hits)} of {len(text)} lines", ""]
            lines += ["```", *(h[:300] for h in hits[:LOG_LINES_SHOWN]), "```"]
    return lines or ["", "No error, exception or warning lines in any process log."]


# --- the report -----------------------------------------------------------------------------


def _ms(x: float) -> str:
    return "—" if x != x else f"{x:.1f}"  # NaN-safe


def _s(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _verdict(measured: float | None, limit: float) -> str:
    if measured is None or measured != measured:
        return "n/a"
    return "within" if measured <= limit else "over"


def budget_table(runs: list[StackRun], loads: list[Load], scale: float) -> list[str]:
    rows = []

    def row(budget: Budget, label: str, measured: float | None) -> None:
        shown = "—" if measured is None else f"{measured:.2f} {budget.unit}"
        rows.append(
            [
                f"{budget.what} ({label})",
                f"≤ {budget.budget:g} {budget.unit}",
                f"≤ {budget.goal:g} {budget.unit}",
                shown,
                _verdict(measured, budget.budget),
                _verdict(measured, budget.goal),
            ]
        )

    for run in runs:
        row(STARTUP, run.label, run.health_s)
    for run in runs:
        row(IDLE_RSS, run.label, run.memory.rss / GB if run.memory else None)
    for load in loads:
        if load.target == "model server" and load.rate == 200:
            row(P99_AT_200, "warm", load.pct(99))
    header = ["what", "budget", "later goal", "measured", "budget", "goal"]
    lines = _table(header, rows)
    if scale != 1.0:
        lines += ["", f"(The budgets are for scale 1; this world is at scale {scale:g}.)"]
    return lines


def startup_table(runs: list[StackRun]) -> list[str]:
    names = sorted({n for r in runs for n in r.service_ok_s} - {"gateway"})
    header = [
        "run",
        "health 200 after s",
        "supervisor's own s",
        "gateway first answer s",
        *[f"{n} ok s" for n in names],
        "page cache of code + world",
    ]
    rows = []
    for r in runs:
        cache = "—"
        if r.resident_before is not None and r.resident_after is not None:
            cache = (
                f"{r.resident_before / MB:.0f} MB → {r.resident_after / MB:.0f} MB resident "
                "(evicted)"
            )
        elif r.resident_before is not None:
            cache = f"{r.resident_before / MB:.0f} MB resident"
        rows.append(
            [
                r.label,
                _s(r.health_s) if r.failure is None else f"FAILED: {r.failure}",
                _s(r.supervisor_s),
                _s(r.first_answer_s),
                *[_s(r.service_ok_s.get(n)) for n in names],
                cache,
            ]
        )
    return _table(header, rows)


def startup_cpu_table(runs: list[StackRun]) -> list[str]:
    """Where the start-up's CPU went: seconds per service, from launch to green health."""
    cpu = {r.label: r.startup.stack_cpu() for r in runs if r.startup}
    names = sorted(
        {n for c in cpu.values() for n in c}, key=lambda n: -max(c.get(n, 0) for c in cpu.values())
    )
    rows = [[n, *(f"{c.get(n, 0):.1f}" for c in cpu.values())] for n in names]
    rows.append(["total", *(f"{sum(c.values()):.1f}" for c in cpu.values())])
    header = ["service", *(f"CPU s ({label})" for label in cpu)]
    return ["CPU seconds spent by each service until health was green:", "", *_table(header, rows)]


def memory_tables(runs: list[StackRun]) -> list[str]:
    header = ["run", "RSS GB (summed)", "PSS GB", "anonymous GB", "max RSS GB while idle"]
    lines = _table(
        [*header, "processes", "peak RSS GB, whole run"],
        [
            [
                r.label,
                f"{r.memory.rss / GB:.3f}",
                f"{r.memory.pss / GB:.3f}",
                f"{r.memory.anon / GB:.3f}",
                f"{r.memory.max_rss / GB:.3f}",
                str(len(r.memory.processes)),
                f"{r.sampler.peak_rss / GB:.3f}" if r.sampler else "—",
            ]
            for r in runs
            if r.memory
        ],
    )
    last = next((r.memory for r in reversed(runs) if r.memory), None)
    if last is None:
        return lines
    label = next(r.label for r in reversed(runs) if r.memory)
    by_service: dict[str, list[ProcMemory]] = defaultdict(list)
    for p in last.processes:
        by_service[p.service].append(p)

    def mb(items: Iterable[int]) -> str:
        return f"{sum(items) / MB:.0f}"

    lines += ["", f"Per service ({label} run):", ""]
    lines += _table(
        ["service", "RSS MB", "PSS MB", "anonymous MB", "processes"],
        [
            [
                svc,
                mb(p.proc.rss for p in ps),
                mb(p.pss for p in ps),
                mb(p.anon for p in ps),
                str(len(ps)),
            ]
            for svc, ps in sorted(
                by_service.items(), key=lambda kv: -sum(p.proc.rss for p in kv[1])
            )
        ],
    )
    lines += ["", f"Per process ({label} run):", ""]
    lines += _table(
        ["service", "pid", "command", "threads", "RSS MB", "PSS MB", "anonymous MB"],
        [
            [
                p.service,
                str(p.proc.pid),
                f"`{p.command}`",
                str(p.proc.threads),
                mb([p.proc.rss]),
                mb([p.pss]),
                mb([p.anon]),
            ]
            for p in last.processes
        ],
    )
    return lines


def latency_table(loads: list[Load]) -> list[str]:
    header = [
        "target",
        "rate req/s",
        "sent",
        "200",
        "errors",
        "achieved req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "send lag p99 ms",
        "others' requests",
    ]
    rows = []
    for load in loads:
        errors = {k: v for k, v in load.statuses.items() if k != "200"}
        rows.append(
            [
                load.target,
                f"{load.rate:g}",
                str(load.sent),
                str(load.ok),
                ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "0",
                f"{load.ok / load.elapsed_s:.1f}" if load.elapsed_s else "—",
                _ms(load.pct(50)),
                _ms(load.pct(95)),
                _ms(load.pct(99)),
                _ms(load.pct(100)),
                _ms(float(np.nanpercentile(load.lags_ms, 99))),
                "—" if load.others is None else str(load.others),
            ]
        )
    return _table(header, rows)


def cpu_table(loads: list[Load]) -> list[str]:
    header = ["target", "rate req/s", "model-server CPU ms/req", "gateway CPU ms/req"]
    header += ["stack CPU cores", "benchmark CPU cores", "other CPU cores"]
    rows = []
    for load in loads:
        if load.phase is None or not load.sent:
            continue
        cpu, wall = load.phase.stack_cpu(), load.phase.wall_s
        rows.append(
            [
                load.target,
                f"{load.rate:g}",
                f"{cpu.get('model-server', 0) * 1000 / load.sent:.2f}",
                f"{cpu.get('gateway', 0) * 1000 / load.sent:.2f}",
                f"{sum(cpu.values()) / wall:.2f}",
                f"{load.phase.self_cpu / wall:.2f}",
                f"{load.phase.other_cpu / wall:.2f}",
            ]
        )
    return _table(header, rows)


def baseline_lines(baseline: Baseline | None, loads: list[Load]) -> list[str]:
    if baseline is None:
        return ["(not measured)"]
    rows = [
        [
            "`predict_proba`, one row, in this process",
            _ms(baseline.pct(50)),
            _ms(baseline.pct(99)),
            f"{np.mean(baseline.times_ms):.2f}",
            "1.0",
        ]
    ]
    for load in loads:
        p50 = load.pct(50)
        rows.append(
            [
                f"{load.target} at {load.rate:g} req/s",
                _ms(p50),
                _ms(load.pct(99)),
                f"{np.mean(load.latencies_ms):.2f}" if len(load.latencies_ms) else "—",
                f"{p50 / baseline.pct(50):.0f}" if p50 == p50 else "—",
            ]
        )
    return [
        f"{len(baseline.times_ms)} calls to the model's serving form (what the server scores "
        f"with); it loaded in {baseline.load_s:.1f} s. CPU time per call: p50 "
        f"{np.percentile(baseline.cpu_ms, 50):.2f} ms, p99 {np.percentile(baseline.cpu_ms, 99):.2f} "
        "ms (wall above it is time spent waiting for a core).",
        "",
        *_table(["what", "p50 ms", "p99 ms", "mean ms", "p50 / in-process p50"], rows),
    ]


def stop_table(runs: list[StackRun]) -> list[str]:
    rows = []
    for r in runs:
        if r.stop is None:
            continue
        left = ", ".join(f"{p.pid} `{cmd}`" for p, cmd in r.stop.leftovers) or "none"
        rows.append(
            [
                r.label,
                f"{r.stop.seconds:.1f}" + (" (then SIGKILL)" if r.stop.killed else ""),
                "—" if r.stop.exit_code is None else str(r.stop.exit_code),
                str(len(r.tree.seen) if r.tree else 0),
                left,
                ", ".join(map(str, r.stop.open_ports)) or "none",
            ]
        )
    header = ["run", "SIGINT → exit s", "exit code", "processes seen", "left alive", "ports open"]
    return _table(header, rows)


def load_table(phases: list[Phase]) -> list[str]:
    rows = []
    for p in phases:
        wall = p.wall_s or 1.0
        rows.append(
            [
                p.name,
                f"{p.wall_s:.1f}",
                f"{p.before.load1:.2f}",
                f"{p.after.load1:.2f}",
                f"{sum(p.stack_cpu().values()) / wall:.2f}",
                f"{p.self_cpu / wall:.2f}",
                f"{p.other_cpu / wall:.2f}",
                f"{(p.after.steal_s - p.before.steal_s) / wall:.2f}",
                _pct((p.after.waiting_s - p.before.waiting_s) / wall),
            ]
        )
    header = ["phase", "wall s", "load 1m before", "load 1m after", "stack cores"]
    header += ["benchmark cores", "other cores busy", "steal cores", "CPU pressure"]
    return _table(header, rows)


def _pct(x: float) -> str:
    return "—" if x != x else f"{100 * x:.0f}%"


def render(
    world: World,
    runs: list[StackRun],
    loads: list[Load],
    baseline: Baseline | None,
    ids: tuple[int, Path, Path, int] | None,
    started: datetime,
    workdir: Path,
    log_lines: list[str],
    prometheus: bool = False,
) -> str:
    m = world.manifest or {}
    scale = float(m.get("scale", 0) or 0)
    customers = f"{m['customers']:,} customers" if "customers" in m else "customers unknown"
    phases = [p for r in runs for p in (r.startup, r.idle_phase) if p]
    phases += [x.phase for x in loads if x.phase]
    if baseline is not None and baseline.phase is not None:
        phases.append(baseline.phase)
    id_line = []
    if ids is not None:
        count, newest, in_use, dropped = ids
        id_line = [
            f"- Customer ids: {count:,} sampled from the newest online-store snapshot "
            f"`{newest.name}`, keeping those the snapshot in use (`{in_use.name}`) holds "
            f"({dropped:,} newer ones dropped, they would get a 404)."
        ]
    lines = [
        f"# `sandbox up` benchmark, {started:%Y-%m-%d %H:%M:%S} UTC",
        "",
        f"Machine: {os.cpu_count()} cores, {_mem_total_gib():.1f} GiB RAM. World: {world.source}, "
        f"scale {scale:g}, {customers}. Command: `{' '.join(sandbox_command())} up DIR --port P"
        f"{' --prometheus' if prometheus else ''}`. "
        f"Logs: `{workdir}`.",
        "",
        "## Budgets (README, Performance)",
        "",
        *budget_table(runs, loads, scale),
        *(
            [
                "",
                "(Measured with Prometheus, which the budgets leave out: the idle memory includes "
                "it, and the cold start its history backfill.)",
            ]
            if prometheus
            else []
        ),
        "",
        "## Startup",
        "",
        *startup_table(runs),
        "",
        *startup_cpu_table(runs),
        "",
        "## Idle memory",
        "",
        *memory_tables(runs),
        "",
        "## Model server latency (single-row `POST /predict`, open loop)",
        "",
        *latency_table(loads),
        "",
        *cpu_table(loads),
        "",
        "## In-process baseline (the same model, the same rows)",
        "",
        *baseline_lines(baseline, loads),
        "",
        "## Stop (SIGINT, as Ctrl-C)",
        "",
        *stop_table(runs),
        "",
        "## Load on the machine",
        "",
        *load_table(phases),
        "",
        "## Process logs (`DIR/run/process-logs/`)",
        *log_lines,
        "",
        "## Notes",
        "",
        "- Startup: seconds from launching `sandbox up` until `GET /-/health` answers 200, polled "
        f'every {HEALTH_POLL_SECONDS} s; a service\'s "ok s" is the first poll in which the '
        "gateway reported it healthy. Cold: before the first run, the pages of the world, the "
        "venv, the standard library and libpython were dropped from the page cache file by file "
        "(`posix_fadvise(DONTNEED)`; pages other running processes map stay). Warm: a second "
        "start right after, with the first run's `run/` moved aside.",
        f"- Idle memory: after health is green and {IDLE_SECONDS:g} s without benchmark traffic "
        "(the stack's own traffic generator and jobs keep running). RSS is summed over the "
        "supervisor and all its descendants, so shared pages count once per process; PSS splits "
        "shared pages among their users. Peak RSS, whole run: sampled every "
        f"{POLL_SECONDS} s from launch to stop, load phases included. GB = 10^9 bytes, MB = 10^6.",
        f"- Latency: {PHASE_SECONDS:g} s per rate, sends scheduled at fixed intervals "
        f"(asyncio + {client_name()}, at most {MAX_IN_FLIGHT} in flight), latency measured from the "
        "scheduled send, so queueing in the client counts; send lag is how late the client "
        f"itself was. {WARMUP_REQUESTS} sequential warm-up requests first. Percentiles are over "
        '200 replies. "Others\' requests" are /predict calls the server counted during the phase '
        "that were not ours (the live traffic generator). The gateway run uses a candidate "
        "session's token, so every request is also recorded in the query history.",
        *id_line,
        "- The load generator runs on the same 2 cores as the stack: its CPU (benchmark cores) "
        "competes with the server. Other cores busy = machine busy time minus the stack's and "
        "this process's, per second of the phase; steal = time the hypervisor ran other guests; "
        "CPU pressure = share of the phase in which some runnable task waited for a core "
        "(`/proc/pressure/cpu`, some).",
        "- This kernel "
        + ("runs" if damon_pageout() else "does not run")
        + " proactive reclaim (DAMON `pageout`), which pages out memory left untouched, so the "
        "file-backed part of an idle process's RSS can shrink over time; anonymous memory (there "
        "is no swap) is the floor that stays.",
    ]
    if world.build_exit:
        lines += ["", f"### The build failed (exit {world.build_exit})", ""]
        if world.build_log:
            lines += ["```", log_tail(world.build_log), "```"]
    for r in runs:
        if r.failure:
            lines += ["", f"### `{r.label}` start failed: {r.failure}", f"log: `{r.log}`", ""]
            lines += ["```", log_tail(r.log, LOG_TAIL_LINES), "```"]
    return "\n".join(lines) + "\n"


def write_report(text: str, started: datetime) -> Path:
    REPORTS.mkdir(parents=True, exist_ok=True)
    path = REPORTS / f"stack-{started:%Y%m%dT%H%M%SZ}.md"
    path.write_text(text)
    return path


# --- command line ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stack", description=__doc__)
    parser.add_argument("--world", type=Path, help="a built world to copy (default: build one)")
    parser.add_argument("--scale", type=float, default=1.0, help="scale of the world to build")
    parser.add_argument("--keep", action="store_true", help="keep the world copy and logs")
    parser.add_argument(
        "--prometheus",
        action="store_true",
        help="run the stack with Prometheus (`sandbox up --prometheus`), to measure it too; the "
        "idle budget is for the stack without it",
    )
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    return args


def benchmark_run(world: Path, run: StackRun, cold: bool, extra: tuple[str, ...] = ()) -> None:
    if cold:
        code, data = python_files(), list(_files(world))
        run.resident_before = resident_bytes(code + data)
        evict(code)
        evict(data, written=True)  # just built or copied
        run.resident_after = resident_bytes(code + data)
    print(f"starting the stack ({run.label})…", file=sys.stderr)
    start_stack(world, run, extra)
    print(f"  health: {_s(run.health_s)} s {run.failure or ''}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The stack runs in its own session: on SIGTERM, unwind so the `finally` below stops it.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-stack-bench-")).resolve()
    started = datetime.now(UTC)
    world = prepare_world(args, workdir)
    runs: list[StackRun] = []
    loads: list[Load] = []
    baseline: Baseline | None = None
    ids_info: tuple[int, Path, Path, int] | None = None
    run_dirs: dict[str, Path] = {}
    if world.manifest is None:
        return _finish(world, runs, loads, baseline, ids_info, started, workdir, args, {})
    for label, cold in (("cold", True), ("warm", False)):
        if (world.path / "run").exists():
            aside = world.path / f"run-{runs[-1].label}"
            (world.path / "run").rename(aside)
            run_dirs[runs[-1].label] = aside
        run = StackRun(label, workdir / f"up-{label}.log", free_port())
        runs.append(run)
        try:  # an interrupted benchmark must not leave the stack behind
            benchmark_run(world.path, run, cold, ("--prometheus",) if args.prometheus else ())
            if run.failure is not None:
                break
            print(f"  idling {IDLE_SECONDS:g} s…", file=sys.stderr)
            idle_memory(run)
            if label == "warm":
                loads, baseline, ids_info = drive(world.path, run)
        finally:
            print("  stopping (SIGINT)…", file=sys.stderr)
            stop_stack(run, world.path)
    run_dirs[runs[-1].label] = world.path / "run"
    return _finish(world, runs, loads, baseline, ids_info, started, workdir, args, run_dirs)


def drive(world: Path, run: StackRun) -> tuple[list[Load], Baseline | None, Any]:
    """Load the model server directly and through the gateway; then the in-process baseline."""
    assert run.tree is not None
    services = json.loads((world / "run" / "stack.json").read_text())["services"]
    model_url = services["model-server"]["url"]
    ids, newest, in_use, dropped = request_ids(world, model_url)
    bodies = [{"customer_id": cid} for cid in ids]
    warm = predict_requests(model_url + "/predict", bodies, WARMUP_REQUESTS)
    print(f"  warm-up: {dict(warm)}", file=sys.stderr)
    loads = [
        measure_load(run.tree, "model server", model_url + "/predict", model_url, bodies, rate)
        for rate in RATES
    ]
    token = create_candidate(world, run.url)
    if token is not None:
        loads.append(
            measure_load(
                run.tree,
                "gateway → model server",
                run.url + "/services/model/predict",
                model_url,
                bodies,
                GATEWAY_RATE,
                {"Authorization": f"Bearer {token}"},
            )
        )
    print("  in-process baseline…", file=sys.stderr)
    before = Usage.now(run.tree)
    baseline = in_process(world, in_use, ids)
    baseline.phase = Phase("in-process baseline", before, Usage.now(run.tree))
    return loads, baseline, (len(ids), newest, in_use, dropped)


def _finish(
    world: World,
    runs: list[StackRun],
    loads: list[Load],
    baseline: Baseline | None,
    ids_info: Any,
    started: datetime,
    workdir: Path,
    args: argparse.Namespace,
    run_dirs: dict[str, Path],
) -> int:
    log_lines = [
        *scan_logs(run_dirs),
        "",
        "## Warnings and errors in the candidate's logs (`DIR/run/spool/*.telemetry.logs.jsonl`)",
        *scan_events(run_dirs),
    ]
    report = render(
        world, runs, loads, baseline, ids_info, started, workdir, log_lines, args.prometheus
    )
    print(report)
    print(f"report written to {write_report(report, started)}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(world.path, ignore_errors=True)
    started_ok = bool(runs) and all(r.failure is None for r in runs)
    return 0 if started_ok else 1


if __name__ == "__main__":
    sys.exit(main())
