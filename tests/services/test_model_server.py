"""The live model server on real worlds: it serves what the world deployed, the way production did."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sandbox import scenario
from sandbox.clock import Calendar
from sandbox.faults import registry as fault_registry
from sandbox.faults import toolkit
from sandbox.layout import WorldPaths
from sandbox.pipeline import deploy, registry
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.services import spool
from sandbox.services.model_server import MAX_BATCH, SERVICE, create_app
from sandbox.services.simclock import SimClock
from sandbox.testing import Worlds, connect
from sandbox.world.build import BuildSummary

PEAK_HOUR = int(np.argmax(toolkit.LOAD))
QUIET_HOUR = 10
assert QUIET_HOUR in toolkit.QUIET_HOURS


@dataclass
class Live:
    client: TestClient
    paths: WorldPaths  # the served view of the world: its own run/ directory
    world: BuildSummary
    spec: scenario.Scenario
    record: deploy.ModelDeployment
    snapshot: pl.DataFrame  # the online-store materialization requests read

    @property
    def calendar(self) -> Calendar:
        return self.spec.world.calendar()

    def spooled(self, table: str) -> list[dict[str, Any]]:
        records, _ = spool.read_new(spool.spool_path(self.paths.run, SERVICE, table), 0)
        return records

    def customers(self, n: int) -> list[int]:
        return self.snapshot["customer_id"].head(n).to_list()


def _served_view(world: BuildSummary, name: str, into: Path) -> WorldPaths:
    """The world as the server sees it, with a run/ directory of its own: everything is linked,
    nothing copied, and the built world is never written to (other tests may serve it too)."""
    source = WorldPaths(world.root)
    into.mkdir(parents=True)
    (into / "candidate").symlink_to(source.candidate.resolve())
    (into / "manifest.json").symlink_to(source.manifest.resolve())
    (into / "interviewer").mkdir()
    for item in source.interviewer.iterdir():
        (into / "interviewer" / item.name).symlink_to(item.resolve())
    return WorldPaths(into)


def _serve(
    world: BuildSummary, name: str, into: Path, day_offset: int, hour: float
) -> Iterator[Live]:
    paths = _served_view(world, name, into)
    spec = scenario.load(paths.scenario)
    calendar = spec.world.calendar()
    start = calendar.at(calendar.last_production_day + day_offset, hour)
    SimClock.starting(calendar, speed=1.0, resume_at=start).save(paths.run)
    _, snapshot = [s for s in deploy.online_snapshots(paths.online_store) if s[0] <= start][-1]
    record = deploy.read_model_deployment(paths.deploy)
    with TestClient(create_app(paths.root)) as client:
        yield Live(client, paths, world, spec, record, pl.read_parquet(snapshot))


@pytest.fixture(scope="module")
def live(faulty_world: BuildSummary, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from _serve(faulty_world, "default", tmp_path_factory.mktemp("served") / "w", 1, 10.0)


@pytest.fixture(scope="module")
def threshold_world(worlds: Worlds) -> BuildSummary:
    """`serving-default-fallback` acts on the model server's request features."""
    return worlds.get("threshold")


