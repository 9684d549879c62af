"""How the feature job reads its sources, as the ops console changes it: features recomputed
from the world's raw rows for the customers a changed rule touches, the online store reloaded.

- `quarantine-app-release`: the minutes watched that one release (a device family and app
  version) reports are treated as not reported, as the job treats a missing value. A customer
  whose windows hold such rows has the watch-time features recomputed from the rest of them; a
  window left with too little watch time to trust is filled with the policy's fill value, as the
  job fills any. Sessions and errors still count: the release's customers did watch.
- `count-as-failed-charge`: billing events of one more status count as failed charges in
  `payment_failures_30d`, as `failed` does.

Each recomputation uses the feature job's definitions (`pipeline.features`: the windows, the
coverage rule, the rounding); a customer the rule does not touch keeps what the job stored.
With `everyone=True` every customer is recomputed, which is how the tests hold them to the job's
own values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from sandbox.pipeline import store
from sandbox.pipeline.features import (
    BILLING_DAYS,
    FAILED_CHARGE,
    MIN_COVERAGE,
    MODEL_FEATURES,
    RECENT_DAYS,
    WINDOW_DAYS,
)

# The features made from the minutes watched.
WATCH_TIME = ("avg_daily_minutes_7d", "avg_daily_minutes_28d", "minutes_per_session_28d")
PAYMENT_FAILURES = "payment_failures_30d"

Release = tuple[str, str]  # (device, app_version)


def feature_date(world_db: Path, loaded_at: dt.datetime) -> dt.date | None:
    """The day whose features a load of the online store at `loaded_at` holds: the offline
    store's newest written by then (its event timestamp is the midnight after the day)."""
    with duckdb.connect(str(world_db), read_only=True) as con:
        (newest,) = con.execute(
            f"SELECT max(event_timestamp) FROM {store.OFFLINE_TABLE} WHERE created_timestamp <= $at",
            {"at": loaded_at},
        ).fetchone()  # type: ignore[misc]
    return None if newest is None else newest.date() - dt.timedelta(days=1)


def versions_reported(world_db: Path, device: str, by: dt.datetime) -> list[str]:
    """The app versions `device`'s viewing rows report, of the days up to `by`."""
    with duckdb.connect(str(world_db), read_only=True) as con:
        rows = con.execute(
            "SELECT DISTINCT app_version FROM raw.viewing_activity WHERE device = $device "
            "AND activity_date <= $by AND app_version IS NOT NULL ORDER BY app_version",
            {"device": device, "by": by.date()},
        ).fetchall()
    return [v for (v,) in rows]


def fills_in_effect(con: duckdb.DuckDBPyConnection, day: dt.date) -> dict[str, float]:
    """The imputation policy's fill value of each feature for the features of `day`."""
    rows = con.execute(
        "SELECT feature, arg_max(fill_value, effective_from) FROM feature_store.imputation_policy "
        "WHERE effective_from <= $at GROUP BY feature",
        {"at": dt.datetime.combine(day + dt.timedelta(days=1), dt.time())},
    ).fetchall()
    return {feature: float(value) for feature, value in rows}


