"""The gateway in-process: clock-filtered SQL, live telemetry ingest, the console's refusals, auth,
sessions and the recorded history."""

from __future__ import annotations

import datetime as dt
import json
import time

import duckdb
import pytest
from fastapi.testclient import TestClient

from sandbox import scenario, schema
from sandbox.layout import WorldPaths
from sandbox.monitor.metrics import LIVE_SERIES_SERVICES
from sandbox.services import stack
from sandbox.services.console import query, telemetry, views
from sandbox.services.console.query import DEFAULTS
from sandbox.services.console.telemetry import COMPUTED, LiveTelemetry
from sandbox.services.gateway import on_demand
from sandbox.services.gateway.app import create_app
from sandbox.services.simclock import SimClock
from sandbox.services.spool import SpoolWriter, spool_path
from tests.services.candidates import server_timing
from tests.services.conftest import (
    FROZEN,
    MakeSession,
    live_store,
    online_prediction,
    session_maker,
    spool_failing_requests,
)

LIVE_SERVICES = f"({', '.join(repr(s) for s in LIVE_SERIES_SERVICES)})"


def _calendar(paths: WorldPaths):
    return scenario.load(paths.scenario).world.calendar()


def _one(store: LiveTelemetry, sql: str):
    return query.run(store, sql).rows[0][0]


def test_rows_appear_only_once_they_exist_at_the_simulated_now(paths: WorldPaths) -> None:
    cal = _calendar(paths)
    start = cal.midnight(cal.last_production_day + 1)
    early = live_store(paths, start)
    later = live_store(paths, start + dt.timedelta(days=2, hours=7))
    for store, now in ((early, start), (later, start + dt.timedelta(days=2, hours=7))):
        newest_ingest = _one(store, "SELECT max(ingested_at) FROM raw.viewing_activity")
        assert dt.datetime.fromisoformat(newest_ingest) <= now
        newest_label = _one(store, "SELECT max(label_available_at) FROM labels.churn_labels")
        assert dt.datetime.fromisoformat(newest_label) <= now
    # The batch job of the live days is revealed at its hour; online traffic comes from live rows.
    assert (
        _one(early, f"SELECT count(*) FROM serving.predictions WHERE request_ts >= '{start}'") == 0
    )
    batch_day_two = _one(
        later,
        "SELECT count(*) FROM serving.predictions WHERE source = 'batch' AND request_ts >= "
        f"'{start + dt.timedelta(days=1)}'",
    )
    assert batch_day_two > 0
    assert (
        _one(
            later,
            f"SELECT count(*) FROM serving.predictions WHERE source = 'online' "
            f"AND request_ts >= '{start}'",
        )
        == 0
    )
    # Daily metric points show once their day is over.
    newest_daily = _one(
        later, "SELECT max(ts) FROM telemetry.metrics WHERE service = 'batch-scoring'"
    )
    assert dt.datetime.fromisoformat(newest_daily) + dt.timedelta(days=1) <= later.now()


def test_the_online_store_is_the_newest_load_by_the_simulated_now(paths: WorldPaths) -> None:
    """Each morning's load replaces the store: the console shows the one production reads, the
    live day's 04:00 load once its hour has passed, never rows of two loads."""
    cal = _calendar(paths)
    live_day = cal.last_production_day + 1
    store_sql = (
        "SELECT count(DISTINCT materialized_at), min(materialized_at), count(*), "
        "count(DISTINCT customer_id) FROM feature_store.customer_features_online"
    )
    for now, load in (
        (cal.at(live_day, 3.5), cal.at(live_day - 1, 4.0)),
        (cal.at(live_day, 4.5), cal.at(live_day, 4.0)),
        (cal.at(live_day + 1, 12.0), cal.at(live_day + 1, 4.0)),
    ):
        loads, loaded_at, rows, customers = query.run(live_store(paths, now), store_sql).rows[0]
        assert loads == 1, f"at {now}: rows of {loads} loads"
        assert dt.datetime.fromisoformat(loaded_at) == load, f"at {now}"
        assert rows == customers, "one row per customer"
        # The world's own record of the load says as many rows (the live job's comes from the
        # same load once the scheduler runs).
        world = duckdb.connect(str(paths.duckdb), read_only=True)
        try:
            recorded = world.execute(
                "SELECT rows FROM ops.materialization_runs WHERE materialized_at = ?", [load]
            ).fetchone()
        finally:
            world.close()
        assert recorded is not None and recorded[0] == rows, f"at {now}"


