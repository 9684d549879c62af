"""Stage 3: the feature store in DuckDB — offline table, online table, and the point-in-time join.

Offline: `feature_store.customer_features` (one row per customer per feature day, with
`event_timestamp` = the end of the data it describes and `created_timestamp` = when the job wrote it).
Online: `feature_store.customer_features_online`, the latest row per customer as of the last
materialization, with `materialized_at` so freshness can be read off it.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from sandbox.faults.context import WorldData
from sandbox.pipeline.features import MODEL_FEATURES

OFFLINE_TABLE = "feature_store.customer_features"
ONLINE_TABLE = "feature_store.customer_features_online"
DEFAULT_TTL = dt.timedelta(days=3)
MATERIALIZE_HOUR = 4.0  # the daily load of the newest offline rows into the online store


def materialize(rows: pl.DataFrame, materialized_at: dt.datetime) -> pl.DataFrame:
    """The online store after loading the newest offline rows (one per customer)."""
    return (
        rows.sort("event_timestamp")
        .unique("customer_id", keep="last", maintain_order=True)
        .sort("customer_id")
        .with_columns(pl.lit(materialized_at).cast(pl.Datetime("us")).alias("materialized_at"))
    )


def point_in_time_join(
    data: WorldData,
    spine: pl.DataFrame,
    ttl: dt.timedelta = DEFAULT_TTL,
    offline_table: str = OFFLINE_TABLE,
    snapshot_at: dt.datetime | None = None,
) -> pl.DataFrame:
    """Feature values as they were known at each spine row's `score_ts`.

    For every (customer_id, score_ts) it takes the newest offline row that already existed at
    score_ts (created_timestamp <= score_ts; the ASOF JOIN's inequality). Feast checks only the
    event timestamp, which lets a row written after the score time (a late or re-run job) leak
    into training; checking the write time closes that hole. A row whose event_timestamp is
    older than `ttl` at score time counts as missing, as Feast's TTL does: its features and
    `feature_event_ts` are NULL. Spine rows keep their order and their other columns.

    `snapshot_at` instead takes, for every row, the values an online-store read would return at
    that one moment: the newest row, NULL once it is older than `ttl` (a customer who left has no
    fresh row). Run on past score times it leaks what happened after them into the training set.
    """
    ttl_seconds = int(ttl.total_seconds())
    fresh = (
        f"k.event_timestamp <= s.score_ts "
        f"AND k.event_timestamp >= s.score_ts - INTERVAL ({ttl_seconds}) SECOND"
    )
    known_at = pl.col("score_ts")
    if snapshot_at is not None:
        fresh = f"k.event_timestamp >= s._known_at - INTERVAL ({ttl_seconds}) SECOND"
        known_at = pl.lit(snapshot_at).cast(pl.Datetime("us"))
    values = ", ".join(f"CASE WHEN {fresh} THEN k.{c} END AS {c}" for c in MODEL_FEATURES)
    return data.sql(
        f"""
        WITH known AS (
            SELECT s._spine_row, f.*
            FROM _pit_spine s
            ASOF JOIN {offline_table} f
              ON f.customer_id = s.customer_id AND s._known_at >= f.created_timestamp
        )
        SELECT s.* EXCLUDE (_spine_row, _known_at),
               CASE WHEN {fresh} THEN k.event_timestamp END AS feature_event_ts,
               {values}
        FROM _pit_spine s
        LEFT JOIN known k ON k._spine_row = s._spine_row
        ORDER BY s._spine_row
        """,
        _pit_spine=spine.with_row_index("_spine_row").with_columns(known_at.alias("_known_at")),
    )
