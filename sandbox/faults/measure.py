"""Measurements several faults' verifications share: what served when, and how well it did."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb
import numpy as np
from sklearn.metrics import roc_auc_score

from sandbox.clock import Calendar

MIN_LABELLED = 2000  # batch predictions with a matured label before a quality figure counts


@dataclass(frozen=True)
class Quality:
    """Batch-scoring quality over a window, on labels that had matured by the last visible day."""

    n: int
    churners: int
    auc: float | None
    precision: float | None  # churn rate among flagged customers
    flagged_share: float | None
    mean_score: float | None
    churn_rate: float | None

    @property
    def measurable(self) -> bool:
        return self.n >= MIN_LABELLED and self.churners >= 20 and self.auc is not None

    def describe(self) -> str:
        if not self.n:
            return "no matured labels"
        auc = "n/a" if self.auc is None else f"{self.auc:.3f}"
        precision = "n/a" if self.precision is None else f"{self.precision:.3f}"
        return f"AUC {auc}, precision {precision} on {self.n} labelled scores"


def batch_quality(
    con: duckdb.DuckDBPyConnection, calendar: Calendar, first_day: int, last_day: int
) -> Quality:
    """Quality of the 06:00 batch scores of production days first_day..last_day."""
    visible_end = calendar.midnight(calendar.last_visible_day + 1)
    rows = con.execute(
        """
        SELECT p.score, p.decision::INT AS decision, l.churned
        FROM serving.predictions p
        JOIN labels.churn_labels l
          ON l.customer_id = p.customer_id AND l.score_date = p.request_ts::DATE
        WHERE p.source = 'batch' AND p.request_ts::DATE BETWEEN ? AND ?
          AND l.label_available_at <= ?
        """,
        [calendar.date(first_day), calendar.date(last_day), visible_end],
    ).fetchnumpy()
    score = np.asarray(rows["score"], dtype=float)
    decision = np.asarray(rows["decision"], dtype=int)
    churned = np.asarray(rows["churned"], dtype=int)
    n = len(score)
    if n == 0:
        return Quality(0, 0, None, None, None, None, None)
    both = 0 < churned.sum() < n
    return Quality(
        n=n,
        churners=int(churned.sum()),
        auc=float(roc_auc_score(churned, score)) if both else None,
        precision=float(churned[decision == 1].mean()) if decision.any() else None,
        flagged_share=float(decision.mean()),
        mean_score=float(score.mean()),
        churn_rate=float(churned.mean()),
    )


def served_versions(
    con: duckdb.DuckDBPyConnection, start: dt.date, end: dt.date
) -> dict[str, tuple[float, int]]:
    """model_version -> (decision threshold, batch predictions) over the window."""
    rows = con.execute(
        """
        SELECT model_version, any_value(threshold), count(*)
        FROM serving.predictions
        WHERE source = 'batch' AND request_ts::DATE BETWEEN ? AND ?
        GROUP BY 1
        """,
        [start, end],
    ).fetchall()
    return {version: (threshold, n) for version, threshold, n in rows}


def has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    schema, name = table.split(".")
    return bool(
        con.execute(
            "SELECT count(*) FROM duckdb_columns() "
            "WHERE schema_name = ? AND table_name = ? AND column_name = ?",
            [schema, name, column],
        ).fetchall()[0][0]
    )
