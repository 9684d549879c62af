"""Benchmark the candidate's workspace (dashboards, SQL console) against the README's performance
budgets.

    python -m benchmarks.workspace [--world DIR] [--scale X] [--reloads N] [--repeats N] [--keep]

Without --world the default scenario is built at --scale (default 1, the budgets' scale) by the
real CLI; a given world is copied first (without its run/), because the stack writes into it.
The stack is started once by the real CLI in a subprocess (`sandbox up DIR --port P`, until
`GET /-/health` answers 200) and a candidate session is created by `sandbox session create DIR
--json`. Dashboards: every dashboard `GET /api/dashboards` lists is opened in headless Debian
Chromium (Playwright with /usr/bin/chromium; no browser is ever downloaded) at 1280×800, signed in
by the session's candidate link. Its time to last panel drawn is the page's own
`window.lastPanelDrawnAt` (ms since navigation start) once `document.body.dataset.dashboardReady`
is "true": cold (the first load, in a fresh browser context) and warm (reloads: median and max),
with the panel count, the panels that show an error and where the time went. SQL console:
typical investigation queries over the whole predictions log, each sent --repeats times through
`POST /api/sql` with the candidate's Bearer token, timed by the client (wall) and by the server
(`elapsed_ms`). The stack ends with SIGINT (Ctrl-C).
The report goes to stdout and to benchmarks/reports/; nothing is asserted, but the exit status
is non-zero if the stack fails to start.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.build import (
    LOG_TAIL_LINES,
    REPORTS,
    _mem_total_gib,
    _table,
    log_tail,
    sandbox_command,
)
from benchmarks.stack import (
    Budget,
    Phase,
    StackRun,
    Usage,
    World,
    free_port,
    load_table,
    prepare_world,
    scan_events,
    scan_logs,
    start_stack,
    stop_stack,
    stop_table,
)
from sandbox.services.dashboards import DASHBOARDS_DIR, definition_files
from sandbox.services.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
READY_TIMEOUT_S = 60.0
RELOADS = 5
REPEATS = 20
SQL_TIMEOUT_S = 60.0
LOOKUP_IDS = 20
PREDICTIONS = "serving.predictions"
# Numeric columns of the predictions log that are the model's outputs or the server's, not inputs.
NOT_FEATURES = {"score", "threshold", "latency_ms"}
SERVER_MS = re.compile(r"([\d.]+)\s*ms")

# The README's performance budgets (2 cores, 24 GiB), which hold at scale 1.
DASHBOARD = Budget("dashboard, time to last panel drawn", 2, 1, "s")
SQL_P95 = Budget("SQL console p95, aggregates over the whole predictions log", 300, 100, "ms")

# The page's own record of one load: read right after `dashboardReady` turns "true".
PAGE_STATE = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const panels = performance.getEntriesByType("resource")
    .filter((e) => new URL(e.name).pathname.includes("/panels/"))
    .map((e) => ({ id: new URL(e.name).pathname.split("/").pop(),
                   start: e.startTime, end: e.responseEnd }));
  const meta = {};
  for (const f of document.querySelectorAll(".panel")) {
    meta[f.dataset.panel] = (f.querySelector(".panel-meta") || {}).textContent || "";
  }
  return {
    last: typeof window.lastPanelDrawnAt === "number" ? window.lastPanelDrawnAt : null,
    html: nav ? nav.responseEnd : null,
    dcl: nav ? nav.domContentLoadedEventEnd : null,
    panels,
    meta,
    errors: [...document.querySelectorAll(".panel .error")].map((e) => [
      (e.closest(".panel") || { dataset: {} }).dataset.panel || "?", e.textContent.trim()]),
    empty: document.querySelectorAll(".panel .empty").length,
    count: document.querySelectorAll(".panel").length,
    drawn: Number(document.body ? document.body.dataset.panelsDrawn || 0 : 0),
  };
}"""
READY = "() => !!document.body && document.body.dataset.dashboardReady === 'true'"


# --- the session ----------------------------------------------------------------------------


@dataclass
class Session:
    candidate_url: str
    candidate_token: str
    session_id: str


