"""The jobs-side actions' pure logic: which applied pause or drift window is in effect, the fixed
window's training dates, and which online-store load a pause leaves served."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from sandbox.actions.catalog import CATALOG, PAUSE_JOB, SET_DRIFT_WINDOW
from sandbox.actions.overrides import Applied, Overrides
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
    assert overrides.online_store_paused_since(T0) is None
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
    assert overrides.online_store_paused_since(at(hours=2)) is None
    assert overrides.online_store_paused_since(at(hours=4)) == at(hours=3)
    assert overrides.online_store_paused_since(at(hours=9)) == at(hours=3)  # the earliest pause
    assert overrides.paused("drift-monitor", at(hours=1)) is not None
    assert overrides.drift_window(at(hours=1)) is None
    assert overrides.drift_window(at(hours=2)) == (42, True)
    assert overrides.drift_window(at(hours=7)) == (3, False)  # the latest in effect


def test_pause_job_lists_only_jobs_the_stack_runs() -> None:
    schema = CATALOG[PAUSE_JOB].params.model_json_schema()
    assert set(schema["properties"]["job"]["enum"]) == {
        "feature-job",
        "materialization",
        "drift-monitor",
    }
    assert CATALOG[PAUSE_JOB].available and CATALOG[SET_DRIFT_WINDOW].available


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
        (30, 5, 4),  # paused before the 04:00 load of the next day: the last load before it
        (30, 3, 2.5),  # a backfill after the pause still loads
        (3, 5, 2.5),  # before the pause, nothing changes
        (0.5, 0, None),  # paused before any load: nothing served
        (30, 0, 2.5),  # ... but the backfill
    ],
)
def test_online_store_under_a_pause(
    tmp_path: Path, hours: float, paused: float | None, served: float | None
) -> None:
    store = OnlineStore(tmp_path)
    for snapshot in (_snapshot(1), _snapshot(4), _snapshot(28)):
        store.add(snapshot)
    store.add(_snapshot(2.5, scheduled=False))
    since = None if paused is None else T0 + dt.timedelta(hours=paused)
    got = store.at(T0 + dt.timedelta(hours=hours), since)
    if served is None:
        assert got is None
    else:
        assert got is not None and got.loaded_at == T0 + dt.timedelta(hours=served)
