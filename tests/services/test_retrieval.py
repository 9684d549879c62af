"""The live retrieval service on real worlds: it answers the way the world's production did."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from fastapi.testclient import TestClient

from sandbox import scenario
from sandbox.faults import registry as fault_registry
from sandbox.layout import WorldPaths
from sandbox.pipeline import registry, retrieve
from sandbox.services import spool
from sandbox.services.retrieval import SERVICE, create_app
from sandbox.services.simclock import SimClock
from sandbox.testing import Worlds, connect
from sandbox.world.build import BuildSummary


def _serve(world: BuildSummary) -> Iterator[TestClient]:
    paths = WorldPaths(world.root)
    calendar = scenario.load(paths.scenario).world.calendar()
    SimClock.starting(calendar).save(paths.run)
    try:
        with TestClient(create_app(world.root)) as client:
            yield client
    finally:
        shutil.rmtree(paths.run, ignore_errors=True)


@pytest.fixture(scope="module")
def live(faulty_world: BuildSummary) -> Iterator[TestClient]:
    yield from _serve(faulty_world)


@pytest.fixture(scope="module")
def embedding_world(worlds: Worlds) -> BuildSummary:
    return worlds.get("embedding")


@pytest.fixture(scope="module")
def embedding_live(embedding_world: BuildSummary) -> Iterator[TestClient]:
    yield from _serve(embedding_world)


def _spooled(world: BuildSummary, table: str) -> list[dict[str, Any]]:
    records, _ = spool.read_new(spool.spool_path(WorldPaths(world.root).run, SERVICE, table), 0)
    return records


def _last_ticket(world: BuildSummary) -> tuple[int, str]:
    con = connect(world)
    try:
        row = con.execute(
            "SELECT ticket_id, body FROM raw.support_tickets ORDER BY created_at DESC LIMIT 1"
        ).fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0]), str(row[1])


def _live_searches(world: BuildSummary, days: int = 2) -> list[tuple[int, str, list[int], float]]:
    """The world's own searches (ticket, query, top-k ids, top-1) on its last `days` days."""
    calendar = scenario.load(WorldPaths(world.root).scenario).world.calendar()
    con = connect(world)
    try:
        return con.execute(
            "SELECT ticket_id, query_text, top_k_ids, top1_score FROM retrieval.search_log "
            "WHERE request_ts >= $since ORDER BY request_ts",
            {"since": calendar.midnight(calendar.last_visible_day - days + 1)},
        ).fetchall()
    finally:
        con.close()


def test_search_suggests_ranked_articles(live: TestClient, faulty_world: BuildSummary) -> None:
    ticket_id, text = _last_ticket(faulty_world)
    response = live.post("/search", json={"text": text, "k": 7, "ticket_id": ticket_id})
    assert response.status_code == 200, response.text
    body = response.json()
    meta = retrieve.load_index(faulty_world.root / "candidate" / "indexes").meta
    assert body["encoder_version"] == 1
    assert body["index_version"] == meta["index_version"]
    assert isinstance(body["request_id"], int) and 0 < body["request_id"] < 2**63
    results = body["results"]
    assert [r["rank"] for r in results] == list(range(1, 8))
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.2
    assert all(r["title"] for r in results)
    assert len({r["article_id"] for r in results}) == 7
    # Simulated time: the stack starts right after the last production day.
    calendar = scenario.load(WorldPaths(faulty_world.root).scenario).world.calendar()
    assert body["request_ts"] >= calendar.midnight(calendar.last_production_day + 1).isoformat()
    assert len(live.post("/search", json={"text": text}).json()["results"]) == retrieve.TOP_K


def test_results_equal_direct_retrieval(live: TestClient, faulty_world: BuildSummary) -> None:
    root = faulty_world.root / "candidate"
    pipeline = registry.load_model(root / "mlflow", "models:/ticket-encoder@production")
    encoder = retrieve.Encoder(version=1, model=pipeline)
    index = retrieve.load_index(root / "indexes")
    _, text = _last_ticket(faulty_world)
    ids, scores = index.search(encoder.encode([text]), 10)
    results = live.post("/search", json={"text": text, "k": 10}).json()["results"]
    assert [r["article_id"] for r in results] == ids[0].tolist()
    np.testing.assert_allclose([r["score"] for r in results], scores[0], atol=1e-4)


