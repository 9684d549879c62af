"""The jobs-side actions' pure logic: which applied pause, resume or drift window is in effect,
the fixed window's training dates, and which online-store load a pause leaves served."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from sandbox.actions.catalog import CATALOG, PAUSE_JOB, RESUME_JOB, SET_DRIFT_WINDOW
from sandbox.actions.overrides import Applied, Overrides, Pause, first_live_batch
from sandbox.clock import Calendar
from sandbox.services.jobs import fixed_window_dates
from sandbox.services.model_server import OnlineStore, Snapshot

T0 = dt.datetime(2026, 4, 13)


def _applied(action: str, params: dict, hours: float, n: int = 0) -> Applied:
    at = T0 + dt.timedelta(hours=hours)
    return Applied(
        id=f"{action}-{hours}-{n}",
        action=action,
        params=params,
        requested_at=at - CATALOG[action].delay,
        effective_at=at,
    )


def test_pauses_and_drift_windows_in_effect(tmp_path: Path) -> None:
    overrides = Overrides(tmp_path)
    assert overrides.paused("materialization", T0) is None
    assert overrides.online_store_pauses(T0) == []
    assert overrides.drift_window(T0) is None
    overrides.append(_applied(PAUSE_JOB, {"job": "drift-monitor"}, 1))
    overrides.append(_applied(PAUSE_JOB, {"job": "feature-job"}, 5))
    overrides.append(_applied(PAUSE_JOB, {"job": "materialization"}, 3))
    overrides.append(_applied(SET_DRIFT_WINDOW, {"days": 42, "fixed": True}, 2))
    overrides.append(_applied(SET_DRIFT_WINDOW, {"days": 3, "fixed": False}, 6))

    def at(hours: float) -> dt.datetime:
        return T0 + dt.timedelta(hours=hours)

    assert overrides.paused("materialization", at(hours=2.9)) is None
    assert overrides.paused("materialization", at(hours=3)).params["job"] == "materialization"
    assert overrides.online_store_pauses(at(hours=2)) == []
    assert [p.pause.effective_at for p in overrides.online_store_pauses(at(hours=4))] == [at(3)]
    assert {p.pause.effective_at for p in overrides.online_store_pauses(at(hours=9))} == {
        at(3),
        at(5),
    }
    assert overrides.paused("drift-monitor", at(hours=1)) is not None
    assert overrides.drift_window(at(hours=1)) is None
    assert overrides.drift_window(at(hours=2)) == (42, True)
    assert overrides.drift_window(at(hours=7)) == (3, False)  # the latest in effect


def test_a_job_stays_paused_until_resumed_and_a_resume_ends_only_a_pause(tmp_path: Path) -> None:
    overrides = Overrides(tmp_path)
    job = {"job": "materialization"}
    overrides.append(_applied(RESUME_JOB, job, 1))  # not paused: nothing to end
    overrides.append(_applied(PAUSE_JOB, job, 2))
    overrides.append(_applied(PAUSE_JOB, job, 3))  # already paused: the first pause holds
    overrides.append(_applied(RESUME_JOB, job, 5))
    overrides.append(_applied(PAUSE_JOB, job, 8))

    def at(hours: float) -> dt.datetime:
        return T0 + dt.timedelta(hours=hours)

    assert overrides.paused("materialization", at(1.5)) is None
    assert overrides.paused("materialization", at(4)).effective_at == at(2)
    assert overrides.paused("materialization", at(5)) is None  # resumed
    assert overrides.paused("materialization", at(9)).effective_at == at(8)
    spans = overrides.pauses("materialization", at(9))
    assert [(p.pause.effective_at, p.until) for p in spans] == [(at(2), at(5)), (at(8), None)]
    assert [any(p.holds(at(h)) for p in spans) for h in (1.9, 2, 4.9, 5, 7.9, 8, 30)] == [
        False, True, True, False, False, True, True,
    ]  # fmt: skip
    assert overrides.paused("feature-job", at(9)) is None  # another job's changes do not count


def test_pause_and_resume_list_only_jobs_the_stack_runs() -> None:
    for action in (PAUSE_JOB, RESUME_JOB):
        schema = CATALOG[action].params.model_json_schema()
        assert set(schema["properties"]["job"]["enum"]) == {
            "feature-job",
            "materialization",
            "drift-monitor",
        }
        assert CATALOG[action].available
    assert CATALOG[SET_DRIFT_WINDOW].available


def test_fixed_window_dates() -> None:
    d = dt.date(2026, 2, 5)
    dates = [d - dt.timedelta(days=5 * k) for k in range(6)]
    assert fixed_window_dates(dates, 1) == [d]
    assert fixed_window_dates(dates, 5) == [d]
    assert fixed_window_dates(dates, 6) == [d - dt.timedelta(days=5), d]
    assert fixed_window_dates(dates, 42) == sorted(dates)
    assert fixed_window_dates([], 7) == []


def _snapshot(hours: float, scheduled: bool = True) -> Snapshot:
    return Snapshot(T0 + dt.timedelta(hours=hours), {}, np.zeros((0, 13)), scheduled)


@pytest.mark.parametrize(
    ("hours", "paused", "served"),
    [
        (30, None, 28),  # no pause: the newest load
        (30, (5, None), 4),  # paused before the 04:00 load of the next day: the last load before it
        (30, (3, None), 2.5),  # a backfill after the pause still loads
        (3, (5, None), 2.5),  # before the pause, nothing changes
        (0.5, (0, None), None),  # paused before any load: nothing served
        (30, (0, None), 2.5),  # ... but the backfill
        (30, (3, 10), 28),  # resumed before the next load: it comes in
        (30, (3, 29), 2.5),  # resumed after it: that load was skipped
        (27, (3, 10), 2.5),  # resumed, but the load skipped while paused never happened
        (30, (24, 29), 4),  # paused over the next day's load, resumed before another
    ],
)
def test_online_store_under_a_pause(
    tmp_path: Path,
    hours: float,
    paused: tuple[float, float | None] | None,
    served: float | None,
) -> None:
    store = OnlineStore(tmp_path)
    for snapshot in (_snapshot(1), _snapshot(4), _snapshot(28)):
        store.add(snapshot)
    store.add(_snapshot(2.5, scheduled=False))
    pauses = []
    if paused is not None:
        start, until = paused
        pause = _applied(PAUSE_JOB, {"job": "materialization"}, start)
        pauses.append(Pause(pause, None if until is None else T0 + dt.timedelta(hours=until)))
    got = store.at(T0 + dt.timedelta(hours=hours), pauses)
    if served is None:
        assert got is None
    else:
        assert got is not None and got.loaded_at == T0 + dt.timedelta(hours=served)


def test_the_live_batch_takes_over_at_the_first_06_00_after_a_change() -> None:
    calendar = Calendar(dt.date(2026, 3, 1), 7, 28, 42, 7, 14)
    day = calendar.day_of(dt.datetime(2026, 4, 13))

    def change(effective: dt.datetime) -> Applied:
        return Applied(
            id=f"c{effective:%d%H%M}",
            action=SET_DRIFT_WINDOW,
            params={"days": 7, "fixed": True},
            requested_at=effective - dt.timedelta(minutes=30),
            effective_at=effective,
        )

    assert first_live_batch([], calendar) is None
    early, late = calendar.at(day, 5.5), calendar.at(day, 6.5)
    assert first_live_batch([change(early)], calendar) == calendar.at(day, 6.0)
    assert first_live_batch([change(late)], calendar) == calendar.at(day + 1, 6.0)
    on_time = calendar.at(day, 6.0)
    assert first_live_batch([change(late), change(on_time)], calendar) == on_time
