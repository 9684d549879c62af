"""The operator page's fleet: every world under the worlds root (`worlds`), its state, and its
stack started or stopped from the operator's gateway; a session created on another running world
through that world's own gateway.

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
from typing import Any

import httpx
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from sandbox.layout import WorldPaths
from sandbox.services import stack
from sandbox.services.gateway import pages, worlds
from sandbox.services.gateway.builder import Operator
from sandbox.services.gateway.errors import invalid
from sandbox.services.gateway.interviewer import SessionRequest
from sandbox.services.supervisor import SUPERVISOR_PID, listening

router = APIRouter()
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
        return str(self.world) in worlds.command_line(self.pid)

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


def _healthy(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url + "/-/health", timeout=HEALTH_TIMEOUT_S).status_code == 200
    except httpx.HTTPError:
        return False


def _own_url(world: Path) -> str | None:
    """The gateway address a world's running stack wrote, if any."""
    try:
        return stack.gateway_url(WorldPaths(world).run)
    except (OSError, ValueError, KeyError):
        return None


def _fleet(request: Request) -> Fleet:
    return request.app.state.fleet


def _root(request: Request) -> Path:
    gw = request.app.state.gateway
    return worlds.worlds_root(gw.settings, gw.ctx.world)


def _own(request: Request, world: Path) -> bool:
    return world.resolve() == Path(request.app.state.gateway.ctx.world).resolve()


def _world(request: Request, name: str) -> Path:
    """The world called `name` under the worlds root: 422 for a name that is not a plain world
    name, 404 when there is no such complete world."""
    if not worlds.NAME.match(name):
        raise invalid("path", "name", "a world's name: lowercase letters, digits and dashes")
    world = _root(request) / name
    if worlds.manifest_of(world) is None:
        raise HTTPException(404, f"no world {name} under {_root(request)}")
    return world


def _state(request: Request, client: httpx.Client, name: str, world: Path) -> dict[str, Any]:
    """The world's state, the address of its stack and its memory, as the page shows them."""
    if _own(request, world):
        return {
            "state": "running",
            "url": str(request.base_url).rstrip("/"),
            # The stacks started from here run under this one: theirs are theirs.
            "memory_mb": _mb(_own_stack_rss(_fleet(request).pids())),
        }
    started = _fleet(request).get(name)
    if started is not None and started.alive():
        state = "running" if _healthy(client, started.url) else "starting"
        return {
            "state": state,
            "url": started.url,
            "memory_mb": _mb(worlds.tree_rss_bytes(started.pid)),
        }
    if started is not None and started.failed():
        return {"state": "failed", "url": None, "memory_mb": None}
    # Started some other way (`sandbox up` by hand): running while its gateway answers.
    url = _own_url(world)
    if url is not None and _healthy(client, url):
        return {"state": "running", "url": url, "memory_mb": None}
    return {"state": "stopped", "url": None, "memory_mb": None}


def _mb(rss: int | None) -> float | None:
    return round(rss / 2**20, 1) if rss is not None else None


def _own_stack_rss(apart: frozenset[int]) -> int | None:
    """The memory of the operator's own stack: the tree of the process that supervises it,
    `sandbox up` or `sandbox demo` (None when the gateway runs without one, as in a test)."""
    supervisor = os.environ.get(SUPERVISOR_PID, "")
    if not supervisor.isdigit() or int(supervisor) != os.getppid():
        return None
    return worlds.tree_rss_bytes(int(supervisor), apart)


def _summary(request: Request, client: httpx.Client, name: str, world: Path) -> dict[str, Any]:
    manifest = worlds.manifest_of(world) or {}
    started = _fleet(request).get(name)
    return (
        worlds.describe(name, manifest)
        | _state(request, client, name, world)
        | {
            "sessions": worlds.session_count(world),
            "operator": _own(request, world),
            # Stopped from here only when started from here.
            "started_here": started is not None,
            "log": str(WorldPaths(world).run / UP_LOG),
        }
    )


@router.get("/api/worlds")
def list_worlds(request: Request, who: Operator) -> list[dict[str, Any]]:
    """Every complete world under the worlds root, with its state, memory and sessions."""
    client = _fleet(request).http
    return [
        _summary(request, client, name, world)
        for name, world, _ in worlds.built_worlds(_root(request))
    ]


@router.post("/api/worlds/{name}/start")
def start_world(name: str, request: Request, who: Operator) -> dict[str, Any]:
    """Start the world's stack (`starting` until its gateway answers)."""
    world = _world(request, name)
    if _own(request, world):
        raise HTTPException(409, f"{name} is this stack's own world; it is running")
    client = _fleet(request).http
    if _state(request, client, name, world)["state"] in ("running", "starting"):
        raise HTTPException(409, f"{name} is already running")
    try:
        _fleet(request).start(name, world)
    except RuntimeError as exc:
        raise HTTPException(409, str(exc)) from None
    return _summary(request, client, name, world)


@router.post("/api/worlds/{name}/stop")
def stop_world(name: str, request: Request, who: Operator) -> dict[str, Any]:
    """Stop a stack started from here (SIGTERM to its `sandbox up`; every process goes)."""
    world = _world(request, name)
    if _own(request, world):
        raise HTTPException(409, f"{name} is this stack's own world; stop it where it was started")
    if _fleet(request).stop(name) is None:
        raise HTTPException(409, f"{name} was not started from this page; nothing to stop")
    return _summary(request, _fleet(request).http, name, world)


@router.post("/api/worlds/{name}/sessions")
async def create_world_session(
    name: str, body: SessionRequest, request: Request, who: Operator
) -> JSONResponse:
    """A session on another running world, created by that world's own gateway as its operator:
    the links are that stack's own."""
    world = _world(request, name)
    if _own(request, world):
        raise HTTPException(409, f"{name} is this stack's own world; use /api/sessions")
    started = _fleet(request).get(name)
    url = started.url if started is not None and started.alive() else _own_url(world)
    if url is None:
        raise HTTPException(409, f"{name} is not running; start it first")
    token = stack.admin_token(WorldPaths(world))
    http: httpx.AsyncClient = request.app.state.http
    try:
        reply = await http.post(
            url + "/api/sessions",
            json=body.model_dump(),
            headers={"Authorization": f"Bearer {token}"},
        )
    except httpx.HTTPError as exc:
        raise HTTPException(
            409, f"{name}'s gateway at {url} did not answer ({type(exc).__name__})"
        ) from None
    try:
        answer = reply.json()
    except ValueError:
        answer = {"detail": reply.text[:500]}
    if reply.status_code != 200:
        detail = answer.get("detail") if isinstance(answer, dict) else answer
        raise HTTPException(reply.status_code, f"{name}'s gateway refused: {detail}")
    return JSONResponse(answer | {"world": name, "gateway": url})


@router.get("/interviewer/worlds", include_in_schema=False)
def worlds_page(request: Request, who: Operator):
    return pages.interviewer_page(request, "worlds")
