"""The daily feature job on hand-made raw rows: windows, missing values, imputation, run records."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest

from sandbox.clock import Calendar
from sandbox.faults.base import FaultSet
from sandbox.logs import LogSink
from sandbox.pipeline.features import (
    IMPUTED_FEATURES,
    MODEL_FEATURES,
    RECENT_DAYS,
    WINDOW_DAYS,
    FeatureJob,
    ViewingWindow,
)

CAL = Calendar(dt.date(2026, 3, 2), 28, 56, 42, 5, 14)
DAY = 10
PRICES = np.array([7.99, 12.99, 17.99, 7.99])  # customers 1..4


def activity(day: int, rows: dict[int, tuple[int, float | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "customer_id": list(rows),
            "activity_date": [CAL.date(day)] * len(rows),
            "sessions": [v[0] for v in rows.values()],
            "minutes_watched": [v[1] for v in rows.values()],
            "playback_errors": [1] * len(rows),
        },
        schema_overrides={"minutes_watched": pl.Float64},
    )


def empty_billing(failed_for: list[int] | None = None) -> pl.DataFrame:
    ids = failed_for or []
    return pl.DataFrame(
        {"customer_id": ids, "status": ["failed"] * len(ids)},
        schema={"customer_id": pl.Int64, "status": pl.Utf8},
    )


def tickets(ids: list[int], resolved_at: list[dt.datetime | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {"customer_id": ids, "resolved_at": resolved_at},
        schema={"customer_id": pl.Int64, "resolved_at": pl.Datetime("us")},
    )


@pytest.fixture
def job() -> tuple[FeatureJob, LogSink]:
    customers = pl.DataFrame(
        {
            "customer_id": [1, 2, 3, 4],
            "signup_day": [-100, -5, -30, -60],
            "monthly_price": PRICES,
        }
    )
    logs = LogSink()
    return FeatureJob(
        seed=1, calendar=CAL, faults=FaultSet([]), customers=customers, logs=logs
    ), logs


def feed(job: FeatureJob) -> None:
    """28 days: customer 1 watches daily, 2 only in the last week with no watch-time telemetry,
    3 only three weeks ago, 4 never."""
    for day in range(DAY - 27, DAY + 1):
        rows: dict[int, tuple[int, float | None]] = {1: (2, 60.0)}
        if day > DAY - 7:
            rows[2] = (1, None)
        if DAY - 21 <= day < DAY - 14:
            rows[3] = (3, 90.0)
        failed = [1] if day == DAY - 3 else []
        t = tickets([3], [None]) if day == DAY - 2 else tickets([], [])
        job.observe(activity(day, rows), empty_billing(failed), t, PRICES)


def test_window_aggregates(job: tuple[FeatureJob, LogSink]) -> None:
    feature_job, _ = job
    feed(feature_job)
    rows = feature_job.run(DAY, pl.Series([1, 2, 3, 4]).to_numpy()).sort("customer_id")
    by_id = {r["customer_id"]: r for r in rows.iter_rows(named=True)}
    assert by_id[1]["sessions_7d"] == 14 and by_id[1]["sessions_28d"] == 56
    assert by_id[1]["avg_daily_minutes_7d"] == pytest.approx(60.0)
    assert by_id[1]["minutes_per_session_28d"] == pytest.approx(30.0)
    assert by_id[1]["payment_failures_30d"] == 1
    assert by_id[3]["sessions_7d"] == 0 and by_id[3]["days_since_last_session"] == 15
    assert by_id[3]["avg_daily_minutes_7d"] == 0.0  # no viewing at all is a real zero
    assert by_id[3]["tickets_30d"] == 1 and by_id[3]["unresolved_tickets_30d"] == 1
    assert by_id[4]["days_since_last_session"] == 28 and by_id[4]["sessions_28d"] == 0
    assert by_id[2]["tenure_days"] == DAY + 5
    assert rows["event_timestamp"].unique().to_list() == [CAL.midnight(DAY + 1)]
    assert (rows["created_timestamp"] > rows["event_timestamp"]).all()
    assert rows.columns[3:] == MODEL_FEATURES


def test_the_price_is_the_one_the_crm_holds_at_the_days_end(
    job: tuple[FeatureJob, LogSink],
) -> None:
    feature_job, _ = job
    feed(feature_job)
    prices = PRICES.copy()
    # Customer 1 renews onto a new price on DAY; the world goes on changing its own array.
    prices[0] = 8.99
    feature_job.observe(activity(DAY, {}), empty_billing(), tickets([], []), prices)
    prices[1] = 99.0
    rows = feature_job.run(DAY, np.array([1, 2, 3, 4])).sort("customer_id")
    assert rows["monthly_price"].to_list() == [8.99, 12.99, 17.99, 7.99]


def test_missing_watch_time_is_imputed_and_counted(job: tuple[FeatureJob, LogSink]) -> None:
    feature_job, logs = job
    feed(feature_job)
    rows = feature_job.run(DAY, pl.Series([1, 2, 3, 4]).to_numpy())
    customer_2 = rows.filter(pl.col("customer_id") == 2).row(0, named=True)
    policy = {
        r["feature"]: r["fill_value"] for r in feature_job.policy_frame().iter_rows(named=True)
    }
    assert set(policy) == set(IMPUTED_FEATURES)
    for feature in IMPUTED_FEATURES:
        assert customer_2[feature] == pytest.approx(policy[feature])
    assert rows.null_count().sum_horizontal().item() == 0
    run = feature_job.run_frame().row(0, named=True)
    assert run["nulls_seen"] == len(IMPUTED_FEATURES) and run["nulls_imputed"] == run["nulls_seen"]
    assert run["rows_out"] == 4 and run["status"] == "success"
    finished = [r for r in logs.frame().iter_rows(named=True) if r["event"] == "run_finished"]
    assert json.loads(finished[0]["attrs"])["nulls_imputed"] == run["nulls_imputed"]
    null_ratio = (
        feature_job.health_frame()
        .filter(
            (pl.col("metric") == "feature_null_ratio") & (pl.col("label") == "avg_daily_minutes_7d")
        )["value"]
        .item()
    )
    assert null_ratio == pytest.approx(0.25)


def test_a_window_with_too_little_watch_time_is_missing(job: tuple[FeatureJob, LogSink]) -> None:
    """Coverage rule: watch time for under 75% of a window's active days is not trusted."""
    feature_job, _ = job
    for day in range(DAY - 27, DAY + 1):
        # Customer 1 reports watch time only for the first 20 of 28 active days.
        minutes = 60.0 if day < DAY - 7 else None
        feature_job.observe(
            activity(day, {1: (2, minutes)}), empty_billing(), tickets([], []), PRICES
        )
    policy_rows = feature_job.run(DAY, pl.Series([1, 2]).to_numpy())
    run = feature_job.run_frame().row(0, named=True)
    customer_1 = policy_rows.filter(pl.col("customer_id") == 1).row(0, named=True)
    # 20 of 28 days known (71%) fails the rule for the 28-day features; 0 of 7 for the 7-day one.
    assert run["nulls_seen"] == 3
    fills = {
        r["feature"]: r["fill_value"] for r in feature_job.policy_frame().iter_rows(named=True)
    }
    assert customer_1["avg_daily_minutes_28d"] == fills["avg_daily_minutes_28d"]


