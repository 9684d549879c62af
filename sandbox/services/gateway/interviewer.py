"""The interviewer's side of the gateway: sessions (create, list, revoke), the live history, the
answer key, the walk-through review with its rubric, and the exports.

The stack's operator token reaches every session; a session's interviewer token reaches that
session only; a candidate token reaches none of it (403).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from pydantic import BaseModel, Field, StrictBool
from starlette.concurrency import run_in_threadpool

from sandbox.review import export, gather, recovery, rubric
from sandbox.review.store import Assistance, Session
from sandbox.services.console.pool import ConsoleBusy
from sandbox.services.console.query import QueryRefused
from sandbox.services.gateway import pages
from sandbox.services.gateway.auth import Auth, Caller, caller
from sandbox.services.gateway.errors import invalid
from sandbox.services.gateway.session_policy import conflict
from sandbox.services.gateway.state import Gateway

router = APIRouter()
MAX_TIME_LIMIT_MIN = 24 * 60


class SessionRequest(BaseModel):
    candidate: str = Field("candidate", min_length=1, max_length=200)
    time_limit_min: int | None = Field(None, ge=1, le=MAX_TIME_LIMIT_MIN)
    # The policy the candidate is shown on the brief (`store.ASSISTANCE`).
    assistance: Assistance = "allowed"
    workspace_only: StrictBool = False
    actions: StrictBool = Field(
        False, description="The candidate may act on the running stack from the ops console."
    )


class ScoreRequest(BaseModel):
    dimension: str
    level: int | None = Field(None, ge=1, le=max(rubric.LEVELS))
    note: str = Field("", max_length=5000)


def interviewer(request: Request, who: Annotated[Caller, Depends(caller)]) -> Caller:
    if who.role not in ("admin", "interviewer"):
        # A candidate reaching for the interviewer's side shows in their review as probing.
        _gateway(request).refused(who, request.method, request.url.path, "interviewer data")
        raise HTTPException(403, "interviewers only")
    return who


Interviewer = Annotated[Caller, Depends(interviewer)]


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def session_of(request: Request, session_id: str, who: Caller) -> Session:
    """The session, if this interviewer may see it (403 otherwise, 404 if there is none)."""
    if who.role == "interviewer" and who.session_id != session_id:
        raise HTTPException(403, "this interviewer link is for another session")
    session = _gateway(request).sessions.get(session_id)
    if session is None:
        raise HTTPException(404, f"no session {session_id}")
    return session


def describe(gw: Gateway, session: Session) -> dict[str, Any]:
    return gather.describe(gw.sessions, session)


def links(session: Session, base: str) -> dict[str, str]:
    return {
        "session_id": session.id,
        "candidate_url": f"{base}/?token={session.candidate_token}",
        "interviewer_url": f"{base}/?token={session.interviewer_token}",
        "candidate_token": session.candidate_token,
        "interviewer_token": session.interviewer_token,
    }


@router.get("/api/openapi.json", include_in_schema=False)
def openapi(request: Request, who: Interviewer) -> dict[str, Any]:
    if who.role != "admin":
        raise HTTPException(403, "the API description is for the stack's operator")
    return request.app.openapi()


@router.post("/api/sessions")
def create_session(body: SessionRequest, who: Auth, request: Request) -> dict[str, Any]:
    if who.role != "admin":
        raise HTTPException(403, "only the stack's operator creates sessions")
    sessions = _gateway(request).sessions
    refused = conflict(sessions.all(), body.actions, sessions.state)
    if refused:
        raise HTTPException(409, refused)
    session = sessions.create(
        body.candidate,
        body.time_limit_min,
        assistance=body.assistance,
        workspace_only=body.workspace_only,
        actions=body.actions,
    )
    # Behind a container network the gateway's own address is not the one people open.
    base = _gateway(request).settings.public_url or str(request.base_url)
    return links(session, base.rstrip("/")) | {
        "time_limit_min": body.time_limit_min,
        "policy": session.policy,
        "actions": body.actions,
    }


@router.get("/api/sessions")
def list_sessions(request: Request, who: Interviewer) -> list[dict[str, Any]]:
    gw = _gateway(request)
    mine = gw.sessions.all()
    if who.role == "interviewer":
        mine = [s for s in mine if s.id == who.session_id]
    return [describe(gw, s) for s in mine]


@router.get("/api/sessions/{session_id}")
def session_detail(session_id: str, request: Request, who: Interviewer) -> dict[str, Any]:
    return describe(_gateway(request), session_of(request, session_id, who))


@router.post("/api/sessions/{session_id}/revoke")
def revoke(session_id: str, request: Request, who: Interviewer) -> dict[str, Any]:
    gw = _gateway(request)
    session = session_of(request, session_id, who)
    gw.sessions.revoke(session.id)
    return describe(gw, session)


@router.get("/api/sessions/{session_id}/history")
def history(
    session_id: str, request: Request, who: Interviewer, after: int = 0
) -> list[dict[str, Any]]:
    session_of(request, session_id, who)
    return _gateway(request).sessions.history(session_id, after=after)


@router.get("/api/sessions/{session_id}/answer-key")
def answer_key(session_id: str, request: Request, who: Interviewer) -> dict[str, Any]:
    session_of(request, session_id, who)
    return _gateway(request).answer_key


def build_review(request: Request, session_id: str, who: Caller) -> dict[str, Any]:
    gw = _gateway(request)
    return gather.gather_review(
        gw.sessions, gw.answer_key, session_of(request, session_id, who), gw.ctx.world
    )


async def review_with_recovery(request: Request, session_id: str, who: Caller) -> dict[str, Any]:
    """The review, with the symptom's recovery after the candidate's actions charted from the
    live telemetry (`recovery`)."""
    data = await run_in_threadpool(build_review, request, session_id, who)
    gw = _gateway(request)
    charts = []
    for plan in recovery.plan(data["actions"], gw.answer_key, gw.ctx.now()):
        answers = []
        for query in recovery.queries(plan):
            try:
                # The session's own rows too: a session with actions on is its stack's only one.
                ran = await gw.console.run(
                    query.sql,
                    query.params,
                    owner=f"{who.role}:{who.session_id or ''}",
                    session_id=session_id,
                    staff=True,
                )
            except (ConsoleBusy, QueryRefused) as exc:
                answers.append((query, recovery.Result([], [], str(exc).splitlines()[0])))
                continue
            answers.append((query, recovery.Result(ran.columns, ran.rows)))
        charts.append(recovery.assemble(plan, answers))
    data["actions_recovery"] = charts
    return data


@router.get("/api/sessions/{session_id}/review")
async def review(session_id: str, request: Request, who: Interviewer) -> dict[str, Any]:
    return await review_with_recovery(request, session_id, who)


@router.put("/api/sessions/{session_id}/rubric")
def score(
    session_id: str, body: ScoreRequest, request: Request, who: Interviewer
) -> dict[str, Any]:
    session = session_of(request, session_id, who)
    if body.dimension not in rubric.BY_ID:
        raise invalid("body", "dimension", f"one of {', '.join(rubric.BY_ID)}")
    sessions = _gateway(request).sessions
    sessions.save_score(session.id, body.dimension, body.level, body.note)
    scores = sessions.scores(session.id)
    return {"scores": scores, "summary": rubric.summary(scores)}


@router.get("/api/sessions/{session_id}/export.{fmt}")
async def export_review(session_id: str, fmt: str, request: Request, who: Interviewer) -> Response:
    if fmt not in ("html", "md"):
        raise HTTPException(404, "export as .html or .md")
    data = await review_with_recovery(request, session_id, who)
    filename = f"review-{session_id}.{fmt}"
    disposition = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if fmt == "html":
        return HTMLResponse(export.to_html(data), headers=disposition)
    return PlainTextResponse(
        export.to_markdown(data), media_type="text/markdown", headers=disposition
    )


# The interviewer's scripts and styles speak of faults and answers: never public static files.
ASSETS = Path(__file__).parent / "web" / "interviewer"
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css"}


@router.get("/interviewer/assets/{name}", include_in_schema=False)
def asset(name: str, who: Interviewer) -> FileResponse:
    path = ASSETS / name
    if path.suffix not in ASSET_TYPES or path.name != name or not path.is_file():
        raise HTTPException(404, f"no asset {name}")
    return FileResponse(path, media_type=ASSET_TYPES[path.suffix])


@router.get("/interviewer", include_in_schema=False)
def interviewer_home(request: Request, who: Interviewer) -> Response:
    if who.role == "interviewer":
        return RedirectResponse(f"/interviewer/sessions/{who.session_id}", status_code=303)
    return pages.interviewer_page(request, "sessions")


@router.get("/interviewer/sessions/{session_id}", include_in_schema=False)
def review_page(session_id: str, request: Request, who: Interviewer) -> Response:
    session = session_of(request, session_id, who)
    return pages.interviewer_page(request, "review", session=describe(_gateway(request), session))
