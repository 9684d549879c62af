"""`restore-metric-series` on a private copy of the time-travel world (metric-series-dropped): from
its effective time the scheduler's restored points give the console's `telemetry.metrics` the
model server's error_ratio again, equal to the series recomputed from the request logs and to the
same-seed control world's where the fault did not change the requests."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from sandbox.actions import restore
from sandbox.actions.catalog import RESTORE_SERIES, ROLLBACK
from sandbox.faults.metric_series_dropped import ALERT
from sandbox.layout import WorldPaths
from sandbox.services.common import ServiceContext
from sandbox.services.console import query
from sandbox.services.jobs import RESTORED_EVENT, SERVICE, Scheduler
from sandbox.services.spool import read_new
from tests.services.conftest import live_store, spool_failing_requests
from tests.services.test_job_actions import apply, context
from tests.services.test_jobs import private_world


def test_buckets_and_the_restored_window() -> None:
    at = dt.datetime(2024, 3, 9, 10, 31, 20)
    assert restore.floor_bucket(at) == dt.datetime(2024, 3, 9, 10, 30)
    assert restore.restore_start(at, 7) == dt.datetime(2024, 3, 2, 10, 30)
    requests = pl.DataFrame(
        {
            "request_ts": [at, at + dt.timedelta(minutes=1), at + dt.timedelta(minutes=5)],
            "source": ["online", "online", "batch"],
            "status": ["ok", "error", "ok"],
            "latency_ms": [10.0, 2000.0, 5.0],
        }
    )
    series = restore.request_series(requests)
    ratio = series.filter(pl.col("metric") == "error_ratio")
    assert ratio.select("ts", "service", "label", "value").rows() == [
        (dt.datetime(2024, 3, 9, 10, 30), "model-server", "", 0.5)
    ]
    assert restore.complete(series, dt.datetime(2024, 3, 9, 10, 34)).height == 0
    assert restore.complete(series, dt.datetime(2024, 3, 9, 10, 35)).height == series.height


def _error_ratio(paths: WorldPaths, at: dt.datetime, start: dt.datetime) -> pl.DataFrame:
    store = live_store(paths, at)
    return (
        store.cursor()
        .sql(
            "SELECT ts, label, value FROM telemetry.metrics WHERE service = 'model-server' "
            "AND metric = 'error_ratio' AND ts >= $start ORDER BY ts",
            params={"start": start},
        )
        .pl()
    )


@pytest.mark.world
def test_restore_brings_back_the_error_ratio_from_the_request_logs(worlds, tmp_path):
    faulty = private_world(worlds.get("time-travel"), "time-travel", tmp_path)
    control = private_world(worlds.get("control"), "control", tmp_path)
    cal = ServiceContext(faulty, SERVICE).calendar
    live_start = cal.midnight(cal.last_production_day + 1)
    effective = live_start + dt.timedelta(hours=2, minutes=2)
    start = restore.restore_start(effective, 7)
    paths = WorldPaths(faulty)
    assert _error_ratio(paths, effective, start).height == 0  # dropped: no points at all

    change = apply(faulty, RESTORE_SERIES, {"days": 7}, effective)
    # Before the effective time: nothing restored.
    before = Scheduler(context(faulty, effective - dt.timedelta(minutes=1)))
    assert before.restore_series() == 0
    assert _error_ratio(paths, effective, start).height == 0

    ctx = context(faulty, effective)
    written = Scheduler(ctx).restore_series()
    assert written > 0
    shown = _error_ratio(paths, effective, start)
    assert shown.height == written and set(shown["label"]) == {""}
    # At the exporter's resolution: 5-minute buckets, the last before live start (no live
    # traffic ran in this test), from the deploy that dropped the series on.
    assert all(t.minute % 5 == 0 and t.second == 0 for t in shown["ts"])
    assert shown["ts"].max() < live_start <= effective

    # The same values as the series recomputed from the request logs.
    store = live_store(paths, effective)
    requests = (
        store.cursor()
        .sql(
            "SELECT request_ts, source, status, latency_ms FROM serving.predictions "
            "WHERE request_ts >= $start AND request_ts < $end",
            params={"start": start, "end": effective},
        )
        .pl()
    )
    expected = restore.complete(
        restore.request_series(requests).filter(pl.col("metric") == "error_ratio"), effective
    ).filter(pl.col("ts") < live_start)  # no live traffic ran in this test
    assert shown["ts"].to_list() == expected["ts"].to_list()
    assert shown["value"].to_list() == pytest.approx(expected["value"].to_list(), abs=1e-6)
    assert shown["value"].max() > ALERT.above  # the breaches the alert never saw

    # Only the dropped points: before the deploy the world's own points stand, and where the
    # fault changed no request (quiet hours) the values are the control world's.
    world_points = (
        live_store(paths, effective)
        .cursor()
        .sql(
            "SELECT count(*) FROM world.telemetry.metrics WHERE service = 'model-server' "
            "AND metric = 'error_ratio' AND ts >= $first",
            params={"first": shown["ts"].min()},
        )
        .fetchall()[0][0]
    )
    assert world_points == 0
    control_shown = _error_ratio(WorldPaths(control), effective, start)
    both = shown.join(control_shown, on="ts", suffix="_control")
    quiet = both.filter(pl.col("ts").dt.hour().is_between(2, 5))
    assert quiet.height > 0
    assert quiet["value"].to_list() == pytest.approx(quiet["value_control"].to_list(), abs=1e-6)

    # The alert rule's data is present again.
    con = store.cursor()
    points = con.execute(
        "SELECT count(*) FROM monitoring.alert_rules r JOIN telemetry.metrics m "
        "ON m.service = r.service AND m.metric = r.metric WHERE r.name = ? AND m.ts >= ?",
        [ALERT.name, start],
    ).fetchall()[0][0]
    assert points == written

    # Logged once at the effective time; a restart writes nothing again.
    logs, _ = read_new(ctx.spool("telemetry.logs").path, 0)
    [line] = [r for r in logs if r["event"] == RESTORED_EVENT]
    assert line["ts"] == effective.isoformat() and change.id in line["attrs"]
    assert line["message"].startswith("recomputed error_ratio for 7 days from ")
    assert Scheduler(context(faulty, effective + dt.timedelta(minutes=20))).restore_series() == 0


def test_the_error_alert_fires_on_restored_points_from_the_restore_on(worlds, tmp_path):
    """The dropped series hides live errors from the alert rule; once restored, breaches from
    the restore on fire it, and the backfilled ones before the restore fire nothing."""
    faulty = private_world(worlds.get("time-travel"), "time-travel", tmp_path)
    paths = WorldPaths(faulty)
    cal = ServiceContext(faulty, SERVICE).calendar
    live_start = cal.midnight(cal.last_production_day + 1)
    effective = live_start + dt.timedelta(hours=2, minutes=2)
    failing = restore.floor_bucket(effective) + dt.timedelta(minutes=10)
    spool_failing_requests(paths, failing)
    later = failing + dt.timedelta(hours=1)
    fired = (
        f"SELECT started_at FROM monitoring.alerts WHERE alert = '{ALERT.name}' ORDER BY started_at"
    )

    def alerts_at(at: dt.datetime) -> list[dt.datetime]:
        return [
            dt.datetime.fromisoformat(r[0]) for r in query.run(live_store(paths, at), fired).rows
        ]

    world_alerts = alerts_at(later)
    assert all(t < live_start for t in world_alerts)  # the live breaches fire nothing: no series

    apply(faulty, RESTORE_SERIES, {"days": 7}, effective)
    assert Scheduler(context(faulty, later)).restore_series() > 0
    assert alerts_at(later) == [*world_alerts, failing]


@pytest.mark.world
def test_a_rollback_past_the_release_exports_the_series_again_from_then_on(worlds, tmp_path):
    """The model server goes back past the release that dropped the error ratio: its live points
    show again from the rollback's effective time on, not before; a restore then adds only what
    the pipeline still drops."""
    faulty = private_world(worlds.get("time-travel"), "time-travel", tmp_path)
    paths = WorldPaths(faulty)
    cal = ServiceContext(faulty, SERVICE).calendar
    live_start = cal.midnight(cal.last_production_day + 1)
    # Failing requests for an hour from live start (0.8 of each bucket); the rollback takes
    # effect half an hour in, on a bucket's start.
    spool_failing_requests(paths, live_start, count=120)
    effective = live_start + dt.timedelta(minutes=30)
    after = live_start + dt.timedelta(hours=2)
    sql = (
        "SELECT ts, value FROM telemetry.metrics WHERE service = 'model-server' "
        "AND metric = 'error_ratio' AND ts >= $start ORDER BY ts"
    )

    def shown() -> list[tuple[dt.datetime, float]]:
        found = query.run(live_store(paths, after), sql, {"start": live_start})
        return [
            (t if isinstance(t, dt.datetime) else dt.datetime.fromisoformat(t), v)
            for t, v in found.rows
        ]

    assert shown() == []  # the release dropped the series
    apply(faulty, ROLLBACK, {"service": "model-server"}, effective)
    points = shown()
    assert points, "no error ratio after the rollback"
    assert min(t for t, _ in points) == effective  # from the rollback on, not before
    assert [v for _, v in points] == pytest.approx([0.8] * len(points), abs=1e-6)
    assert len(points) == 6  # the buckets of failing requests after the rollback

    # The scheduler's restore adds the points the pipeline still drops: those before it.
    apply(faulty, RESTORE_SERIES, {"days": 1}, after)
    Scheduler(context(faulty, after)).restore_series()
    restored = [t for t, _ in shown() if t < effective]
    assert restored and max(restored) < effective
    assert sorted(t for t, _ in shown()) == sorted(set(t for t, _ in shown()))  # none twice
