"""Checks that the world without faults is healthy, so a planted fault stands out against it.

In a world with faults they apply to the days before the earliest onset.
"""

from __future__ import annotations

import math

import duckdb

from sandbox.clock import Calendar
from sandbox.faults.base import Check
from sandbox.pipeline.features import IMPUTED_FEATURES

# Production AUC may sit a little under holdout (retention offers lower churn among exactly the
# customers the model ranks highest), plus sampling noise, which is large in small worlds.
AUC_SYSTEMATIC_GAP = 0.04
NOISE_Z = 3.0
NULL_RATIO_MAX = 0.03
DRIFTED_SHARE_MAX = 0.25


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil (1982): the sampling error of an AUC from its class counts."""
    if positives < 1 or negatives < 1:
        return math.inf
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    variance = (
        auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    ) / (positives * negatives)
    return math.sqrt(max(variance, 0.0))


def weekly_auc(
    con: duckdb.DuckDBPyConnection, calendar: Calendar, until: int
) -> list[tuple[int, float, float]]:
    """(week, mean daily AUC, its standard error) for production weeks up to day `until`."""
    start, end = calendar.date(1), calendar.date(until)
    rows = con.execute(
        """
        WITH perf AS (
            SELECT (date_diff('day', $start, score_date) // 7) + 1 AS week, avg(auc) AS auc
            FROM monitoring.model_performance_daily
            WHERE segment = 'all' AND score_date BETWEEN $start AND $end GROUP BY 1
        ), counts AS (
            SELECT (date_diff('day', $start, score_date) // 7) + 1 AS week,
                   count(DISTINCT customer_id) FILTER (WHERE churned = 1) AS positives,
                   count(DISTINCT customer_id) FILTER (WHERE churned = 0) AS negatives
            FROM labels.churn_labels WHERE score_date BETWEEN $start AND $end GROUP BY 1
        )
        SELECT week, auc, positives, negatives FROM perf JOIN counts USING (week) ORDER BY week
        """,
        {"start": start, "end": end},
    ).fetchall()
    return [(w, auc, auc_standard_error(auc, p, n)) for w, auc, p, n in rows]


def holdout_standard_error(con: duckdb.DuckDBPyConnection, holdout_auc: float) -> float:
    positives, negatives = con.execute(
        "SELECT count(*) FILTER (WHERE churned = 1), count(*) FILTER (WHERE churned = 0) "
        "FROM training.churn_training_set WHERE split = 'holdout'"
    ).fetchall()[0]
    return auc_standard_error(holdout_auc, positives, negatives)


def _auc_checks(
    con: duckdb.DuckDBPyConnection, calendar: Calendar, holdout_auc: float, healthy_until: int
) -> list[Check]:
    weekly = weekly_auc(con, calendar, healthy_until)
    holdout_se = holdout_standard_error(con, holdout_auc)
    gaps = [
        (w, auc, abs(auc - holdout_auc), AUC_SYSTEMATIC_GAP + NOISE_Z * math.hypot(se, holdout_se))
        for w, auc, se in weekly
    ]
    mean_auc = sum(a for _, a, _ in weekly) / max(len(weekly), 1)
    pooled_se = math.sqrt(sum(se * se for *_, se in weekly)) / max(len(weekly), 1)
    mean_allowed = AUC_SYSTEMATIC_GAP + NOISE_Z * math.hypot(pooled_se, holdout_se)
    return [
        Check(
            name="production AUC tracks holdout AUC every week",
            passed=bool(gaps) and all(gap <= allowed for _, _, gap, allowed in gaps),
            detail=f"holdout AUC {holdout_auc:.3f} (±{holdout_se:.3f}); weekly production AUC "
            + ", ".join(
                f"w{w}={auc:.3f} (gap {gap:.3f} ≤ {allowed:.3f})" for w, auc, gap, allowed in gaps
            ),
        ),
        Check(
            name="production AUC tracks holdout AUC on average",
            passed=bool(weekly) and abs(mean_auc - holdout_auc) <= mean_allowed,
            detail=f"mean weekly production AUC {mean_auc:.3f} vs holdout {holdout_auc:.3f}, "
            f"allowed gap {mean_allowed:.3f}",
        ),
    ]


def checks(
    con: duckdb.DuckDBPyConnection, calendar: Calendar, holdout_auc: float, healthy_until: int
) -> list[Check]:
    end = calendar.date(healthy_until)
    result = _auc_checks(con, calendar, holdout_auc, healthy_until)
    nulls = con.execute(
        """
        SELECT max(value) FROM telemetry.metrics
        WHERE metric = 'feature_null_ratio' AND label IN (SELECT unnest(?)) AND ts::DATE <= ?
        """,
        [list(IMPUTED_FEATURES), end],
    ).fetchall()[0][0]
    result.append(
        Check(
            name="feature null ratio stays low",
            passed=nulls is not None and nulls <= NULL_RATIO_MAX,
            detail=f"highest daily pre-imputation null ratio {nulls:.4f} (allowed {NULL_RATIO_MAX})",
        )
    )
    drifted = con.execute(
        "SELECT max(share_drifted), count(*) FILTER (WHERE dataset_drift) "
        "FROM monitoring.drift_daily WHERE report_date <= ?",
        [end],
    ).fetchall()[0]
    result.append(
        Check(
            name="drift reports flag nothing material",
            passed=drifted[0] is not None and drifted[0] <= DRIFTED_SHARE_MAX and drifted[1] == 0,
            detail=f"largest share of drifted features {drifted[0]}, "
            f"days with dataset drift {drifted[1]}",
        )
    )
    return result