def create_session(world: Path, workdir: Path) -> tuple[Session | None, str | None]:
    """A candidate session from the real CLI; (None, why) if it fails."""
    cmd = [*sandbox_command(), "session", "create", str(world), "--json"]
    done = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, timeout=60
    )
    (workdir / "session.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        return None, f"`sandbox session create` exited with {done.returncode}: {done.stderr[-300:]}"
    try:
        links = json.loads(done.stdout)
        return Session(links["candidate_url"], links["candidate_token"], links["session_id"]), None
    except (ValueError, KeyError) as exc:
        return None, f"unreadable `sandbox session create --json` output ({exc})"


# --- dashboards -----------------------------------------------------------------------------


@dataclass
class PanelTiming:
    id: str
    start_ms: float  # request sent, ms since navigation start
    end_ms: float  # answer received
    server_ms: float | None  # the panel's own `elapsed_ms`, as the page shows it


@dataclass
class PageLoad:
    last_ms: float | None  # window.lastPanelDrawnAt
    html_ms: float | None = None
    dcl_ms: float | None = None
    panels: list[PanelTiming] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    empty: int = 0
    count: int = 0
    drawn: int = 0
    failure: str | None = None

    @property
    def first_request_ms(self) -> float | None:
        return min((p.start_ms for p in self.panels), default=None)

    @property
    def slowest(self) -> PanelTiming | None:
        return max(self.panels, key=lambda p: p.end_ms, default=None)


@dataclass
class Board:
    id: str
    title: str
    panels: int
    cold: PageLoad | None = None
    warm: list[PageLoad] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failure: str | None = None

    def warm_ms(self) -> list[float]:
        return [w.last_ms for w in self.warm if w.last_ms is not None]

    def warm_median(self) -> float | None:
        ms = self.warm_ms()
        return float(np.median(ms)) if ms else None

    def warm_max(self) -> float | None:
        ms = self.warm_ms()
        return max(ms) if ms else None

    def typical_warm(self) -> PageLoad | None:
        """The warm load at the median (the lower middle for an even count)."""
        done = sorted((w for w in self.warm if w.last_ms is not None), key=lambda w: w.last_ms)
        return done[(len(done) - 1) // 2] if done else None

    def errors(self) -> dict[tuple[str, str], int]:
        """(panel, message) -> in how many loads it showed."""
        found: dict[tuple[str, str], int] = {}
        for load in [self.cold, *self.warm]:
            for err in set(load.errors) if load else ():
                found[err] = found.get(err, 0) + 1
        return found


@dataclass
class Browser:
    version: str = ""
    failure: str | None = None


def list_dashboards(gateway: str, token: str) -> tuple[list[Board], str | None]:
    try:
        reply = httpx.get(
            gateway + "/api/dashboards", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        reply.raise_for_status()
        boards = reply.json()
    except (httpx.HTTPError, ValueError) as exc:
        body = getattr(getattr(exc, "response", None), "text", "")[:300]
        return [], f"`GET /api/dashboards` failed: {exc} {body}".strip()
    return [Board(b["id"], b.get("title", b["id"]), len(b.get("panels", []))) for b in boards], None


def _page_load(state: dict[str, Any]) -> PageLoad:
    meta: dict[str, str] = state.get("meta", {})
    panels = []
    for p in state.get("panels", []):
        m = SERVER_MS.search(meta.get(p["id"], ""))
        panels.append(PanelTiming(p["id"], p["start"], p["end"], float(m[1]) if m else None))
    return PageLoad(
        last_ms=state.get("last"),
        html_ms=state.get("html"),
        dcl_ms=state.get("dcl") or None,  # 0 until the event has run
        panels=panels,
        errors=[(str(a), str(b)) for a, b in state.get("errors", [])],
        empty=int(state.get("empty", 0)),
        count=int(state.get("count", 0)),
        drawn=int(state.get("drawn", 0)),
    )


def load_once(page: Any, url: str, reload: bool) -> PageLoad:
    """One navigation (or reload) of a dashboard, until the page says its last panel is drawn."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        # "commit": the new document exists, so the old one's ready flag cannot answer for it.
        if reload:
            page.reload(wait_until="commit", timeout=READY_TIMEOUT_S * 1000)
        else:
            page.goto(url, wait_until="commit", timeout=READY_TIMEOUT_S * 1000)
        page.wait_for_function(READY, timeout=READY_TIMEOUT_S * 1000)
    except PlaywrightError as exc:
        failure = str(exc).splitlines()[0][:200]
        try:
            load = _page_load(page.evaluate(PAGE_STATE))
            load.last_ms = None
            failure += f" ({load.drawn} of {load.count} panels drawn)"
        except PlaywrightError:
            load = PageLoad(None)
        load.failure = failure
        return load
    return _page_load(page.evaluate(PAGE_STATE))


def measure_dashboards(
    gateway: str, session: Session, boards: list[Board], reloads: int
) -> Browser:
    """Each dashboard in its own browser context: signed in by the candidate link, then a cold
    load (nothing of the dashboard page cached yet) and `reloads` warm ones."""
    browser_info = Browser()
    if not CHROMIUM.exists():
        browser_info.failure = f"no {CHROMIUM} (`make chromium` installs Debian's)"
        return browser_info
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        browser_info.failure = "the playwright package is not installed (pip install -e '.[dev]')"
        return browser_info
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
        except PlaywrightError as exc:
            browser_info.failure = f"Chromium did not start: {str(exc).splitlines()[0]}"
            return browser_info
        browser_info.version = browser.version
        try:
            for board in boards:
                print(f"  dashboard {board.id}…", file=sys.stderr)
                measure_board(browser, gateway, session, board, reloads)
        finally:
            browser.close()
    return browser_info


def measure_board(browser: Any, gateway: str, session: Session, board: Board, n: int) -> None:
    from playwright.sync_api import Error as PlaywrightError

    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: board.page_errors.append(f"uncaught: {exc}"))
        page.on(
            "console",
            lambda msg: board.page_errors.append(msg.text) if msg.type == "error" else None,
        )
        try:
            page.goto(session.candidate_url, wait_until="load", timeout=READY_TIMEOUT_S * 1000)
        except PlaywrightError as exc:
            board.failure = f"sign-in by the candidate link failed: {str(exc).splitlines()[0]}"
            return
        url = f"{gateway}/dashboards/{board.id}"
        board.cold = load_once(page, url, reload=False)
        for _ in range(n):
            board.warm.append(load_once(page, url, reload=True))
    finally:
        context.close()


# --- SQL console ----------------------------------------------------------------------------


@dataclass
class Query:
    name: str
    sqls: list[str]  # one per repetition (the lookup varies its customer); cycled
    wall_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    first_wall_ms: float | None = None
    first_server_ms: float | None = None
    rows: int | None = None
    truncated: bool = False
    errors: dict[str, int] = field(default_factory=dict)

    def pct(self, values: list[float], q: float) -> float:
        return _pct(values, q)


@dataclass
class SqlSetup:
    features: list[str]
    predictions: int | None
    lookup_ids: list[int]
    failure: str | None = None


def sql_post(client: httpx.Client, url: str, sql: str) -> tuple[float, dict[str, Any] | str]:
    """(wall ms, the reply's JSON or what went wrong)."""
    started = time.perf_counter()
    try:
        reply = client.post(url, json={"sql": sql})
        body = reply.json()
    except (httpx.HTTPError, ValueError) as exc:
        return (time.perf_counter() - started) * 1000, type(exc).__name__
    wall = (time.perf_counter() - started) * 1000
    if reply.status_code != 200:
        return wall, f"{reply.status_code}: {str(body.get('error', body))[:160]}"
    return wall, body


def sql_setup(client: httpx.Client, gateway: str) -> SqlSetup:
    """The predictions log's real columns (from `/api/schema`), its size, and customers to look
    up (the ones with the most online predictions); none of this is timed."""
    setup = SqlSetup([], None, [])
    try:
        schema = client.get(gateway + "/api/schema").json()
        columns = next(t["columns"] for t in schema if t["table"] == PREDICTIONS)
    except (httpx.HTTPError, ValueError, StopIteration, KeyError, TypeError) as exc:
        setup.failure = f"no columns for {PREDICTIONS} from /api/schema ({exc!r})"
        return setup
    numeric = ("DOUBLE", "FLOAT", "REAL", "DECIMAL", "INTEGER", "BIGINT")
    setup.features = [
        c["name"]
        for c in columns
        if str(c["type"]).upper().startswith(numeric)
        and c["name"] not in NOT_FEATURES
        and not c["name"].endswith("_id")
    ]
    _, body = sql_post(client, gateway + "/api/sql", f"SELECT count(*) FROM {PREDICTIONS}")
    if isinstance(body, dict):
        setup.predictions = int(body["rows"][0][0])
    _, body = sql_post(
        client,
        gateway + "/api/sql",
        f"SELECT customer_id FROM {PREDICTIONS} WHERE source = 'online' GROUP BY customer_id "
        f"ORDER BY count(*) DESC, customer_id LIMIT {LOOKUP_IDS}",
    )
    if isinstance(body, dict):
        setup.lookup_ids = [int(r[0]) for r in body["rows"]]
    return setup


def investigation_queries(setup: SqlSetup) -> list[Query]:
    """What a candidate asks of the predictions log while investigating."""
    day = "date_trunc('day', request_ts) AS day"
    nulls = ",\n  ".join(f"avg(({c} IS NULL)::INT) AS {c}" for c in setup.features)
    means = ",\n  ".join(f"avg({c}) AS {c}" for c in setup.features)
    queries = [
        Query(
            "daily null rate of each feature",
            [
                f"SELECT {day}, count(*) AS n,\n  {nulls}\nFROM {PREDICTIONS}\n"
                "GROUP BY ALL ORDER BY day"
            ],
        ),
        Query(
            "daily mean of each feature, online vs batch",
            [
                f"SELECT {day}, source, count(*) AS n,\n  {means}\nFROM {PREDICTIONS}\n"
                "GROUP BY ALL ORDER BY day, source"
            ],
        ),
        Query(
            "daily score quantiles by model version",
            [
                f"SELECT {day}, model_version, count(*) AS n, avg(score) AS mean,\n"
                "  quantile_cont(score, [0.1, 0.25, 0.5, 0.75, 0.9, 0.99]) AS quantiles\n"
                f"FROM {PREDICTIONS}\nWHERE status = 'ok'\nGROUP BY ALL ORDER BY day, model_version"
            ],
        ),
        Query(
            "positive rate by day and segment (join raw.customers)",
            [
                "SELECT date_trunc('day', p.request_ts) AS day, c.plan, c.region, count(*) AS n,\n"
                "  avg(p.decision::INT) AS positive_rate, avg(p.score) AS mean_score\n"
                f"FROM {PREDICTIONS} p JOIN raw.customers c USING (customer_id)\n"
                "WHERE p.status = 'ok'\nGROUP BY ALL ORDER BY ALL"
            ],
        ),
        Query(
            "count by source and status",
            [
                "SELECT source, status, model_version, count(*) AS n,\n"
                "  min(request_ts) AS first, max(request_ts) AS last\n"
                f"FROM {PREDICTIONS}\nGROUP BY ALL ORDER BY n DESC"
            ],
        ),
        Query(
            "hourly volume and error rate, online",
            [
                "SELECT date_trunc('hour', request_ts) AS hour, count(*) AS n,\n"
                "  avg((status <> 'ok')::INT) AS error_rate\n"
                f"FROM {PREDICTIONS}\nWHERE source = 'online'\nGROUP BY ALL ORDER BY hour"
            ],
        ),
        Query(
            "daily latency quantiles, online",
            [
                f"SELECT {day}, count(*) AS n,\n"
                "  quantile_cont(latency_ms, [0.5, 0.95, 0.99]) AS latency_ms,\n"
                "  max(latency_ms) AS max_ms\n"
                f"FROM {PREDICTIONS}\nWHERE source = 'online'\nGROUP BY ALL ORDER BY day"
            ],
        ),
    ]
    if not setup.features:
        queries = queries[2:]
    if setup.lookup_ids:
        queries.append(
            Query(
                "one customer's predictions (lookup)",
                [
                    f"SELECT *\nFROM {PREDICTIONS}\nWHERE customer_id = {cid}\n"
                    "ORDER BY request_ts DESC"
                    for cid in setup.lookup_ids
                ],
            )
        )
    return queries


def measure_sql(gateway: str, token: str, repeats: int) -> tuple[SqlSetup, list[Query]]:
    """Each query once (its first run, reported apart from the percentiles), then `repeats`
    rounds of all queries in turn, so that noise from the machine spreads over all of them."""
    url = gateway + "/api/sql"
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(headers=headers, timeout=SQL_TIMEOUT_S) as client:
        setup = sql_setup(client, gateway)
        queries = investigation_queries(setup)
        for q in queries:
            wall, body = sql_post(client, url, q.sqls[0])
            q.first_wall_ms = wall
            if isinstance(body, dict):
                q.first_server_ms = float(body["elapsed_ms"])
                q.rows, q.truncated = len(body["rows"]), bool(body["truncated"])
            else:
                q.errors[body] = q.errors.get(body, 0) + 1
        for i in range(repeats):
            for q in queries:
                wall, body = sql_post(client, url, q.sqls[(i + 1) % len(q.sqls)])
                if isinstance(body, dict):
                    q.wall_ms.append(wall)
                    q.server_ms.append(float(body["elapsed_ms"]))
                else:
                    q.errors[body] = q.errors.get(body, 0) + 1
    return setup, queries


# --- the report -----------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "—" if x is None or x != x else f"{x:.0f}"


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _verdict(measured: float | None, limit: float) -> str:
    if measured is None or measured != measured:
        return "n/a"
    return "within" if measured <= limit else "over"


def budget_table(boards: list[Board], queries: list[Query], scale: float) -> list[str]:
    rows = []

    def row(budget: Budget, label: str, measured: float | None, shown: str) -> None:
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

    def worst(values: list[tuple[float | None, str]]) -> tuple[float | None, str]:
        known = [(v, who) for v, who in values if v is not None]
        return max(known, default=(None, ""))

    measured = [b for b in boards if b.cold is not None]
    for label, values in (
        ("cold, slowest dashboard", [(b.cold.last_ms if b.cold else None, b.id) for b in boards]),
        ("warm median, slowest dashboard", [(b.warm_median(), b.id) for b in boards]),
        ("warm max, slowest dashboard", [(b.warm_max(), b.id) for b in boards]),
    ):
        ms, who = worst(values)
        s = None if ms is None else ms / 1000
        row(DASHBOARD, label, s, "—" if s is None else f"{s:.2f} s ({who})")
    not_ready = [b.id for b in measured if any(x.last_ms is None for x in [b.cold, *b.warm] if x)]
    if not_ready:
        rows.append(
            [f"{DASHBOARD.what} (never ready)", "", "", ", ".join(not_ready), "over", "over"]
        )
    wall = [ms for q in queries for ms in q.wall_ms]
    server = [ms for q in queries for ms in q.server_ms]
    for label, values in (("wall, all queries", wall), ("server elapsed_ms", server)):
        p95 = float(np.percentile(values, 95)) if values else None
        row(SQL_P95, label, p95, "—" if p95 is None else f"{p95:.0f} ms")
    if queries:
        q_worst = max(queries, key=lambda q: q.pct(q.wall_ms, 95) if q.wall_ms else -1)
        p95 = q_worst.pct(q_worst.wall_ms, 95)
        row(SQL_P95, "wall, slowest query", p95, f"{_ms(p95)} ms ({q_worst.name})")
    header = ["what", "budget", "later goal", "measured", "budget", "goal"]
    lines = _table(header, rows)
    if scale != 1.0:
        lines += ["", f"(The budgets are for scale 1; this world is at scale {scale:g}.)"]
    return lines


def dashboard_table(boards: list[Board]) -> list[str]:
    rows = []
    for b in boards:
        cold = b.cold.last_ms if b.cold else None
        loads = [x for x in [b.cold, *b.warm] if x]
        worst = max([x for x in [cold, b.warm_max()] if x is not None], default=None)
        not_ready = next((x.failure for x in loads if x.failure), None)
        verdict = _verdict(worst, DASHBOARD.budget * 1000)
        if b.failure:
            verdict = f"n/a — {b.failure}"
        elif not_ready:
            verdict = f"over (not ready) — {not_ready}"
        rows.append(
            [
                f"`{b.id}`",
                str(b.panels),
                _ms(cold),
                _ms(b.warm_median()),
                _ms(b.warm_max()),
                f"{len(b.warm_ms())}/{len(b.warm)}",
                str(len({p for (p, _) in b.errors()})),
                str(max((x.empty for x in loads), default=0)),
                verdict,
            ]
        )
    header = ["dashboard", "panels", "cold ms", "warm median ms", "warm max ms", "warm loads"]
    header += ["panels with an error", "empty panels", "budget (worst load)"]
    return _table(header, rows)


def breakdown_table(boards: list[Board]) -> list[str]:
    rows = []
    for b in boards:
        for label, load in (("cold", b.cold), ("warm (median)", b.typical_warm())):
            if load is None:
                continue
            slow = load.slowest
            slowest = "—"
            if slow is not None:
                slowest = (
                    f"`{slow.id}`: sent {slow.start_ms:.0f}, answered {slow.end_ms:.0f} "
                    f"(server {_ms(slow.server_ms)})"
                )
            server = [p.server_ms for p in load.panels if p.server_ms is not None]
            rows.append(
                [
                    f"`{b.id}`",
                    label,
                    _ms(load.html_ms),
                    _ms(load.dcl_ms),
                    _ms(load.first_request_ms),
                    slowest,
                    _ms(sum(server)) if server else "—",
                    _ms(load.last_ms),
                ]
            )
    header = ["dashboard", "load", "HTML received", "DOMContentLoaded", "first panel request"]
    header += ["last panel answer (ms)", "server ms, all panels", "last panel drawn"]
    return _table(header, rows)


def error_lines(boards: list[Board]) -> list[str]:
    rows = [
        [f"`{b.id}`", f"`{panel}`", f"{n}/{1 + len(b.warm)}", message[:240].replace("|", "\\|")]
        for b in boards
        for (panel, message), n in sorted(b.errors().items())
    ]
    lines = (
        _table(["dashboard", "panel", "loads", "error shown"], rows)
        if rows
        else ["No panel showed an error."]
    )
    console: list[list[str]] = []
    for b in boards:
        counts: dict[str, int] = {}
        for msg in b.page_errors:
            counts[msg] = counts.get(msg, 0) + 1
        console += [
            [f"`{b.id}`", str(n), msg[:240].replace("|", "\\|")] for msg, n in counts.items()
        ]
    lines += ["", "Browser console errors and uncaught exceptions:", ""]
    lines += _table(["dashboard", "count", "message"], console) if console else ["None."]
    return lines


def sql_table(queries: list[Query]) -> list[str]:
    rows = []
    for q in queries:
        errors = ", ".join(f"{k} ×{v}" for k, v in q.errors.items())
        rows.append(
            [
                q.name,
                "—" if q.rows is None else f"{q.rows}" + (" (truncated)" if q.truncated else ""),
                f"{_ms(q.first_wall_ms)} / {_ms(q.first_server_ms)}",
                _ms(q.pct(q.wall_ms, 50)),
                _ms(q.pct(q.wall_ms, 95)),
                _ms(q.pct(q.wall_ms, 100)),
                _ms(q.pct(q.server_ms, 50)),
                _ms(q.pct(q.server_ms, 95)),
                _ms(q.pct(q.server_ms, 100)),
                f"{len(q.wall_ms)}" + (f" (errors: {errors})" if errors else ""),
                _verdict(q.pct(q.wall_ms, 95), SQL_P95.budget),
            ]
        )
    wall = [ms for q in queries for ms in q.wall_ms]
    server = [ms for q in queries for ms in q.server_ms]
    if wall:
        rows.append(
            [
                "**all queries**",
                "",
                "",
                _ms(_pct(wall, 50)),
                _ms(_pct(wall, 95)),
                _ms(max(wall)),
                _ms(_pct(server, 50)),
                _ms(_pct(server, 95)),
                _ms(max(server)),
                str(len(wall)),
                _verdict(_pct(wall, 95), SQL_P95.budget),
            ]
        )
    header = ["query", "rows", "first run ms (wall / server)", "wall p50", "wall p95", "wall max"]
    header += ["server p50", "server p95", "server max", "timed runs", "budget (wall p95)"]
    return _table(header, rows)


def sql_text(queries: list[Query]) -> list[str]:
    lines: list[str] = []
    for q in queries:
        more = f" (one of {len(q.sqls)} customers, in turn)" if len(q.sqls) > 1 else ""
        lines += [f"- {q.name}{more}:", "", "```sql", *q.sqls[0].splitlines(), "```", ""]
    return lines


def render(
    world: World,
    run: StackRun | None,
    browser: Browser,
    boards: list[Board],
    setup: SqlSetup | None,
    queries: list[Query],
    phases: list[Phase],
    problems: list[str],
    started: datetime,
    workdir: Path,
    args: argparse.Namespace,
) -> str:
    m = world.manifest or {}
    scale = float(m.get("scale", 0) or 0)
    customers = f"{m['customers']:,} customers" if "customers" in m else "customers unknown"
    predictions = "—"
    if setup is not None and setup.predictions is not None:
        predictions = f"{setup.predictions:,}"
    # What the gateway serves: the `dashboards` setting (SANDBOX_DASHBOARDS), or the packaged ones.
    dashboards_dir = Settings.from_env().dashboards or DASHBOARDS_DIR
    definitions = [p.name for p in definition_files(dashboards_dir)]
    lines = [
        f"# Workspace benchmark (dashboards, SQL console), {started:%Y-%m-%d %H:%M:%S} UTC",
        "",
        f"Machine: {os.cpu_count()} cores, {_mem_total_gib():.1f} GiB RAM. World: {world.source}, "
        f"scale {scale:g}, {customers}; `{PREDICTIONS}` held {predictions} rows at the start of "
        f"the SQL runs. Browser: Chromium {browser.version or '—'} (`{CHROMIUM}`, headless, "
        f"{VIEWPORT['width']}×{VIEWPORT['height']}). Logs: `{workdir}`.",
        "",
        f"Dashboard definitions the gateway read at its start (`{dashboards_dir}`): "
        + (", ".join(f"`{d}`" for d in definitions) or "none"),
        "",
        "## Budgets (README, Performance)",
        "",
        *budget_table(boards, queries, scale),
        "",
        "## Dashboards: time to last panel drawn "
        f"(1 cold load, {args.reloads} warm reload{'s' if args.reloads > 1 else ''})",
        "",
    ]
    if browser.failure:
        lines += [f"Not measured: {browser.failure}", ""]
    lines += [*dashboard_table(boards), ""] if boards else []
    if boards:
        lines += [
            "Where the time went (ms since navigation start, from the page's Navigation and "
            "Resource Timing; server ms is each panel's `elapsed_ms` as the page shows it):",
            "",
            *breakdown_table(boards),
            "",
            "### Panel errors",
            "",
            *error_lines(boards),
            "",
        ]
    lines += [
        f"## SQL console (`POST /api/sql`, {args.repeats} timed runs per query)",
        "",
    ]
    if setup is not None and setup.failure:
        lines += [f"Setup: {setup.failure}", ""]
    if queries:
        lines += ["Milliseconds.", "", *sql_table(queries), "", "The queries:", ""]
        lines += sql_text(queries)
    else:
        lines += ["(not measured)", ""]
    if run is not None:
        lines += ["## Stop (SIGINT, as Ctrl-C)", "", *stop_table([run]), ""]
    if phases:
        lines += ["## Load on the machine", "", *load_table(phases), ""]
    lines += [
        "## Notes",
        "",
        "- Time to last panel drawn is `window.lastPanelDrawnAt`, which the dashboard page sets "
        "(`performance.now()`, ms since navigation start) when every panel's query has answered "
        "and been drawn (or shown its error), together with `body.dataset.dashboardReady`.",
        "- Each dashboard runs in its own fresh browser context (empty HTTP cache): the candidate "
        "link is opened first (it sets the session cookie and lands on /brief, which caches the "
        "shared app.js/app.css), then the dashboard is loaded once (cold: plotly.js and "
        "dashboard.js not cached yet) and reloaded (warm). The server side is only cold for the "
        "first dashboard: the gateway's DuckDB was fresh from the start for it.",
        "- The page fetches all panels at once; Chromium keeps at most 6 HTTP/1.1 connections to "
        "one host, so panels beyond 6 wait for a free connection. The gateway runs each panel's "
        "query in its thread pool on the stack's shared DuckDB instance.",
        "- SQL: every query is sent once first (reported as its first run, not in the "
        f"percentiles), then {args.repeats} rounds of all queries in turn, one request at a time "
        "over a keep-alive connection (httpx). Wall time is the client's, from sending until the "
        "JSON reply is parsed: it includes the gateway's parsing and table check, the recording of "
        "the query in the session's history, and serializing up to 5,000 rows. Server time is the "
        "reply's `elapsed_ms` (executing and fetching in DuckDB only). Percentiles interpolate "
        "linearly; the all-queries row pools every timed run.",
        "- The stack's own traffic generator keeps scoring while this runs, so the predictions log "
        "grows a little during the benchmark; the dashboards and the queries use the whole "
        "history range.",
        "- The machine is shared (2 cores): other cores busy (in the load table) well above 0 "
        "means other work inflated the timings.",
        "",
        "## Process logs (`DIR/run/process-logs/`)",
    ]
    lines += problems
    if world.build_exit:
        lines += ["", f"### The build failed (exit {world.build_exit})", ""]
        if world.build_log:
            lines += ["```", log_tail(world.build_log), "```"]
    if run is not None and run.failure:
        lines += ["", f"### The stack did not start: {run.failure}", f"log: `{run.log}`", ""]
        lines += ["```", log_tail(run.log, LOG_TAIL_LINES), "```"]
    return "\n".join(lines) + "\n"


def write_report(text: str, started: datetime) -> Path:
    REPORTS.mkdir(parents=True, exist_ok=True)
    path = REPORTS / f"workspace-{started:%Y%m%dT%H%M%SZ}.md"
    path.write_text(text)
    return path


# --- command line ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workspace", description=__doc__)
    parser.add_argument("--world", type=Path, help="a built world to copy (default: build one)")
    parser.add_argument("--scale", type=float, default=1.0, help="scale of the world to build")
    parser.add_argument("--reloads", type=int, default=RELOADS, help="warm loads per dashboard")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed runs per SQL query")
    parser.add_argument("--keep", action="store_true", help="keep the world copy and logs")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.reloads < 1 or args.repeats < 1:
        parser.error("--reloads and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The stack runs in its own session: on SIGTERM, unwind so the `finally` below stops it.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-workspace-bench-")).resolve()
    started = datetime.now(UTC)
    world = prepare_world(args, workdir)
    run: StackRun | None = None
    browser = Browser()
    boards: list[Board] = []
    setup: SqlSetup | None = None
    queries: list[Query] = []
    phases: list[Phase] = []
    if world.manifest is not None:
        run = StackRun("workspace", workdir / "up.log", free_port())
        try:  # an interrupted benchmark must not leave the stack behind
            print("starting the stack…", file=sys.stderr)
            start_stack(world.path, run)
            health = "—" if run.health_s is None else f"{run.health_s:.1f}"
            print(f"  health: {health} s {run.failure or ''}", file=sys.stderr)
            if run.failure is None:
                browser, boards, setup, queries, phases = drive(world.path, run, workdir, args)
        finally:
            print("  stopping (SIGINT)…", file=sys.stderr)
            stop_stack(run, world.path)
    problems = ["", "(the stack did not run)"]
    if (world.path / "run").exists():
        problems = [
            *scan_logs({"workspace": world.path / "run"}),
            "",
            "## Warnings and errors in the candidate's logs (`DIR/run/spool/*.telemetry.logs.jsonl`)",
            *scan_events({"workspace": world.path / "run"}),
        ]
    report = render(
        world, run, browser, boards, setup, queries, phases, problems, started, workdir, args
    )
    print(report)
    print(f"report written to {write_report(report, started)}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(world.path, ignore_errors=True)
    return 0 if run is not None and run.failure is None else 1


def drive(
    world: Path, run: StackRun, workdir: Path, args: argparse.Namespace
) -> tuple[Browser, list[Board], SqlSetup | None, list[Query], list[Phase]]:
    browser = Browser()
    phases: list[Phase] = []
    session, why = create_session(world, workdir)
    if session is None:
        browser.failure = why
        return browser, [], SqlSetup([], None, [], why), [], phases
    print(f"  session {session.session_id}", file=sys.stderr)
    boards, why = list_dashboards(run.url, session.candidate_token)
    if why:
        browser.failure = why
    if boards:
        print(f"  {len(boards)} dashboards in Chromium…", file=sys.stderr)
        before = Usage.now(run.tree)
        browser = measure_dashboards(run.url, session, boards, args.reloads)
        phases.append(Phase("dashboards", before, Usage.now(run.tree)))
    print(f"  SQL console, {args.repeats} runs per query…", file=sys.stderr)
    before = Usage.now(run.tree)
    setup, queries = measure_sql(run.url, session.candidate_token, args.repeats)
    phases.append(Phase("SQL console", before, Usage.now(run.tree)))
    return browser, boards, setup, queries, phases


if __name__ == "__main__":
    sys.exit(main())
