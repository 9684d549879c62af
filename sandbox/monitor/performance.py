"""Model quality once labels arrive: daily AUC, PR-AUC, Brier, precision and recall, by segment."""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

SEGMENTS = ("device", "plan", "region")


def _metrics(y: np.ndarray, score: np.ndarray, decision: np.ndarray) -> dict[str, float | None]:
    both = 0 < y.sum() < len(y)
    flagged = decision.sum()
    return {
        "auc": roc_auc_score(y, score) if both else None,
        "pr_auc": average_precision_score(y, score) if both else None,
        "brier": brier_score_loss(y, score) if len(y) else None,
        "precision": float(y[decision].mean()) if flagged else None,
        "recall": float(decision[y == 1].mean()) if y.sum() else None,
    }


def daily_performance(scored: pl.DataFrame) -> pl.DataFrame:
    """`scored`: batch predictions joined with labels and customer segments.

    Columns needed: score_date, score, decision, churned, label_available_at, and SEGMENTS.
    One row per (score_date, segment, segment_value), segment 'all' for everyone.
    """
    groups = [
        scored.with_columns(pl.lit("all").alias("segment"), pl.lit("all").alias("segment_value"))
    ]
    groups += [
        scored.with_columns(pl.lit(s).alias("segment"), pl.col(s).alias("segment_value"))
        for s in SEGMENTS
    ]
    long = pl.concat(
        [
            g.select(
                "score_date",
                "segment",
                "segment_value",
                "score",
                "decision",
                "churned",
                "label_available_at",
            )
            for g in groups
        ]
    )
    rows = []
    # One sklearn call per (day, segment) group: a few hundred groups, each vectorized inside.
    for key, part in long.group_by("score_date", "segment", "segment_value", maintain_order=True):
        y = part["churned"].to_numpy().astype(int)
        score = part["score"].to_numpy()
        decision = part["decision"].to_numpy().astype(bool)
        rows.append(
            {
                "score_date": key[0],
                "segment": key[1],
                "segment_value": key[2],
                "scored": len(y),
                "churned": int(y.sum()),
                "churn_rate": float(y.mean()),
                "flagged_rate": float(decision.mean()),
                **_metrics(y, score, decision),
                "label_available_at": part["label_available_at"].max(),
            }
        )
    frame = pl.DataFrame(rows).sort("score_date", "segment", "segment_value")
    return frame.with_columns(pl.col(pl.Float64).round(5))
