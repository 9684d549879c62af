"""The duplicate-delivery fault: its parameters and what it does to one day's billing events."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from sandbox import scenario
from sandbox.faults.base import HookContext
from sandbox.faults.duplicate_billing_events import DuplicateBillingEvents, Params

CAL = scenario.load(None).world.calendar()
N = 20_000


def fault(**params: object) -> DuplicateBillingEvents:
    return DuplicateBillingEvents(Params(**params))


def ctx(day: int, seed: int = 1) -> HookContext:
    return HookContext(seed=seed, day=day, calendar=CAL)


def billing(n: int = N, first_id: int = 1) -> pl.DataFrame:
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    start = dt.datetime(2026, 3, 2)
    return pl.DataFrame(
        {
            "event_id": ids,
            "customer_id": ids + 100_000,
            "event_ts": [start + dt.timedelta(seconds=int(i)) for i in ids],
            "amount": np.full(n, 7.99),
            "currency": ["USD"] * n,
            "status": np.where(ids % 10 == 0, "failed", "succeeded"),
            "attempt": np.ones(n, dtype=np.int64),
            "payment_method": ["card"] * n,
            "ingested_at": [start + dt.timedelta(days=1, seconds=int(i)) for i in ids],
        }
    )


@pytest.mark.parametrize(
    "params",
    [
        {"duplicate_share": 0.04},
        {"duplicate_share": 0.81},
        {"onset_day": 43},
        {"ramp_days": 22},
        {"surprise": 1},
    ],
)
def test_invalid_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Params(**params)


def test_nothing_changes_before_onset() -> None:
    rows = billing()
    assert fault(onset_day=10).handle("ingest.billing", rows, ctx(9)).equals(rows)


def test_share_delivered_twice_ramps_up() -> None:
    f = fault(onset_day=10, ramp_days=4, duplicate_share=0.4)
    rows = billing()

    def extra(day: int) -> float:
        return f.handle("ingest.billing", rows, ctx(day)).height / N - 1

    assert extra(10) == pytest.approx(0.1, abs=0.015)
    assert extra(13) == pytest.approx(0.4, abs=0.015)
    assert extra(40) == pytest.approx(0.4, abs=0.015)


def test_copies_are_identical_and_arrive_later() -> None:
    f = fault(onset_day=1, ramp_days=0, duplicate_share=0.3)
    rows = billing()
    out = f.handle("ingest.billing", rows, ctx(5))
    assert out.columns == rows.columns and out.schema == rows.schema
    assert out["event_id"].n_unique() == N  # nothing lost, nothing new
    assert out.group_by("event_id").len()["len"].max() == 2
    payload = [c for c in rows.columns if c != "ingested_at"]
    assert out.unique(payload).height == N
    pairs = out.filter(pl.col("event_id").is_duplicated()).group_by("event_id", maintain_order=True)
    lag = pairs.agg((pl.col("ingested_at").last() - pl.col("ingested_at").first()).alias("lag"))
    assert (lag["lag"] >= dt.timedelta(minutes=2)).all()
    assert (lag["lag"] <= dt.timedelta(minutes=45)).all()
    # The original delivery keeps its place and its timestamp; rows stay in event order.
    assert out.unique("event_id", keep="first").sort("event_id").equals(rows)
    assert out["event_id"].is_sorted()


def test_failed_charges_are_duplicated_like_any_other() -> None:
    f = fault(onset_day=1, ramp_days=0, duplicate_share=0.3)
    out = f.handle("ingest.billing", billing(), ctx(5))
    failed = out.filter(pl.col("status") == "failed")
    assert failed.height / failed["event_id"].n_unique() - 1 == pytest.approx(0.3, abs=0.05)


def test_which_events_repeat_is_stable_and_deterministic() -> None:
    f = fault(onset_day=1, ramp_days=10)
    rows = billing()
    early = set(
        f.handle("ingest.billing", rows, ctx(3)).filter(pl.col("event_id").is_duplicated())[
            "event_id"
        ]
    )
    later = set(
        f.handle("ingest.billing", rows, ctx(8)).filter(pl.col("event_id").is_duplicated())[
            "event_id"
        ]
    )
    assert early < later
    assert f.handle("ingest.billing", rows, ctx(8)).equals(f.handle("ingest.billing", rows, ctx(8)))
    assert f.handle("ingest.activity", rows, ctx(8)) is rows
    assert f.handle("ingest.billing", rows.head(0), ctx(8)).height == 0


def test_candidate_visible_text_names_nothing() -> None:
    f = fault()
    texts = [v for e in f.changelog(CAL) for v in e.values() if isinstance(v, str)]
    for text in texts:
        lowered = text.lower()
        for word in ("fault", "inject", "planted", "answer", "sabotag", "bug", "duplicate"):
            assert word not in lowered, (word, text)
        assert f.id not in lowered and type(f).__name__.lower() not in lowered


def test_answer_key_and_expected_share() -> None:
    f = fault(onset_day=30, duplicate_share=0.5)
    key = f.key(CAL)
    assert "50%" in key.root_cause and "event_id" in key.root_cause
    assert {e.kind for e in key.evidence} == {"table_column", "metric", "log_pattern", "changelog"}
    titles = {e["title"] for e in f.changelog(CAL)}
    assert {e.ref for e in key.evidence if e.kind == "changelog"} <= titles
    assert any("experiment" in p for p in key.probes)
    assert 3 <= len(key.investigation) <= 6
    assert fault(onset_day=1, ramp_days=0, duplicate_share=0.5).expected_share(CAL) == 0.5
    assert 0 < fault(onset_day=40, duplicate_share=0.8).expected_share(CAL) < 0.8
