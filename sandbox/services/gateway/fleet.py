"""The operator page's fleet routes: every world under the worlds root with its state, its stack
started or stopped (`sandbox.services.fleet.stacks`), and a session created on another running
world through that world's own gateway."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from sandbox.layout import WorldPaths
from sandbox.services import stack
from sandbox.services.fleet import stacks, worlds
from sandbox.services.fleet.stacks import UP_LOG, Fleet
from sandbox.services.gateway import pages
from sandbox.services.gateway.builder import Operator
from sandbox.services.gateway.errors import invalid
from sandbox.services.gateway.interviewer import SessionRequest
from sandbox.services.supervisor import SUPERVISOR_PID

router = APIRouter()


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
        state = "running" if stacks.healthy(client, started.url) else "starting"
        return {
            "state": state,
            "url": started.url,
            "memory_mb": _mb(worlds.tree_rss_bytes(started.pid)),
        }
    if started is not None and started.failed():
        return {"state": "failed", "url": None, "memory_mb": None}
    # Started some other way (`sandbox up` by hand): running while its gateway answers.
    url = stacks.own_url(world)
    if url is not None and stacks.healthy(client, url):
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
    url = started.url if started is not None and started.alive() else stacks.own_url(world)
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
