"""The time-travel retrain: a release whose training set is joined as of training time."""

from __future__ import annotations

import duckdb
import polars as pl

from sandbox import scenario
from sandbox.faults.base import HookContext, WorldData
from sandbox.faults.training_time_travel import FEATURE_VIEWS, Params, TrainingTimeTravel
from sandbox.pipeline import store
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.pipeline.release import INITIAL_RELEASE, TRAINING_HOUR

CAL = scenario.load(None).world.calendar()


def _offline(rows: list[tuple[int, int, float]]) -> WorldData:
    """(event day, created day, every feature's value) rows of one customer, in a real DuckDB."""
    frame = pl.DataFrame(
        {
            "customer_id": [7] * len(rows),
            "event_timestamp": [CAL.midnight(r[0]) for r in rows],
            "created_timestamp": [CAL.at(r[1], 2.0) for r in rows],
            **{name: [r[2] for r in rows] for name in MODEL_FEATURES},
        }
    ).cast({"event_timestamp": pl.Datetime("us"), "created_timestamp": pl.Datetime("us")})
    con = duckdb.connect()
    con.execute("CREATE SCHEMA feature_store")
    con.register("o", frame.to_arrow())
    con.execute(f"CREATE TABLE {store.OFFLINE_TABLE} AS SELECT * FROM o")
    return WorldData(con)


def test_the_retrain_joins_one_view_as_of_training_time() -> None:
    fault = TrainingTimeTravel(Params(onset_day=9))
    releases = fault.handle("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL))
    assert [r.day for r in releases] == [1, 9]
    # Known on day 4: 1.0; written on day 8, before the retrain at TRAINING_HOUR: 2.0.
    data = _offline([(3, 4, 1.0), (7, 8, 2.0)])
    spine = pl.DataFrame(
        {"customer_id": [7], "score_date": [CAL.date(4)], "score_ts": [CAL.at(4, 6.0)]}
    ).cast({"score_ts": pl.Datetime("us")})
    dataset = store.point_in_time_join(data, spine).with_columns(churned=pl.lit(1))
    assert CAL.at(8, 2.0) < CAL.at(8, TRAINING_HOUR)
    trained = fault.handle("train.dataset", dataset, HookContext(1, 9, CAL, data))
    view = FEATURE_VIEWS["activity"]
    assert trained.columns == dataset.columns
    assert all(trained[c][0] == 2.0 for c in view)  # the future leaks in
    assert all(trained[c][0] == 1.0 for c in MODEL_FEATURES if c not in view)
    assert trained["feature_event_ts"][0] == CAL.midnight(7)
    # Another release's training set is joined as of score time.
    assert fault.handle("train.dataset", dataset, HookContext(1, 10, CAL, data)).equals(dataset)
    # On day 1 it replaces the first model instead of adding a second one.
    first = TrainingTimeTravel(Params(onset_day=1))
    assert [
        r.day for r in first.handle("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL))
    ] == [1]
