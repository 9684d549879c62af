"""The time-travel retrain: a release whose training set is joined as of training time."""

from __future__ import annotations

from sandbox import scenario
from sandbox.faults.base import HookContext
from sandbox.faults.training_time_travel import FEATURE_VIEWS, Params, TrainingTimeTravel
from sandbox.pipeline.release import INITIAL_RELEASE

CAL = scenario.load(None).world.calendar()


def test_the_retrain_joins_features_as_of_training_time() -> None:
    fault = TrainingTimeTravel(Params(onset_day=9))
    releases = fault.apply("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL))
    assert [(r.day, r.snapshot_features) for r in releases] == [
        (1, ()),
        (9, FEATURE_VIEWS["activity"]),
    ]
    # On day 1 it replaces the first model instead of adding a second one.
    first = TrainingTimeTravel(Params(onset_day=1))
    assert [
        r.day for r in first.apply("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL))
    ] == [1]
