"""The live traffic generator: replays the world's live days against the running services.

The world was simulated through its live days at build time, so it already knows when each online
prediction request arrives and when each support ticket is opened. This process sends those events
to the real model server and retrieval service at the moment the shared simulated clock reaches
them, and plays the support agent: when a suggested article really covers the ticket's problem it
clicks it with the simulation's probabilities, and reports the click as feedback. The truth of which
article is relevant comes from the interviewer's half of the world; it stays in this process.

Endpoints used (the bodies are the whole contract):
    POST {model_url}/predict      {"customer_id": int}
    POST {retrieval_url}/search   {"text": str, "k": 5, "ticket_id": int}
                                  -> {"request_id": int, "results": [{"article_id": int, ...}, ...]}
    POST {retrieval_url}/feedback {"request_id": int, "article_id": int}

A service that is down or failing (it may be restarting) never stops the replay: each event is
tried a few times with backoff, then skipped and counted. Far behind schedule (a paused machine),
events older than a few simulated minutes are dropped rather than fired in a burst, and sends are
rate-capped either way.

Run as `python -m sandbox.services.traffic --world DIR --port P --model-url URL --retrieval-url URL`;
the port serves Prometheus metrics on every path (so `GET /health` answers 200 once ready).
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from sandbox import rng
from sandbox.services.common import ServiceContext, add_fd_option, metrics_server
from sandbox.world.support import CLICK_P_BY_RANK

SERVICE = "traffic"
TOP_K = 5
MAX_RATE = 50.0  # requests per wall second, the ceiling while catching up
UPSTREAM_WAIT_S = 120.0  # at start: how long to wait for the services to come up
MAX_BEHIND = dt.timedelta(minutes=5)  # simulated; older events are dropped
WALL_GRACE = 2.0  # ...unless they are less than this many wall seconds late (matters at high speed)
RETRY_BACKOFF = (0.2, 0.6)  # wall seconds before each retry
TIMEOUT = httpx.Timeout(2.0, connect=0.5)
SLICE = 0.25  # longest uninterrupted sleep, so a stop request is honoured promptly
WARN_EVERY = 5.0  # wall seconds between warning lines of one kind


@dataclass(frozen=True)
class Event:
    """One thing that happens in the live days. `relevant` (tickets only) never leaves the process."""

    ts: dt.datetime
    kind: str  # "predict" or "ticket"
    id: int  # customer_id for a prediction request, ticket_id for a ticket
    text: str = ""
    relevant: frozenset[int] = frozenset()


_KIND_ORDER = {"predict": 0, "ticket": 1}


def live_schedule(ctx: ServiceContext, since: dt.datetime | None = None) -> list[Event]:
    """The live days' online prediction requests and support tickets from `since` (default: the
    clock's now) to the end of the last visible day, oldest first."""
    cal = ctx.calendar
    start = cal.midnight(cal.last_production_day + 1)
    end = cal.midnight(cal.last_visible_day + 1)
    since = max(start, ctx.now() if since is None else since)
    con = duckdb.connect(str(ctx.paths.duckdb), read_only=True)
    try:
        requests = con.execute(
            """
            SELECT request_ts, customer_id FROM serving.predictions
            WHERE source = 'online' AND request_ts >= ? AND request_ts < ?
            """,
            [since, end],
        ).fetchall()
        tickets = con.execute(
            """
            SELECT created_at, ticket_id, body FROM raw.support_tickets
            WHERE created_at >= ? AND created_at < ?
            """,
            [since, end],
        ).fetchall()
        relevant = _relevant_articles(con, ctx.paths.truth, since, end) if tickets else {}
    finally:
        con.close()
    events = [Event(ts, "predict", int(customer)) for ts, customer in requests]
    events += [
        Event(ts, "ticket", int(ticket), body or "", relevant.get(int(ticket), frozenset()))
        for ts, ticket, body in tickets
    ]
    events.sort(key=lambda e: (e.ts, _KIND_ORDER[e.kind], e.id))
    return events


def _relevant_articles(
    con: duckdb.DuckDBPyConnection, truth: Path, since: dt.datetime, end: dt.datetime
) -> dict[int, frozenset[int]]:
    """ticket_id -> the articles covering its problem on the customer's device (as the simulation
    judges relevance: `sandbox.world.support.relevant_mask`)."""
    if not truth.is_file():
        return {}
    con.execute(f"ATTACH '{truth}' AS truth (READ_ONLY)")
    try:
        rows = con.execute(
            """
            WITH device AS (
                SELECT customer_id, any_value(device) AS device FROM raw.customers GROUP BY 1
            )
            SELECT t.ticket_id, list(a.article_id ORDER BY a.article_id)
            FROM raw.support_tickets t
            JOIN truth.sim.tickets s USING (ticket_id)
            JOIN device d USING (customer_id)
            JOIN truth.sim.article_coverage a ON a.device = d.device
            JOIN retrieval.help_articles h
              ON h.article_id = a.article_id AND h.topic || '/' || a.problem = s.problem_key
            WHERE t.created_at >= ? AND t.created_at < ?
            GROUP BY 1
            """,
            [since, end],
        ).fetchall()
    finally:
        con.execute("DETACH truth")
    return {int(ticket): frozenset(int(a) for a in ids) for ticket, ids in rows}


