"""The candidate's tools as JSON: clock, schema, dashboards' panels, logs, changelog, drift reports,
their own query history and the diagnosis. Every read a candidate makes is recorded.

The pages (`pages.py`) draw these; scripts may call them too. Nothing here returns answer-key
evidence: the candidate's own history comes back without its evidence tags.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import sys
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from sandbox.monitor.reports import report_path
from sandbox.review.store import DiagnosisClosed, ImplausibleEvent
from sandbox.services import dashboards
from sandbox.services.console.pool import ConsoleBusy
from sandbox.services.console.query import QueryRefused
from sandbox.services.gateway.auth import Auth, CandidateAuth
from sandbox.services.gateway.composition import Composition
from sandbox.services.gateway.errors import invalid
from sandbox.services.gateway.state import Gateway, naive_utc, server_timing, shown_rows

router = APIRouter()

LOG_PAGE = 100
EXAMPLE_CUSTOMERS = 20
LOG_LEVELS = ("debug", "info", "warning", "error")
REPORT_RENDER_TIMEOUT_S = 120
DiagnosisField = Literal["root_cause", "evidence", "fix", "ship_first", "next_experiment"]
DIAGNOSIS_FIELDS: tuple[str, ...] = get_args(DiagnosisField)


class DiagnosisBody(BaseModel):
    root_cause: str = Field("", max_length=20_000)
    evidence: str = Field("", max_length=20_000)
    fix: str = Field("", max_length=20_000)
    ship_first: str = Field("", max_length=20_000)
    next_experiment: str = Field("", max_length=20_000)
    # How each field's text reached the diagnosis page's editor since its previous save; a
    # client that is not the page sends none.
    composition: dict[DiagnosisField, Composition] | None = None

    def fields(self) -> dict[str, str]:
        return self.model_dump(include=set(DIAGNOSIS_FIELDS))


def gateway(request: Request) -> Gateway:
    return request.app.state.gateway


@router.get("/api/clock")
def clock(request: Request, who: Auth) -> dict[str, Any]:
    gw = gateway(request)
    started = gw.sessions.started(who.session_id) if who.is_candidate else None
    return {
        "now": gw.ctx.now().isoformat(timespec="seconds"),
        "speed": gw.ctx.clock.speed,
        "history_start": gw.history_start.isoformat(),
        "live_start": gw.live_start.isoformat(),
        "session_started": started.isoformat(timespec="seconds") + "Z" if started else None,
    }


@router.get("/api/schema")
def schema(request: Request, who: Auth) -> list[dict[str, Any]]:
    """Every table the console can query: its columns, types and one-line descriptions."""
    return gateway(request).schema()


@router.get("/api/my/history")
def my_history(
    request: Request, who: CandidateAuth, kind: Annotated[str | None, Query()] = "sql"
) -> list[dict[str, Any]]:
    events = gateway(request).sessions.history(who.session_id, kind or None)
    return [{"ts": e["ts"], "kind": e["kind"], "detail": e["detail"]} for e in events]


@router.get("/api/dashboards")
def dashboard_list(request: Request, who: Auth) -> list[dict[str, Any]]:
    # Which tiers a panel is shown at would say what this world leaves out.
    hidden = {"panels": {"__all__": {"shown_up_to"}}}
    return [board.model_dump(exclude=hidden) for board in gateway(request).boards().values()]


@router.get("/api/dashboards/{board_id}/panels/{panel_id}")
async def panel_data(
    board_id: str,
    panel_id: str,
    request: Request,
    who: Auth,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    refresh: bool = False,
) -> JSONResponse:
    """One panel's rows for the range. An auto-refresh (`refresh=true`) is not recorded again:
    the history keeps what the candidate chose to look at."""
    gw = gateway(request)
    board = gw.boards().get(board_id)
    panel = board.panel(panel_id) if board else None
    if board is None or panel is None:
        raise HTTPException(404, f"no panel {board_id}/{panel_id}")
    start, end = gw.time_range(start, end)
    choices: dict[str, str | None] = {}
    for variable in board.variables:
        value = request.query_params.get(variable.name) or None
        if value is not None and value not in variable.options:
            raise invalid("query", variable.name, f"choose one of {', '.join(variable.options)}")
        choices[variable.name] = value
    detail: dict[str, Any] = {
        "dashboard": board.id,
        "panel": panel.id,
        "start": start.isoformat(),
        "end": end.isoformat(),
        **{k: v for k, v in choices.items() if v is not None},
        "sql": panel.sql,
    }
    record = gw.record if not refresh else _ignore
    try:
        result = await gw.query(who, panel.sql, dashboards.parameters(panel, start, end, choices))
    except ConsoleBusy as exc:
        return JSONResponse({"error": str(exc)}, status_code=429)
    except QueryRefused as exc:
        await run_in_threadpool(record, who, "panel", {**detail, "error": str(exc).splitlines()[0]})
        return JSONResponse({"error": str(exc).splitlines()[0]}, status_code=400)
    recording = time.perf_counter()
    await run_in_threadpool(
        record,
        who,
        "panel",
        {
            **detail,
            "rows": len(result.rows),
            "tables": result.tables,
            "columns": result.columns_read,
        },
        shown_rows(result),
    )
    return JSONResponse(
        {
            "columns": result.columns,
            "rows": result.rows,
            "truncated": result.truncated,
            "elapsed_ms": result.elapsed_ms,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "bucket_s": dashboards.bucket_seconds(start, end),
            "partial": dashboards.partial_periods(panel, result.columns, result.rows, start, end),
        },
        headers=server_timing(result, (time.perf_counter() - recording) * 1000),
    )


def _ignore(*_: Any) -> None:
    pass


def _like_escaped(text: str) -> str:
    """Free text matches literally: % and _ are not wildcards here."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@router.get("/api/logs")
