"""Measurements several faults share: what served when, how well it did, and which labels had
matured by the end of the window the candidate sees."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import numpy as np
import polars as pl

from sandbox.clock import Calendar
from sandbox.faults.base import Check

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


def visible_end(calendar: Calendar) -> dt.datetime:
    """The first moment after the last visible day: labels available by then have matured."""
    return calendar.midnight(calendar.last_visible_day + 1)


def batch_quality(
    con: duckdb.DuckDBPyConnection, calendar: Calendar, first_day: int, last_day: int
) -> Quality:
    """Quality of the 06:00 batch scores of production days first_day..last_day."""
    rows = con.execute(
        """
        SELECT p.score, p.decision::INT AS decision, l.churned
        FROM serving.predictions p
        JOIN labels.churn_labels l
          ON l.customer_id = p.customer_id AND l.score_date = p.request_ts::DATE
        WHERE p.source = 'batch' AND p.request_ts::DATE BETWEEN ? AND ?
          AND l.label_available_at <= ?
        """,
        [calendar.date(first_day), calendar.date(last_day), visible_end(calendar)],
    ).fetchnumpy()
    score = np.asarray(rows["score"], dtype=float)
    decision = np.asarray(rows["decision"], dtype=int)
    churned = np.asarray(rows["churned"], dtype=int)
    n = len(score)
    if n == 0:
        return Quality(0, 0, None, None, None, None, None)
    both = 0 < churned.sum() < n
    # Imported on use: every process that reads a scenario loads the fault catalog, and most of
    # them (the gateway, its console workers, the jobs, the CLI) never measure quality.
    from sklearn.metrics import roc_auc_score

    return Quality(
        n=n,
        churners=int(churned.sum()),
        auc=float(roc_auc_score(churned, score)) if both else None,
        precision=float(churned[decision == 1].mean()) if decision.any() else None,
        flagged_share=float(decision.mean()),
        mean_score=float(score.mean()),
        churn_rate=float(churned.mean()),
    )


def quality_around(
    con: duckdb.DuckDBPyConnection, calendar: Calendar, onset: int, lookback_days: int | None = None
) -> tuple[Quality, Quality]:
    """Batch-scoring quality before onset (from day 1, or the last `lookback_days` days) and
    from onset to the last production day."""
    first = 1 if lookback_days is None else max(1, onset - lookback_days)
    return (
        batch_quality(con, calendar, first, onset - 1),
        batch_quality(con, calendar, onset, calendar.last_production_day),
    )


def quality_check(
    name: str,
    before: Quality,
    after: Quality,
    passed: Callable[[Quality, Quality], bool],
    detail: str,
) -> Check:
    """A check on production quality before and after onset: not measurable until enough labels
    have matured on both sides (they arrive 14 days late)."""
    if not (before.measurable and after.measurable):
        return Check(
            name=name,
            outcome="not measurable",
            detail=f"not measurable yet (labels mature 14 days late): before {before.describe()}"
            f"; after {after.describe()}",
        )
    return Check(name=name, passed=passed(before, after), detail=detail)


def precision_falls(before: Quality, after: Quality, ratio: float) -> Check:
    """Production precision after a release is below `ratio` of what it was before."""
    return quality_check(
        "production precision falls with the new version",
        before,
        after,
        lambda before, after: (
            after.precision is not None
            and before.precision is not None
            and after.precision < ratio * before.precision
        ),
        detail=f"before: {before.describe()}; after: {after.describe()}",
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


def versions_around(
    con: duckdb.DuckDBPyConnection, calendar: Calendar, onset: int
) -> tuple[dict[str, tuple[float, int]], dict[str, tuple[float, int]]]:
    """`served_versions` before onset (from day 1) and from onset to the last visible day."""
    return (
        served_versions(con, calendar.date(1), calendar.date(onset - 1)),
        served_versions(con, calendar.date(onset), calendar.date(calendar.last_visible_day)),
    )


def only_version(versions: dict[str, tuple[float, int]]) -> str | None:
    """The one version that served, if exactly one did."""
    return next(iter(versions)) if len(versions) == 1 else None


def score_over_churn(frame: pl.DataFrame, column: str, value: object) -> float:
    """Mean score over churn rate of the group where `column` equals `value`, from a frame with
    mean_score and churn_rate per group (inf when the group is missing or never churns)."""
    row = frame.filter(pl.col(column) == value)
    if not row.height or not row["churn_rate"][0]:
        return float("inf")
    return float(row["mean_score"][0] / row["churn_rate"][0])


def has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    schema, name = table.split(".")
    return bool(
        con.execute(
            "SELECT count(*) FROM duckdb_columns() "
            "WHERE schema_name = ? AND table_name = ? AND column_name = ?",
            [schema, name, column],
        ).fetchall()[0][0]
    )
