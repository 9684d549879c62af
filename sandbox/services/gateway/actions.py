"""The ops console's API: the catalog of actions, applying one to the running stack, and the
interviewer's fast-forward of simulated time.

An applied action goes into the stack's overrides file (`sandbox.actions.overrides`), in effect
after the action's delay in simulated time; its progress is logged like the services' own lines.
Every call a candidate makes here is recorded as an `action` event. What an action does to a
planted fault is in the answer key only: nothing here says whether an action helps.

What one session changes, every session on the stack would see: a session with actions on is the
only session on its stack (`session_policy`).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from sandbox.actions import deployment, retrain, source_rules
from sandbox.actions.catalog import (
    ACTIONS,
    CATALOG,
    COUNT_AS_FAILED,
    MODEL_SERVER,
    MOVE_ALIAS,
    PIN_VERSION,
    QUARANTINE_RELEASE,
    RESUME_JOB,
    RETRAIN,
    SET_FILL,
    Action,
    rolls_back,
)
from sandbox.actions.overrides import Applied
from sandbox.pipeline.features import FAILED_CHARGE
from sandbox.review import fills
from sandbox.services.gateway.auth import Auth, Caller
from sandbox.services.gateway.errors import invalid
from sandbox.services.gateway.interviewer import Interviewer, session_of
from sandbox.services.gateway.state import Gateway
from sandbox.services.simclock import change_clock

router = APIRouter()

# The most the interviewer may move simulated time forward at once.
MAX_FORWARD_HOURS = 24.0
OFF = "actions are off for this session: the ops console only shows what could be done"


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str = Field(min_length=1, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)


class ForwardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hours: float = Field(gt=0, le=MAX_FORWARD_HOURS, description="Simulated hours to skip.")


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def _actions_on(gw: Gateway, who: Caller) -> bool:
    session = gw.sessions.get(who.session_id or "") if who.is_candidate else None
    return bool(session and session.actions)


@router.get("/api/actions")
def catalog(request: Request, who: Auth) -> dict[str, Any]:
    """Every action with its parameters' schema, whether this version applies it, and whether
    this session may apply any."""
    gw = _gateway(request)
    return {
        "enabled": _actions_on(gw, who),
        "now": gw.ctx.now().isoformat(timespec="seconds"),
        "actions": [a.describe() for a in ACTIONS],
    }


@router.post("/api/actions", status_code=202)
async def apply(body: ActionRequest, request: Request, who: Auth) -> dict[str, Any]:
    gw = _gateway(request)
    if not who.is_candidate:
        raise HTTPException(403, "the ops console acts for a session's candidate")
    detail: dict[str, Any] = {"action": body.action, "params": body.params}

    async def refuse(status: int, outcome: str, error: Any) -> HTTPException:
        message = error if isinstance(error, str) else json.dumps(error, default=str)
        await run_in_threadpool(
            gw.record, who, "action", {**detail, "status": outcome, "error": message}
        )
        return HTTPException(status, error)

    async def wrong_param(field: str, message: str) -> HTTPException:
        error = [{"loc": ["body", "params", field], "msg": message, "type": "value_error"}]
        return await refuse(422, "invalid", error)

    if not _actions_on(gw, who):
        raise await refuse(403, "refused", OFF)
    action = CATALOG.get(body.action)
    if action is None:
        error = invalid("body", "action", f"unknown action; one of {', '.join(CATALOG)}")
        raise await refuse(422, "invalid", error.detail)
    try:
        params = action.params.model_validate(body.params)
    except ValidationError as exc:
        errors = [
            {"loc": ["body", "params", *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise await refuse(422, "invalid", errors) from None
    detail["params"] = params.model_dump(mode="json")
    if not action.available:
        raise await refuse(
            501, "not available", f"{action.id} is not available in this version: nothing changed"
        )
    if action.id in (PIN_VERSION, MOVE_ALIAS):
        version = detail["params"]["version"]
        registered = await run_in_threadpool(_deployable, gw)
        if version not in registered:
            known = ", ".join(sorted(registered, key=int))
            message = f"the registry has no churn-model version {version}; registered: {known}"
            raise await wrong_param("version", message)
    now = gw.ctx.now()
    unknown = await run_in_threadpool(_unreported_source, gw, action.id, detail["params"], now)
    if unknown is not None:
        raise await wrong_param(*unknown)
    if action.id == SET_FILL and detail["params"]["policy"] == "training-mean":
        feature = detail["params"]["feature"]
        reference = await run_in_threadpool(fills.reference, gw.ctx.world)
        mean = reference.training_mean(feature, now) if reference is not None else None
        if mean is None:
            raise await refuse(
                503, "not available", f"the training rows' mean of {feature} cannot be read now"
            )
        detail["params"]["fill_value"] = round(mean, 4)
    if action.id == RETRAIN:
        asked = detail["params"]
        chosen = retrain.score_days(
            gw.ctx.calendar, now, int(asked["label_maturity_days"]), *retrain.window(asked)
        )
        problem = retrain.window_error(gw.ctx.calendar, chosen)
        if problem is not None:
            where = "newest_score_date" if asked.get("newest_score_date") else "days"
            raise await wrong_param(where, problem)
    if action.id == RESUME_JOB:
        job = detail["params"]["job"]
        if gw.overrides.paused(job, now + action.delay) is None:
            raise await refuse(409, "invalid", f"the {job} job is not paused: nothing changed")
    applied = Applied(
        id=uuid.uuid4().hex[:12],
        action=action.id,
        params=detail["params"],
        requested_at=now,
        effective_at=now + action.delay,
        session_id=who.session_id,
    )
    await run_in_threadpool(_apply, gw, action, applied)
    detail |= {
        "status": "applied",
        "applied_id": applied.id,
        "requested_at": applied.requested_at.isoformat(),
        "effective_at": applied.effective_at.isoformat(),
    }
    await run_in_threadpool(gw.record, who, "action", detail)
    return {
        "id": applied.id,
        "action": action.id,
        "params": applied.params,
        "requested_at": applied.requested_at.isoformat(),
        "effective_at": applied.effective_at.isoformat(),
        "message": f"{action.id} requested; in effect from {applied.effective_at:%Y-%m-%d %H:%M}",
    }


def _unreported_source(
    gw: Gateway, action: str, params: dict[str, Any], now: dt.datetime
) -> tuple[str, str] | None:
    """The parameter and why, when a change to how the feature job reads its sources names a
    release or status the world's raw rows do not report by `now`."""
    db = gw.ctx.paths.duckdb
    if action == COUNT_AS_FAILED:
        status = params["status"]
        if status == FAILED_CHARGE:
            return "status", f"billing events of status {status} count already"
        known = source_rules.statuses_reported(db, now)
        if status not in known:
            return "status", f"no billing event reports status {status}; they report: " + (
                ", ".join(known)
            )
    if action == QUARANTINE_RELEASE:
        device, version = params["device"], params["app_version"]
        reported = source_rules.versions_reported(db, device, now)
        if version not in reported:
            return "app_version", (
                f"no {device} viewing rows report app version {version}; "
                f"they report: {', '.join(reported) or 'none'}"
            )
    return None