def test_search_is_spooled_with_the_search_log_columns(
    live: TestClient, faulty_world: BuildSummary, faulty_db: duckdb.DuckDBPyConnection
) -> None:
    ticket_id, text = _last_ticket(faulty_world)
    body = live.post("/search", json={"text": text, "ticket_id": ticket_id}).json()
    rows = [
        r
        for r in _spooled(faulty_world, "retrieval.search_log")
        if r["request_id"] == body["request_id"]
    ]
    assert len(rows) == 1
    row = rows[0]
    columns = [c for c, *_ in faulty_db.sql("DESCRIBE retrieval.search_log").fetchall()]
    assert list(row) == columns
    assert row["ticket_id"] == ticket_id and row["query_text"] == text
    assert row["top_k_ids"] == [r["article_id"] for r in body["results"]]
    assert row["top_k_scores"] == [r["score"] for r in body["results"]]
    assert row["top1_score"] == body["results"][0]["score"]
    assert row["request_ts"] == body["request_ts"]
    assert row["encoder_version"] == 1 and row["index_version"] == body["index_version"]
    assert row["latency_ms"] > 0
    assert row["clicked_article_id"] is None and row["click_rank"] is None
    logs = [
        line
        for line in _spooled(faulty_world, "telemetry.logs")
        if json.loads(line["attrs"]).get("request_id") == body["request_id"]
    ]
    assert [(line["service"], line["event"], line["level"]) for line in logs] == [
        (SERVICE, "request", "info")
    ]
    assert logs[0]["message"].startswith("POST /search 200 ")


def test_feedback_records_the_click(live: TestClient, faulty_world: BuildSummary) -> None:
    _, text = _last_ticket(faulty_world)
    body = live.post("/search", json={"text": text}).json()
    second = body["results"][1]["article_id"]
    response = live.post("/feedback", json={"request_id": body["request_id"], "article_id": second})
    assert response.status_code == 200, response.text
    assert response.json()["click_rank"] == 2
    clicks = [
        r
        for r in _spooled(faulty_world, "retrieval.search_clicks")
        if r["request_id"] == body["request_id"]
    ]
    assert clicks == [
        {
            "request_id": body["request_id"],
            "clicked_article_id": second,
            "click_rank": 2,
            "clicked_at": response.json()["clicked_at"],
        }
    ]


def test_feedback_for_an_unknown_search_or_article_is_404(
    live: TestClient, faulty_world: BuildSummary
) -> None:
    response = live.post("/feedback", json={"request_id": 12345, "article_id": 1})
    assert response.status_code == 404
    _, text = _last_ticket(faulty_world)
    body = live.post("/search", json={"text": text, "k": 1}).json()
    shown = body["results"][0]["article_id"]
    other = next(i for i in range(1, 10_000) if i != shown)
    response = live.post("/feedback", json={"request_id": body["request_id"], "article_id": other})
    assert response.status_code == 404
    assert not [
        r
        for r in _spooled(faulty_world, "retrieval.search_clicks")
        if r["request_id"] in (12345, body["request_id"])
    ]


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/search", {"k": 3}, "text"),
        ("/search", {"text": ""}, "text"),
        ("/search", {"text": "x" * 5001}, "text"),
        ("/search", {"text": "cannot log in", "k": 0}, "k"),
        ("/search", {"text": "cannot log in", "k": 100}, "k"),
        ("/search", {"text": "cannot log in", "ticket_id": "abc"}, "ticket_id"),
        ("/feedback", {"request_id": 1}, "article_id"),
    ],
)
def test_malformed_bodies_name_the_field(
    live: TestClient, path: str, payload: dict[str, Any], field: str
) -> None:
    response = live.post(path, json=payload)
    assert response.status_code == 422
    assert [e["loc"][-1] for e in response.json()["detail"]] == [field]


def test_metadata_describes_encoder_and_index(live: TestClient, faulty_world: BuildSummary) -> None:
    meta = retrieve.load_index(faulty_world.root / "candidate" / "indexes").meta
    body = live.get("/metadata").json()
    assert body["encoder_name"] == "ticket-encoder"
    assert body["encoder_version"] == 1
    assert body["encoder_uri"] == "models:/ticket-encoder@production"
    assert body["encoder_registry_version"] == "1"
    assert body["index_version"] == meta["index_version"]
    assert body["index_metadata"] == meta
    assert body["article_count"] == meta["doc_count"]
    assert body["dimension"] == retrieve.ENCODER_DIM
    assert live.get("/health").json()["status"] == "ok"


