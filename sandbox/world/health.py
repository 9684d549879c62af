"""Checks that the world without faults is healthy, so a planted fault stands out against it.

In a world with faults they apply to the days before the earliest onset.
"""

from __future__ import annotations

import duckdb

from sandbox.clock import Calendar
from sandbox.faults.base import Check
from sandbox.pipeline.features import IMPUTED_FEATURES

AUC_TOLERANCE = 0.05  # weekly production AUC vs holdout AUC
NULL_RATIO_MAX = 0.03
DRIFTED_SHARE_MAX = 0.25


def checks(
    con: duckdb.DuckDBPyConnection, calendar: Calendar, holdout_auc: float, healthy_until: int
) -> list[Check]:
    end = calendar.date(healthy_until)
    start = calendar.date(1)
    weekly = con.execute(
        """
        SELECT (date_diff('day', ?::DATE, score_date) // 7) + 1 AS week, avg(auc)
        FROM monitoring.model_performance_daily
        WHERE segment = 'all' AND score_date BETWEEN ? AND ? GROUP BY 1 ORDER BY 1
        """,
        [start, start, end],
    ).fetchall()
    worst = max((abs(auc - holdout_auc) for _, auc in weekly), default=0.0)
    result = [
        Check(
            name="production AUC tracks holdout AUC",
            passed=bool(weekly) and worst <= AUC_TOLERANCE,
            detail=f"holdout AUC {holdout_auc:.3f}; weekly production AUC "
            + ", ".join(f"w{w}={a:.3f}" for w, a in weekly)
            + f" (largest gap {worst:.3f}, allowed {AUC_TOLERANCE})",
        )
    ]
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