def agent_click(
    seed: int, ticket_id: int, ranked: Sequence[int], relevant: frozenset[int]
) -> tuple[int, int] | None:
    """(rank, article_id) the agent clicks, or None. Like the simulation's agents: each relevant
    suggestion is clicked with its rank's probability, and the first one clicked wins. The draws
    depend only on the ticket, so a restarted generator decides the same way."""
    draws = rng.stream(seed, "live-agents", ticket_id).random(len(CLICK_P_BY_RANK))
    for rank, article in enumerate(ranked[: len(CLICK_P_BY_RANK)]):
        if article in relevant and draws[rank] < CLICK_P_BY_RANK[rank]:
            return rank + 1, article
    return None


def ranked_ids(response: dict[str, Any]) -> list[int]:
    """Article ids of a search response, best first."""
    ids = []
    for item in response.get("results") or []:
        value = item.get("article_id") if isinstance(item, dict) else item
        if isinstance(value, int) and not isinstance(value, bool):
            ids.append(value)
    return ids


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "traffic_requests",
            "HTTP requests sent, by target endpoint and outcome (ok, error, unreachable, rejected)",
            ["target", "outcome"],
            registry=registry,
        )
        self.failed = Counter(
            "traffic_events_failed",
            "Events given up after retries, by kind",
            ["kind"],
            registry=registry,
        )
        self.dropped = Counter(
            "traffic_events_dropped",
            "Events skipped because they were too far behind the simulated clock, by kind",
            ["kind"],
            registry=registry,
        )
        self.lag = Gauge(
            "traffic_lag_seconds",
            "Simulated seconds between an event's time and when it was handled",
            registry=registry,
        )
        self.pending = Gauge(
            "traffic_events_pending", "Events of the live days not yet handled", registry=registry
        )