def test_the_running_window_totals_are_those_of_the_last_days_rows_regrouped() -> None:
    """Forty days of random viewing (missing watch time, a customer's day split over two rows,
    customers who stop): after every day, each total equals grouping the raw rows of the last
    28 days (7 for the short window) afresh."""
    g = np.random.default_rng(3)
    ids = np.arange(100, 400, 3)
    window = ViewingWindow(g.permutation(ids))
    days: list[pl.DataFrame] = []
    for day in range(40):
        watching = ids[g.random(len(ids)) < (0.7 if day < 20 else 0.3)]
        rows = np.concatenate([watching, watching[:5]])  # five customers' days in two rows
        minutes = np.round(g.gamma(2.0, 30.0, len(rows)), 1)
        frame = pl.DataFrame(
            {
                "customer_id": rows,
                "sessions": g.integers(1, 6, len(rows)),
                "minutes_watched": np.where(g.random(len(rows)) < 0.2, np.nan, minutes),
                "playback_errors": g.integers(0, 3, len(rows)),
            }
        ).with_columns(
            pl.col("minutes_watched").fill_nan(None),
            pl.lit(day).alias("day"),
            pl.lit(CAL.date(day)).alias("activity_date"),
        )
        if day == 30:
            frame = frame.clear()  # a day with no viewing at all
        window.add(frame)
        days.append(frame)
        raw = pl.concat(days[-WINDOW_DAYS:])
        recent = pl.col("day") > day - RECENT_DAYS
        minutes_ = pl.col("minutes_watched")
        expected = raw.group_by("customer_id").agg(
            pl.col("sessions").filter(recent).sum().alias("sessions_7d"),
            pl.col("sessions").sum().alias("sessions_28d"),
            (day - pl.col("day").max()).alias("days_since_last_session"),
            pl.col("playback_errors").filter(recent).sum().alias("playback_errors_7d"),
            minutes_.filter(recent).sum().alias("_min_7"),
            minutes_.filter(recent).count().alias("_known_7"),
            recent.sum().alias("_days_7"),
            minutes_.sum().alias("_min_28"),
            pl.col("sessions").filter(minutes_.is_not_null()).sum().alias("_known_sessions_28"),
            minutes_.count().alias("_known_28"),
            pl.len().alias("_days_28"),
        )
        got = window.aggregates()
        assert sorted(got.columns) == sorted(expected.columns)
        joined = expected.join(got, on="customer_id", how="full", suffix="_got")
        for column in expected.columns[1:]:
            want, have = joined[column].cast(pl.Float64), joined[f"{column}_got"].cast(pl.Float64)
            assert np.allclose(want.to_numpy(), have.to_numpy(), rtol=1e-12), (day, column)
        assert window.rows_in() == raw.height


def test_viewing_rows_of_another_day_are_refused() -> None:
    window = ViewingWindow(np.array([1, 2]))
    window.add(activity(DAY, {1: (2, 60.0)}))
    for late in (
        pl.concat([activity(DAY + 1, {1: (1, 5.0)}), activity(DAY - 3, {2: (1, 5.0)})]),
        activity(DAY, {2: (1, 5.0)}),
    ):
        with pytest.raises(ValueError, match="one day of viewing rows at a time"):
            window.add(late)
    window.add(activity(DAY + 1, {}))  # a day without rows says nothing of its day
    window.add(activity(DAY + 1, {2: (1, 5.0)}))
