"""The online/offline skew fault: its parameters, the streaming definitions and the rollout."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from sandbox import scenario
from sandbox.faults.base import HookContext
from sandbox.faults.online_offline_skew import STREAMING, OnlineOfflineSkew, Params
from sandbox.pipeline.features import MODEL_FEATURES

CAL = scenario.load(None).world.calendar()
SECRET_WORDS = ("fault", "inject", "planted", "answer", "sabotage", "bug", "skew")


def fault(**params: object) -> OnlineOfflineSkew:
    return OnlineOfflineSkew(Params(**params))


def ctx(day: int) -> HookContext:
    return HookContext(seed=1, day=day, calendar=CAL)


def online_rows(n: int = 20_000, seed: int = 0) -> pl.DataFrame:
    """An online-store frame shaped like the materialization's output."""
    g = np.random.default_rng(seed)
    s28 = g.poisson(20, n).astype(float)
    s7 = np.minimum(g.poisson(5, n), s28).astype(float)
    features = {c: g.uniform(0, 50, n).round(4) for c in MODEL_FEATURES}
    features |= {
        "sessions_7d": s7,
        "sessions_28d": s28,
        "sessions_trend": ((s7 / 7) / (s28 / 28 + 0.1)).round(4),
        "tenure_days": g.integers(0, 1500, n).astype(float),
        "days_since_last_session": np.where(s7 > 0, g.integers(0, 7, n), 28).astype(float),
        "avg_daily_minutes_7d": np.where(s7 > 0, g.uniform(1, 120, n), 0.0).round(4),
    }
    return pl.DataFrame({"customer_id": np.arange(1, n + 1), **features}).with_columns(
        pl.lit(CAL.midnight(20)).alias("event_timestamp"),
        pl.lit(CAL.at(20, 4.0)).alias("materialized_at"),
    )


@pytest.mark.parametrize(
    "params",
    [
        {"rollout_share": 0.05},
        {"rollout_share": 1.5},
        {"target_feature": "monthly_price"},
        {"onset_day": 0},
        {"onset_day": 43},
        {"ramp_days": 30},
        {"surprise": 1},
    ],
)
def test_invalid_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Params(**params)


def test_every_target_has_a_streaming_definition() -> None:
    targets = Params.model_fields["target_feature"].annotation.__args__  # type: ignore[union-attr]
    assert set(targets) == set(STREAMING)
    assert set(STREAMING) <= set(MODEL_FEATURES)


def test_rollout_ramps_and_sticks_to_customers() -> None:
    f = fault(onset_day=10, ramp_days=4, rollout_share=0.5)
    rows = online_rows()

    def moved(day: int) -> pl.Series:
        out = f.handle("materialize.online", rows, ctx(day))
        return (out["sessions_trend"] - rows["sessions_trend"]).abs() > 1e-6

    assert f.handle("materialize.online", rows, ctx(9)).equals(rows)
    differs = (STREAMING["sessions_trend"].expr.round(4) != pl.col("sessions_trend")).mean()
    can_differ = float(rows.select(differs).item())
    assert moved(10).mean() == pytest.approx(0.125 * can_differ, abs=0.02)
    assert moved(13).mean() == pytest.approx(0.5 * can_differ, abs=0.02)
    assert moved(40).mean() == pytest.approx(0.5 * can_differ, abs=0.02)
    # Customers stay on the path they were moved to; the migration only adds customers.
    assert (moved(11) & ~moved(12)).sum() == 0
    assert (moved(13) == moved(40)).all()


@pytest.mark.parametrize("feature", sorted(STREAMING))
def test_only_the_target_feature_changes(feature: str) -> None:
    f = fault(target_feature=feature, onset_day=5, ramp_days=0)
    rows = online_rows()
    out = f.handle("materialize.online", rows, ctx(5))
    assert out.columns == rows.columns and out.height == rows.height
    assert out.drop(feature).equals(rows.drop(feature))
    assert (out[feature] != rows[feature]).mean() >= 0.5