def test_a_query_loads_the_live_rows_of_what_it_reads(
    paths: WorldPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query loads the rows spooled to the tables it reads, and those its views are made
    from, and no others: a query of the built world's tables alone pays for no load."""
    monkeypatch.setattr(telemetry, "FRESH_S", 0.0)
    cal = _calendar(paths)
    now = cal.midnight(cal.last_production_day + 1) + dt.timedelta(hours=10)
    store = live_store(paths, now)
    loaded = f"SELECT count(*) FROM {views.live_table('serving.predictions')}"
    before = store.con.execute(loaded).fetchone()
    assert before is not None
    SpoolWriter(spool_path(paths.run, "model-server", "serving.predictions")).write(
        online_prediction(now - dt.timedelta(minutes=1), 42)
    )
    SpoolWriter(spool_path(paths.run, "model-server", "telemetry.logs")).write(
        {
            "ts": (now - dt.timedelta(minutes=1)).isoformat(),
            "service": "model-server",
            "level": "info",
            "event": "loaded-on-read",
            "message": "a line",
            "attrs": "{}",
        }
    )
    assert _one(store, "SELECT count(*) FROM raw.customers") > 0
    assert _one(store, "SELECT count(*) FROM telemetry.logs WHERE event = 'loaded-on-read'") == 1
    assert store.con.execute(loaded).fetchone() == before, "not read: not loaded"
    # The metric series are made from the live predictions: reading them loads those, however
    # the query spells the table.
    _one(store, "SELECT count(*) FROM telemetry.METRICS")
    assert store.con.execute(loaded).fetchone() == (before[0] + 1,)


def test_a_series_that_fails_to_compute_leaves_the_query_answered_and_is_tried_again(
    paths: WorldPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telemetry, "FRESH_S", 0.0)
    cal = _calendar(paths)
    now = cal.midnight(cal.last_production_day + 1) + dt.timedelta(hours=10)
    store = live_store(paths, now)
    SpoolWriter(spool_path(paths.run, "model-server", "serving.predictions")).write(
        online_prediction(now - dt.timedelta(minutes=1), 42)
    )
    computed = f"SELECT count(*) FROM {COMPUTED['telemetry.metrics']}"
    recompute = store._recompute_metrics

    def failing() -> None:
        raise ValueError("a hook could not cast the series")

    monkeypatch.setattr(store, "_recompute_metrics", failing)
    assert _one(store, "SELECT count(*) FROM telemetry.metrics") > 0  # the world's series
    assert store.con.execute(computed).fetchone() == (0,)
    monkeypatch.setattr(store, "_recompute_metrics", recompute)
    _one(store, "SELECT count(*) FROM telemetry.metrics")
    assert store.con.execute(computed).fetchone()[0] > 0  # type: ignore[index]


def test_spooled_rows_join_the_candidates_tables(paths: WorldPaths) -> None:
    cal = _calendar(paths)
    now = cal.midnight(cal.last_production_day + 1) + dt.timedelta(hours=10)
    store = live_store(paths, now)
    with duckdb.connect(str(paths.duckdb), read_only=True) as world:
        top_id = world.sql("SELECT max(prediction_id) FROM serving.predictions").fetchall()[0][0]
    writer = SpoolWriter(spool_path(paths.run, "model-server", "serving.predictions"))
    row = online_prediction(now - dt.timedelta(minutes=1), 42)
    row["sessions_7d"] = 3.0
    future = {**row, "request_ts": (now + dt.timedelta(hours=1)).isoformat(), "customer_id": 43}
    writer.write(row, future)
    with writer.path.open("a") as f:
        f.write('{"request_ts": "2026-')  # a line torn by a killed writer
    assert store.ingest() == 2
    live = query.run(
        store,
        f"SELECT prediction_id, customer_id, sessions_7d, score FROM serving.predictions "
        f"WHERE request_ts >= '{cal.midnight(cal.last_production_day + 1)}' AND source = 'online'",
    ).rows
    assert live == [[top_id + 1, 42, 3.0, 0.5]], (
        "only the row that exists by now, with an id the world never used"
    )
    # The live online traffic feeds the model server's metric series, computed when a query
    # reads them: the query above, like most, did not pay for it.
    computed = f"SELECT count(*) FROM {COMPUTED['telemetry.metrics']}"
    assert store.con.execute(computed).fetchone() == (0,)
    rps = _one(
        store,
        "SELECT count(*) FROM telemetry.metrics WHERE service = 'model-server' "
        f"AND ts >= '{cal.midnight(cal.last_production_day + 1)}'",
    )
    assert rps > 0
    assert store.ingest() == 0, "nothing is loaded twice"


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT count(*) FROM world.serving.predictions", "unknown table world.serving"),
        ("SUMMARIZE world.raw.customers", "unknown table world.raw"),
        ("SELECT * FROM query_table('world.serving.predictions')", "query_table"),
        ("DELETE FROM serving.predictions", "DELETE statements are not allowed"),
        ("SELECT 1; SELECT 2", "one statement per query"),
        ("SET VARIABLE sim_now = '2030-01-01'", "SET statements are not allowed"),
        ("ATTACH '/tmp/x.db' AS x", "ATTACH statements are not allowed"),
        ("SELECT * FROM live.serving__predictions", "unknown table live."),
        ("", "empty query"),
    ],
)
def test_the_console_refuses_what_is_not_a_read_of_the_candidates_tables(
    paths: WorldPaths, sql: str, message: str
) -> None:
    store = live_store(paths, _calendar(paths).midnight(_calendar(paths).last_production_day + 1))
    with pytest.raises(query.QueryRefused, match=message):
        query.run(store, sql)


