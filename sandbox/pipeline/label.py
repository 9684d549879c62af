"""Stage 7: the delayed label — did the customer cancel within the horizon after the score date?"""

from __future__ import annotations

import polars as pl

from sandbox.clock import Calendar


def churn_labels(
    scored: pl.DataFrame, cancellations: pl.DataFrame, calendar: Calendar, horizon_days: int
) -> pl.DataFrame:
    """One label per (customer_id, score_date).

    `scored` has customer_id and score_date; `cancellations` has customer_id and event_ts. A label is
    1 when the cancellation falls on the score date or in the `horizon_days - 1` days after it, and
    becomes available at the end of that window (labels arrive late, as in life).
    """
    cancel_day = cancellations.select(
        "customer_id", pl.col("event_ts").dt.date().alias("churn_date")
    ).unique("customer_id", keep="first", maintain_order=True)
    horizon = pl.duration(days=horizon_days)
    return (
        scored.select("customer_id", "score_date")
        .unique(maintain_order=True)
        .join(cancel_day, on="customer_id", how="left")
        .with_columns(
            (
                pl.col("churn_date").is_not_null()
                & (pl.col("churn_date") >= pl.col("score_date"))
                & (pl.col("churn_date") < pl.col("score_date") + horizon)
            )
            .cast(pl.Int8)
            .alias("churned"),
            (pl.col("score_date") + horizon).cast(pl.Datetime("us")).alias("label_available_at"),
        )
        .with_columns(
            pl.when(pl.col("churned") == 1).then(pl.col("churn_date")).alias("churn_date"),
            pl.lit(horizon_days).cast(pl.Int32).alias("horizon_days"),
        )
        .select(
            "customer_id",
            "score_date",
            "churned",
            "churn_date",
            "horizon_days",
            "label_available_at",
        )
    )