def test_metrics_count_searches_clicks_and_errors(
    live: TestClient, faulty_world: BuildSummary
) -> None:
    _, text = _last_ticket(faulty_world)
    body = live.post("/search", json={"text": text}).json()
    live.post(
        "/feedback",
        json={"request_id": body["request_id"], "article_id": body["results"][0]["article_id"]},
    )
    live.post("/search", json={"text": ""})
    response = live.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    index_version = body["index_version"]
    key = f'retrieval_searches_total{{encoder_version="1",index_version="{index_version}"}}'
    assert samples[key] >= 1
    assert samples["retrieval_search_latency_seconds_count"] >= 1
    assert samples["retrieval_top1_score_count"] >= 1
    assert samples['retrieval_clicks_total{rank="1"}'] >= 1
    assert samples['retrieval_errors_total{path="/search",status="422"}'] >= 1


def _samples(text: str) -> dict[str, float]:
    return {
        name: float(value)
        for line in text.splitlines()
        if line and not line.startswith("#")
        for name, value in [line.rsplit(" ", 1)]
    }


def test_live_service_reproduces_the_mismatched_encoder(
    embedding_live: TestClient, embedding_world: BuildSummary, live: TestClient
) -> None:
    """With the encoder upgraded past the index, live search answers exactly as the world's last
    days did: a newer encoder than the index's, and top-1 similarity far below a healthy world's."""
    meta = embedding_live.get("/metadata").json()
    assert meta["encoder_version"] != meta["index_metadata"]["encoder_version"] == 1
    searches = _live_searches(embedding_world)
    assert len(searches) >= 20
    degraded, healthy = [], []
    for ticket_id, text, world_ids, world_top1 in searches:
        body = embedding_live.post("/search", json={"text": text, "ticket_id": ticket_id}).json()
        assert body["encoder_version"] == meta["encoder_version"]
        assert [r["article_id"] for r in body["results"]] == world_ids
        assert body["results"][0]["score"] == pytest.approx(world_top1, abs=1e-4)
        degraded.append(body["results"][0]["score"])
        healthy.append(live.post("/search", json={"text": text}).json()["results"][0]["score"])
    assert np.mean(degraded) <= np.mean(healthy) - 0.1
    assert np.mean(degraded) < 0.45 < np.mean(healthy)


@pytest.fixture(scope="module")
def embedding_hard_world(worlds: Worlds) -> BuildSummary:
    return worlds.get("embedding-hard")


def test_at_hard_the_live_service_searches_the_rebuilt_index_by_its_build_id(
    embedding_hard_world: BuildSummary,
) -> None:
    """At hard the index ids are build dates: the live service loads the build the world's last
    days searched, says so under the same id, and answers as those days did."""
    searches = _live_searches(embedding_hard_world, days=1)[:10]
    con = connect(embedding_hard_world)
    try:
        last_index = con.execute(
            "SELECT index_version FROM retrieval.search_log ORDER BY request_ts DESC LIMIT 1"
        ).fetchall()[0]
    finally:
        con.close()
    for client in _serve(embedding_hard_world):
        meta = client.get("/metadata").json()
        assert meta["index_version"] == last_index[0] == meta["index_metadata"]["index_version"]
        assert re.fullmatch(r"articles-\d{8}", meta["index_version"])
        assert meta["index_metadata"]["built_on"].replace("-", "") == meta["index_version"][9:]
        assert meta["encoder_version"] != meta["index_metadata"]["encoder_version"] == 1
        for ticket_id, text, world_ids, world_top1 in searches:
            body = client.post("/search", json={"text": text, "ticket_id": ticket_id}).json()
            assert body["index_version"] == meta["index_version"]
            assert [r["article_id"] for r in body["results"]] == world_ids
            assert body["results"][0]["score"] == pytest.approx(world_top1, abs=1e-4)


def test_nothing_served_names_a_planted_fault(
    embedding_live: TestClient, embedding_world: BuildSummary
) -> None:
    _, text = _last_ticket(embedding_world)
    body = embedding_live.post("/search", json={"text": text}).json()
    embedding_live.post("/feedback", json={"request_id": body["request_id"], "article_id": -1})
    embedding_live.post("/search", json={"k": 0})
    surfaces = [
        json.dumps(body),
        embedding_live.get("/metadata").text,
        embedding_live.get("/health").text,
        embedding_live.get("/metrics").text,
        *(p.read_text() for p in Path(WorldPaths(embedding_world.root).run).rglob("*.jsonl")),
    ]
    words = ["fault", "inject", "planted", *fault_registry.catalog()]
    for surface in surfaces:
        assert not [w for w in words if w in surface.lower()]