def test_streaming_values_follow_the_definitions() -> None:
    rows = pl.DataFrame(
        {
            "customer_id": [1, 2, 3],
            "sessions_7d": [14.0, 0.0, 3.0],
            "sessions_28d": [28.0, 0.0, 10.0],
            "sessions_trend": [1.8182, 0.0, 0.8955],
            "tenure_days": [20.0, 3.0, 700.0],
            "days_since_last_session": [0.0, 28.0, 5.0],
            "avg_daily_minutes_7d": [70.0, 0.0, 10.0],
        }
    )

    def streaming(feature: str) -> list[float]:
        expr = STREAMING[feature].expr.cast(pl.Float64).round(4)
        return rows.select(expr.alias("v"))["v"].to_list()

    assert streaming("sessions_trend") == [0.5, 0.0, 0.3]
    assert streaming("tenure_days") == [2.0, 0.0, 100.0]
    # 3 sessions, the last one 5 days ago: at most 2 days with viewing in the week.
    assert streaming("avg_daily_minutes_7d") == [70.0, 0.0, 35.0]


@pytest.mark.parametrize("feature", sorted(STREAMING))
def test_sql_definition_matches_the_applied_one(feature: str) -> None:
    """verify() and the investigation recompute the streaming value in SQL: it must agree."""
    f = fault(target_feature=feature, onset_day=1, ramp_days=0)
    rows = online_rows(2_000)
    applied = f.handle("materialize.online", rows, ctx(3))[feature].to_numpy()
    con = duckdb.connect()
    con.register("o", rows.to_arrow())
    in_sql = np.array(
        [r[0] for r in con.execute(f"SELECT {f.streaming_sql('o')} FROM o").fetchall()]
    )
    np.testing.assert_allclose(in_sql, applied, atol=1e-4)


def test_candidate_visible_text_keeps_the_secret() -> None:
    f = fault(onset_day=1, rollout_share=0.3)
    for entry in f.changelog(CAL):
        text = " ".join(str(v) for v in entry.values()).lower()
        assert not any(word in text for word in SECRET_WORDS), text
        assert CAL.first_day <= entry["day"] <= CAL.last_visible_day


def test_answer_key_is_complete() -> None:
    f = fault(target_feature="tenure_days", onset_day=40)
    key = f.key(CAL)
    assert key.fault_id == "online-offline-skew" and "tenure_days" in key.root_cause
    assert {e.kind for e in key.evidence} == {"table_column", "metric", "log_pattern", "changelog"}
    assert all(e.window_start <= e.window_end for e in key.evidence)
    titles = {entry["title"] for entry in f.changelog(CAL)}
    assert {e.ref for e in key.evidence if e.kind == "changelog"} <= titles
    assert 3 <= len(key.investigation) <= 5


def test_verify_floor_stays_positive_and_below_the_expected_share() -> None:
    from sandbox.faults.online_offline_skew import _floor

    assert _floor(1.0, 9000) == pytest.approx(0.8)
    assert _floor(0.1, 5000) == pytest.approx(0.08)
    tiny = _floor(0.005, 9000)
    assert 0 < tiny < 0.8 * 0.005
    assert _floor(0.0, 9000) == 1.0 and _floor(0.5, 0) == 1.0


def test_the_changelog_names_the_migration_at_guided_only() -> None:
    entries = {
        tier: OnlineOfflineSkew(Params(), tier).changelog(CAL)  # type: ignore[arg-type]
        for tier in ("guided", "standard", "hard")
    }
    text = {t: " ".join(e["title"] + " " + e["body"] for e in es) for t, es in entries.items()}
    assert "streaming pipeline" in text["guided"] and "parity check" in text["guided"].lower()
    for tier in ("standard", "hard"):
        assert "stream" not in text[tier] and "parity" not in text[tier].lower()
    assert "feature-server 2.0" in text["standard"] and "2.0" not in text["hard"]
    # At hard the feature server still changes in the same weeks, as ordinary maintenance.
    days = [e["day"] for e in entries["hard"]]
    assert len(days) >= 2 and all(e["service"] == "feature-server" for e in entries["hard"])
    assert min(days) < Params().onset_day <= max(days)


def test_the_hard_investigation_reads_no_changelog() -> None:
    f = OnlineOfflineSkew(Params(), "hard")
    steps = f.investigation(CAL)
    assert not any("ops.changelog" in s.sql for s in steps)
    assert {e.kind for e in f.key(CAL).evidence} == {"table_column", "metric", "log_pattern"}
