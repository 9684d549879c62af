"""Alert rules over the metric series, as an on-call team would have set them up.

Thresholds are the ones teams actually pick: loose enough not to page every night, so a few fire on
ordinary noise and a slow problem can stay under them. A rule that only a mature team would have
says so (`shown_up_to`): a world of a harder difficulty has no such rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from sandbox.difficulty import Tier, shown


@dataclass(frozen=True)
class Rule:
    name: str
    service: str
    metric: str
    above: float | None
    below: float | None
    for_points: int  # consecutive breaching points before it fires
    severity: str
    summary: str
    shown_up_to: Tier = "hard"  # the hardest difficulty whose world has this rule


RULES: tuple[Rule, ...] = (
    Rule(
        "ModelServerHighLatency",
        "model-server",
        "latency_p99_ms",
        60.0,
        None,
        3,
        "warning",
        "model-server p99 latency above 60 ms for 15 minutes",
    ),
    Rule(
        "ModelServerErrors",
        "model-server",
        "error_ratio",
        0.05,
        None,
        2,
        "critical",
        "model-server error ratio above 5% for 10 minutes",
    ),
    Rule(
        "PositiveRateOutOfBand",
        "batch-scoring",
        "positive_rate",
        0.25,
        0.03,
        1,
        "warning",
        "share of customers flagged for retention outside 3%..25%",
    ),
    Rule(
        "RetrievalClickThroughLow",
        "retrieval",
        "click_through_rate",
        None,
        0.2,
        6,
        "warning",
        "retrieval click-through below 20% for 6 hours",
    ),
    Rule(
        "FeatureNullRatioHigh",
        "feature-job",
        "feature_null_ratio",
        0.5,
        None,
        1,
        "warning",
        "a feature is more than 50% null before imputation",
        shown_up_to="guided",
    ),
    Rule(
        "DailyChurnHigh",
        "business",
        "daily_churn_rate",
        0.01,
        None,
        2,
        "critical",
        "daily churn above 1% for two days",
    ),
)


def rules_for(tier: Tier) -> tuple[Rule, ...]:
    """The rules a team at `tier`'s monitoring maturity has set up."""
    return tuple(rule for rule in RULES if shown(rule.shown_up_to, tier))


def evaluate(series: pl.DataFrame, rules: tuple[Rule, ...] = RULES) -> pl.DataFrame:
    """Firing episodes: a run of at least `for_points` breaching points becomes one alert."""
    episodes = []
    for rule in rules:
        points = series.filter(
            (pl.col("service") == rule.service) & (pl.col("metric") == rule.metric)
        ).sort("label", "ts")
        breach = pl.lit(False)
        if rule.above is not None:
            breach = breach | (pl.col("value") > rule.above)
        if rule.below is not None:
            breach = breach | (pl.col("value") < rule.below)
        runs = (
            points.with_columns(breach.alias("breach"))
            .with_columns(pl.col("breach").rle_id().over("label").alias("run"))
            .filter(pl.col("breach"))
            .group_by("label", "run")
            .agg(
                pl.col("ts").min().alias("started_at"),
                pl.col("ts").max().alias("last_breach_at"),
                pl.len().alias("points"),
                pl.col("value").max().alias("peak_value"),
            )
            .filter(pl.col("points") >= rule.for_points)
        )
        if runs.height:
            episodes.append(
                runs.select(
                    pl.lit(rule.name).alias("alert"),
                    pl.lit(rule.severity).alias("severity"),
                    pl.lit(rule.service).alias("service"),
                    "label",
                    "started_at",
                    "last_breach_at",
                    "peak_value",
                    pl.lit(rule.summary).alias("summary"),
                )
            )
    schema = {
        "alert": pl.Utf8,
        "severity": pl.Utf8,
        "service": pl.Utf8,
        "label": pl.Utf8,
        "started_at": pl.Datetime("us"),
        "last_breach_at": pl.Datetime("us"),
        "peak_value": pl.Float64,
        "summary": pl.Utf8,
    }
    if not episodes:
        return pl.DataFrame(schema=schema)
    return pl.concat(episodes).cast(schema).sort("started_at", "alert", "label")


def rules_frame(rules: tuple[Rule, ...] = RULES) -> pl.DataFrame:
    return pl.DataFrame([r.__dict__ for r in rules]).drop("shown_up_to")
