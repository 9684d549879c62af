"""What every gateway route shares: the world's context, the telemetry store, the sessions, the
other services' addresses, the stack's settings, and the recorder."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import duckdb

from sandbox.actions import deployment
from sandbox.actions.overrides import Applied, Overrides
from sandbox.layout import WorldPaths
from sandbox.review.evidence import Shown
from sandbox.review.store import SessionStore
from sandbox.schema import MODEL_SERVER
from sandbox.services import dashboards, stack
from sandbox.services.common import ServiceContext
from sandbox.services.console import views
from sandbox.services.console.pool import ConsolePool
from sandbox.services.console.query import QueryResult
from sandbox.services.console.telemetry import CANDIDATE_SCHEMAS
from sandbox.services.gateway.auth import Caller
from sandbox.services.gateway.on_demand import OnDemand
from sandbox.services.gateway.provenance import Flights, PageTokens
from sandbox.services.settings import Settings

# No range reaches before this: the world's calendar is years later, and arithmetic near the
# smallest datetime overflows.
EARLIEST = dt.datetime(1970, 1, 1)


class RateQuota:
    """At most `limit` admissions per session in any `window_s` seconds (wall time)."""

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, session_id: str) -> float | None:
        """None if admitted; else the seconds until the next admission."""
        now = time.monotonic()
        with self._lock:
            seen = self._seen.setdefault(session_id, deque())
            while seen and now - seen[0] >= self.window_s:
                seen.popleft()
            if len(seen) >= self.limit:
                return self.window_s - (now - seen[0])
            seen.append(now)
        return None


@dataclass
class Gateway:
    ctx: ServiceContext
    console: ConsolePool
    sessions: SessionStore
    addresses: dict[str, stack.ServiceAddress]
    answer_key: dict[str, Any]  # interviewer-only: never in a candidate's response
    settings: Settings
    # Signs the workspace pages' tokens (`provenance`): the operator's secret, never a candidate's.
    page_tokens: PageTokens
    _schema: list[dict[str, Any]] = field(default_factory=list)
    # What only the browser reports (pastes, time away): a person causes a few a minute.
    client_events: RateQuota = field(init=False)
    # The candidates' requests in flight, for telling which overlapped.
    flights: Flights = field(default_factory=Flights)
    # The actions applied from the ops console, where the services read them.
    overrides: Overrides = field(init=False)
    # The services started on their first use, and whether they are up.
    on_demand: OnDemand = field(init=False)
    # The churn model's registry and what the world left deployed, read on first use.
    _registry: deployment.Registry | None = None
    _deployed: deployment.Deployment | None = None

    def __post_init__(self) -> None:
        self.client_events = RateQuota(self.settings.client_events_per_minute)
        self.overrides = Overrides(self.ctx.paths.run)
        self.on_demand = OnDemand(self.ctx.paths.run)

    def model_registry(self) -> deployment.Registry:
        """The churn model's registered versions and aliases (the registry is read-only)."""
        if self._registry is None:
            self._registry = deployment.Registry.read(self.ctx.paths.mlflow)
        return self._registry

    def deployed(self) -> deployment.Deployment:
        """What the world left deployed, before any action."""
        if self._deployed is None:
            paths, ctx = self.ctx.paths, self.ctx
            rollouts = ctx.fault_set.rollouts(ctx.calendar, MODEL_SERVER)
            self._deployed = deployment.world_baseline(
                paths.duckdb, paths.mlflow, paths.deploy, rollouts
            )
        return self._deployed

    def deployment_at(self, now: dt.datetime, *more: Applied) -> deployment.Deployment:
        """What the model server serves at `now` with the applied actions (and `more`)."""
        return deployment.in_effect(self.deployed(), [*self.overrides.entries(), *more], now)

    def moved_aliases(self, now: dt.datetime) -> dict[str, str]:
        """The churn model's aliases the ops console has moved, in effect at `now`."""
        return deployment.moved_aliases(self.deployed(), self.deployment_at(now))

    def boards(self) -> dict[str, dashboards.Dashboard]:
        """The dashboards this stack serves (the `dashboards` setting, or the packaged ones), as
        the world's difficulty has them."""
        return dashboards.for_tier(
            dashboards.catalog(self.settings.dashboards), self.ctx.difficulty
        )

    @property
    def live_start(self) -> dt.datetime:
        """Where live time begins: the first day after the six production weeks."""
        cal = self.ctx.calendar
        return cal.midnight(cal.last_production_day + 1)

    async def query(
        self, who: Caller, sql: str, params: dict[str, Any] | None = None
    ) -> QueryResult:
        """Run one console statement for `who` in a worker: a candidate's views show their own
        live rows; each caller has its own share of the workers (ConsoleBusy past it)."""
        # Interviewers and the operator have shares of their own, and come before candidates.
        owner = "session:" if who.is_candidate else f"{who.role}:"
        session = who.session_id if who.is_candidate else None
        return await self.console.run(
            sql,
            params,
            owner=owner + (who.session_id or ""),
            session_id=session,
            staff=not who.is_candidate,
        )

    @property
    def history_start(self) -> dt.datetime:
        """The first production day: where the dashboards' whole-history range begins."""
        return self.ctx.calendar.midnight(1)

    def record(self, who: Caller, kind: str, detail: dict[str, Any], shown: Shown = ()) -> None:
        """Add an event to the caller's session history (candidates only: an interviewer
        previewing the workspace leaves no trace in it), with where the request came from, the
        user agent it named and whether it overlapped another of the session's requests
        (`provenance`). Returns once it is durable. `shown` is what the event put in front of the
        candidate, for evidence tagging."""
        if who.is_candidate:
            self.sessions.started(who.session_id)  # the first action starts the session timer
            detail = {
                **detail,
                "client": who.client or "api",
                "user_agent": who.user_agent,
                "overlapped": who.flight is not None and self.flights.overlapped(who.flight),
            }
            self.sessions.record(who.session_id, self.ctx.now(), kind, detail, shown)

    def refused(self, who: Caller, method: str, path: str, reach: str) -> None:
        """Record a request refused because it reached outside the candidate's workspace (the
        interviewer's data, the operator's tools): the review shows these as probing."""
        self.record(who, "refused", {"method": method, "path": path, "refused": reach})

    def time_range(
        self, start: dt.datetime | None, end: dt.datetime | None
    ) -> tuple[dt.datetime, dt.datetime]:
        """A requested range clamped to what exists: nothing after the simulated now."""
        now = self.ctx.now()
        end = max(min(naive_utc(end) or now, now), EARLIEST)
        start = max(naive_utc(start) or self.history_start, EARLIEST)
        if start >= end:
            start = end - dt.timedelta(hours=1)
        return start, end

    def schema(self) -> list[dict[str, Any]]:
        if not self._schema:
            self._schema = read_schema(WorldPaths(self.ctx.world))
        return self._schema