@pytest.fixture(scope="module")
def peak(threshold_world: BuildSummary, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    into = tmp_path_factory.mktemp("peak") / "w"
    yield from _serve(threshold_world, "threshold", into, 1, PEAK_HOUR + 0.25)


@pytest.fixture(scope="module")
def quiet(
    threshold_world: BuildSummary, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    into = tmp_path_factory.mktemp("quiet") / "w"
    yield from _serve(threshold_world, "threshold", into, 1, QUIET_HOUR + 0.25)


def _model_scores(live: Live, customers: list[int]) -> dict[int, float]:
    """The deployed model applied directly to the customers' online-store rows."""
    model = registry.load_model(live.paths.mlflow, live.record.model_uri)
    rows = live.snapshot.filter(pl.col("customer_id").is_in(customers))
    scores = model.predict_proba(rows.select(live.record.features).to_numpy())[:, 1]
    return dict(zip(rows["customer_id"].to_list(), np.round(scores, 6).tolist(), strict=True))


def test_health_and_metadata_describe_the_deployment(live: Live) -> None:
    health = live.client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    meta = live.client.get("/metadata").json()
    record = live.record
    assert meta["model_name"] == record.model_name
    assert meta["model_version"] == record.model_version
    assert meta["model_uri"] == record.model_uri
    assert meta["threshold"] == record.threshold
    assert meta["features"] == record.features
    store = meta["online_store"]
    assert store["customers"] == live.snapshot.height
    assert dt.datetime.fromisoformat(store["loaded_at"]) == live.snapshot["materialized_at"].max()
    assert dt.datetime.fromisoformat(meta["loaded_at"]).date() == live.calendar.date(
        live.calendar.last_production_day + 1
    )


@pytest.mark.world  # its world fixture is picked by name, so collection cannot see it
@pytest.mark.parametrize("name", ["live", "peak"])
def test_served_version_and_threshold_are_the_deployment_records(
    name: str, request: pytest.FixtureRequest
) -> None:
    served: Live = request.getfixturevalue(name)
    [customer] = served.customers(1)
    body = served.client.post("/predict", json={"customer_id": customer}).json()
    assert body["model_name"] == served.record.model_name
    assert body["model_version"] == served.record.model_version
    assert body["threshold"] == served.record.threshold


def test_predict_by_id_is_the_model_on_the_online_row(live: Live) -> None:
    customers = live.customers(25)
    expected = _model_scores(live, customers)
    day = live.calendar.date(live.calendar.last_production_day + 1)
    con = connect(live.world)
    try:
        batch = dict(
            con.execute(
                "SELECT customer_id, score FROM serving.predictions WHERE source = 'batch' "
                f"AND request_ts::DATE = '{day}' AND customer_id IN ({', '.join(map(str, customers))})"
            ).fetchall()
        )
    finally:
        con.close()
    rows = {r["customer_id"]: r for r in live.snapshot.to_dicts()}
    for customer in customers:
        reply = live.client.post("/predict", json={"customer_id": customer})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["customer_id"] == customer
        assert body["score"] == expected[customer]
        # The morning's batch job read the same materialization: the scores agree exactly.
        assert body["score"] == batch[customer]
        assert body["decision"] == (body["score"] >= live.record.threshold)
        assert body["features"] == {f: rows[customer][f] for f in MODEL_FEATURES}
        assert isinstance(body["prediction_id"], int) and 0 <= body["prediction_id"] < 2**63
        assert dt.datetime.fromisoformat(body["request_ts"]).hour == 10


def test_a_full_payload_is_scored_as_sent(live: Live) -> None:
    [customer] = live.customers(1)
    by_id = live.client.post("/predict", json={"customer_id": customer}).json()
    reply = live.client.post("/predict", json={"features": by_id["features"]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["customer_id"] is None
    assert body["score"] == by_id["score"] and body["features"] == by_id["features"]

    changed = {**by_id["features"], "payment_failures_30d": 3, "avg_daily_minutes_7d": None}
    body = live.client.post("/predict", json={"customer_id": 42, "features": changed}).json()
    assert body["customer_id"] == 42
    assert body["features"]["payment_failures_30d"] == 3.0
    assert body["features"]["avg_daily_minutes_7d"] is None
    model = registry.load_model(live.paths.mlflow, live.record.model_uri)
    x = np.array([[np.nan if changed[f] is None else changed[f] for f in live.record.features]])
    assert body["score"] == round(float(model.predict_proba(x)[0, 1]), 6)


def test_a_batch_is_scored_together(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    customers = live.customers(60)
    singles = {
        c: live.client.post("/predict", json={"customer_id": c}).json()["score"] for c in customers
    }
    payload = live.client.post("/predict", json={"customer_id": customers[0]}).json()["features"]
    model = live.client.app.state.live.server.model  # type: ignore[attr-defined]
    calls: list[int] = []
    predict_proba = type(model).predict_proba  # the serving form is frozen: spy on its class

    def counted(self: object, x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return predict_proba(self, x)

    monkeypatch.setattr(type(model), "predict_proba", counted)

    items = [{"customer_id": c} for c in customers] + [{"features": payload}]
    reply = live.client.post("/predict/batch", json={"requests": items})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert calls == [len(items)]
    assert body["count"] == len(items) and body["failed"] == 0
    predictions = body["predictions"]
    assert [p["customer_id"] for p in predictions] == [*customers, None]
    assert [p["score"] for p in predictions] == [*singles.values(), singles[customers[0]]]
    assert len({p["prediction_id"] for p in predictions}) == len(items)
    assert len({p["request_ts"] for p in predictions}) == 1
    spooled = live.spooled("serving.predictions")[-len(items) :]
    assert [r["score"] for r in spooled] == [p["score"] for p in predictions]

    too_many = live.client.post(
        "/predict/batch", json={"requests": [{"customer_id": customers[0]}] * (MAX_BATCH + 1)}
    )
    assert too_many.status_code == 422 and "requests" in too_many.json()["detail"]
    empty = live.client.post("/predict/batch", json={"requests": []})
    assert empty.status_code == 422 and "requests" in empty.json()["detail"]
    unknown = live.client.post(
        "/predict/batch",
        json={"requests": [{"customer_id": customers[0]}, {"customer_id": 10**12}]},
    )
    assert unknown.status_code == 404
    assert "requests[1]" in unknown.json()["detail"] and str(10**12) in unknown.json()["detail"]


def test_an_unknown_customer_is_404_naming_it(live: Live) -> None:
    missing = int(live.snapshot["customer_id"].max()) + 1_000_000
    reply = live.client.post("/predict", json={"customer_id": missing})
    assert reply.status_code == 404
    assert str(missing) in reply.json()["detail"]
    lookup, line = [
        r
        for r in live.spooled("telemetry.logs")
        if json.loads(r["attrs"]).get("customer_id") == missing
    ]
    assert lookup["service"] == "feature-server" and lookup["level"] == "warning"
    assert lookup["message"] == f"GET /online/customer_features/{missing} 404"
    assert line["level"] == "warning" and line["message"].startswith("POST /predict 404 ")


def _payload(live: Live, **changes: Any) -> dict[str, Any]:
    features: dict[str, Any] = {f: 1.0 for f in MODEL_FEATURES}
    for name, value in changes.items():
        if value is ...:
            features.pop(name)
        else:
            features[name] = value
    return {"features": features}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"customer_id": "abc"}, "customer_id"),
        ({"customer_id": 5, "customer": 6}, "customer"),
        ({}, "customer_id or features"),
        ("missing", "features.tenure_days"),
        ("unknown", "features.account_age"),
        ("text", "features.sessions_7d"),
        ("bool", "features.sessions_7d"),
        ("batch", "requests[1].features.account_age"),
    ],
)
def test_a_bad_request_is_422_naming_the_field(live: Live, body: Any, field: str) -> None:
    path = "/predict"
    if body == "missing":
        body = _payload(live, tenure_days=...)
    elif body == "unknown":
        body = _payload(live, account_age=3)
    elif body == "text":
        body = _payload(live, sessions_7d="many")
    elif body == "bool":
        body = _payload(live, sessions_7d=True)
    elif body == "batch":
        path = "/predict/batch"
        body = {"requests": [_payload(live), _payload(live, account_age=3)]}
    reply = live.client.post(path, json=body)
    assert reply.status_code == 422, reply.text
    assert field in reply.json()["detail"]
    last = live.spooled("telemetry.logs")[-1]
    assert last["level"] == "warning" and f"POST {path} 422 " in last["message"]


def test_a_prediction_is_spooled_before_it_is_answered(live: Live) -> None:
    [customer] = live.customers(1)
    body = live.client.post("/predict", json={"customer_id": customer}).json()
    row = live.spooled("serving.predictions")[-1]  # read right after the answer
    con = connect(live.world)
    try:
        columns = [c for (c, *_) in con.execute("DESCRIBE serving.predictions").fetchall()]
    finally:
        con.close()
    assert list(row) == columns
    assert row["prediction_id"] == body["prediction_id"], "the id a client sees is the logged one"
    assert row["request_ts"] == body["request_ts"]
    assert row["customer_id"] == customer and row["source"] == "online"
    assert row["score"] == body["score"] and row["decision"] == body["decision"]
    assert row["model_version"] == live.record.model_version and row["status"] == "ok"
    assert {f: row[f] for f in MODEL_FEATURES} == body["features"]
    assert row["latency_ms"] > 0


def test_requests_are_logged_like_the_worlds_model_server(live: Live) -> None:
    [customer] = live.customers(1)
    live.client.post("/predict", json={"customer_id": customer})
    logs = live.spooled("telemetry.logs")
    assert logs[0]["event"] == "model_loaded"
    assert (
        logs[0]["message"] == f"loaded {live.record.model_name} version {live.record.model_version}"
    )
    lookup, line = logs[-2:]
    # The online row is read first, as the world's feature server logs it.
    assert lookup["service"] == "feature-server" and lookup["event"] == "lookup"
    assert lookup["message"] == f"GET /online/customer_features/{customer} 200"
    assert json.loads(lookup["attrs"]) == {"customer_id": customer, "status": 200}
    assert lookup["ts"] <= line["ts"]
    payload = live.client.post("/predict", json=_payload(live))
    assert payload.status_code == 200
    assert live.spooled("telemetry.logs")[-1]["service"] == "model-server", "no lookup"
    assert line["service"] == "model-server" and line["event"] == "request"
    assert line["level"] == "info"
    assert re.fullmatch(r"POST /predict 200 \d+\.\dms", line["message"]), line["message"]
    assert json.loads(line["attrs"]) == {
        "customer_id": customer,
        "model_version": live.record.model_version,
        "status": 200,
    }


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_requests_predictions_and_store_age(live: Live) -> None:
    customers = live.customers(5)
    for customer in customers:
        live.client.post("/predict", json={"customer_id": customer})
    live.client.post("/predict", json={"customer_id": -1})
    samples = _samples(live.client.get("/metrics").text)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    ok = value("model_server_requests_total", endpoint="/predict", status="200")
    assert ok >= len(customers)
    assert value("model_server_requests_total", endpoint="/predict", status="422") >= 1
    decided = value("model_server_predictions_total", decision="true") + value(
        "model_server_predictions_total", decision="false"
    )
    assert decided == value("model_server_prediction_score_count") >= ok
    assert value("model_server_request_duration_seconds_count", endpoint="/predict") >= ok + 1
    assert value("model_server_prediction_latency_seconds_count") >= ok
    # Served at about 10:00 from the 04:00 materialization.
    age = value("model_server_online_store_age_seconds")
    assert 6 * 3600 <= age <= 6 * 3600 + 15 * 60


def test_a_serving_fault_keeps_acting_on_live_requests(peak: Live, quiet: Live) -> None:
    """At the evening peak a share of lookups miss their deadline and are scored on an all-zero
    vector (quickly, with status 200); at a quiet hour none are, and scores are the model's."""
    [planted] = [f for f in peak.spec.faults if f.id == "serving-default-fallback"]
    day = peak.calendar.last_production_day + 1
    expected = float(planted.miss_share(day, np.array([PEAK_HOUR]))[0])
    assert expected >= 0.3
    # Both hours read the same materialization (04:00 that day).
    assert peak.snapshot.equals(quiet.snapshot)
    customers = peak.customers(200)

    def ask(live: Live) -> dict[int, dict[str, Any]]:
        out = {}
        for customer in customers:
            reply = live.client.post("/predict", json={"customer_id": customer})
            assert reply.status_code == 200, reply.text
            out[customer] = reply.json()
        return out

    at_peak, at_quiet = ask(peak), ask(quiet)
    zeroed = {c for c, b in at_peak.items() if all(v == 0 for v in b["features"].values())}
    assert abs(len(zeroed) / len(customers) - expected) < 0.15
    assert not [c for c, b in at_quiet.items() if all(v == 0 for v in b["features"].values())]

    model = _model_scores(quiet, customers)
    assert all(at_quiet[c]["score"] == model[c] for c in customers)
    assert all(at_peak[c]["score"] == model[c] for c in customers if c not in zeroed)
    assert len({at_peak[c]["score"] for c in zeroed}) == 1  # one vector, one score

    # The predictions log shows them answered ok, at the lookup deadline or later.
    spooled = {r["customer_id"]: r for r in peak.spooled("serving.predictions")}
    assert all(spooled[c]["status"] == "ok" for c in customers)
    assert all(spooled[c]["latency_ms"] >= planted.params.deadline_ms for c in zeroed)
    assert all(spooled[c]["monthly_price"] == 0 for c in zeroed)


def test_nothing_served_names_a_planted_fault(peak: Live) -> None:
    [customer] = peak.customers(1)
    surfaces = [
        peak.client.post("/predict", json={"customer_id": customer}).text,
        peak.client.post("/predict/batch", json={"requests": [{"customer_id": customer}]}).text,
        peak.client.post("/predict", json={"customer_id": -5}).text,
        peak.client.post("/predict", json={"features": {"x": 1}}).text,
        peak.client.get("/metadata").text,
        peak.client.get("/health").text,
        peak.client.get("/metrics").text,
        peak.client.get("/openapi.json").text,
        *(p.read_text() for p in peak.paths.run.rglob("*.jsonl")),
    ]
    words = ["fault", "inject", "planted", *fault_registry.catalog()]
    for surface in surfaces:
        assert not [w for w in words if w in surface.lower()]


def test_frames_and_rows_score_alike(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing at the serving hooks the server skips building request frames; going
    through them must give the same answers."""
    [customer] = live.customers(1)
    payload = live.client.post("/predict", json={"customer_id": customer}).json()["features"]
    payload["avg_daily_minutes_7d"] = None
    items = [{"customer_id": c} for c in live.customers(30)] + [{"features": payload}]

    def served() -> list[dict[str, Any]]:
        body = live.client.post("/predict/batch", json={"requests": items}).json()
        rows = live.spooled("serving.predictions")[-len(items) :]
        keep = ("latency_ms", "request_ts", "prediction_id")
        return [
            {k: v for k, v in {**p, **r}.items() if k not in keep}
            for p, r in zip(body["predictions"], rows, strict=True)
        ]

    direct = served()
    monkeypatch.setattr(live.client.app.state.live, "hooked", True)  # type: ignore[attr-defined]
    assert served() == direct
