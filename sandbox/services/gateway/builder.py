"""The interviewer's scenario builder routes: the catalog to pick from, validation of a composed
or pasted scenario (errors name the field), and world builds with their progress, through the
build queue (`sandbox.services.fleet.builds`: at most the `builds_at_once` setting run at once).

A build writes a new world into the worlds root; the stack keeps serving its own world, and the
operator page (`fleet`) starts the new one.
"""

from __future__ import annotations

import json
import tomllib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from sandbox import catalog, scenario
from sandbox.difficulty import DEFAULT, TIERS
from sandbox.layout import WorldPaths
from sandbox.services.fleet.builds import Build, BuildQueue, BuildsClosed
from sandbox.services.fleet.worlds import NAME, worlds_root
from sandbox.services.gateway import pages
from sandbox.services.gateway.auth import Caller, caller
from sandbox.services.gateway.errors import invalid

router = APIRouter()
MAX_SCENARIO_CHARS = 200_000


def operator(request: Request, who: Annotated[Caller, Depends(caller)]) -> Caller:
    if who.role != "admin":
        request.app.state.gateway.refused(who, request.method, request.url.path, "operator tools")
        raise HTTPException(403, "the scenario builder is for the stack's operator")
    return who


Operator = Annotated[Caller, Depends(operator)]


class ScenarioText(BaseModel):
    toml: str | None = Field(None, max_length=MAX_SCENARIO_CHARS)
    scenario: dict[str, Any] | None = None  # the same, as the page composes it


class BuildRequest(ScenarioText):
    name: str = Field(min_length=1, max_length=63)


def _parse(body: ScenarioText) -> scenario.Scenario:
    """The scenario from TOML text or the page's dict; 422 naming the field when it is wrong."""
    try:
        if body.toml is not None:
            text = body.toml
        elif body.scenario is not None:
            text = scenario.dump_toml(body.scenario)
        else:
            raise invalid("body", "toml", "send a scenario: toml (text) or scenario (object)")
        return scenario.parse(text, "scenario")
    except (scenario.ScenarioError, TypeError) as exc:
        raise invalid("body", "scenario", str(exc)) from None
    except RecursionError:
        raise invalid("body", "scenario", "nested too deeply") from None


@router.get("/api/catalog")
def catalog_json(request: Request, who: Operator) -> dict[str, Any]:
    """What a scenario can hold, and the running world's scenario to start from."""
    running = WorldPaths(request.app.state.gateway.ctx.world).scenario.read_text()
    return {
        "faults": catalog.faults(),
        "decoys": catalog.decoys(),
        "difficulties": list(TIERS),
        "default_difficulty": DEFAULT,
        "running": tomllib.loads(running),
        "schema": scenario.json_schema(),
    }


@router.post("/api/builder/validate")
def validate(body: ScenarioText, who: Operator) -> dict[str, Any]:
    spec = _parse(body)
    return {
        "ok": True,
        "toml": spec.as_toml(),
        "brief": {"title": spec.brief.title, "text": spec.brief.text.strip()},
        "summary": (
            f"world {spec.world.name!r}, {spec.difficulty}, seed {spec.world.seed}, "
            f"{spec.world.n_customers:,} customers, {len(spec.faults)} fault(s), "
            f"{len(spec.decoys)} decoy(s)"
        ),
    }


def _queue(request: Request) -> BuildQueue:
    return request.app.state.builds


@router.post("/api/builder/builds")
def start_build(body: BuildRequest, request: Request, who: Operator) -> dict[str, Any]:
    """Build a world beside the running one: at once when no other build holds the slots,
    else `queued` until it is its turn."""
    if not NAME.match(body.name):
        raise invalid("body", "name", "lowercase letters, digits and dashes")
    spec = _parse(body)
    gw = request.app.state.gateway
    out = worlds_root(gw.settings, gw.ctx.world) / body.name
    if out.exists():
        raise HTTPException(409, f"name: {out} already exists; pick another name")
    queue = _queue(request)
    try:
        build = queue.submit(body.name, out, spec.as_toml())
    except FileExistsError as exc:
        raise HTTPException(409, f"name: {exc}; pick another name") from None
    except BuildsClosed as exc:
        raise HTTPException(503, str(exc)) from None
    return _status(queue, build)


@router.get("/api/builder/builds")
def list_builds(request: Request, who: Operator) -> list[dict[str, Any]]:
    """The builds the gateway knows, newest first: waiting, running and the last finished."""
    queue = _queue(request)
    return [_summary(queue, b) for b in reversed(queue.all())]


@router.get("/api/builder/builds/{build_id}")
def build_status(build_id: str, request: Request, who: Operator) -> dict[str, Any]:
    queue = _queue(request)
    build = queue.get(build_id)
    if build is None:
        raise HTTPException(404, f"no build {build_id}")
    return _status(queue, build)


@router.delete("/api/builder/builds/{build_id}")
def cancel_build(build_id: str, request: Request, who: Operator) -> dict[str, Any]:
    """Cancel a queued build, or stop a running one (what it wrote is removed); a finished
    build is left as it ended."""
    queue = _queue(request)
    build = queue.cancel(build_id)
    if build is None:
        raise HTTPException(404, f"no build {build_id}")
    return _status(queue, build)


def _summary(queue: BuildQueue, build: Build) -> dict[str, Any]:
    return {
        "id": build.id,
        "name": build.name,
        "out": str(build.out),
        "status": build.state,
        # Queued builds that start before this one (None unless it is queued).
        "ahead": queue.ahead(build) if build.state == "queued" else None,
        "seed": build.seed,
        "difficulty": tomllib.loads(build.toml).get("difficulty", DEFAULT),
    }


def _status(queue: BuildQueue, build: Build) -> dict[str, Any]:
    summary = _summary(queue, build)
    built = summary["status"] == "built"
    answer = WorldPaths(build.out).answer_key
    return summary | {
        "stages": dict(build.stages),
        "log": list(build.lines)[-20:],
        "up_command": f"sandbox up {build.out}",
        # Started from the operator page by this name (`/api/worlds/{name}/start`).
        "world": build.out.name if built else None,
        "answer_key": json.loads(answer.read_text()) if built else None,
    }


@router.get("/interviewer/builder", include_in_schema=False)
def builder_page(request: Request, who: Operator):
    return pages.interviewer_page(request, "builder")