async def logs(
    request: Request,
    who: Auth,
    service: str | None = None,
    level: str | None = None,
    q: Annotated[str | None, Query(max_length=500)] = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    after: dt.datetime | None = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = LOG_PAGE,
) -> dict[str, Any]:
    """Log lines newest first. `end` pins a search so later pages stay put while time runs on;
    `after` (the newest line shown) asks for the live tail."""
    gw = gateway(request)
    if level is not None and level not in LOG_LEVELS:
        raise invalid("query", "level", f"one of {', '.join(LOG_LEVELS)}")
    # Logs go back before the first production day (the jobs ran during pre-history too).
    start, end = gw.time_range(start or gw.ctx.calendar.midnight(gw.ctx.calendar.first_day), end)
    after = naive_utc(after)
    params = {
        "service": service or None,
        "level": level,
        "q": f"%{_like_escaped(q)}%" if q else None,
        "start": max(start, after) if after else start,
        "strict": after is not None,
        "end": end,
    }
    where = (
        "($service::VARCHAR IS NULL OR service = $service) "
        "AND ($level::VARCHAR IS NULL OR level = $level) "
        "AND ($q::VARCHAR IS NULL OR message ILIKE $q ESCAPE '\\' OR event ILIKE $q ESCAPE '\\' "
        "OR attrs ILIKE $q ESCAPE '\\') "
        "AND (ts > $start OR (NOT $strict AND ts = $start)) AND ts <= $end"
    )
    with _unavailable_as("the logs are"):
        total = await gw.query(who, f"SELECT count(*) FROM telemetry.logs WHERE {where}", params)
        rows = (
            await gw.query(
                who,
                f"SELECT ts, service, level, event, message, attrs FROM telemetry.logs "
                f"WHERE {where} ORDER BY ts DESC LIMIT {limit} OFFSET {offset}",
                params,
            )
        ).rows
        services = [
            r[0]
            for r in (
                await gw.query(who, "SELECT DISTINCT service FROM telemetry.logs ORDER BY 1")
            ).rows
        ]
    search = {
        "service": service,
        "level": level,
        "q": q,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "offset": offset,
        "tail": after is not None,
    }
    if after is None:  # the live tail polls; the search that started it is the event
        await run_in_threadpool(
            gw.record,
            who,
            "log_search",
            {k: v for k, v in search.items() if v is not None} | {"rows": len(rows)},
            [(ts, " ".join(str(v) for v in rest)) for ts, *rest in rows],
        )
    return {
        "total": total.rows[0][0],
        "offset": offset,
        "end": end.isoformat(),
        "services": services,
        "lines": [
            {
                "ts": ts,
                "service": svc,
                "level": lvl,
                "event": event,
                "message": message,
                "attrs": attrs,
            }
            for ts, svc, lvl, event, message, attrs in rows
        ],
    }


@router.get("/api/customers/examples")
async def customer_examples(
    request: Request, who: Auth, n: Annotated[int, Query(ge=1, le=EXAMPLE_CUSTOMERS)] = 6
) -> list[int]:
    """A few customer ids the online store holds now, spread over the id range, for the model
    server page to offer; recorded like every read, so the history shows where an id came from."""
    gw = gateway(request)
    with _unavailable_as("the online store is"):
        result = await gw.query(
            who,
            "SELECT customer_id FROM feature_store.customer_features_online "
            "ORDER BY hash(customer_id), customer_id LIMIT $n",
            {"n": n},
        )
    ids = sorted(int(row[0]) for row in result.rows)
    await run_in_threadpool(
        gw.record,
        who,
        "customer_examples",
        {"ids": ids, "tables": ["feature_store.customer_features_online"]},
        shown_rows(result),
    )
    return ids


@router.get("/api/changelog")
async def changelog(request: Request, who: Auth) -> list[dict[str, Any]]:
    gw = gateway(request)
    with _unavailable_as("the changelog is"):
        result = await gw.query(
            who, "SELECT ts, kind, service, title, body, author FROM ops.changelog ORDER BY ts DESC"
        )
    await run_in_threadpool(
        gw.record,
        who,
        "changelog",
        {"entries": len(result.rows), "tables": ["ops.changelog"]},
        shown_rows(result),
    )
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


