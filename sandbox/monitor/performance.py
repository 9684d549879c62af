"""Model quality once labels arrive: daily AUC, PR-AUC, Brier, precision and recall, by segment.

Computed for every (day, segment) group at once in Polars, with the definitions sklearn uses:
AUC as the Mann-Whitney statistic (ties count half), PR-AUC as average precision over the
distinct scores from the highest down.
"""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl

SEGMENTS = ("device", "plan", "region", "app_version")
KEY = ["score_date", "segment", "segment_value"]


def _segments(scored: pl.DataFrame) -> Iterator[pl.DataFrame]:
    """Per segment (segment 'all' for everyone), one row per prediction: one segment at a time,
    so a build holds one copy of the predictions, not one per segment."""
    columns = ["score", "decision", "churned", "label_available_at"]
    values = [("all", pl.lit("all")), *((s, pl.col(s).cast(pl.String)) for s in SEGMENTS)]
    for segment, value in values:
        yield (
            scored.lazy()
            .select(
                "score_date",
                pl.lit(segment).alias("segment"),
                value.alias("segment_value"),
                pl.col("churned").cast(pl.Int64),
                pl.col("decision").cast(pl.Boolean),
                *(c for c in columns if c not in ("churned", "decision")),
            )
            .collect()
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
    frames = [_quality(segment).select(columns) for segment in _segments(scored)]
    return (
        pl.concat(frames)
        .sort(KEY)
        .with_columns(pl.col(pl.Float64).round(5), pl.col("scored", "churned").cast(pl.Int64))
    )


def _quality(long: pl.DataFrame) -> pl.DataFrame:
    """The quality figures of every (day, segment value) group of one segment's rows."""
    long = long.with_columns(pl.col("score").rank("average").over(KEY).alias("rank"))
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
    return frame.join(pr_auc, on=KEY, how="left").with_columns(
        pl.when(pl.col("auc").is_not_null()).then(pl.col("pr_auc")).alias("pr_auc")
    )
