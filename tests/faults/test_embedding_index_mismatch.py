"""The encoder/index mismatch: parameters, the encoder swap, and that it really breaks retrieval."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from sandbox import rng, scenario
from sandbox.faults.base import HookContext
from sandbox.faults.embedding_index_mismatch import EmbeddingIndexMismatch, Params
from sandbox.pipeline import retrieve
from sandbox.product import corpus

CAL = scenario.load(None).world.calendar()
TELLTALE = re.compile(r"\bfault|inject|planted|answer|sabotag|\bbug\b|mismatch", re.IGNORECASE)


def ctx(day: int, seed: int = 7) -> HookContext:
    return HookContext(seed=seed, day=day, calendar=CAL)


@pytest.fixture(scope="module")
def v1() -> retrieve.Encoder:
    return retrieve.fit_encoder(7, version=1)


@pytest.mark.parametrize(
    "params",
    [
        {"encoder_version": 1},
        {"encoder_version": 10},
        {"ramp_days": 3},
        {"onset_day": 0},
        {"onset_day": 43},
        {"surprise": 1},
    ],
)
def test_invalid_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Params(**params)


def test_ramp_must_be_a_step_with_a_clear_message() -> None:
    with pytest.raises(ValidationError, match="step change"):
        Params(ramp_days=5)


def test_the_service_switches_encoders_at_onset(v1: retrieve.Encoder) -> None:
    fault = EmbeddingIndexMismatch(Params(onset_day=10, encoder_version=3))
    assert fault.handle("retrieve.query_encoder", v1, ctx(9)) is v1
    after = fault.handle("retrieve.query_encoder", v1, ctx(10))
    assert after.version == 3
    # Fitted once per world and reused every day after onset.
    assert fault.handle("retrieve.query_encoder", v1, ctx(30)) is after
    # Other hook points pass through.
    assert fault.handle("serve.traffic", 1.0, ctx(20)) == 1.0


def test_the_new_encoder_is_deterministic_and_has_the_same_dimension(
    v1: retrieve.Encoder,
) -> None:
    texts = ["my card was charged twice", "video keeps buffering on my tv"]
    a = EmbeddingIndexMismatch(Params()).upgraded_encoder(7).encode(texts)
    b = EmbeddingIndexMismatch(Params()).upgraded_encoder(7).encode(texts)
    assert a.shape == v1.encode(texts).shape == (2, retrieve.ENCODER_DIM)
    np.testing.assert_array_equal(a, b)


def test_queries_from_the_new_encoder_miss_the_old_index(v1: retrieve.Encoder) -> None:
    """The mechanism: same dimension, no error, but the v1 index no longer finds the article."""
    articles = corpus.help_articles()
    index = retrieve.build_index(v1, articles, built_on=dt.date(2026, 1, 1))
    problems = corpus.problems()
    g = rng.stream(3, "test-queries")
    keys = (problems["topic"] + "/" + problems["problem"]).to_numpy()[
        g.integers(0, problems.height, 300)
    ]
    devices = np.asarray(list(corpus.PLATFORMS))[g.integers(0, len(corpus.PLATFORMS), 300)]
    queries = corpus.ticket_texts(g, keys, devices)
    covers = dict(
        zip(
            articles["article_id"].to_list(),
            (articles["topic"] + "/" + articles["problem"]).to_list(),
            strict=True,
        )
    )
    v2 = EmbeddingIndexMismatch(Params()).upgraded_encoder(7)

    def quality(encoder: retrieve.Encoder) -> tuple[float, float]:
        ids, scores = index.search(encoder.encode(queries))
        hits = np.mean([covers[int(i)] == k for i, k in zip(ids[:, 0], keys, strict=True)])
        return float(scores[:, 0].mean()), float(hits)

    (top1_old, hit_old), (top1_new, hit_new) = quality(v1), quality(v2)
    assert hit_old >= 0.9 and hit_new <= 0.3
    assert top1_new <= top1_old - 0.1


def test_investigation_steps_tell_a_mismatch_from_a_healthy_log() -> None:
    steps = EmbeddingIndexMismatch(Params()).investigation(CAL)
    by_version = next(s for s in steps if s.evidence == "encoder-version")
    healthy = pl.DataFrame({"encoder_version": [1], "index_version": ["articles-20251208-e1"]})
    broken = pl.DataFrame(
        {"encoder_version": [1, 2], "index_version": ["articles-20251208-e1"] * 2}
    )
    assert not by_version.found(healthy)
    assert by_version.found(broken)
    weekly = steps[0]
    assert weekly.found(pl.DataFrame({"click_through": [0.97, 0.96, 0.2]}))
    assert not weekly.found(pl.DataFrame({"click_through": [0.97, 0.96, 0.95]}))


def test_candidate_visible_text_reads_like_ordinary_ops() -> None:
    fault = EmbeddingIndexMismatch(Params(onset_day=20, encoder_version=4))
    entries = fault.changelog(CAL)
    assert [e["day"] for e in entries] == [19, 24]
    for entry in entries:
        assert not TELLTALE.search(f"{entry['title']} {entry['body']}"), entry
    titles = {e.ref for e in fault.answer_key(CAL).evidence if e.kind == "changelog"}
    assert titles <= {e["title"] for e in entries}


def test_the_churn_step_needs_many_unresolved_customers_churning_more() -> None:
    step = EmbeddingIndexMismatch(Params()).investigation(CAL)[-1]

    def frame(scored: int, rate: float) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "support_contact": ["no ticket", "tickets all resolved", "unresolved ticket"],
                "scored": [200_000, 20_000, scored],
                "churn_rate": [0.026, 0.026, rate],
            }
        )

    assert step.found(frame(9000, 0.047))
    assert not step.found(frame(300, 0.047))  # the control has a few hundred at most
    assert not step.found(frame(9000, 0.027))


# -- difficulty tiers ---------------------------------------------------------------------------
def _changelog_text(fault: EmbeddingIndexMismatch) -> str:
    return " ".join(f"{e['title']} {e['body']}" for e in fault.changelog(CAL))


def test_only_guided_names_the_encoder_and_its_mechanism() -> None:
    guided, standard, hard = (
        EmbeddingIndexMismatch(Params(), tier)  # type: ignore[arg-type]
        for tier in ("guided", "standard", "hard")
    )
    assert "ticket-encoder v2" in _changelog_text(guided) and "drop-in" in _changelog_text(guided)
    for fault in (standard, hard):
        text = _changelog_text(fault).lower()
        assert not [t for t in fault.tells(fault.tier) if t.lower() in text], fault.tier
        assert "encoder" not in text and "dimension" not in text
    # Standard still logs a release the evening before onset; hard logs none.
    assert any(e["day"] == 14 and e["service"] == "retrieval" for e in standard.changelog(CAL))
    assert not any(e["day"] == 14 for e in hard.changelog(CAL))


def test_at_hard_the_noise_is_retrieval_changes_around_the_onset() -> None:
    fault = EmbeddingIndexMismatch(Params(onset_day=20), "hard")
    entries = fault.changelog(CAL)
    assert sorted(e["day"] for e in entries) == [13, 17, 22, 24]
    assert sum(e["service"] == "retrieval" for e in entries) >= 2
    for entry in entries:
        assert not TELLTALE.search(f"{entry['title']} {entry['body']}"), entry
    titles = {e.ref for e in fault.answer_key(CAL).evidence if e.kind == "changelog"}
    assert titles == {"retrieval: help-article index rebuilt"}


def test_at_hard_the_index_ids_are_build_dates_and_the_index_is_rebuilt_before_onset(
    v1: retrieve.Encoder,
) -> None:
    base = retrieve.build_index(v1, corpus.help_articles(), built_on=CAL.date(CAL.first_day))
    assert base.meta["index_version"].endswith("-e1")
    for tier in ("guided", "standard"):
        fault = EmbeddingIndexMismatch(Params(), tier)  # type: ignore[arg-type]
        assert fault.handle("retrieve.index", base, ctx(30)) is base
    fault = EmbeddingIndexMismatch(Params(onset_day=15), "hard")
    first, before, rebuilt, later = (
        fault.handle("retrieve.index", base, ctx(day)) for day in (CAL.first_day, 8, 9, 40)
    )
    assert first is before and rebuilt is later
    assert first.meta["index_version"] == f"articles-{CAL.date(CAL.first_day):%Y%m%d}"
    assert rebuilt.meta["index_version"] == f"articles-{CAL.date(9):%Y%m%d}"
    assert rebuilt.meta["built_on"] == str(CAL.date(9))
    # A rebuild with the same encoder and articles: the same vectors, the same encoder.
    assert rebuilt.index is base.index
    assert rebuilt.meta["encoder_version"] == 1
    assert {k: v for k, v in rebuilt.meta.items() if k not in ("index_version", "built_on")} == {
        k: v for k, v in base.meta.items() if k not in ("index_version", "built_on")
    }


def test_at_hard_the_versions_step_needs_one_build_serving_two_encoders() -> None:
    steps = EmbeddingIndexMismatch(Params(), "hard").investigation(CAL)
    assert len(steps) >= 4
    by_version = next(s for s in steps if s.evidence == "encoder-version")
    healthy = pl.DataFrame(
        {"encoder_version": [1, 1], "index_version": ["articles-20260101", "articles-20260308"]}
    )
    broken = pl.DataFrame(
        {
            "encoder_version": [1, 1, 2],
            "index_version": ["articles-20260101", "articles-20260308", "articles-20260308"],
        }
    )
    assert not by_version.found(healthy)
    assert by_version.found(broken)
    topics = next(s for s in steps if s.evidence == "off-topic")
    assert topics.found(pl.DataFrame({"top1_on_topic": [0.93, 0.94, 0.2]}))
    assert not topics.found(pl.DataFrame({"top1_on_topic": [0.93, 0.94, 0.92]}))
