"""Model quality once labels arrive: daily AUC, PR-AUC, Brier, precision and recall, by segment.

Computed for every (day, segment) group at once in Polars, with the definitions sklearn uses:
AUC as the Mann-Whitney statistic (ties count half), PR-AUC as average precision over the
distinct scores from the highest down.
"""

from __future__ import annotations

import polars as pl

SEGMENTS = ("device", "plan", "region", "app_version")
KEY = ["score_date", "segment", "segment_value"]


def _long(scored: pl.DataFrame) -> pl.DataFrame:
    """One row per prediction and segment it belongs to, segment 'all' for everyone."""
    columns = ["score", "decision", "churned", "label_available_at"]
    everyone = scored.select(
        "score_date",
        pl.lit("all").alias("segment"),
        pl.lit("all").alias("segment_value"),
        *columns,
    )
    by_segment = [
        scored.select(
            "score_date",
            pl.lit(s).alias("segment"),
            pl.col(s).cast(pl.String).alias("segment_value"),
            *columns,
        )
        for s in SEGMENTS
    ]
    return pl.concat([everyone, *by_segment]).with_columns(
        pl.col("churned").cast(pl.Int64), pl.col("decision").cast(pl.Boolean)
    )


def _average_precision(long: pl.DataFrame) -> pl.DataFrame:
    """Per group: Σ over distinct scores, highest first, of (new positives / all positives) ×
    precision at that score."""
    at_score = (
        long.group_by(*KEY, "score")
        .agg(pl.col("churned").sum().alias("pos"), pl.len().alias("n"))
        .sort(*KEY, "score", descending=[False, False, False, True])
    )
    return (
        at_score.with_columns(
            pl.col("pos").cum_sum().over(KEY).alias("tp"),
            pl.col("n").cum_sum().over(KEY).alias("seen"),
            pl.col("pos").sum().over(KEY).alias("positives"),
        )
        .group_by(KEY)
        .agg(
            (pl.col("pos") / pl.col("positives") * pl.col("tp") / pl.col("seen"))
            .sum()
            .alias("pr_auc")
        )
    )


def daily_performance(scored: pl.DataFrame) -> pl.DataFrame:
    """`scored`: batch predictions joined with labels and customer segments.

    Columns needed: score_date, score, decision, churned, label_available_at, and SEGMENTS.
    One row per (score_date, segment, segment_value), segment 'all' for everyone.
    """
    long = _long(scored).with_columns(pl.col("score").rank("average").over(KEY).alias("rank"))
    y, decision = pl.col("churned"), pl.col("decision")
    positives = y.sum()
    negatives = pl.len() - positives
    both = (positives > 0) & (negatives > 0)
    flagged = decision.sum()
    frame = long.group_by(KEY).agg(
        pl.len().alias("scored"),
        positives.alias("churned"),
        y.mean().cast(pl.Float64).alias("churn_rate"),
        decision.cast(pl.Float64).mean().alias("flagged_rate"),
        pl.when(both)
        .then(
            (pl.col("rank").filter(y == 1).sum() - positives * (positives + 1) / 2)
            / (positives * negatives)
        )
        .alias("auc"),
        ((pl.col("score") - y) ** 2).mean().alias("brier"),
        pl.when(flagged > 0).then(y.filter(decision).cast(pl.Float64).mean()).alias("precision"),
        pl.when(positives > 0)
        .then(decision.filter(y == 1).cast(pl.Float64).mean())
        .alias("recall"),
        pl.col("label_available_at").max(),
    )
    pr_auc = _average_precision(long)
    frame = frame.join(pr_auc, on=KEY, how="left").with_columns(
        pl.when(pl.col("auc").is_not_null()).then(pl.col("pr_auc")).alias("pr_auc")
    )
    columns = [
        *KEY,
        "scored",
        "churned",
        "churn_rate",
        "flagged_rate",
        "auc",
        "pr_auc",
        "brier",
        "precision",
        "recall",
        "label_available_at",
    ]
    return (
        frame.select(columns)
        .sort(KEY)
        .with_columns(pl.col(pl.Float64).round(5), pl.col("scored", "churned").cast(pl.Int64))
    )
