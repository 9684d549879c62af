"""`sandbox up --prometheus`: the world's metric history backfilled into Prometheus so that it
ends when the stack starts, the services scraped live, and Prometheus behind the gateway,
read-only for the candidate."""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import duckdb
import pytest

from sandbox import scenario
from sandbox.services import dashboards
from tests.http_client import HTTP
from tests.services.running import Stack, new_session
from tests.waiting import until


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Stack:
    return new_session(shared_stack, "metrics")


def _prometheus(stack: Stack) -> str:
    stack_file = json.loads((stack.world / "run" / "stack.json").read_text())
    return stack_file["services"]["prometheus"]["url"]


def _query(stack: Stack, promql: str, **params: object) -> list[dict]:
    reply = HTTP.get(
        f"{stack.url}/services/prometheus/api/v1/query",
        params={"query": promql, **params},
        headers=stack.candidate,
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]["result"]


def test_the_history_holds_the_worlds_daily_values(stack: Stack) -> None:
    spec = scenario.load(stack.world / "interviewer" / "scenario.toml")
    cal = spec.world.calendar()
    live_start = cal.midnight(cal.last_production_day + 1)
    con = duckdb.connect(str(stack.world / "candidate" / "world.duckdb"), read_only=True)
    days = con.execute(
        "SELECT ts, value FROM telemetry.metrics WHERE service = 'business' "
        "AND metric = 'daily_churn_rate' AND ts + INTERVAL 1 DAY <= ? ORDER BY ts",
        [live_start],
    ).fetchall()
    con.close()
    assert len(days) >= 40
    [raw] = _query(stack, "business_daily_churn_rate[7d]")  # the samples themselves
    last_at = float(raw["values"][-1][0])
    # The history ends when the stack started: its last day sits just before wall-clock now.
    shift = last_at - days[-1][0].replace(tzinfo=dt.UTC).timestamp()
    assert abs(time.time() - shift - live_start.replace(tzinfo=dt.UTC).timestamp()) < 3600
    for ts, value in days[:: max(1, len(days) // 8)]:
        at = ts.replace(tzinfo=dt.UTC).timestamp() + shift
        [sample] = _query(stack, "business_daily_churn_rate", time=at)
        assert float(sample["value"][1]) == pytest.approx(value, rel=1e-9), ts
    # Nothing of the live days is in the history: they arrive as time passes.
    future = _query(stack, "business_daily_churn_rate", time=time.time() + 86_400 * 3)
    assert future == []


def test_live_samples_arrive_from_every_service(stack: Stack) -> None:
    def scraped() -> set[str]:
        jobs = {r["metric"]["job"] for r in _query(stack, "up == 1")}
        served = _query(stack, "sum(model_server_requests_total) > 0")
        return jobs if {"model-server", "retrieval", "jobs"} <= jobs and served else set()

    until(scraped, "every service scraped, with requests counted", timeout=90, every=1)


def test_prometheus_is_read_only_and_recorded_for_the_candidate(stack: Stack) -> None:
    for method, path in (("POST", "api/v1/admin/tsdb/delete_series"), ("PUT", "api/v1/query")):
        reply = HTTP.request(
            method, f"{stack.url}/services/prometheus/{path}", headers=stack.candidate, timeout=10
        )
        assert reply.status_code == 405, path
    posted = HTTP.post(
        f"{stack.url}/services/prometheus/api/v1/query",
        data={"query": "up"},
        headers=stack.candidate,
        timeout=10,
    )
    assert posted.status_code == 200
    assert HTTP.get(_prometheus(stack) + "/-/ready", timeout=5).status_code == 200
    calls = [e for e in stack.history() if e["detail"].get("service") == "prometheus"]
    assert calls and any("api/v1/query" in e["detail"]["path"] for e in calls)


def test_the_grafana_dashboards_query_only_what_prometheus_holds(stack: Stack) -> None:
    """Every expression of the exported dashboards runs, and every metric it names exists."""
    exprs = [e for board in dashboards.catalog().values() for p in board.panels for e in p.promql]
    assert exprs
    outside = re.compile(r"\b(by|without)\s*\([^)]*\)|\{[^}]*\}|\[[^\]]*\]")
    used = {e: set(METRIC.findall(outside.sub("", e))) for e in exprs}
    # A labelled counter exists from its first increment: make sure both services served.
    HTTP.post(
        f"{stack.url}/services/retrieval/search",
        json={"text": "my payment failed twice"},
        headers=stack.candidate,
        timeout=30,
    )
    wanted = set().union(*used.values())

    def names_once_complete() -> set[str]:
        reply = HTTP.get(
            f"{stack.url}/services/prometheus/api/v1/label/__name__/values",
            headers=stack.candidate,
            timeout=30,
        )
        names = set(reply.json()["data"])
        return names if wanted <= names else set()

    names = until(names_once_complete, "every metric the dashboards name", timeout=90, every=1)
    for expr in exprs:
        assert used[expr] and used[expr] <= names, (expr, used[expr] - names)
        ran = HTTP.get(
            f"{stack.url}/services/prometheus/api/v1/query",
            params={"query": expr},
            headers=stack.candidate,
            timeout=30,
        )
        assert ran.status_code == 200 and ran.json()["status"] == "success", (expr, ran.text)


# A name not followed by "(" (a function) once grouping, matchers and ranges are taken out.
METRIC = re.compile(r"\b([a-z_][a-z0-9_]*)\b(?!\s*\()")


def test_the_workspace_links_to_prometheus(stack: Stack) -> None:
    page = HTTP.get(f"{stack.url}/brief", headers=stack.candidate, timeout=10).text
    assert 'href="/services/prometheus/"' in page
    # Prometheus redirects to its UI at its external address, which is behind the gateway.
    graph = HTTP.get(
        f"{stack.url}/services/prometheus/",
        headers=stack.candidate,
        timeout=10,
        follow_redirects=True,
    )
    assert graph.status_code == 200 and "Prometheus" in graph.text
    assert str(graph.url).startswith(f"{stack.url}/services/prometheus/")
