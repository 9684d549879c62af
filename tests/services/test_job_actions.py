"""The jobs-side actions of the ops console, in process on private copies of cached test worlds,
measured against the same-seed control world.

`set-drift-reference-window` (monitoring world, rolling-drift-reference): from its effective time
the nightly drift report compares each live day with the chosen window, so a fixed training
window flags the crept watch-time features the trailing window hid, as the control world's
training reference does not. `pause-job` (immature-labels world, upstream-unit-change): the
paused materialization's runs are skipped and logged, and the model server keeps serving the
online store as last loaded, closer to control's than the loads the corrupt upstream reached;
`resume-job` lets its next run load again.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest

from sandbox.actions.catalog import CATALOG, PAUSE_JOB, RESUME_JOB, SET_DRIFT_WINDOW
from sandbox.actions.overrides import Applied, Overrides
from sandbox.faults.rolling_drift_reference import CREPT, WATCHED
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.services.common import ServiceContext
from sandbox.services.jobs import (
    DRIFT,
    MATERIALIZE,
    SERVICE,
    SKIPPED,
    TABLE,
    Scheduler,
    completed,
    drift_due,
    drift_reports,
)
from sandbox.services.model_server import LiveModelServer
from sandbox.services.simclock import SimClock
from sandbox.services.spool import read_new
from tests.services.test_jobs import private_world, sampled_means

pytestmark = pytest.mark.world

WATCH_TIME_28D = ("avg_daily_minutes_28d", "minutes_per_session_28d")


def apply(world: Path, action: str, params: dict[str, Any], effective_at: dt.datetime) -> Applied:
    """An applied action, written where the services read it (as the gateway writes it)."""
    applied = Applied(
        id=uuid.uuid4().hex[:12],
        action=action,
        params=CATALOG[action].params.model_validate(params).model_dump(mode="json"),
        requested_at=effective_at - CATALOG[action].delay,
        effective_at=effective_at,
    )
    Overrides(world / "run").append(applied)
    return applied


def context(world: Path, at: dt.datetime, service: str = SERVICE) -> ServiceContext:
    ctx = ServiceContext(world, service)
    SimClock.starting(ctx.calendar, speed=1.0, resume_at=at).save(ctx.paths.run)
    return ServiceContext(world, service)


def flagged(features: list[dict[str, Any]]) -> set[str]:
    return {r["feature"] for r in features if r["drifted"]}


def test_drift_reference_window_flags_the_creep_the_trailing_window_hid(worlds, tmp_path):
    faulty = private_world(worlds.get("monitoring"), "monitoring", tmp_path)
    control = private_world(worlds.get("control"), "control", tmp_path)
    cal = ServiceContext(faulty, SERVICE).calendar
    first = cal.last_production_day + 1
    trailing_day, fixed_day, short_day, recent_day = range(first, first + 4)
    # Irrelevant to the report: a paused materialization.
    apply(faulty, PAUSE_JOB, {"job": "materialization"}, cal.at(first, 1.0))
    # The whole training period, then its last week, then the two weeks before each day.
    apply(faulty, SET_DRIFT_WINDOW, {"days": 42}, drift_due(cal, trailing_day) + dt.timedelta(1))
    apply(faulty, SET_DRIFT_WINDOW, {"days": 7}, drift_due(cal, fixed_day) + dt.timedelta(1))
    apply(
        faulty,
        SET_DRIFT_WINDOW,
        {"days": 14, "fixed": False},
        drift_due(cal, short_day) + dt.timedelta(minutes=1),
    )
    reports = drift_reports(faulty, [trailing_day, fixed_day, short_day, recent_day])
    [baseline] = drift_reports(control, [fixed_day]).values()

    con = duckdb.connect(str(faulty / "candidate" / "world.duckdb"), read_only=True)
    try:
        # Before the change takes effect: the trailing window of the fault, nothing crept flagged.
        before = {r["feature"]: r for r in reports[trailing_day].features}
        window = sampled_means(con, [cal.date(d) for d in range(trailing_day - 3, trailing_day)])
        assert before[WATCHED]["reference_mean"] == pytest.approx(window[WATCHED], abs=6e-7)
        assert not flagged(reports[trailing_day].features) & set(CREPT)

        # The whole training period: the same reference the control world's report uses, and the
        # creep is flagged where control flags nothing of it.
        fixed = {r["feature"]: r for r in reports[fixed_day].features}
        control_rows = {r["feature"]: r for r in baseline.features}
        for feature in MODEL_FEATURES:
            assert fixed[feature]["reference_mean"] == pytest.approx(
                control_rows[feature]["reference_mean"], rel=1e-6
            )
        newly = flagged(reports[fixed_day].features) - flagged(baseline.features)
        assert WATCHED in newly and newly <= set(CREPT), newly
        assert reports[fixed_day].summary["n_drifted"] > reports[trailing_day].summary["n_drifted"]

        # The training period's last week only: its rows, and the creep still flagged.
        last_week = {r["feature"]: r for r in reports[short_day].features}
        train = con.sql(
            f"SELECT avg({WATCHED}) FROM training.churn_training_set "
            "WHERE split = 'train' AND model_version = '1' AND score_date > ("
            "SELECT max(score_date) - 7 FROM training.churn_training_set "
            "WHERE split = 'train' AND model_version = '1')"
        ).fetchall()[0][0]
        assert last_week[WATCHED]["reference_mean"] == pytest.approx(train, rel=0.02)
        assert last_week[WATCHED]["reference_mean"] != fixed[WATCHED]["reference_mean"]
        assert WATCHED in flagged(reports[short_day].features)

        # A trailing window of two weeks: the served features of the 14 days before.
        recent = {r["feature"]: r for r in reports[recent_day].features}
        window = sampled_means(con, [cal.date(d) for d in range(recent_day - 14, recent_day)])
        assert recent[WATCHED]["reference_mean"] == pytest.approx(window[WATCHED], abs=6e-7)
    finally:
        con.close()


def _gap(served: np.ndarray, control: np.ndarray) -> float:
    return float(np.nanmean(np.abs(served - control)))


def test_pausing_materialization_keeps_the_corrupt_loads_out_of_the_online_store(worlds, tmp_path):
    faulty = private_world(worlds.get("immature-labels"), "immature-labels", tmp_path)
    control = private_world(worlds.get("control"), "control", tmp_path)
    cal = ServiceContext(faulty, SERVICE).calendar
    first, last = cal.last_production_day + 1, cal.last_visible_day
    now = cal.at(last, 12.0)

    def served(world: Path) -> tuple[LiveModelServer, pl.DataFrame]:
        server = LiveModelServer(context(world, now, "model-server"))
        snapshot = server.snapshot(now)
        assert snapshot is not None
        ids = sorted(snapshot.rows)
        values = snapshot.values[[snapshot.rows[i] for i in ids]]
        return server, pl.DataFrame(values, schema=MODEL_FEATURES).with_columns(
            customer_id=pl.Series(ids)
        )

    def gaps(frame: pl.DataFrame, reference: pl.DataFrame) -> dict[str, float]:
        joined = frame.join(reference, on="customer_id", suffix="_control")
        return {
            f: _gap(joined[f].to_numpy(), joined[f"{f}_control"].to_numpy()) for f in WATCH_TIME_28D
        }

    _, control_served = served(control)
    server, unpaused = served(faulty)
    assert server.snapshot(now).loaded_at == cal.at(last, 4.0)
    before = gaps(unpaused, control_served)

    # An irrelevant pause leaves the store as it was.
    apply(faulty, PAUSE_JOB, {"job": "drift-monitor"}, cal.at(first, 1.0))
    assert server.snapshot(now).loaded_at == cal.at(last, 4.0)

    # Pausing the materialization before the first live load: the store stays as last loaded.
    apply(faulty, PAUSE_JOB, {"job": "materialization"}, cal.at(first, 1.0))
    kept = server.snapshot(now)
    assert kept is not None and kept.loaded_at == cal.at(first - 1, 4.0)
    assert server.snapshot(cal.at(first, 0.5)).loaded_at == kept.loaded_at
    _, paused = served(faulty)
    after = gaps(paused, control_served)
    for feature in WATCH_TIME_28D:
        assert after[feature] < before[feature], (feature, before, after)

    # The jobs skip the paused runs (and the drift reports, paused too), log them, and a
    # restart finds them done.
    ctx = context(faulty, cal.at(first + 2, 6.0))
    scheduler = Scheduler(ctx)
    assert {(r.job, r.day) for r in scheduler.due()} == {
        (job, d) for job in (MATERIALIZE, DRIFT) for d in (first, first + 1)
    } | {(MATERIALIZE, first + 2)}
    assert scheduler.run_due() == 0
    assert scheduler.due() == []
    rows, _ = read_new(ctx.spool(TABLE[MATERIALIZE]).path, 0)
    assert rows == []
    logs, _ = read_new(ctx.spool("telemetry.logs").path, 0)
    skipped = sorted((r["service"], r["event"], r["ts"]) for r in logs)
    assert len(skipped) == 5
    assert {e for _, e, _ in skipped} == set(SKIPPED.values())
    assert ("materialization", SKIPPED[MATERIALIZE], cal.at(first, 4.0).isoformat()) in skipped
    sample = scheduler.registry.get_sample_value
    assert sample("scheduler_job_runs_total", {"job": MATERIALIZE, "status": "skipped"}) == 3
    assert sample("scheduler_job_runs_total", {"job": MATERIALIZE, "status": "success"}) == 0
    assert len(completed(ctx)) == 5
    assert Scheduler(ServiceContext(faulty, SERVICE)).due() == []


def test_a_pause_of_the_drift_monitor_leaves_the_materialization_running(worlds, tmp_path):
    faulty = private_world(worlds.get("immature-labels"), "immature-labels", tmp_path)
    cal = ServiceContext(faulty, SERVICE).calendar
    first = cal.last_production_day + 1
    apply(faulty, PAUSE_JOB, {"job": "drift-monitor"}, cal.at(first, 0.2))
    ctx = context(faulty, cal.at(first + 1, 6.0))
    scheduler = Scheduler(ctx)
    assert scheduler.run_due() == 2  # both loads; the one report due is skipped, no child run
    rows, _ = read_new(ctx.spool(TABLE[MATERIALIZE]).path, 0)
    assert [r["status"] for r in rows] == ["success", "success"]
    assert read_new(ctx.spool(TABLE[DRIFT]).path, 0)[0] == []
    sample = scheduler.registry.get_sample_value
    assert sample("scheduler_job_runs_total", {"job": DRIFT, "status": "skipped"}) == 1


def test_a_resumed_materialization_loads_again_from_its_next_run(worlds, tmp_path):
    """Paused over the first live load and resumed before the second: the first is skipped,
    the later ones run, and the model server serves the pre-pause load until the next one."""
    faulty = private_world(worlds.get("immature-labels"), "immature-labels", tmp_path)
    cal = ServiceContext(faulty, SERVICE).calendar
    first = cal.last_production_day + 1
    apply(faulty, PAUSE_JOB, {"job": "drift-monitor"}, cal.at(first, 0.2))  # no report runs
    apply(faulty, PAUSE_JOB, {"job": "materialization"}, cal.at(first, 1.0))
    apply(faulty, RESUME_JOB, {"job": "materialization"}, cal.at(first + 1, 1.0))
    ctx = context(faulty, cal.at(first + 2, 6.0))
    scheduler = Scheduler(ctx)
    assert scheduler.run_due() == 2
    rows, _ = read_new(ctx.spool(TABLE[MATERIALIZE]).path, 0)
    assert [(r["materialized_at"], r["status"]) for r in rows] == [
        (cal.at(day, 4.0).isoformat(), "success") for day in (first + 1, first + 2)
    ]
    sample = scheduler.registry.get_sample_value
    assert sample("scheduler_job_runs_total", {"job": MATERIALIZE, "status": "skipped"}) == 1

    server = LiveModelServer(context(faulty, cal.at(first + 1, 12.0), "model-server"))
    assert server.snapshot(cal.at(first, 12.0)).loaded_at == cal.at(first - 1, 4.0)
    assert server.snapshot(cal.at(first + 1, 3.0)).loaded_at == cal.at(first - 1, 4.0)
    assert server.snapshot(cal.at(first + 1, 12.0)).loaded_at == cal.at(first + 1, 4.0)
