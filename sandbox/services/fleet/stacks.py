"""The stacks of the worlds under the worlds root, started and stopped from the operator's gateway.

A world is started as a child `sandbox up WORLD --port P` on a free port, in a session of its own:
the stacks it starts outlive a restart of the operator's gateway (each one's pid and address are
kept in a small JSON file in the operator's run directory, read back at the next start), and stop
when the operator's stack stops. Stopping one sends its `sandbox up` SIGTERM, which stops every
process of that stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from sandbox.layout import WorldPaths
from sandbox.services import stack
from sandbox.services.launcher import command_line
from sandbox.services.supervisor import listening

UP_COMMAND = (sys.executable, "-m", "sandbox", "up")
HEALTH_TIMEOUT_S = 1.0
STOP_WAIT_S = 20.0  # `sandbox up` gives its services 5 s, then kills them
UP_LOG = "up.log"  # the child `sandbox up`'s own output, in the world's run directory


@dataclass
class Started:
    """A stack this gateway (or an earlier run of it) started."""

    name: str
    pid: int
    url: str
    world: Path
    process: subprocess.Popen | None = None  # None when an earlier run of the gateway started it
    stopping: bool = False

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        # Started by an earlier run of the gateway: alive while that pid is still its `sandbox up`.
        return str(self.world) in command_line(self.pid)

    def failed(self) -> bool:
        """It exited by itself with an error (not stopped from here)."""
        if self.process is None or self.stopping:
            return False
        code = self.process.poll()
        return code is not None and code != 0


class Fleet:
    """The stacks started from the operator page, by world name."""

    def __init__(self, state_dir: Path, command: tuple[str, ...] = UP_COMMAND) -> None:
        self.state_dir = state_dir
        self.command = command
        self._started: dict[str, Started] = {}
        self._lock = threading.Lock()
        # One client for every health check (a new one per call costs more than the call), for
        # loopback only: no proxy from the environment applies.
        self.http = httpx.Client(timeout=HEALTH_TIMEOUT_S, trust_env=False)
        self._restore()

    def _restore(self) -> None:
        if not self.state_dir.is_dir():
            return
        for path in self.state_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                raw = json.loads(path.read_text())
                found = Started(raw["name"], int(raw["pid"]), raw["url"], Path(raw["world"]))
                if found.alive():
                    self._started[found.name] = found
                else:
                    path.unlink(missing_ok=True)

    def get(self, name: str) -> Started | None:
        return self._started.get(name)

    def pids(self) -> frozenset[int]:
        """The `sandbox up` processes of the stacks started from here."""
        return frozenset(started.pid for started in self._started.values())

    def start(self, name: str, world: Path) -> Started:
        """Start the world's stack on a free port. RuntimeError when it is already up."""
        with self._lock:
            known = self._started.get(name)
            if known is not None and known.alive():
                raise RuntimeError(f"{name} is already started ({known.url})")
            run = WorldPaths(world).run
            run.mkdir(parents=True, exist_ok=True)
            # Bound here and handed down: a port only picked here could be taken by another
            # stack's process before the child bound it.
            with listening("127.0.0.1", 0) as sock, (run / UP_LOG).open("ab") as log:
                port = sock.getsockname()[1]
                process = subprocess.Popen(
                    [*self.command, str(world), "--port", str(port), "--fd", str(sock.fileno())],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    pass_fds=(sock.fileno(),),
                    # Its own session: a restart of this gateway does not take the stack with it.
                    start_new_session=True,
                )
            started = Started(name, process.pid, f"http://127.0.0.1:{port}", world, process)
            self._started[name] = started
            self._save(started)
            return started

    def stop(self, name: str) -> Started | None:
        """SIGTERM the world's `sandbox up` and wait for it to go (killed after `STOP_WAIT_S`).
        None when this gateway did not start it."""
        with self._lock:
            started = self._started.get(name)
            if started is None:
                return None
            started.stopping = True
        _terminate(started)
        with self._lock:
            self._started.pop(name, None)
            (self.state_dir / f"{name}.json").unlink(missing_ok=True)
        return started

    def close(self) -> None:
        """The operator's stack is stopping: so do the stacks it started. Every one is told at
        once, then waited for: the operator's stack gives this gateway only seconds."""
        for started in list(self._started.values()):
            started.stopping = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(started.pid, signal.SIGTERM)
        for name in list(self._started):
            self.stop(name)
        self.http.close()

    def _save(self, started: Started) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "name": started.name,
            "pid": started.pid,
            "url": started.url,
            "world": str(started.world),
        }
        tmp = self.state_dir / f"{started.name}.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(self.state_dir / f"{started.name}.json")


def _terminate(started: Started) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(started.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while started.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if started.alive():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(started.pid, signal.SIGKILL)
    if started.process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            started.process.wait(timeout=2)


def healthy(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url + "/-/health", timeout=HEALTH_TIMEOUT_S).status_code == 200
    except httpx.HTTPError:
        return False


def own_url(world: Path) -> str | None:
    """The gateway address a world's running stack wrote, if any."""
    try:
        return stack.gateway_url(WorldPaths(world).run)
    except (OSError, ValueError, KeyError):
        return None
