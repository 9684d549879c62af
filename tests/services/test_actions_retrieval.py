"""Rebuilding the article index, or rolling the retrieval service back, from the ops console, on a
running stack of the embedding world.

The world's fault upgraded the ticket encoder without rebuilding the help-article index, so the
live searches rarely suggest an article that covers the ticket's problem. `rebuild-index`
re-embeds the articles with the deployed encoder; from its effective time (three simulated hours
later) the same searches find relevant articles about as often as the same-seed control world's
service does, and until then nothing changes. Its progress is in the candidate's logs as simulated
time passes. `rollback-deploy` of the retrieval service instead takes the encoder back to the one
the index was built with: searches are as good as the control world's again, from its effective
time, and the model server is left as it was.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import numpy as np
import pytest

from sandbox import scenario
from sandbox.actions.catalog import CATALOG, REBUILD_INDEX, ROLLBACK
from sandbox.actions.overrides import Applied, Overrides
from sandbox.layout import WorldPaths
from sandbox.pipeline import registry, retrieve
from sandbox.services import spool
from sandbox.services.common import ServiceContext
from sandbox.services.retrieval import ENCODER_URI, SERVICE, RetrievalService
from sandbox.services.simclock import SimClock
from sandbox.services.traffic import _relevant_articles
from sandbox.testing import Worlds
from sandbox.world.build import BuildSummary
from tests.http_client import HTTP
from tests.services.acting import act, acting_stack, forward, verdicts
from tests.services.running import Stack
from tests.services.test_actions_retrain import FROZEN
from tests.services.test_model_server import _served_view
from tests.waiting import until

QUERIES = 60  # tickets searched again at each step


@pytest.fixture(scope="module")
def embedding(worlds: Worlds) -> BuildSummary:
    return worlds.get("embedding")


@pytest.fixture(scope="module")
def rebuilding(
    embedding: BuildSummary, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with acting_stack(embedding, tmp_path_factory) as stack:
        yield stack


@pytest.fixture(scope="module")
def rolling_back(
    embedding: BuildSummary, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with acting_stack(embedding, tmp_path_factory) as stack:
        yield stack


def _queries(world: BuildSummary) -> list[tuple[str, frozenset[int]]]:
    """Tickets' texts with the articles that cover each one's problem (the interviewer's truth,
    as the live agents judge a suggestion)."""
    paths = WorldPaths(world.root)
    with duckdb.connect(str(paths.duckdb), read_only=True) as con:
        since, end = con.execute(
            "SELECT min(created_at), max(created_at) + INTERVAL 1 SECOND FROM raw.support_tickets"
        ).fetchone()  # type: ignore[misc]
        relevant = _relevant_articles(con, paths.truth, since, end)
        texts = con.execute(
            "SELECT ticket_id, body FROM raw.support_tickets ORDER BY ticket_id"
        ).fetchall()
    found = [(text, relevant[t]) for t, text in texts if text and relevant.get(t)]
    return found[:: max(1, len(found) // QUERIES)][:QUERIES]


def _hits(ranked: list[list[int]], queries: list[tuple[str, frozenset[int]]]) -> float:
    """The share of searches with a relevant article among the suggestions."""
    return float(
        np.mean([bool(set(ids) & rel) for ids, (_, rel) in zip(ranked, queries, strict=True)])
    )


def _control_hits(control: BuildSummary, queries: list[tuple[str, frozenset[int]]]) -> float:
    """The same searches as the control world's service answers them: its production encoder
    against its article index."""
    paths = WorldPaths(control.root)
    encoder = retrieve.Encoder(1, registry.load_model(paths.mlflow, ENCODER_URI))
    ids, _ = retrieve.load_index(paths.indexes).search(
        encoder.encode([text for text, _ in queries]), retrieve.TOP_K
    )
    return _hits([[int(i) for i in row] for row in ids], queries)


def _live(stack: Stack, queries: list[tuple[str, frozenset[int]]]) -> tuple[float, set[str]]:
    """The live service's answers to the searches, as the candidate's session: the share with a
    relevant article, and the index versions searched."""
    ranked, versions = [], set()
    with httpx.Client(base_url=stack.url, headers=stack.candidate, timeout=10) as client:
        for text, _ in queries:
            reply = client.post(
                "/services/retrieval/search", json={"text": text, "k": retrieve.TOP_K}
            )
            assert reply.status_code == 200, reply.text
            answer = reply.json()
            ranked.append([r["article_id"] for r in answer["results"]])
            versions.add(answer["index_version"])
    return _hits(ranked, queries), versions


def _retrieval_now(stack: Stack) -> dt.datetime:
    reply = HTTP.get(stack.url + "/services/retrieval/health", headers=stack.candidate, timeout=10)
    return dt.datetime.fromisoformat(reply.json()["now"])


def _progress(stack: Stack, change_id: str) -> list[str]:
    """The rebuild's lines in the candidate's logs so far, oldest first."""
    rows = stack.sql(
        "SELECT message FROM telemetry.logs WHERE service = 'retrieval' "
        f"AND attrs LIKE '%{change_id}%' AND event LIKE 'index_%' ORDER BY ts"
    )["rows"]
    return [r[0] for r in rows]


def test_rebuilding_the_index_brings_search_relevance_back_to_the_control_world(
    rebuilding: Stack, embedding: BuildSummary, control_world: BuildSummary
) -> None:
    queries = _queries(embedding)
    assert len(queries) == QUERIES
    control = _control_hits(control_world, queries)
    before, versions = _live(rebuilding, queries)
    (original,) = versions
    assert control - before > 0.3, (control, before)

    applied = act(rebuilding, REBUILD_INDEX, {})
    requested = dt.datetime.fromisoformat(applied["requested_at"])
    effective = dt.datetime.fromisoformat(applied["effective_at"])
    assert effective - requested == CATALOG[REBUILD_INDEX].delay

    # The service starts at once; its progress shows only as simulated time reaches each line.
    started = until(lambda: _progress(rebuilding, applied["id"]), "the rebuild started")
    assert started[0].startswith("rebuilding article index with ticket-encoder version 2")
    assert not any("re-embedded" in line for line in started)

    # Halfway: some articles re-embedded, searches as before.
    forward(rebuilding, now=_retrieval_now, hours=1.5)
    halfway = until(
        lambda: [m for m in _progress(rebuilding, applied["id"]) if "re-embedded" in m],
        "progress lines in the logs",
    )
    assert 0 < len(halfway) < 6
    assert all(re.fullmatch(r"re-embedded \d+ of 288 articles", m) for m in halfway)
    assert _live(rebuilding, queries) == (before, {original})

    # From the swap on, the rebuilt index answers, and the symptom is back near control.
    forward(rebuilding, now=_retrieval_now, hours=1.6)
    after, versions = _live(rebuilding, queries)
    assert versions == {f"articles-{effective:%Y%m%d}-e2"}
    assert abs(control - after) < (control - before) / 4, (control, before, after)
    lines = until(
        lambda: (found := _progress(rebuilding, applied["id"]))[-1].startswith("loaded") and found,
        "the swap in the logs",
    )
    assert "re-embedded 288 of 288 articles" in lines
    assert lines[-1] == f"loaded article index articles-{effective:%Y%m%d}-e2 (288 articles)"
    applied_line = (
        "SELECT service FROM telemetry.logs WHERE event = 'change_applied' "
        f"AND attrs LIKE '%{applied['id']}%'"
    )
    assert rebuilding.scalar(applied_line) == "retrieval"
    meta = HTTP.get(
        rebuilding.url + "/services/retrieval/metadata", headers=rebuilding.candidate, timeout=10
    ).json()
    assert meta["index_metadata"]["encoder_version"] == meta["encoder_version"] == 2

    # A restarted service searches the kept index at once, without rebuilding or logging again
    # (a second instance on the same run directory, under a name of its own).
    restarted = RetrievalService(ServiceContext(rebuilding.world, "retrieval-restarted"))
    assert restarted.index_at(effective).meta == meta["index_metadata"]
    assert restarted.index_at(requested).meta["index_version"] == original
    for service in (SERVICE, "retrieval-restarted"):
        path = spool.spool_path(rebuilding.world / "run", service, "telemetry.logs")
        lines, _ = spool.read_new(path, 0) if path.exists() else ([], 0)
        assert sum(line["event"] == "index_rebuild_started" for line in lines) == (
            service == SERVICE
        )

    assert verdicts(rebuilding) == {REBUILD_INDEX: "fixes"}


def _metadata(stack: Stack, service: str) -> dict[str, object]:
    reply = HTTP.get(
        f"{stack.url}/services/{service}/metadata", headers=stack.candidate, timeout=10
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_rolling_the_retrieval_service_back_serves_the_encoder_its_index_was_built_with(
    rolling_back: Stack, embedding: BuildSummary, control_world: BuildSummary
) -> None:
    stack = rolling_back
    queries = _queries(embedding)
    control = _control_hits(control_world, queries)
    before, (original,) = _live(stack, queries)
    model_before = _metadata(stack, "model")["model_version"]
    assert _metadata(stack, "retrieval")["encoder_version"] == 2

    applied = act(stack, ROLLBACK, {"service": "retrieval"})
    requested = dt.datetime.fromisoformat(applied["requested_at"])
    effective = dt.datetime.fromisoformat(applied["effective_at"])
    assert effective - requested == CATALOG[ROLLBACK].delay
    assert _live(stack, queries) == (before, {original})  # not yet

    forward(stack, now=_retrieval_now, hours=0.5)
    after, versions = _live(stack, queries)
    assert versions == {original}  # the same index, searched with the encoder it was built with
    assert _metadata(stack, "retrieval")["encoder_version"] == 1
    assert abs(control - after) < (control - before) / 4, (control, before, after)
    assert _metadata(stack, "model")["model_version"] == model_before
    applied_by = stack.scalar(
        "SELECT service FROM telemetry.logs WHERE event = 'change_applied' "
        f"AND attrs LIKE '%{applied['id']}%'"
    )
    assert applied_by == "retrieval"
    loaded = until(
        lambda: stack.sql(
            "SELECT attrs FROM telemetry.logs WHERE service = 'retrieval' "
            f"AND event = 'encoder_loaded' AND ts >= TIMESTAMP '{effective}'"
        )["rows"],
        "the rolled-back encoder in the logs",
    )
    assert '"encoder_version": 1' in loaded[-1][0]

    # A restarted service serves the same: the world's encoder before, the rolled-back one after.
    restarted = RetrievalService(ServiceContext(stack.world, "retrieval-restarted"))
    assert restarted.encoder_at(requested).version == 2
    assert restarted.encoder_at(effective).version == 1

    assert verdicts(stack) == {ROLLBACK: "mitigates"}


def test_rolling_back_a_retrieval_service_never_upgraded_changes_nothing(
    control_world: BuildSummary, tmp_path: Path
) -> None:
    """With one encoder deployed there is nothing to go back to: the same encoder searches."""
    paths = _served_view(control_world, "", tmp_path / "control")
    calendar = scenario.load(paths.scenario).world.calendar()
    now = calendar.at(calendar.last_production_day + 1, 10.0)
    SimClock.starting(calendar, speed=FROZEN, resume_at=now).save(paths.run)
    service = RetrievalService(ServiceContext(paths.root, SERVICE))
    before = service.current().encoder
    Overrides(paths.run).append(
        Applied(
            id="back",
            action=ROLLBACK,
            params={"service": "retrieval"},
            requested_at=now - CATALOG[ROLLBACK].delay,
            effective_at=now,
        )
    )
    assert service.encoder_at(now) is before
    assert service.current().encoder is before
