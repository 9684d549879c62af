"""The time-travel retrain: a release whose training set is joined as of training time."""

from __future__ import annotations

import duckdb
import polars as pl

from sandbox import scenario
from sandbox.faults.base import HookContext, WorldData
from sandbox.faults.training_time_travel import FEATURE_VIEWS, Params, TrainingTimeTravel
from sandbox.pipeline import store
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.pipeline.release import INITIAL_RELEASE, TRAINING_HOUR, Release

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


def _releases(tier: str, onset: int = 15) -> list[Release]:
    fault = TrainingTimeTravel(Params(onset_day=onset), tier)  # type: ignore[arg-type]
    return fault.handle("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL))


def test_below_hard_the_run_carries_the_pipeline_tag_and_is_the_only_new_release() -> None:
    for tier in ("guided", "standard"):
        releases = _releases(tier)
        assert [r.day for r in releases] == [1, 15]
        assert releases[-1].tags == {"pipeline": "3.0"}


def test_hard_registers_it_like_a_scheduled_retrain_the_week_before() -> None:
    releases = _releases("hard")
    assert [r.day for r in releases] == [1, 8, 15]
    assert all(r.tags == {} and not r.score_days for r in releases)
    # No room for a scheduled retrain before day two.
    assert [r.day for r in _releases("hard", onset=8)] == [1, 8]


def test_each_tier_logs_what_it_shows_and_no_tell_of_its_own() -> None:
    logged = {
        tier: TrainingTimeTravel(Params(onset_day=15), tier).changelog(CAL)  # type: ignore[arg-type]
        for tier in ("guided", "standard", "hard")
    }
    assert [e["title"] for e in logged["standard"]] == ["training pipeline 3.0"]
    # Hard logs both retrains alike, each trained on the usual window, and no pipeline change.
    retrains = [e for e in logged["hard"] if e["service"] == "churn-model"]
    assert [e["day"] for e in retrains] == [7, 14]
    assert len({(e["title"], e["body"]) for e in retrains}) == 1
    assert not [e for e in logged["hard"] if e["service"] == "training"]
    for tier, entries in logged.items():
        text = " ".join(e["title"] + " " + e["body"] for e in entries).lower()
        tells = TrainingTimeTravel(Params(), tier).tells(tier)  # type: ignore[arg-type]
        assert not [t for t in tells if t.lower() in text], tier
    guided = " ".join(e["title"] + " " + e["body"] for e in logged["guided"]).lower()
    assert any(t.lower() in guided for t in TrainingTimeTravel(Params()).tells("hard"))
