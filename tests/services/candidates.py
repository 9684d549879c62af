"""Simulated candidates for the running stack's durability and load checks (the tests and
`benchmarks.hardening` share them): each has its own session and tags every recorded request
uniquely, so its history can be checked event by event against what the gateway acknowledged."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.http_client import HTTP
from tests.services.test_stack import _tree
from tests.waiting import until

TAG = re.compile(r"tag-[0-9a-z]+-[0-9]+")
OPERATOR_TOKEN = Path("interviewer") / "operator-token"
GATEWAY_MODULE = "sandbox.services.gateway"
BROWSER_CONNECTIONS = 6  # a browser fetches a dashboard's panels over at most 6 connections
RETRY_PAUSE_S = 0.1  # between attempts while the gateway does not answer
SLOW_ROWS = 300_000_000  # counted by `Candidate.slow_query`: about 0.8 s of one core
SLOW_QUERY_LEAD_S = 0.2  # from sending it until the kill: the gateway is working on it by then
RANGE = dt.timedelta(days=7)  # the time range a candidate picks for a dashboard
PANEL_ROUTE = "GET /api/dashboards/{id}/panels/{panel}"  # one panel of a dashboard load
SQL_ROUTE = "POST /api/sql"

# Typical investigation queries; `{tag}` makes each run's history event unique.
QUERIES = (
    "SELECT '{tag}' AS tag, source, status, count(*) AS n, avg(score) AS mean_score "
    "FROM serving.predictions GROUP BY ALL ORDER BY ALL",
    "SELECT '{tag}' AS tag, request_ts::DATE AS day, avg(score) AS mean_score, "
    "avg(decision::INT) AS flagged FROM serving.predictions GROUP BY ALL ORDER BY day",
    "SELECT '{tag}' AS tag, event_timestamp::DATE AS day, "
    "count(*) FILTER (WHERE avg_daily_minutes_7d IS NULL) AS nulls, "
    "avg(avg_daily_minutes_7d) AS mean FROM feature_store.customer_features "
    "GROUP BY ALL ORDER BY day",
    "SELECT '{tag}' AS tag, ts, kind, service, title FROM ops.changelog ORDER BY ts DESC LIMIT 50",
    "SELECT '{tag}' AS tag, service, level, count(*) AS n FROM telemetry.logs "
    "GROUP BY ALL ORDER BY n DESC",
    "SELECT '{tag}' AS tag, p.model_version, avg(l.churned) AS churn_rate, count(*) AS n "
    "FROM serving.predictions p JOIN labels.churn_labels l "
    "ON l.customer_id = p.customer_id AND l.score_date = p.request_ts::DATE "
    "WHERE p.source = 'batch' GROUP BY ALL",
)
# What a candidate does, and how often (the load's mix).
TYPICAL = {"query": 5, "probe": 1, "dashboard": 2, "logs": 1, "diagnosis": 1, "history": 1}


@dataclass(frozen=True)
class Session:
    name: str  # lowercase letters and digits: part of every tag
    id: str
    candidate_token: str
    interviewer_token: str


def create_session(url: str, world: Path, name: str, timeout: float = 30.0) -> Session:
    """A new session, created as the stack's operator (`POST /api/sessions`)."""
    operator = (Path(world) / OPERATOR_TOKEN).read_text().strip()
    reply = HTTP.post(
        url + "/api/sessions",
        json={"candidate": name},
        headers={"Authorization": f"Bearer {operator}"},
        timeout=timeout,
    )
    reply.raise_for_status()
    made = reply.json()
    return Session(name, made["session_id"], made["candidate_token"], made["interviewer_token"])


@dataclass(frozen=True)
class Outcome:
    route: str
    tag: str | None  # the history event the request leaves when acknowledged; None: none
    status: int | None  # None: no answer (connection refused, reset, timed out)
    started: float  # time.monotonic()
    seconds: float
    error: str = ""
    timing: dict[str, float] = field(default_factory=dict)  # the answer's Server-Timing, ms

    @property
    def acknowledged(self) -> bool:
        return self.status == 200

    @property
    def failed(self) -> bool:
        return self.status != 200