class TrafficGenerator:
    """Sends `events` as the simulated clock reaches them. `run()` returns when the schedule is done
    or `stop()` was called (from any thread or a signal handler)."""

    def __init__(
        self,
        ctx: ServiceContext,
        events: Sequence[Event],
        model_url: str,
        retrieval_url: str,
        *,
        registry: CollectorRegistry | None = None,
        stop: threading.Event | None = None,
        max_rate: float = MAX_RATE,
        max_behind: dt.timedelta = MAX_BEHIND,
        wall_grace: float = WALL_GRACE,
        backoff: Sequence[float] = RETRY_BACKOFF,
        timeout: httpx.Timeout | float = TIMEOUT,
        warn_every: float = WARN_EVERY,
    ) -> None:
        self.ctx = ctx
        self.events = list(events)
        self.model_url = model_url.rstrip("/")
        self.retrieval_url = retrieval_url.rstrip("/")
        self.registry = registry or CollectorRegistry()
        self.metrics = _Metrics(self.registry)
        self.seed = ctx.seed
        self.max_interval = 1.0 / max_rate
        self.max_behind = max_behind
        self.wall_grace = wall_grace
        self.backoff = tuple(backoff)
        self.warn_every = warn_every
        self.position = 0  # index of the next event
        self._stop = stop or threading.Event()
        # trust_env=False: a proxy configured for the outside world must not see loopback calls.
        self._client = httpx.Client(timeout=timeout, trust_env=False)
        self._next_send = 0.0
        self._warned: dict[str, float] = {}
        self._unreported: dict[str, int] = {}
        self.metrics.pending.set(len(self.events))

    # -- control ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        self._client.close()

    def await_upstreams(self, timeout: float = UPSTREAM_WAIT_S) -> None:
        """At start, wait (quietly) until both services answer their health checks: the stack
        starts every process at once, and a client that starts first is not an outage."""
        deadline = time.monotonic() + timeout
        for url in (self.model_url, self.retrieval_url):
            while not self.stopped and time.monotonic() < deadline:
                try:
                    if self._client.get(url + "/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                self._stop.wait(0.25)

    def run(self) -> None:
        while self.position < len(self.events) and not self.stopped:
            event = self.events[self.position]
            if not self._wait_for(event.ts):
                break
            behind = self.ctx.now() - event.ts
            self.metrics.lag.set(max(behind.total_seconds(), 0.0))
            if behind > self._tolerance():
                self.metrics.dropped.labels(event.kind).inc()
                self._warn(
                    "behind",
                    "events_dropped",
                    f"{_fmt(behind)} behind the clock; skipping requests older than "
                    f"{_fmt(self._tolerance())}",
                )
            elif event.kind == "predict":
                self._predict(event)
            else:
                self._ticket(event)
            self.position += 1
            self.metrics.pending.set(len(self.events) - self.position)

    # -- events ----------------------------------------------------------------------------

    def _predict(self, event: Event) -> None:
        if self._post("predict", f"{self.model_url}/predict", {"customer_id": event.id}) is None:
            self.metrics.failed.labels(event.kind).inc()

    def _ticket(self, event: Event) -> None:
        found = self._post(
            "search",
            f"{self.retrieval_url}/search",
            {"text": event.text, "k": TOP_K, "ticket_id": event.id},
        )
        if found is None:
            self.metrics.failed.labels(event.kind).inc()
            return
        click = agent_click(self.seed, event.id, ranked_ids(found), event.relevant)
        if click is None:
            return
        request_id = found.get("request_id")
        if not isinstance(request_id, int):
            self.metrics.requests.labels("search", "malformed").inc()
            self._warn("search-malformed", "bad_response", "search response without a request_id")
            return
        body = {"request_id": request_id, "article_id": click[1]}
        if self._post("feedback", f"{self.retrieval_url}/feedback", body) is None:
            self.metrics.failed.labels("feedback").inc()

    def _post(self, target: str, url: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The JSON answer (an empty dict if it has none), or None once every attempt failed."""
        for attempt in range(len(self.backoff) + 1):
            if attempt and not self._sleep(self.backoff[attempt - 1]):
                return None
            if not self._throttle():
                return None
            try:
                response = self._client.post(url, json=body)
            except httpx.HTTPError as exc:
                outcome, detail = "unreachable", type(exc).__name__
            else:
                if response.status_code < 400:
                    self.metrics.requests.labels(target, "ok").inc()
                    try:
                        answer = response.json()
                    except ValueError:
                        return {}
                    return answer if isinstance(answer, dict) else {}
                outcome, detail = "error", f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    # The service understood and refused; asking again will not help.
                    self.metrics.requests.labels(target, "rejected").inc()
                    self._warn(target, "upstream_rejected", f"POST {url} answered {detail}")
                    return None
            self.metrics.requests.labels(target, outcome).inc()
            self._warn(target, "upstream_unavailable", f"POST {url} failed: {detail}")
        return None

    # -- time ------------------------------------------------------------------------------

    def _tolerance(self) -> dt.timedelta:
        return max(self.max_behind, dt.timedelta(seconds=self.wall_grace * self.ctx.clock.speed))

    def _wait_for(self, ts: dt.datetime) -> bool:
        """Sleep until the simulated clock reaches `ts`; False if stopped first."""
        while not self.stopped:
            clock = self.ctx.clock
            now = clock.now()
            if now >= ts:
                return True
            wall = (ts - now).total_seconds() / clock.speed if clock.speed > 0 else SLICE
            self._stop.wait(min(max(wall, 0.001), SLICE))
        return False

    def _throttle(self) -> bool:
        """Keep sends at most `max_rate` per second; False if stopped while waiting."""
        slot = max(self._next_send, time.monotonic())
        self._next_send = slot + self.max_interval
        return self._sleep(slot - time.monotonic())

    def _sleep(self, seconds: float) -> bool:
        if seconds > 0:
            self._stop.wait(seconds)
        return not self.stopped

    def _warn(self, key: str, event: str, message: str) -> None:
        """A warning line, at most one per `warn_every` seconds per key, with how many it stands for."""
        self._unreported[key] = self._unreported.get(key, 0) + 1
        wall = time.monotonic()
        if wall - self._warned.get(key, -1e9) < self.warn_every:
            return
        count = self._unreported.pop(key)
        self._warned[key] = wall
        suffix = f" ({count} times since the last report)" if count > 1 else ""
        self.ctx.log("warning", event, message + suffix, occurrences=count)


def _fmt(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds}s"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    # common.service_args plus where the traffic goes.
    parser = argparse.ArgumentParser(description="Replay the live days against the services.")
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    add_fd_option(parser)
    parser.add_argument("--model-url", required=True)
    parser.add_argument("--retrieval-url", required=True)
    parser.add_argument("--max-rate", type=float, default=MAX_RATE, help="requests per second")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ctx = ServiceContext(args.world, SERVICE)
    events = live_schedule(ctx)
    registry = CollectorRegistry()
    generator = TrafficGenerator(
        ctx,
        events,
        args.model_url,
        args.retrieval_url,
        registry=registry,
        stop=stop,
        max_rate=args.max_rate,
    )
    server = metrics_server(registry, args.host, args.port, args.fd)
    first = events[0].ts.isoformat() if events else "-"
    ctx.log("info", "started", f"{len(events)} requests scheduled from {first}", events=len(events))
    try:
        generator.await_upstreams()
        generator.run()
        if not stop.is_set():
            ctx.log("info", "schedule_finished", "all scheduled requests sent")
            while not stop.wait(1.0):
                pass
    finally:
        ctx.log("info", "stopped", "traffic stopped", remaining=len(events) - generator.position)
        generator.close()
        server.shutdown()


if __name__ == "__main__":
    main()