def test_the_console_cannot_reach_files_and_caps_rows(paths: WorldPaths) -> None:
    store = live_store(paths, _calendar(paths).midnight(_calendar(paths).last_production_day + 1))
    with pytest.raises(query.QueryRefused, match="not available"):
        query.run(store, "SELECT * FROM read_csv('/etc/passwd')")
    # The second layer: the instance itself refuses files, should a query get past the first.
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        store.cursor().execute("SELECT * FROM read_csv('/etc/passwd')")
    big = query.run(store, "SELECT customer_id FROM raw.customers")
    assert big.truncated and len(big.rows) == DEFAULTS.row_cap
    assert big.tables == ["raw.customers"]


def test_health_names_the_failing_service(client: TestClient) -> None:
    reply = client.get("/-/health")
    assert reply.status_code == 503
    services = reply.json()["services"]
    assert services["gateway"] == "ok" and services["model-server"].startswith("unreachable")


def test_an_on_demand_service_is_idle_until_asked_for_then_started_by_the_supervisor(
    paths: WorldPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(on_demand, "START_TIMEOUT_S", 1.0)
    calendar = scenario.load(paths.scenario).world.calendar()
    SimClock.starting(calendar, speed=FROZEN).save(paths.run)
    nothing = stack.ServiceAddress("http://127.0.0.1:9", "/health", on_demand=True)
    app = create_app(paths.root, services={"mlflow": nothing})
    with TestClient(app) as client:
        make = session_maker(client, paths)
        health = client.get("/-/health")
        assert health.status_code == 200 and health.json()["services"]["mlflow"] == "idle"
        assert not stack.start_requested(paths.run, "mlflow")

        candidate = {"Authorization": f"Bearer {make()['candidate_token']}"}
        search = "/services/mlflow/ajax-api/2.0/mlflow/registered-models/search"
        reply = client.get(search, headers=candidate)
        # asked for (the supervisor starts it when it sees the request), and not up in time
        assert stack.start_requested(paths.run, "mlflow")
        assert reply.status_code == 503 and "did not start within" in reply.json()["detail"]
        health = client.get("/-/health")
        assert health.status_code == 503 and health.json()["services"]["mlflow"] == "starting"


def test_tokens_roles_and_the_recorded_history(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    links = make_session()
    candidate = {"Authorization": f"Bearer {links['candidate_token']}"}
    interviewer = {"Authorization": f"Bearer {links['interviewer_token']}"}
    sid = links["session_id"]

    assert client.post("/api/sql", json={"sql": "SELECT 1"}).status_code == 401
    wrong = {"Authorization": "Bearer not-a-token"}
    assert client.post("/api/sql", json={"sql": "SELECT 1"}, headers=wrong).status_code == 401
    assert client.post("/api/sessions", json={}, headers=candidate).status_code == 403
    assert client.get(f"/api/sessions/{sid}/answer-key", headers=candidate).status_code == 403
    assert client.get(f"/api/sessions/{sid}/history", headers=candidate).status_code == 403

    ok = client.post(
        "/api/sql",
        json={"sql": "SELECT fill_value FROM feature_store.imputation_policy"},
        headers=candidate,
    )
    assert ok.status_code == 200 and set(ok.json()) == {
        "columns",
        "rows",
        "truncated",
        "elapsed_ms",
    }
    bad = client.post("/api/sql", json={"sql": "DROP TABLE raw.customers"}, headers=candidate)
    assert bad.status_code == 400 and "not allowed" in bad.json()["error"]
    assert client.post("/api/sql", json={}, headers=candidate).status_code == 422

    key = client.get(f"/api/sessions/{sid}/answer-key", headers=interviewer)
    assert key.status_code == 200 and key.json()["faults"]
    events = client.get(f"/api/sessions/{sid}/history", headers=interviewer).json()
    # The candidate's reaches for the interviewer's routes are recorded as refused.
    refused = [e for e in events if e["kind"] == "refused"]
    assert [e["detail"]["path"] for e in refused] == [
        f"/api/sessions/{sid}/answer-key",
        f"/api/sessions/{sid}/history",
    ]
    events = [e for e in events if e["kind"] != "refused"]
    assert [e["kind"] for e in events] == ["sql", "sql"]
    first, second = events
    assert first["detail"]["tables"] == ["feature_store.imputation_policy"]
    policy = [
        e["id"]
        for f in key.json()["faults"]
        for e in f["evidence"]
        if e["ref"] == "feature_store.imputation_policy.fill_value"
    ]
    assert policy and first["evidence"] == policy
    assert "error" in second["detail"] and second["evidence"] == []


def test_a_console_answer_says_where_its_time_went(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    """A query's and a panel's answers carry a `Server-Timing` header: the wait for a worker,
    the round trip to it, within it the live rows loaded and the query run, then the history
    event recorded."""
    links = make_session()
    cal = _calendar(paths)
    spool_failing_requests(paths, cal.midnight(cal.last_production_day + 1) - dt.timedelta(hours=1))
    time.sleep(telemetry.FRESH_S)  # the workers loaded the spool at start: these rows are new
    candidate = {"Authorization": f"Bearer {links['candidate_token']}"}
    answered = client.post(
        "/api/sql", json={"sql": "SELECT count(*) FROM serving.predictions"}, headers=candidate
    )
    assert answered.status_code == 200, answered.text
    timing = server_timing(answered.headers["server-timing"])
    assert list(timing) == ["wait", "worker", "live", "query", "record"]
    assert all(ms >= 0 for ms in timing.values())
    assert timing["query"] == answered.json()["elapsed_ms"]
    assert timing["live"] > 0, "the spooled rows it reads were loaded for it"
    # the worker's round trip holds what the worker did (each figure rounded to 0.1 ms)
    assert timing["worker"] >= timing["live"] + timing["query"] - 0.2

    boards = client.get("/api/dashboards", headers=candidate).json()
    board = boards[0]
    panel = client.get(
        f"/api/dashboards/{board['id']}/panels/{board['panels'][0]['id']}", headers=candidate
    )
    assert panel.status_code == 200, panel.text
    assert list(server_timing(panel.headers["server-timing"])) == list(timing)


def test_a_session_link_signs_in_with_a_cookie(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    token = links["candidate_token"]
    reply = client.get(f"/?token={token}", follow_redirects=False)
    assert reply.status_code == 303 and "token" not in reply.headers["location"]
    assert "httponly" in reply.headers["set-cookie"].lower()
    client.cookies.set("sandbox_token", token)
    assert client.post("/api/sql", json={"sql": "SELECT 1 AS x"}).json()["rows"] == [[1]]


def test_nothing_the_candidate_gets_from_the_gateway_names_a_fault(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    links = make_session()
    candidate = {"Authorization": f"Bearer {links['candidate_token']}"}
    key = json.loads(paths.answer_key.read_text())
    ids = [f["fault_id"] for f in key["faults"]]
    page = client.get("/", headers=candidate).text
    logs = client.post(
        "/api/sql", json={"sql": "SELECT * FROM telemetry.logs LIMIT 2000"}, headers=candidate
    ).text
    for text in (page, logs):
        assert not any(i in text for i in ids)
        assert "planted" not in text.lower() and "inject" not in text.lower()


def test_the_mlflow_proxy_is_read_only(client: TestClient, make_session: MakeSession) -> None:
    links = make_session()
    candidate = {"Authorization": f"Bearer {links['candidate_token']}"}
    reply = client.post(
        "/services/mlflow/ajax-api/2.0/mlflow/registered-models/delete", headers=candidate
    )
    assert reply.status_code == 405
    assert client.get("/services/nope/x", headers=candidate).status_code == 404


def test_every_table_the_candidate_queries_is_declared_with_its_reveal_rule(
    paths: WorldPaths,
) -> None:
    """A table that holds later days must be revealed by time, or it leaks the future: every
    world table is declared, and so has a reveal rule, which its view applies."""
    store = live_store(paths, _calendar(paths).midnight(_calendar(paths).last_production_day + 1))
    assert set(store.tables) == set(schema.TABLES)
    for name, table in schema.TABLES.items():
        sql = store.con.sql(
            "SELECT sql FROM duckdb_views() WHERE schema_name || '.' || view_name = ?",
            params=[name],
        ).fetchall()[0][0]
        if table.reveal.column is not None:
            assert "sim_now" in sql, name


def test_a_spooled_row_no_table_can_hold_costs_that_row_only(paths: WorldPaths) -> None:
    cal = _calendar(paths)
    now = cal.midnight(cal.last_production_day + 1) + dt.timedelta(hours=2)
    path = spool_path(paths.run, "retrieval", "retrieval.search_log")
    path.parent.mkdir(parents=True, exist_ok=True)
    base = 10**15  # ids the world's own searches do not use
    # Written past the writer's check, as a file from anything else might be.
    with path.open("a") as f:
        for request_id, ticket_id in ((base + 1, 5), (base + 2, 2**200), (base + 3, 6)):
            row = {
                "request_id": request_id,
                "ticket_id": ticket_id,
                "request_ts": (now - dt.timedelta(minutes=5)).isoformat(),
                "query_text": "refund",
                "top_k_ids": [1],
                "top_k_scores": [0.5],
                "top1_score": 0.5,
                "encoder_version": 1,
                "index_version": "i",
                "latency_ms": 1.0,
                "clicked_article_id": None,
                "click_rank": None,
            }
            f.write(json.dumps(row) + "\n")
        f.write(json.dumps({**row, "request_id": base + 4, "latency_ms": "fast"}) + "\n")
        f.write(json.dumps({**row, "request_id": base + 5, "ticket_id": None}) + "\n")
        f.write(json.dumps({k: v for k, v in row.items() if k != "click_rank"}) + "\n")
    store = live_store(paths, now)  # the gateway starts, whatever the spool holds
    assert store.dropped == 3
    assert list(store.refusals) == [
        f"retrieval.search_log.ticket_id: {2**200} is out of range for BIGINT",
        "retrieval.search_log.latency_ms: DOUBLE expects a number, got 'fast'",
        "retrieval.search_log.click_rank: missing (send null for no value)",
    ]
    kept = query.run(store, f"SELECT ticket_id FROM retrieval.search_log WHERE request_id > {base}")
    assert sorted((r[0] for r in kept.rows), key=str) == [5, 6, None]


def test_the_worlds_alert_rules_fire_on_the_live_services_rows(paths: WorldPaths) -> None:
    """From live start the model server's alerts come from its live rows, as its metric series
    do: twenty minutes of live requests that mostly fail fire the world's error rule (two
    breaching five-minute points) once those minutes have passed, and the world's own alerts of
    the services that do not run live stay."""
    cal = _calendar(paths)
    live_start = cal.midnight(cal.last_production_day + 1)
    failing = live_start + dt.timedelta(hours=9)
    alerts_sql = (
        "SELECT alert, started_at, peak_value FROM monitoring.alerts "
        f"WHERE started_at >= '{live_start}' AND service = 'model-server'"
    )
    before = live_store(paths, live_start + dt.timedelta(hours=12))
    assert query.run(before, alerts_sql).rows == []

    spool_failing_requests(paths, failing)
    during = live_store(paths, failing + dt.timedelta(minutes=7))
    assert query.run(during, alerts_sql).rows == [], "one breaching point is not an alert yet"
    after = live_store(paths, failing + dt.timedelta(hours=1))
    [(alert, started_at, peak)] = query.run(after, alerts_sql).rows
    assert alert == "ModelServerErrors" and peak == 0.8
    assert dt.datetime.fromisoformat(started_at) == failing
    # Besides it, the world's own: those started before live start, and those of the services
    # that do not run live.
    with duckdb.connect(str(paths.duckdb), read_only=True) as world:
        [(settled,)] = world.sql(
            f"SELECT count(*) FROM monitoring.alerts WHERE started_at <= '{after.now()}' AND "
            f"(started_at < '{live_start}' OR service NOT IN {LIVE_SERVICES})"
        ).fetchall()
    assert _one(after, "SELECT count(*) FROM monitoring.alerts") == settled + 1


def test_every_table_the_gateway_computes_live_rows_for_has_a_live_table() -> None:
    computed = {name for name, t in schema.TABLES.items() if t.live and not t.live.spooled}
    assert computed == set(COMPUTED) == {"telemetry.metrics", "monitoring.alerts"}