def _deployable(gw: Gateway) -> set[str]:
    """The versions a pin or an alias may name now: the registry's, and those retrains from the
    console have registered (kept in the run directory, not the registry)."""
    registered = set(gw.model_registry().versions)
    return registered | deployment.retrained(
        gw.deployed().latest, gw.overrides.entries(), gw.ctx.now()
    )


def _apply(gw: Gateway, action: Action, applied: Applied) -> None:
    """Record the change where the services read it, and its progress where the logs show it
    (the second line appears once simulated time reaches it)."""
    deploys = (PIN_VERSION, MOVE_ALIAS, RETRAIN)
    model_server = action.id in deploys or rolls_back(action.id, applied.params, MODEL_SERVER)
    versions = _versions(gw, applied) if model_server else {}
    gw.overrides.append(applied)
    change = ", ".join(f"{k}={v}" for k, v in applied.params.items()) or "no parameters"
    served = ""
    if versions:
        moved = versions["from_version"] != versions["to_version"]
        served = (
            f": churn-model version {versions['from_version']} -> {versions['to_version']}"
            if moved
            else f": churn-model version {versions['from_version']} stays served"
        )
    service = action.logged_by(applied.params)
    # The team's changelog tells of it too, as of any change to production: when it was asked
    # for, and when it took effect (each entry shown once simulated time reaches it).
    for ts, title, body in (
        (
            applied.requested_at,
            f"{service}: {action.id} requested",
            f"{change}{served}. In effect from {applied.effective_at:%Y-%m-%d %H:%M}.",
        ),
        (applied.effective_at, f"{service}: {action.id} in effect", f"{change}{served}."),
    ):
        gw.ctx.spool("ops.changelog").write(
            {
                "entry_id": None,  # numbered after the world's entries as it is loaded
                "ts": ts.isoformat(),
                "kind": action.kind,
                "service": service,
                "title": title,
                "body": body,
                "author": "oncall",  # as the team's on-call writes its entries
            }
        )
    for ts, event, message in (
        (applied.requested_at, "change_requested", f"{action.id} requested ({change}){served}"),
        (applied.effective_at, "change_applied", f"{action.id} in effect ({change}){served}"),
    ):
        gw.ctx.spool("telemetry.logs").write(
            {
                "ts": ts.isoformat(),
                "service": service,
                "level": "info",
                "event": event,
                "message": message,
                "attrs": json.dumps(
                    {"change_id": applied.id, "action": action.id, **applied.params, **versions},
                    sort_keys=True,
                ),
            }
        )


def _versions(gw: Gateway, applied: Applied) -> dict[str, str]:
    """The version the model server serves just before the change takes effect, and after."""
    before = gw.deployment_at(applied.effective_at)
    after = gw.deployment_at(applied.effective_at, applied)
    return {"from_version": before.version, "to_version": after.version}


@router.post("/api/sessions/{session_id}/clock/forward")
def forward(
    session_id: str, body: ForwardRequest, request: Request, who: Interviewer
) -> dict[str, Any]:
    """Move the stack's simulated time forward (only for a session with actions on: it is the
    stack's only session). The services read the clock file again within a second; the jobs
    that fell due run as they do after a restart."""
    gw = _gateway(request)
    session = session_of(request, session_id, who)
    if not session.actions:
        raise HTTPException(
            409, "simulated time moves only for a session with actions on (its stack's only one)"
        )
    wall = time.time()
    ahead = dt.timedelta(hours=body.hours)
    before, after = change_clock(gw.ctx.paths.run, lambda c: c.moved_to(c.now(wall) + ahead, wall))
    gw.ctx.reload_clock()
    return {
        "before": before.now(wall).isoformat(timespec="seconds"),
        "now": after.sim_start.isoformat(timespec="seconds"),
        "at_end": after.sim_start >= after.sim_end,
    }
