"""The null-imputation fault: its parameters, its hooks, and its answer key's evidence pointers."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest
from pydantic import ValidationError

from sandbox import scenario
from sandbox.clock import Calendar
from sandbox.difficulty import Tier
from sandbox.faults.base import HookContext
from sandbox.faults.feature_nulls_wrong_mean import FeatureNullsWrongMean, Params

CAL = scenario.load(None).world.calendar()


def fault(**params: object) -> FeatureNullsWrongMean:
    return FeatureNullsWrongMean(Params(**params))


def ctx(day: int, calendar: Calendar = CAL) -> HookContext:
    return HookContext(seed=1, day=day, calendar=calendar)


@pytest.mark.parametrize(
    "params",
    [
        {"null_share": 0.0},
        {"null_share": 0.95},
        {"fill_multiplier": 1.0},
        {"onset_day": 0},
        {"ramp_days": 30},
        {"target_feature": "sessions_7d"},
        {"surprise": 1},
    ],
)
def test_invalid_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Params(**params)


def test_null_share_ramps_from_onset() -> None:
    f = fault(onset_day=10, ramp_days=4, null_share=0.5)
    rows = pl.DataFrame({"customer_id": list(range(20_000)), "minutes_watched": [30.0] * 20_000})

    def share(day: int) -> float:
        return f.handle("ingest.activity", rows, ctx(day))["minutes_watched"].null_count() / 20_000

    assert share(9) == 0.0
    assert share(10) == pytest.approx(0.125, abs=0.02)
    assert share(13) == pytest.approx(0.5, abs=0.02)
    assert share(30) == pytest.approx(0.5, abs=0.02)
    # The same customers stay affected: a rollout, not random noise.
    day_13 = f.handle("ingest.activity", rows, ctx(13))["minutes_watched"].is_null()
    day_20 = f.handle("ingest.activity", rows, ctx(20))["minutes_watched"].is_null()
    assert (day_13 == day_20).all()


def test_fill_value_goes_wrong_at_onset() -> None:
    f = fault(onset_day=10, fill_multiplier=2.5)
    policy = {"avg_daily_minutes_7d": 40.0, "avg_daily_minutes_28d": 41.0, "tenure_days": 9.0}
    assert f.handle("features.imputation", policy, ctx(9)) == policy
    after = f.handle("features.imputation", policy, ctx(10))
    # Every feature fed by the same source column is refilled wrongly; others are untouched.
    assert after == {
        "avg_daily_minutes_7d": 100.0,
        "avg_daily_minutes_28d": 102.5,
        "tenure_days": 9.0,
    }


def test_no_default_alert_names_the_cause(faulty_db: duckdb.DuckDBPyConnection) -> None:
    """Silent to the obvious: the feature store shows no NULLs and no alert fires on the feature."""
    nulls = faulty_db.execute(
        "SELECT count(*) FROM feature_store.customer_features WHERE avg_daily_minutes_7d IS NULL"
    ).fetchall()[0][0]
    alerts = faulty_db.execute(
        "SELECT count(*) FROM monitoring.alerts WHERE label LIKE '%minutes%'"
    ).fetchall()[0][0]
    assert nulls == 0 and alerts == 0


def tiered(tier: Tier, **params: object) -> FeatureNullsWrongMean:
    return FeatureNullsWrongMean(Params(**params), tier)


def test_guided_keeps_the_explicit_trail() -> None:
    entries = tiered("guided", onset_day=15, ramp_days=7).changelog(CAL)
    assert [(e["day"], e["title"], e["body"]) for e in entries] == [
        (
            14,
            "player SDK 7.2 staged rollout",
            "New playback telemetry batching; rollout over about 7 days.",
        ),
        (
            15,
            "feature store: imputation defaults refreshed",
            "Fill values recomputed from the latest engagement extract.",
        ),
    ]


@pytest.mark.parametrize("tier", ["standard", "hard"])
def test_the_changelog_carries_no_tell_of_its_tier(tier: Tier) -> None:
    f = tiered(tier)
    text = " ".join(f"{e['title']} {e['body']}" for e in f.changelog(CAL)).lower()
    assert text, "the changelog keeps entries around the onset"
    assert not [tell for tell in f.tells(tier) if tell.lower() in text]
    assert set(f.tells("standard")) <= set(f.tells("hard")) and not f.tells("guided")


def test_hard_adds_an_earlier_correct_refresh_of_the_same_fill_values() -> None:
    policy = {"avg_daily_minutes_7d": 40.0, "tenure_days": 9.0}
    hard, standard = tiered("hard", onset_day=15), tiered("standard", onset_day=15)
    assert standard.handle("features.imputation", policy, ctx(8)) == policy
    assert hard.handle("features.imputation", policy, ctx(6)) == policy
    routine = hard.handle("features.imputation", policy, ctx(7))
    assert routine == {"avg_daily_minutes_7d": 41.6, "tenure_days": 9.0}
    assert hard.handle("features.imputation", policy, ctx(15))["avg_daily_minutes_7d"] == 100.0