class Candidate:
    """One simulated candidate on its own session: SQL, dashboards, log searches, diagnosis
    saves and a look at their own history, each request timed and its outcome kept."""

    def __init__(
        self,
        url: str,
        session: Session,
        index: int = 0,
        seed: int = 0,
        think_s: float = 0.0,
        timeout_s: float = 30.0,
    ) -> None:
        self.url = url
        self.session = session
        self.index = index  # picks this candidate's own stretch of dashboard start times
        self.think_s = think_s
        self.rng = random.Random(f"{seed}-{session.name}")
        self.client = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {session.candidate_token}"},
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=BROWSER_CONNECTIONS),
        )
        self.outcomes: list[Outcome] = []
        self.foreign_seen: set[str] = set()  # other candidates' tags in their own history
        self.rounds = 0  # whole rounds of the mix dealt and done
        self._deck: list[str] = []
        self._n = 0
        self._lock = threading.Lock()
        self._boards: list[dict[str, Any]] = []
        self._history_start: dt.datetime | None = None
        self._panels = ThreadPoolExecutor(BROWSER_CONNECTIONS, f"{session.name}-panels")

    def close(self) -> None:
        self._panels.shutdown(wait=True)
        self.client.close()

    # -- requests -------------------------------------------------------------------------
    def tag(self) -> str:
        with self._lock:
            self._n += 1
            return f"tag-{self.session.name}-{self._n:06d}"

    def _send(
        self, route: str, tag: str | None, method: str, path: str, **kwargs: Any
    ) -> httpx.Response | None:
        started = time.monotonic()
        try:
            reply = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self.outcomes.append(
                Outcome(route, tag, None, started, time.monotonic() - started, type(exc).__name__)
            )
            return None
        seconds = time.monotonic() - started
        error = "" if reply.status_code == 200 else reply.text[:200]
        timing = server_timing(reply.headers.get("server-timing", ""))
        self.outcomes.append(
            Outcome(route, tag, reply.status_code, started, seconds, error, timing)
        )
        return reply

    def probe(self) -> None:
        """The smallest recorded request: a query that only names its tag."""
        tag = self.tag()
        self._send(SQL_ROUTE, tag, "POST", "/api/sql", json={"sql": f"SELECT '{tag}' AS tag"})

    def slow_query(self) -> None:
        """A query the console works on for most of a second: one in flight when the gateway
        dies is sure to lose its connection (a probe is answered in milliseconds, and the
        restarted gateway answers whatever is sent between two of them)."""
        tag = self.tag()
        sql = f"SELECT '{tag}' AS tag, count(*) AS n FROM range({SLOW_ROWS}) t(x) WHERE x % 7 = 3"
        self._send(SQL_ROUTE, tag, "POST", "/api/sql", json={"sql": sql})

    def query(self) -> None:
        tag = self.tag()
        sql = self.rng.choice(QUERIES).format(tag=tag)
        self._send(SQL_ROUTE, tag, "POST", "/api/sql", json={"sql": sql})

    def search_logs(self) -> None:
        tag = self.tag()
        self._send("GET /api/logs", tag, "GET", "/api/logs", params={"q": tag})

    def save_diagnosis(self) -> None:
        """A new diagnosis version (its root cause names the tag, so every save changes it)."""
        tag = self.tag()
        body = {
            "root_cause": f"the feature went null upstream ({tag})",
            "evidence": "null share in the feature store; production AUC by day",
            "fix": "fix the imputation and backfill",
            "ship_first": "roll back to the previous feature job",
            "next_experiment": "shadow-score with the corrected feature",
        }
        self._send("PUT /api/diagnosis", tag, "PUT", "/api/diagnosis", json=body)

    def own_history(self) -> None:
        """The console's history of their own queries: none of another candidate's may be in it."""
        reply = self._send("GET /api/my/history", None, "GET", "/api/my/history")
        if reply is not None and reply.status_code == 200:
            mine = f"tag-{self.session.name}-"
            found = set(TAG.findall(reply.text))
            self.foreign_seen |= {t for t in found if not t.startswith(mine)}

    def dashboard(self) -> None:
        """Open a dashboard over a week: every panel at once, as the page fetches them. The
        range's start, unique to this load, is what tags the panels' history events."""
        if (not self._boards or self._history_start is None) and not self._prepare():
            return
        board = self.rng.choice(self._boards)
        with self._lock:
            self._n += 1
            n = self._n
        assert self._history_start is not None
        start = self._history_start + dt.timedelta(days=self.index, seconds=n)
        params = {"start": start.isoformat(), "end": (start + RANGE).isoformat()}
        for variable in board.get("variables", []):
            choice = self.rng.choice([None, *variable["options"]])
            if choice is not None:
                params[variable["name"]] = choice

        def panel(panel_id: str) -> None:
            tag = f"panel:{board['id']}/{panel_id}@{start.isoformat()}"
            path = f"/api/dashboards/{board['id']}/panels/{panel_id}"
            self._send(PANEL_ROUTE, tag, "GET", path, params=params)

        list(self._panels.map(panel, [p["id"] for p in board["panels"]]))

    def _prepare(self) -> bool:
        boards = self._send("GET /api/dashboards", None, "GET", "/api/dashboards")
        clock = self._send("GET /api/clock", None, "GET", "/api/clock")
        if boards is None or clock is None or boards.status_code != 200 or clock.status_code != 200:
            return False
        self._boards = [b for b in boards.json() if b.get("panels")]
        self._history_start = dt.datetime.fromisoformat(clock.json()["history_start"])
        return bool(self._boards)

    # -- running ----------------------------------------------------------------------------
    def step(self, mix: dict[str, int]) -> None:
        """The next action, dealt from a shuffled round holding each kind as often as its weight:
        a short run on a slow machine still does every kind in proportion (drawing each step at
        random once left a 15 s run with two diagnosis saves among five candidates)."""
        if not self._deck:
            self._deck = [kind for kind, weight in mix.items() for _ in range(weight)]
            self.rng.shuffle(self._deck)
        action = self._deck.pop()
        {
            "probe": self.probe,
            "query": self.query,
            "dashboard": self.dashboard,
            "logs": self.search_logs,
            "diagnosis": self.save_diagnosis,
            "history": self.own_history,
        }[action]()
        if not self._deck:
            self.rounds += 1

    def run(
        self,
        stop: threading.Event,
        mix: dict[str, int] = TYPICAL,
        deadline: float | None = None,
        min_rounds: int = 0,
    ) -> None:
        """Act until `stop` is set, or the monotonic `deadline` has passed and at least
        `min_rounds` whole rounds of the mix are done; after a request that got no answer, pause
        briefly and carry on (the gateway may be restarting)."""
        while not stop.is_set() and (
            deadline is None or time.monotonic() < deadline or self.rounds < min_rounds
        ):
            before = len(self.outcomes)
            self.step(mix)
            if any(o.status is None for o in self.outcomes[before:]):
                stop.wait(RETRY_PAUSE_S)
            elif self.think_s:
                stop.wait(self.rng.uniform(0, 2 * self.think_s))

    # -- what happened ----------------------------------------------------------------------
    @property
    def recorded(self) -> list[Outcome]:
        """Requests that leave a history event when acknowledged."""
        return [o for o in self.outcomes if o.tag is not None]

    def acknowledged(self, after: float = 0.0) -> list[str]:
        return [o.tag for o in self.outcomes if o.tag and o.acknowledged and o.started >= after]

    def unacknowledged(self) -> list[str]:
        return [o.tag for o in self.outcomes if o.tag and not o.acknowledged]


