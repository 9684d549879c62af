"""The point-in-time join: exact on hand-made rows, and equal to a brute-force reference on a world."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import polars as pl

from sandbox.faults.context import WorldData
from sandbox.pipeline import store
from sandbox.pipeline.features import MODEL_FEATURES

T0 = dt.datetime(2026, 3, 1)


def offline_rows(rows: list[tuple[int, int, float, float]]) -> pl.DataFrame:
    """(customer, sessions_7d, event hour offset, created hour offset) -> an offline table."""
    frame = pl.DataFrame(
        {
            "customer_id": [r[0] for r in rows],
            "event_timestamp": [T0 + dt.timedelta(hours=r[2]) for r in rows],
            "created_timestamp": [T0 + dt.timedelta(hours=r[3]) for r in rows],
        }
    )
    return frame.with_columns(
        *[pl.Series(name, [float(r[1]) for r in rows]) for name in MODEL_FEATURES]
    ).cast({"event_timestamp": pl.Datetime("us"), "created_timestamp": pl.Datetime("us")})


def join(
    offline: pl.DataFrame,
    spine: pl.DataFrame,
    ttl_hours: float = 72,
    snapshot_at: dt.datetime | None = None,
) -> pl.DataFrame:
    con = duckdb.connect()
    con.execute("CREATE SCHEMA feature_store")
    con.register("o", offline.to_arrow())
    con.execute(f"CREATE TABLE {store.OFFLINE_TABLE} AS SELECT * FROM o")
    return store.point_in_time_join(
        WorldData(con), spine, ttl=dt.timedelta(hours=ttl_hours), snapshot_at=snapshot_at
    )


def spine(*rows: tuple[int, float]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "customer_id": [r[0] for r in rows],
            "score_ts": [T0 + dt.timedelta(hours=r[1]) for r in rows],
        }
    ).cast({"score_ts": pl.Datetime("us")})


def test_takes_the_latest_row_known_at_score_time() -> None:
    offline = offline_rows([(1, 10, 0, 2), (1, 20, 24, 26), (1, 30, 48, 50)])
    out = join(offline, spine((1, 30), (1, 49), (1, 51)))
    assert out["sessions_7d"].to_list() == [20.0, 20.0, 30.0]


def test_a_snapshot_join_takes_what_was_known_later() -> None:
    # The online-store reader: every row gets the values known at one moment, future included,
    # and a customer whose newest row is older than the TTL then (one who left) gets NULLs.
    offline = offline_rows([(1, 10, 0, 2), (1, 20, 90, 92), (1, 30, 200, 202), (2, 5, 0, 2)])
    out = join(offline, spine((1, 3), (1, 30), (2, 3)), snapshot_at=T0 + dt.timedelta(hours=100))
    assert out["sessions_7d"].to_list() == [20.0, 20.0, None]
    assert out["feature_event_ts"].to_list() == [T0 + dt.timedelta(hours=90)] * 2 + [None]


def test_a_row_written_after_score_time_never_leaks() -> None:
    # The day-2 row describes data before the score time but was written (late) after it.
    offline = offline_rows([(1, 10, 0, 2), (1, 20, 24, 40)])
    out = join(offline, spine((1, 30)))
    assert out["sessions_7d"].to_list() == [10.0]


def test_rows_older_than_the_ttl_are_missing() -> None:
    offline = offline_rows([(1, 10, 0, 2)])
    out = join(offline, spine((1, 10), (1, 100)), ttl_hours=72)
    assert out["sessions_7d"].to_list() == [10.0, None]
    assert out["feature_event_ts"].null_count() == 1


def test_unknown_customers_and_spine_order_are_kept() -> None:
    offline = offline_rows([(1, 10, 0, 2), (2, 5, 0, 2)])
    out = join(offline, spine((2, 10), (3, 10), (1, 10)))
    assert out["customer_id"].to_list() == [2, 3, 1]
    assert out["sessions_7d"].to_list() == [5.0, None, 10.0]


def test_matches_brute_force_on_a_built_world(faulty_db: duckdb.DuckDBPyConnection) -> None:
    """On a sample of (customer, score time) pairs from the real offline store."""
    g = np.random.default_rng(0)
    customers = faulty_db.sql(
        "SELECT DISTINCT customer_id FROM feature_store.customer_features ORDER BY 1"
    ).pl()["customer_id"]
    bounds = faulty_db.execute(
        "SELECT min(event_timestamp), max(created_timestamp) FROM feature_store.customer_features"
    ).fetchall()[0]
    span = (bounds[1] - bounds[0]).total_seconds()
    sample = pl.DataFrame(
        {
            "customer_id": customers.to_numpy()[g.integers(0, len(customers), 150)],
            "score_ts": [bounds[0] + dt.timedelta(seconds=float(s)) for s in g.random(150) * span],
        }
    ).cast({"score_ts": pl.Datetime("us")})
    joined = store.point_in_time_join(WorldData(faulty_db), sample)
    ids = sample["customer_id"].to_list()
    history = faulty_db.sql(
        "SELECT * FROM feature_store.customer_features WHERE customer_id IN "
        f"({','.join(map(str, set(ids)))})"
    ).pl()
    for i, (customer, when) in enumerate(sample.iter_rows()):
        # Brute force: every row written by then, newest event first, within the TTL.
        known = history.filter(
            (pl.col("customer_id") == customer) & (pl.col("created_timestamp") <= when)
        ).sort("event_timestamp", "created_timestamp")
        row = joined.row(i, named=True)
        if known.height == 0 or known["event_timestamp"][-1] < when - store.DEFAULT_TTL:
            assert row["feature_event_ts"] is None and row["sessions_7d"] is None
            continue
        expected = known.row(-1, named=True)
        assert row["feature_event_ts"] == expected["event_timestamp"]
        assert row["feature_event_ts"] <= when
        assert [row[c] for c in MODEL_FEATURES] == [expected[c] for c in MODEL_FEATURES]


def test_training_set_holds_no_value_from_after_its_score_time(
    faulty_db: duckdb.DuckDBPyConnection,
) -> None:
    late = faulty_db.execute(
        """
        SELECT count(*) FROM training.churn_training_set t
        JOIN feature_store.customer_features f
          ON f.customer_id = t.customer_id AND f.event_timestamp = t.feature_event_ts
        WHERE f.created_timestamp > t.score_ts OR t.feature_event_ts > t.score_ts
        """
    ).fetchall()[0][0]
    matched = faulty_db.execute(
        "SELECT count(*) FROM training.churn_training_set WHERE feature_event_ts IS NOT NULL"
    ).fetchall()[0][0]
    assert matched > 1000 and late == 0


def test_online_store_holds_the_latest_row_per_customer() -> None:
    offline = offline_rows([(1, 10, 0, 2), (1, 20, 24, 26), (2, 7, 24, 26)])
    online = store.materialize(offline, T0 + dt.timedelta(hours=30))
    assert online.sort("customer_id")["sessions_7d"].to_list() == [20.0, 7.0]
    assert online["materialized_at"].n_unique() == 1
