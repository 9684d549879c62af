"""The status-rename fault: its parameters, what it does to billing events, and how it composes."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from sandbox import scenario
from sandbox.faults.base import FaultSet, HookContext
from sandbox.faults.duplicate_billing_events import DuplicateBillingEvents
from sandbox.faults.duplicate_billing_events import Params as DuplicateParams
from sandbox.faults.payment_status_renamed import NEW_STATUS, Params, PaymentStatusRenamed
from sandbox.world.population import PAYMENT_METHODS

CAL = scenario.load(None).world.calendar()
N = 20_000


def fault(**params: object) -> PaymentStatusRenamed:
    return PaymentStatusRenamed(Params(**params))


def ctx(day: int) -> HookContext:
    return HookContext(seed=1, day=day, calendar=CAL)


def billing(n: int = N) -> pl.DataFrame:
    """One day's raw billing events: every method, every fourth charge failed."""
    ids = np.arange(n, dtype=np.int64)
    start = dt.datetime(2026, 3, 2)
    return pl.DataFrame(
        {
            "event_id": ids + 1,
            "customer_id": ids + 100_000,
            "event_ts": [start + dt.timedelta(seconds=int(i)) for i in ids],
            "amount": np.full(n, 12.99),
            "currency": ["USD"] * n,
            "status": np.where(ids % 4 == 0, "failed", "succeeded"),
            "attempt": np.ones(n, dtype=np.int64),
            "payment_method": np.asarray(PAYMENT_METHODS)[(ids // 4) % len(PAYMENT_METHODS)],
            "ingested_at": [start + dt.timedelta(days=1, seconds=int(i)) for i in ids],
        }
    )


@pytest.mark.parametrize(
    "params",
    [
        {"target_payment_method": "cash"},
        {"migrated_share": 0.1},
        {"migrated_share": 1.5},
        {"onset_day": 0},
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


def test_only_failed_charges_of_the_method_are_renamed_as_it_migrates() -> None:
    f = fault(onset_day=10, ramp_days=4, target_payment_method="paypal")
    rows = billing()
    failed_paypal = (rows["status"] == "failed") & (rows["payment_method"] == "paypal")

    def renamed(day: int) -> pl.Series:
        return f.handle("ingest.billing", rows, ctx(day))["status"] == NEW_STATUS

    assert not renamed(10).filter(~failed_paypal).any()
    assert renamed(10).filter(failed_paypal).mean() == pytest.approx(0.25, abs=0.05)
    assert renamed(13).filter(failed_paypal).all()
    # Migrated customers stay migrated.
    assert (renamed(11) & ~renamed(12)).sum() == 0
    out = f.handle("ingest.billing", rows, ctx(13))
    assert out.drop("status").equals(rows.drop("status"))
    paypal = out.filter(pl.col("payment_method") == "paypal")["status"]
    assert "failed" not in paypal.to_list() and NEW_STATUS in paypal.to_list()


def test_migrated_share_caps_the_rollout() -> None:
    f = fault(onset_day=1, ramp_days=0, migrated_share=0.5)
    rows = billing()
    failed_card = (rows["status"] == "failed") & (rows["payment_method"] == "card")
    out = f.handle("ingest.billing", rows, ctx(20))
    assert (out["status"] == NEW_STATUS).filter(failed_card).mean() == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("rename_first", [True, False])
def test_composes_with_duplicate_deliveries(rename_first: bool) -> None:
    rename = fault(onset_day=1, ramp_days=0)
    dup = DuplicateBillingEvents(DuplicateParams(onset_day=1, ramp_days=0, duplicate_share=0.5))
    order = [rename, dup] if rename_first else [dup, rename]
    out = FaultSet(order).apply("ingest.billing", billing(), ctx(5))
    # Every copy of an event carries the same status, whichever change ran first.
    statuses = out.group_by("event_id").agg(pl.col("status").n_unique().alias("n"))
    assert statuses["n"].max() == 1
    copies = out.filter(pl.col("event_id").is_duplicated())
    assert (copies["status"] == NEW_STATUS).any()
    assert not (out.filter(pl.col("payment_method") == "card")["status"] == "failed").any()
    alone = rename.handle("ingest.billing", billing(), ctx(5))
    assert out.unique("event_id").sort("event_id")["status"].equals(alone["status"])


def test_candidate_visible_text_names_nothing() -> None:
    f = fault()
    texts = [NEW_STATUS] + [v for e in f.changelog(CAL) for v in e.values() if isinstance(v, str)]
    for text in texts:
        lowered = text.lower()
        for word in ("fault", "inject", "planted", "answer", "sabotag", "bug", "rename"):
            assert word not in lowered, (word, text)
        assert f.id not in lowered and type(f).__name__.lower() not in lowered


def test_answer_key_points_at_the_status_and_the_feature() -> None:
    f = fault(onset_day=12, target_payment_method="direct_debit")
    key = f.key(CAL)
    assert NEW_STATUS in key.root_cause and "direct" in key.root_cause
    refs = {e.ref for e in key.evidence}
    assert {
        "raw.billing_events.status",
        "feature_store.customer_features.payment_failures_30d",
    } <= refs
    titles = {e["title"] for e in f.changelog(CAL)}
    assert {e.ref for e in key.evidence if e.kind == "changelog"} <= titles
    assert all(e.window_start >= CAL.date(12) for e in key.evidence)
    assert any("experiment" in p for p in key.probes)
    assert 3 <= len(key.investigation) <= 6


def test_expected_share_follows_the_ramp() -> None:
    assert fault(onset_day=1, ramp_days=0).expected_share(CAL) == 1.0
    late = fault(onset_day=40, ramp_days=7, migrated_share=0.5).expected_share(CAL)
    assert 0.25 < late < 0.5


@pytest.mark.parametrize("tier", ["guided", "standard", "hard"])
def test_each_tier_logs_its_own_trail(tier: str) -> None:
    f = PaymentStatusRenamed(Params(onset_day=12), tier)  # type: ignore[arg-type]
    entries = f.changelog(CAL)
    text = " ".join(str(v) for e in entries for v in e.values()).lower()
    assert all(t.lower() not in text for t in f.tells(tier))  # type: ignore[arg-type]
    changelog_evidence = [e for e in f.key(CAL).evidence if e.kind == "changelog"]
    if tier == "hard":
        # No entry for the migration, only ordinary payments changes around it.
        assert len(entries) >= 3 and not changelog_evidence
        assert all(CAL.first_day <= e["day"] <= CAL.last_visible_day for e in entries)
    else:
        assert [e["day"] for e in entries] == [12] and len(changelog_evidence) == 1
        assert ("v3" in text) == (tier == "guided")