def run_candidates(
    candidates: list[Candidate], seconds: float, mix: dict[str, int] = TYPICAL, min_rounds: int = 0
) -> float:
    """Every candidate in its own thread for `seconds`, and on until each has done `min_rounds`
    whole rounds of the mix; returns the wall seconds it took."""
    stop = threading.Event()
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    threads = [
        threading.Thread(target=c.run, args=(stop, mix, deadline, min_rounds), name=c.session.name)
        for c in candidates
    ]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    finally:
        stop.set()
    return time.monotonic() - started


# --- histories ------------------------------------------------------------------------------


def history(url: str, session: Session, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The session's history as its interviewer sees it (with `seq`)."""
    reply = HTTP.get(
        f"{url}/api/sessions/{session.id}/history",
        headers={"Authorization": f"Bearer {session.interviewer_token}"},
        timeout=timeout,
    )
    reply.raise_for_status()
    return reply.json()


def event_tag(event: dict[str, Any]) -> str:
    """The tag of the request that left this event ('untagged …' for an event no simulated
    candidate's request explains)."""
    detail = event["detail"]
    if event["kind"] == "panel":
        return f"panel:{detail.get('dashboard')}/{detail.get('panel')}@{detail.get('start')}"
    found = set(TAG.findall(json.dumps(detail)))
    if len(found) == 1:
        return found.pop()
    return f"untagged {event['kind']} event: {json.dumps(detail)[:120]}"


@dataclass
class Reconciled:
    """A session's history against its candidate's requests."""

    acknowledged: int
    unacknowledged: int
    events: int
    found: int  # acknowledged requests with an event
    missing: list[str] = field(default_factory=list)  # acknowledged, no event
    duplicated: list[str] = field(default_factory=list)  # more than one event
    unacknowledged_found: int = 0  # failed requests whose event was kept anyway (at most once)
    foreign: list[str] = field(default_factory=list)  # events none of its requests explain
    seq_increasing: bool = True

    @property
    def exact(self) -> bool:
        return not (self.missing or self.duplicated or self.foreign) and self.seq_increasing


def reconcile(candidate: Candidate, events: list[dict[str, Any]]) -> Reconciled:
    acked, unacked = candidate.acknowledged(), candidate.unacknowledged()
    counts = Counter(event_tag(e) for e in events)
    seqs = [e["seq"] for e in events]
    known = set(acked) | set(unacked)
    return Reconciled(
        acknowledged=len(acked),
        unacknowledged=len(unacked),
        events=len(events),
        found=sum(1 for t in acked if counts[t]),
        missing=[t for t in acked if not counts[t]],
        duplicated=sorted(t for t, n in counts.items() if n > 1),
        unacknowledged_found=sum(1 for t in set(unacked) if counts[t]),
        foreign=sorted(t for t in counts if t not in known),
        seq_increasing=all(a < b for a, b in itertools.pairwise(seqs)),
    )


# --- route latencies ------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteStats:
    route: str
    requests: int
    errors: Counter[str]  # "http 500", "ReadTimeout", …
    p50_ms: float
    p95_ms: float
    max_ms: float


def server_timing(header: str) -> dict[str, float]:
    """A `Server-Timing` header's durations by name, in ms (none when it has none)."""
    timing = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, rest = part.partition(";")
        durations = [v for k, _, v in (f.partition("=") for f in rest.split(";")) if k == "dur"]
        if durations:
            timing[name] = float(durations[0])
    return timing


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    at = (len(ordered) - 1) * q / 100
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def route_stats(outcomes: list[Outcome]) -> list[RouteStats]:
    by_route: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_route.setdefault(o.route, []).append(o)
    stats = []
    for route, done in sorted(by_route.items()):
        ms = [o.seconds * 1000 for o in done]
        errors = Counter(
            o.error if o.status is None else f"http {o.status}" for o in done if o.failed
        )
        stats.append(
            RouteStats(
                route,
                len(done),
                errors,
                percentile(ms, 50),
                percentile(ms, 95),
                max(ms),
            )
        )
    return stats


def stats_table(stats: list[RouteStats]) -> list[str]:
    """Markdown rows: route, requests, errors, p50/p95/max ms."""
    lines = [
        "| route | requests | errors | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    for s in stats:
        errors = ", ".join(f"{k} ×{n}" for k, n in s.errors.most_common()) or "0"
        lines.append(
            f"| `{s.route}` | {s.requests} | {errors} | {s.p50_ms:.0f} | {s.p95_ms:.0f} "
            f"| {s.max_ms:.0f} |"
        )
    return lines


# --- kill -9 the gateway --------------------------------------------------------------------


def gateway_pid(supervisor: int) -> int | None:
    """The gateway's pid under the supervisor (None while none runs)."""
    found = [pid for pid, cmd in _tree(supervisor).items() if GATEWAY_MODULE in cmd]
    return found[0] if len(found) == 1 else None


@dataclass
class Durability:
    """A candidate writing history while its gateway is killed with SIGKILL and restarted."""

    victim: int
    successor: int | None
    down_s: float | None  # from the kill until health was green again with a new gateway
    candidate: Candidate
    reconciled: Reconciled | None = None
    state_before: dict[str, Any] = field(default_factory=dict)
    state_after: dict[str, Any] = field(default_factory=dict)
    diagnosis_after: dict[str, Any] = field(default_factory=dict)
    last_diagnosis_tag: str | None = None
    token_after: int | None = None  # the same candidate token's answer after the restart
    failure: str | None = None

    @property
    def failed_requests(self) -> int:
        return sum(1 for o in self.candidate.outcomes if o.failed)


def _wait_for(check: Callable[[], bool], timeout: float, poll: float = 0.2) -> bool:
    """Whether `check` came to hold in time (the caller records it; it does not fail here)."""
    try:
        until(check, "a condition of the restart", timeout=timeout, every=poll)
    except AssertionError:
        return False
    return True


def _healthy(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return HTTP.get(url + "/-/health", timeout=2).status_code == 200
    return False


def session_state(url: str, session: Session) -> dict[str, Any]:
    reply = HTTP.get(
        f"{url}/api/sessions/{session.id}",
        headers={"Authorization": f"Bearer {session.interviewer_token}"},
        timeout=30,
    )
    reply.raise_for_status()
    return reply.json()


def kill_gateway_while_writing(
    url: str,
    supervisor: int,
    session: Session,
    before: int = 20,
    after: int = 10,
    restart_timeout_s: float = 90.0,
    mix: dict[str, int] | None = None,
) -> Durability:
    """A candidate sends probes and diagnosis saves as fast as it can; once `before` are
    acknowledged the gateway gets SIGKILL, while it answers a slow query of the candidate's; the
    candidate keeps trying through the outage until
    `after` more are acknowledged by the restarted gateway. Then the history is reconciled."""
    mix = mix or {"probe": 3, "diagnosis": 1}
    candidate = Candidate(url, session)
    stop = threading.Event()
    thread = threading.Thread(target=candidate.run, args=(stop, mix), name="durability")
    victim = gateway_pid(supervisor)
    if victim is None:
        raise RuntimeError("no gateway process under the supervisor")
    result = Durability(victim, None, None, candidate)
    slow: threading.Thread | None = None
    thread.start()
    try:
        if not _wait_for(lambda: len(candidate.acknowledged()) >= before, 60):
            result.failure = f"fewer than {before} requests acknowledged before the kill"
            return result
        result.state_before = session_state(url, session)
        # The kill lands while a query is being answered, so the candidate sees it.
        slow = threading.Thread(target=candidate.slow_query, name="durability-slow")
        slow.start()
        time.sleep(SLOW_QUERY_LEAD_S)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()

        def back() -> bool:
            successor = gateway_pid(supervisor)
            if successor is None or successor == victim or not _healthy(url):
                return False
            result.successor = successor
            return True

        if not _wait_for(back, restart_timeout_s, poll=0.3):
            result.failure = f"the gateway was not back within {restart_timeout_s:.0f} s"
            return result
        result.down_s = time.monotonic() - killed
        restarted = time.monotonic()
        if not _wait_for(lambda: len(candidate.acknowledged(after=restarted)) >= after, 60):
            result.failure = f"fewer than {after} requests acknowledged after the restart"
    finally:
        stop.set()
        thread.join(timeout=60)
        if slow is not None:
            slow.join(timeout=60)
    if result.failure is None:
        # The session continues: the same token works, its state and timer are unchanged.
        candidate.save_diagnosis()
        candidate.probe()
        result.token_after = candidate.outcomes[-1].status
        result.last_diagnosis_tag = next(
            o.tag for o in reversed(candidate.outcomes) if o.route == "PUT /api/diagnosis"
        )
        result.diagnosis_after = candidate.client.get("/api/diagnosis").json()
        result.state_after = session_state(url, session)
        result.reconciled = reconcile(candidate, history(url, session))
    candidate.close()
    return result