@router.get("/reports/drift/{day}")
async def drift_report(day: dt.date, request: Request, who: Auth) -> FileResponse:
    """A day's Evidently drift report, rendered on first view by a child process (Evidently is
    too heavy to import into the gateway)."""
    gw = gateway(request)
    with _unavailable_as("drift reports are"):
        known = await gw.query(
            who,
            "SELECT count(*) FROM monitoring.drift_daily WHERE report_date = $day",
            {"day": day},
        )
    if not known.rows[0][0]:
        raise HTTPException(404, f"no drift report for {day}")
    await run_in_threadpool(gw.record, who, "report", {"report": "drift", "day": day.isoformat()})
    path = report_path(gw.ctx.world, day)
    state = request.app.state
    if not hasattr(state, "render_slot"):  # made here: asyncio locks belong to one event loop
        state.render_slot, state.rendering = asyncio.Semaphore(1), {}
    async with state.rendering.setdefault(day, asyncio.Lock()):  # one render per day...
        if not path.is_file():
            async with state.render_slot:  # ...and one at a time: each costs seconds and memory
                await _render_report(gw, day)
    return FileResponse(path, media_type="text/html")


async def _render_report(gw: Gateway, day: dt.date) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sandbox.monitor.reports",
        str(gw.ctx.world),
        day.isoformat(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(child.wait(), REPORT_RENDER_TIMEOUT_S)
    except TimeoutError:
        child.kill()
        await child.wait()
        raise HTTPException(504, "the drift report took too long to render") from None
    if child.returncode != 0:
        gw.ctx.log("error", "report_failed", f"drift report for {day} failed to render")
        raise HTTPException(500, f"the drift report for {day} could not be rendered")


class ClientEvent(BaseModel):
    """What only the browser sees: a paste into the diagnosis, time away from the tab. Nothing
    else rides along: the history keeps what the browser measured, not what a script adds."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["paste", "away"]
    field: DiagnosisField | None = None
    # No more than a diagnosis field holds (the browser caps what it reports at that).
    chars: int = Field(0, ge=0, le=20_000)
    # At most the time since the session started or since the last time away ended (checked
    # when it is recorded).
    seconds: float = Field(0, ge=0, le=86_400)

    def detail(self) -> dict[str, Any]:
        if self.kind == "away":
            return {"seconds": self.seconds}
        return self.model_dump(exclude_none=True, include={"field", "chars"})


@router.post("/api/events", status_code=204)
def client_event(body: ClientEvent, request: Request, who: CandidateAuth) -> None:
    gw = gateway(request)
    wait = gw.client_events.admit(who.session_id)
    if wait is not None:
        raise HTTPException(
            429,
            f"too many browser events from this session; at most {gw.client_events.limit} a minute",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    try:
        gw.record(who, body.kind, body.detail())
    except ImplausibleEvent as exc:
        raise invalid("body", "seconds", str(exc)) from None


@router.get("/api/diagnosis")
def diagnosis(request: Request, who: CandidateAuth) -> dict[str, Any]:
    saved = gateway(request).sessions.diagnosis(who.session_id)
    if saved is None:
        return {"version": 0, "fields": dict.fromkeys(DIAGNOSIS_FIELDS, ""), "submitted": False}
    return _diagnosis_json(saved)


@router.put("/api/diagnosis")
def save_diagnosis(body: DiagnosisBody, request: Request, who: CandidateAuth) -> dict[str, Any]:
    return _save(request, who, body, submit=False)


@router.post("/api/diagnosis/submit")
def submit_diagnosis(body: DiagnosisBody, request: Request, who: CandidateAuth) -> dict[str, Any]:
    return _save(request, who, body, submit=True)


def _save(request: Request, who: Any, body: DiagnosisBody, submit: bool) -> dict[str, Any]:
    gw = gateway(request)
    try:
        saved, created = gw.sessions.save_diagnosis(who.session_id, body.fields(), submit=submit)
    except DiagnosisClosed as exc:
        raise HTTPException(409, str(exc)) from None
    if created:
        detail: dict[str, Any] = {
            "version": saved.version,
            "submitted": saved.submitted,
            "fields": saved.fields,
        }
        if body.composition is not None:
            detail["composition"] = {f: c.detail() for f, c in body.composition.items()}
        gw.record(who, "diagnosis", detail)
    return _diagnosis_json(saved)


def _diagnosis_json(saved: Any) -> dict[str, Any]:
    return {
        "version": saved.version,
        "saved_at": saved.ts.isoformat(timespec="seconds") + "Z",
        "fields": saved.fields,
        "submitted": saved.submitted,
    }


@contextlib.contextmanager
def _unavailable_as(what: str) -> Iterator[None]:
    """A busy console is 429; a refused read of what a page needs is 503, saying what `what` is."""
    try:
        yield
    except ConsoleBusy as exc:
        raise HTTPException(429, str(exc)) from None
    except QueryRefused as exc:
        raise HTTPException(503, f"{what} not available right now: {exc}") from None