def watch_time(
    world_db: Path, day: dt.date, releases: Sequence[Release], everyone: bool = False
) -> pl.DataFrame:
    """customer_id and the watch-time features of `day` with the `releases`' minutes taken as
    not reported, filled as the job fills: for the customers with such a row in the long
    window (`everyone`: for every customer with a viewing row in it)."""
    quarantined = " OR ".join("(device = ? AND app_version = ?)" for _ in releases) or "FALSE"
    flat = [v for release in releases for v in release]
    first_long = day - dt.timedelta(days=WINDOW_DAYS - 1)
    first_short = day - dt.timedelta(days=RECENT_DAYS - 1)
    chosen = (
        "TRUE"
        if everyone
        else f"customer_id IN (SELECT customer_id FROM window_rows WHERE ({quarantined}) "
        "AND minutes_watched IS NOT NULL)"
    )
    sql = f"""
        WITH window_rows AS (
            SELECT * FROM raw.viewing_activity WHERE activity_date BETWEEN ? AND ?
        ), marked AS (
            SELECT customer_id, activity_date >= ? AS recent,
                   minutes_watched IS NOT NULL AND NOT ({quarantined}) AS known,
                   coalesce(minutes_watched, 0) AS minutes, coalesce(sessions, 0) AS sessions
            FROM window_rows WHERE {chosen}
        ), totals AS (
            SELECT customer_id,
                   count(*) FILTER (WHERE recent) AS days_7,
                   count(*) FILTER (WHERE recent AND known) AS known_7,
                   coalesce(sum(minutes) FILTER (WHERE recent AND known), 0) AS min_7,
                   count(*) AS days_28,
                   count(*) FILTER (WHERE known) AS known_28,
                   coalesce(sum(minutes) FILTER (WHERE known), 0) AS min_28,
                   coalesce(sum(sessions) FILTER (WHERE known), 0) AS known_sessions_28
            FROM marked GROUP BY customer_id
        )
        SELECT customer_id,
            CASE WHEN days_7 = 0 THEN 0.0 WHEN known_7 < {MIN_COVERAGE} * days_7 THEN NULL
                 ELSE min_7 * days_7 / (known_7 * 7) END AS avg_daily_minutes_7d,
            CASE WHEN known_28 < {MIN_COVERAGE} * days_28 THEN NULL
                 ELSE min_28 * days_28 / (known_28 * 28) END AS avg_daily_minutes_28d,
            CASE WHEN known_28 < {MIN_COVERAGE} * days_28 THEN NULL
                 ELSE min_28 / known_sessions_28 END AS minutes_per_session_28d
        FROM totals ORDER BY customer_id
    """
    # The quarantine's parameters appear in the WHERE of `marked`, then again in `chosen`.
    params = [first_long, day, first_short, *flat, *([] if everyone else flat)]
    with duckdb.connect(str(world_db), read_only=True) as con:
        rows = con.execute(sql, params).fetchall()
        fills = fills_in_effect(con, day)
    schema = {"customer_id": pl.Int64, **dict.fromkeys(WATCH_TIME, pl.Float64)}
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    return frame.with_columns(
        pl.col(f).round(4).fill_null(fills[f]) if f in fills else pl.col(f).round(4)
        for f in WATCH_TIME
    )


def statuses_reported(world_db: Path, by: dt.datetime) -> list[str]:
    """The statuses billing events report, of the days up to `by`."""
    with duckdb.connect(str(world_db), read_only=True) as con:
        rows = con.execute(
            "SELECT DISTINCT status FROM raw.billing_events WHERE event_ts::DATE <= $by "
            "AND status IS NOT NULL ORDER BY status",
            {"by": by.date()},
        ).fetchall()
    return [v for (v,) in rows]


def payment_failures(
    world_db: Path, day: dt.date, statuses: Sequence[str], everyone: bool = False
) -> pl.DataFrame:
    """customer_id and `payment_failures_30d` of `day` with billing events of `statuses` counted
    as failed charges too: for the customers with such an event in the window (`everyone`: for
    every customer with a billing event in it)."""
    counted = [FAILED_CHARGE, *statuses]
    marks = ", ".join("?" for _ in counted)
    extra = ", ".join("?" for _ in statuses) or "NULL"
    chosen = (
        "TRUE"
        if everyone
        else f"customer_id IN (SELECT customer_id FROM window_rows WHERE status IN ({extra}))"
    )
    sql = f"""
        WITH window_rows AS (
            SELECT customer_id, status FROM raw.billing_events
            WHERE event_ts::DATE BETWEEN ? AND ?
        )
        SELECT customer_id, count(*) FILTER (WHERE status IN ({marks}))::DOUBLE
        FROM window_rows WHERE {chosen} GROUP BY customer_id ORDER BY customer_id
    """
    first = day - dt.timedelta(days=BILLING_DAYS - 1)
    params = [first, day, *counted, *([] if everyone else statuses)]
    with duckdb.connect(str(world_db), read_only=True) as con:
        rows = con.execute(sql, params).fetchall()
    schema = {"customer_id": pl.Int64, PAYMENT_FAILURES: pl.Float64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def reloaded(
    world_db: Path,
    values: np.ndarray,
    rows: dict[int, int],
    loaded_at: dt.datetime,
    releases: Sequence[Release],
    statuses: Sequence[str],
) -> np.ndarray:
    """An online-store load's `values` (rows by customer id, columns `MODEL_FEATURES`) as a
    reload at `loaded_at` leaves them with the quarantined `releases` and the `statuses`
    counted as failed charges: a copy, or `values` itself when nothing changes."""
    day = feature_date(world_db, loaded_at)
    fresh = [
        *([watch_time(world_db, day, releases)] if day and releases else []),
        *([payment_failures(world_db, day, statuses)] if day and statuses else []),
    ]
    if not fresh:
        return values
    values = values.copy()
    for frame in fresh:
        ids = frame["customer_id"].to_list()
        held = [i for i, c in enumerate(ids) if c in rows]
        where = np.array([rows[ids[i]] for i in held], dtype=np.int64)
        for feature in frame.columns[1:]:
            column = frame[feature].to_numpy().astype(float)
            values[where, MODEL_FEATURES.index(feature)] = column[held]
    return values