def read_schema(paths: WorldPaths) -> list[dict[str, Any]]:
    """Every candidate table with its columns, types and descriptions, from the world file's
    own catalog (the built world is immutable while the stack serves it) and the columns the
    console's views add to it."""
    with duckdb.connect(str(paths.duckdb), read_only=True) as con:
        tables = con.execute(
            "SELECT schema_name || '.' || table_name, comment FROM duckdb_tables() "
            "WHERE database_name = current_database() AND NOT internal ORDER BY 1"
        ).fetchall()
        columns = con.execute(
            "SELECT schema_name || '.' || table_name, column_name, data_type, comment "
            "FROM duckdb_columns() WHERE database_name = current_database() "
            "ORDER BY column_index"
        ).fetchall()
    by_table: dict[str, list[dict[str, str]]] = {}
    for table, name, dtype, comment in [*columns, *views.added_columns()]:
        by_table.setdefault(table, []).append(
            {"name": name, "type": dtype, "description": comment or ""}
        )
    return [
        {"table": t, "description": c or "", "columns": by_table.get(t, [])}
        for t, c in tables
        if t.split(".")[0] in CANDIDATE_SCHEMAS
    ]


def naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    """Simulated time is naive UTC; a browser may send an offset."""
    if value is None or value.tzinfo is None:
        return value
    try:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    except OverflowError:  # within hours of year 1 or 9999: nothing is there either way
        return value.replace(tzinfo=None)


def shown_rows(result: QueryResult) -> Shown:
    """Result rows as evidence lines, dated by their first date or timestamp column."""
    dated = next(
        (i for i, t in enumerate(result.column_types) if t.startswith(("DATE", "TIMESTAMP"))),
        None,
    )
    return [
        (
            str(row[dated]) if dated is not None and row[dated] is not None else None,
            " | ".join("" if v is None else str(v) for v in row),
        )
        for row in result.rows
    ]


def server_timing(result: QueryResult, record_ms: float) -> dict[str, str]:
    """Where a console answer's time went, as a `Server-Timing` header (browsers' developer
    tools show it; the benchmarks read it): waiting for a worker, the round trip to it, and
    within that loading the live rows and running the query, then recording the history event."""
    parts = {
        "wait": result.wait_ms,
        "worker": result.worker_ms,
        "live": result.live_ms,
        "query": result.elapsed_ms,
        "record": round(record_ms, 1),
    }
    return {"Server-Timing": ", ".join(f"{name};dur={ms:.1f}" for name, ms in parts.items())}
