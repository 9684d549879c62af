"""Alert rules fire on sustained breaches only, once per episode."""

from __future__ import annotations

import datetime as dt

import polars as pl

from sandbox.monitor.alerts import RULES, Rule, evaluate, rules_for, rules_frame

RULE = Rule("Latency", "model-server", "latency_p99_ms", 60.0, None, 3, "warning", "slow")


def series(values: list[float]) -> pl.DataFrame:
    start = dt.datetime(2026, 3, 2)
    return pl.DataFrame(
        {
            "ts": [start + dt.timedelta(minutes=5 * i) for i in range(len(values))],
            "service": ["model-server"] * len(values),
            "metric": ["latency_p99_ms"] * len(values),
            "label": [""] * len(values),
            "value": values,
        }
    )


def test_only_sustained_breaches_fire() -> None:
    fired = evaluate(series([10, 70, 80, 10, 70, 75, 90, 95, 10]), (RULE,))
    assert fired.height == 1
    row = fired.row(0, named=True)
    assert row["peak_value"] == 95 and row["alert"] == "Latency"
    assert row["started_at"] == dt.datetime(2026, 3, 2, 0, 20)


def test_quiet_series_fires_nothing() -> None:
    assert evaluate(series([10.0] * 50), (RULE,)).height == 0


def test_a_rule_only_a_mature_team_has_is_gone_at_harder_tiers() -> None:
    names = {tier: {r.name for r in rules_for(tier)} for tier in ("guided", "standard", "hard")}
    assert names["guided"] == {r.name for r in RULES}
    assert "FeatureNullRatioHigh" in names["guided"] - names["standard"]
    assert names["hard"] <= names["standard"] < names["guided"]
    assert set(rules_frame(rules_for("hard"))["name"]) == names["hard"]
