"""The live traffic generator against a real world and clock, and stub services that record calls."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from sandbox.services.common import ServiceContext
from sandbox.services.simclock import SimClock
from sandbox.services.spool import read_new, spool_path
from sandbox.services.traffic import (
    SERVICE,
    Event,
    TrafficGenerator,
    agent_click,
    live_schedule,
)
from sandbox.world.build import BuildSummary
from tests.http_client import HTTP
from tests.waiting import until

pytestmark = pytest.mark.world

Behaviour = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]


class Stub:
    """A tiny HTTP service that records every POST (into a log shared between stubs, so the order
    across services shows) and answers with `behaviour(path, body) -> (status, json)`."""

    def __init__(self, name: str, calls: list[tuple[str, str, Any, float]], behaviour: Behaviour):
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the real services

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    calls.append((name, self.path, body, time.monotonic()))
                status, answer = behaviour(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def world(faulty_world: BuildSummary, tmp_path: Path) -> Iterator[Path]:
    """The built world with a private run directory: its data read in place through symlinks, its
    clock and spool here, so tests never write into (or race over) the shared build."""
    root = tmp_path / "world"
    root.mkdir()
    for name in ("candidate", "interviewer", "manifest.json"):
        (root / name).symlink_to(faulty_world.root / name)
    yield root


@pytest.fixture
def set_clock(world: Path) -> Iterator[Callable[..., ServiceContext]]:
    """Writes the clock file; returns a fresh context reading it."""
    run = world / "run"

    def make(speed: float, at: dt.datetime | None = None) -> ServiceContext:
        ctx = ServiceContext(world, SERVICE)
        SimClock.starting(ctx.calendar, speed=speed, resume_at=at).save(ctx.paths.run)
        return ctx

    yield make
    if run.exists():
        for path in sorted(run.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        run.rmdir()


def db_events(world: Path, since: dt.datetime, end: dt.datetime) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(world / "candidate" / "world.duckdb"), read_only=True)
    try:
        rows = con.execute(
            """
            SELECT request_ts, 'predict', customer_id, '' FROM serving.predictions
            WHERE source = 'online' AND request_ts >= $since AND request_ts < $end
            UNION ALL
            SELECT created_at, 'ticket', ticket_id, body FROM raw.support_tickets
            WHERE created_at >= $since AND created_at < $end
            ORDER BY 1, 2, 3
            """,
            {"since": since, "end": end},
        ).fetchall()
    finally:
        con.close()
    return rows


def live_window(ctx: ServiceContext) -> tuple[dt.datetime, dt.datetime]:
    cal = ctx.calendar
    return cal.midnight(cal.last_production_day + 1), cal.midnight(cal.last_visible_day + 1)


def busy_hour(events: list[Event], min_tickets: int = 3) -> dt.datetime:
    """Start of the live hour with the most events among those with a few tickets."""
    per_hour = collections.Counter(e.ts.replace(minute=0, second=0, microsecond=0) for e in events)
    tickets = collections.Counter(
        e.ts.replace(minute=0, second=0, microsecond=0) for e in events if e.kind == "ticket"
    )
    return max((h for h in per_hour if tickets[h] >= min_tickets), key=lambda h: per_hour[h])


def spool_logs(ctx: ServiceContext) -> list[dict[str, Any]]:
    records, _ = read_new(spool_path(ctx.paths.run, SERVICE, "telemetry.logs"), 0)
    return records


def sample(gen: TrafficGenerator, name: str, **labels: str) -> float:
    return gen.registry.get_sample_value(name, labels) or 0.0


def run_in_thread(gen: TrafficGenerator) -> threading.Thread:
    thread = threading.Thread(target=gen.run, daemon=True)
    thread.start()
    return thread


def test_schedule_is_the_live_days_online_requests_and_tickets(set_clock, world):
    ctx = set_clock(speed=48.0)
    start, end = live_window(ctx)
    events = live_schedule(ctx, since=start)

    expected = db_events(world, start, end)
    assert [(e.ts, e.kind, e.id, e.text) for e in events] == expected
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    kinds = collections.Counter(e.kind for e in events)
    assert kinds["predict"] > 1000 and kinds["ticket"] > 100
    # Relevance as the simulation judged it: every article its agents clicked is in the set.
    tickets = {e.id: e for e in events if e.kind == "ticket"}
    assert all(e.relevant for e in tickets.values())
    con = duckdb.connect(str(ctx.paths.duckdb), read_only=True)
    clicked = con.execute(
        "SELECT ticket_id, clicked_article_id FROM retrieval.search_log "
        "WHERE clicked_article_id IS NOT NULL AND request_ts >= ?",
        [start],
    ).fetchall()
    con.close()
    assert len(clicked) > 50
    assert all(article in tickets[t].relevant for t, article in clicked if t in tickets)


def test_schedule_skips_events_before_the_clock(set_clock, world):
    first = set_clock(speed=48.0)
    start, end = live_window(first)
    resume = start + dt.timedelta(days=1, hours=13, minutes=7)
    ctx = set_clock(speed=0.001, at=resume)  # stands still while the test looks
    events = live_schedule(ctx)
    assert events[0].ts >= resume
    assert [(e.ts, e.kind, e.id) for e in events] == [
        row[:3] for row in db_events(world, resume, end)
    ]
    assert len(events) < len(live_schedule(first, since=start))


def test_replay_sends_requests_searches_and_clicks_in_order(set_clock):
    probe = set_clock(speed=48.0)
    hour = busy_hour(live_schedule(probe))
    # A simulated hour per wall second, starting half a simulated minute before the busy hour.
    ctx = set_clock(speed=3600.0, at=hour - dt.timedelta(seconds=30))
    events = [e for e in live_schedule(ctx) if e.ts < hour + dt.timedelta(hours=1)]
    tickets = {e.id: e for e in events if e.kind == "ticket"}
    assert len(tickets) >= 3

    def results_for(ticket: Event) -> list[int]:
        # Every other ticket gets its relevant articles (behind a miss); the rest get none.
        misses = [a for a in range(1001, 1300) if a not in ticket.relevant][:3]
        found = [misses[0], *sorted(ticket.relevant)] if ticket.id % 2 == 0 else misses
        return found[:5]

    def retrieval(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path == "/search":
            ids = results_for(tickets[body["ticket_id"]])
            return 200, {
                "request_id": 500_000 + body["ticket_id"],
                "results": [{"article_id": a, "score": 0.5} for a in ids],
            }
        return 200, {"ok": True}

    calls: list[tuple[str, str, Any, float]] = []
    model = Stub("model", calls, lambda path, body: (200, {"score": 0.1}))
    search = Stub("retrieval", calls, retrieval)
    # The hour passes in a wall second, faster than the rate cap sends it: on a busy machine the
    # replay falls seconds behind, and this test is about order, not about dropping late events.
    gen = TrafficGenerator(ctx, events, model.url, search.url, wall_grace=60.0)
    try:
        thread = run_in_thread(gen)
        thread.join(timeout=30)
        assert not thread.is_alive()
    finally:
        gen.stop()
        gen.close()
        model.close()
        search.close()

    expected: list[tuple[str, str, Any]] = []
    clicks = 0
    for e in events:
        if e.kind == "predict":
            expected.append(("model", "/predict", {"customer_id": e.id}))
            continue
        expected.append(("retrieval", "/search", {"text": e.text, "k": 5, "ticket_id": e.id}))
        click = agent_click(ctx.scenario.world.seed, e.id, results_for(e), e.relevant)
        if click:
            clicks += 1
            assert click[1] in e.relevant
            feedback = {"request_id": 500_000 + e.id, "article_id": click[1]}
            expected.append(("retrieval", "/feedback", feedback))
    assert [c[:3] for c in calls] == expected
    assert clicks >= 1
    assert sample(gen, "traffic_requests_total", target="predict", outcome="ok") == sum(
        e.kind == "predict" for e in events
    )
    assert sample(gen, "traffic_requests_total", target="feedback", outcome="ok") == clicks
    assert sample(gen, "traffic_events_dropped_total", kind="predict") == 0
    # Paced by the clock: the hour took about a wall second, not a burst.
    assert calls[-1][3] - calls[0][3] > 0.5


def test_failing_and_unreachable_services_are_counted_logged_and_survived(set_clock):
    probe = set_clock(speed=48.0)
    hour = busy_hour(live_schedule(probe), min_tickets=1)
    ctx = set_clock(speed=3600.0, at=hour)
    schedule = live_schedule(ctx)
    predicts = [e for e in schedule if e.kind == "predict"][:3]
    ticket = next(e for e in schedule if e.kind == "ticket")
    events = sorted([*predicts, ticket], key=lambda e: e.ts)

    calls: list[tuple[str, str, Any, float]] = []
    model = Stub("model", calls, lambda path, body: (503, {"detail": "restarting"}))
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    gen = TrafficGenerator(ctx, events, model.url, down, backoff=(0.01, 0.02))
    try:
        thread = run_in_thread(gen)
        thread.join(timeout=30)
        assert not thread.is_alive()
    finally:
        gen.close()
        model.close()

    assert gen.position == len(events)
    assert len(calls) == 3 * 3  # every request tried three times
    assert sample(gen, "traffic_requests_total", target="predict", outcome="error") == 9
    assert sample(gen, "traffic_requests_total", target="search", outcome="unreachable") == 3
    assert sample(gen, "traffic_events_failed_total", kind="predict") == 3
    assert sample(gen, "traffic_events_failed_total", kind="ticket") == 1
    warnings = [r for r in spool_logs(ctx) if r["level"] == "warning"]
    # One line per failing target, not one per attempt.
    assert len(warnings) == 2
    assert all(r["service"] == SERVICE and r["event"] == "upstream_unavailable" for r in warnings)
    assert any("/predict" in r["message"] and "503" in r["message"] for r in warnings)
    assert any("/search" in r["message"] for r in warnings)


def test_far_behind_drops_old_events_and_caps_the_rate(set_clock):
    probe = set_clock(speed=48.0)
    now = busy_hour(live_schedule(probe)) + dt.timedelta(hours=1)
    ctx = set_clock(speed=1.0, at=now)  # barely moving: the backlog decides what happens
    events = live_schedule(ctx, since=now - dt.timedelta(hours=3))
    events = [e for e in events if e.ts <= now]
    max_behind = dt.timedelta(hours=1)
    old = sum(e.ts < now - max_behind for e in events)
    recent = [e for e in events if e.ts >= now - max_behind]
    assert old > 10 and len(recent) > 10

    calls: list[tuple[str, str, Any, float]] = []
    ok = Stub("svc", calls, lambda path, body: (200, {"request_id": 1, "results": []}))
    gen = TrafficGenerator(
        ctx, events, ok.url, ok.url, max_rate=20.0, max_behind=max_behind, wall_grace=0.0
    )
    try:
        thread = run_in_thread(gen)
        thread.join(timeout=30)
        assert not thread.is_alive()
    finally:
        gen.close()
        ok.close()

    dropped = sum(
        sample(gen, "traffic_events_dropped_total", kind=k) for k in ("predict", "ticket")
    )
    # The clock moves a few seconds during the test; allow for events right at the boundary.
    edge = sum(abs((e.ts - (now - max_behind)).total_seconds()) < 30 for e in events)
    assert abs(dropped - old) <= edge
    assert abs(len(calls) - len(recent)) <= edge
    spread = calls[-1][3] - calls[0][3]
    assert spread >= (len(calls) - 1) / 20.0 * 0.9
    assert any(r["event"] == "events_dropped" for r in spool_logs(ctx))


def test_stop_returns_promptly_while_waiting(set_clock):
    ctx = set_clock(speed=1.0)  # the next event is minutes of wall time away
    gen = TrafficGenerator(ctx, live_schedule(ctx), "http://127.0.0.1:9", "http://127.0.0.1:9")
    thread = run_in_thread(gen)
    time.sleep(0.3)  # not a wait for something: it must still be waiting after a while
    assert thread.is_alive()
    stopped = time.monotonic()
    gen.stop()
    thread.join(timeout=2)
    gen.close()
    assert not thread.is_alive()
    assert time.monotonic() - stopped < 1.0
    assert gen.position == 0


def test_process_serves_health_and_metrics_and_stops_on_sigterm(set_clock, world):
    ctx = set_clock(speed=48.0)
    calls: list[tuple[str, str, Any, float]] = []
    ok = Stub("svc", calls, lambda path, body: (200, {"request_id": 1, "results": []}))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox.services.traffic",
            "--world",
            str(world),
            "--port",
            str(port),
            "--model-url",
            ok.url,
            "--retrieval-url",
            ok.url,
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:

        def answer() -> httpx.Response | None:
            assert proc.poll() is None, "the traffic process exited"
            with contextlib.suppress(httpx.TransportError):
                return HTTP.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return None

        health = until(answer, "the traffic process's health endpoint", timeout=60)
        assert health.status_code == 200
        metrics = HTTP.get(f"http://127.0.0.1:{port}/metrics").text
        assert "traffic_events_pending" in metrics
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - stopped < 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ok.close()
    events = [r["event"] for r in spool_logs(ctx)]
    assert events[0] == "started" and events[-1] == "stopped"
