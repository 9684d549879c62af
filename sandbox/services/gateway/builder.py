"""The interviewer's scenario builder: the catalog to pick from, validation of a composed or
pasted scenario (errors name the field), and world builds in a child process with progress.

A build writes a new world beside the running one (`WORLDS/NAME`); the stack keeps serving its
own world, and `sandbox up WORLDS/NAME` starts the new one. A re-seeded copy of a scenario (same
faults and parameters, other data) is how each candidate gets their own variant.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from sandbox import catalog, scenario
from sandbox.layout import WorldPaths
from sandbox.services.gateway import pages
from sandbox.services.gateway.auth import Caller, caller
from sandbox.services.gateway.errors import invalid

router = APIRouter()
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
LOG_LINES = 200
BUILD_COMMAND = (sys.executable, "-m", "sandbox", "build")
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


@dataclass
class Build:
    id: str
    name: str
    out: Path
    process: subprocess.Popen
    stages: dict[str, dict[str, int]] = field(default_factory=dict)
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    seed: int | None = None

    @property
    def status(self) -> str:
        code = self.process.poll()
        if code is None:
            return "building"
        return "built" if code == 0 and self.seed is not None else "failed"


BUILDS: dict[str, Build] = {}


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
            f"world {spec.world.name!r}, seed {spec.world.seed}, "
            f"{spec.world.n_customers:,} customers, {len(spec.faults)} fault(s), "
            f"{len(spec.decoys)} decoy(s)"
        ),
    }


@router.post("/api/builder/builds")
def start_build(body: BuildRequest, request: Request, who: Operator) -> dict[str, Any]:
    if not NAME.match(body.name):
        raise invalid("body", "name", "lowercase letters, digits and dashes")
    spec = _parse(body)
    out = Path(request.app.state.gateway.ctx.world).resolve().parent / body.name
    if out.exists():
        raise HTTPException(409, f"name: {out} already exists; pick another name")
    scratch = Path(tempfile.mkdtemp(prefix="scenario-"))
    source = scratch / "scenario.toml"
    source.write_text(spec.as_toml())
    process = subprocess.Popen(
        [*BUILD_COMMAND, str(source), "--out", str(out), "--progress", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    build = Build(uuid.uuid4().hex[:12], body.name, out, process)
    BUILDS[build.id] = build
    threading.Thread(
        target=_follow, args=(build, scratch), name=f"build-{build.id}", daemon=True
    ).start()
    return _status(build)


def _follow(build: Build, scratch: Path) -> None:
    """Read the build's output to the end (a reader that stopped would block the build)."""
    assert build.process.stdout is not None
    for line in build.process.stdout:
        line = line.rstrip()
        try:
            update = json.loads(line)
            if update.get("done") is True:
                build.seed = int(update["seed"])
            else:
                build.stages[str(update["stage"])] = {
                    "done": int(update["done"]),
                    "total": int(update["total"]),
                }
        except (ValueError, TypeError, KeyError, AttributeError):
            build.lines.append(line)
    build.process.wait()
    shutil.rmtree(scratch, ignore_errors=True)


@router.get("/api/builder/builds/{build_id}")
def build_status(build_id: str, who: Operator) -> dict[str, Any]:
    build = BUILDS.get(build_id)
    if build is None:
        raise HTTPException(404, f"no build {build_id}")
    return _status(build)


def _status(build: Build) -> dict[str, Any]:
    status = build.status
    answer = WorldPaths(build.out).answer_key
    return {
        "id": build.id,
        "name": build.name,
        "out": str(build.out),
        "status": status,
        "stages": build.stages,
        "log": list(build.lines)[-20:],
        "seed": build.seed,
        "up_command": f"sandbox up {build.out}",
        "answer_key": json.loads(answer.read_text()) if status == "built" else None,
    }


@router.get("/interviewer/builder", include_in_schema=False)
def builder_page(request: Request, who: Operator):
    return pages.interviewer_page(request, "builder")
