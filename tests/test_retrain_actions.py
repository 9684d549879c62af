"""A retrain applied from the ops console, without a world: which version it registers and
serves, and which score dates it trains on."""

from __future__ import annotations

import datetime as dt

from sandbox.actions.catalog import CATALOG, PIN_VERSION, RETRAIN, ROLLBACK, SET_THRESHOLD
from sandbox.actions.deployment import baseline, in_effect, retrain_versions
from sandbox.actions.overrides import Applied
from sandbox.actions.retrain import score_days, window, window_error
from sandbox.clock import Calendar
from sandbox.pipeline.deploy import ModelDeployment
from sandbox.pipeline.release import TRAINING_SNAPSHOTS

T0 = dt.datetime(2026, 4, 13, 10)
RECORD = ModelDeployment(
    model_name="churn-model",
    model_version="2",
    model_uri="models:/churn-model@champion",
    threshold=0.01,
    features=["tenure_days"],
    deployed_at=T0 - dt.timedelta(days=20),
)
# Versions 1 to 3 are registered; 2 serves (3 was registered and never served).
BASE = baseline(RECORD, [("1", 0.06), ("2", 0.01)], {"champion": "2"}, latest=3)


def _applied(action: str, params: dict, minutes: int) -> Applied:
    requested = T0 + dt.timedelta(minutes=minutes)
    return Applied(
        id=f"{action}-{minutes}",
        action=action,
        params=params,
        requested_at=requested,
        effective_at=requested + CATALOG[action].delay,
    )


def test_a_retrain_serves_the_version_after_the_latest_registered_at_its_effective_time() -> None:
    entry = _applied(RETRAIN, {"label_maturity_days": 14}, 0)
    assert in_effect(BASE, [entry], entry.effective_at - dt.timedelta(seconds=1)) == BASE
    state = in_effect(BASE, [entry], entry.effective_at)
    assert (state.version, state.threshold, state.follows_alias) == ("4", 0.01, False)
    assert state.model_uri == "models:/churn-model/4"
    assert state.since == entry.effective_at and state.changed
    assert retrain_versions(BASE.latest, [entry]) == {entry.id: "4"}


def test_retrains_number_in_order_and_roll_back_like_any_deployment() -> None:
    first = _applied(RETRAIN, {"label_maturity_days": 14}, 0)
    second = _applied(RETRAIN, {"label_maturity_days": 0}, 30)
    threshold = _applied(SET_THRESHOLD, {"threshold": 0.2}, 7 * 60)
    entries = [first, second, threshold]
    assert retrain_versions(BASE.latest, entries) == {first.id: "4", second.id: "5"}
    state = in_effect(BASE, entries, threshold.effective_at)
    assert (state.version, state.threshold) == ("5", 0.2)
    back = _applied(ROLLBACK, {"service": "model-server"}, 8 * 60)
    state = in_effect(BASE, [*entries, back], back.effective_at)
    assert (state.version, state.threshold) == ("4", 0.01)
    # A version pinned after a retrain does not change the numbering of the next one.
    pin = _applied(PIN_VERSION, {"version": "1"}, 9 * 60)
    third = _applied(RETRAIN, {"label_maturity_days": 7}, 10 * 60)
    state = in_effect(BASE, [*entries, back, pin, third], third.effective_at)
    assert (state.version, state.threshold) == ("6", 0.06)


def test_the_score_dates_are_the_latest_with_labels_old_enough() -> None:
    calendar = Calendar(dt.date(2026, 3, 1), 7, 28, 42, 7, 14)
    day = calendar.day_of(T0)  # 10:00, after the day's 06:00 batch
    assert score_days(calendar, T0, 0) == tuple(day - k for k in range(TRAINING_SNAPSHOTS))
    assert score_days(calendar, T0, 14)[0] == day - 14
    early = calendar.at(day, 5.0)  # before the day's batch: the newest score date is yesterday's
    assert score_days(calendar, early, 0)[0] == day - 1
    assert score_days(calendar, early, 14)[0] == day - 15


def test_a_chosen_window_ends_where_asked_and_never_before_the_feature_store() -> None:
    calendar = Calendar(dt.date(2026, 3, 1), 7, 28, 42, 7, 14)
    newest = calendar.day_of(T0) - 14
    assert score_days(calendar, T0, 14, 3) == (newest, newest - 1, newest - 2)
    # An earlier newest date keeps the days after it out; a later one changes nothing.
    before = calendar.date(newest - 10)
    assert score_days(calendar, T0, 14, 4, before) == tuple(newest - 10 - k for k in range(4))
    assert score_days(calendar, T0, 14, 4, T0.date()) == score_days(calendar, T0, 14, 4)
    assert window(CATALOG[RETRAIN].params().model_dump(mode="json")) == (TRAINING_SNAPSHOTS, None)
    assert window({"days": 5, "newest_score_date": str(before)}) == (5, before)
    assert window({"label_maturity_days": 14}) == (TRAINING_SNAPSHOTS, None)  # recorded before
    # Each score time reads the day before's features: the window starts after the first day.
    first = calendar.first_feature_day
    assert window_error(calendar, (first + 2, first + 1)) is None
    problem = window_error(calendar, (first + 1, first))
    assert problem is not None and str(calendar.date(first + 1)) in problem
