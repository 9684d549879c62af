"""`restore-metric-series`: the model server's request series recomputed from its request logs.

A series the exporter no longer produces has no points at all. Restoring it recomputes, from the
requests served (source 'online', as the exporter counts them), every 5-minute point the metric
pipeline dropped: over the last `days` days before the change takes effect, and from then on each
bucket once it is complete. The points are the ones the exporter would have produced (the same
computation as `sandbox.monitor.metrics`, same resolution and labels); which were dropped is what
the running metric pipeline removes from that computation.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import duckdb
import polars as pl

from sandbox.actions.deployment import AS_LEFT, Periods
from sandbox.clock import Calendar
from sandbox.faults.base import FaultSet, HookContext
from sandbox.monitor import metrics

BUCKET = dt.timedelta(minutes=5)  # the request series' resolution (see monitor.metrics)
SERVICE = "model-server"
KEY = ["ts", "service", "metric", "label"]


def floor_bucket(ts: dt.datetime) -> dt.datetime:
    """The start of the 5-minute bucket holding `ts`."""
    midnight = dt.datetime.combine(ts.date(), dt.time())
    return midnight + BUCKET * ((ts - midnight) // BUCKET)


def restore_start(effective_at: dt.datetime, days: int) -> dt.datetime:
    """The first bucket a restore of the last `days` days recomputes."""
    return floor_bucket(effective_at - dt.timedelta(days=days))


def request_series(requests: pl.DataFrame) -> pl.DataFrame:
    """The model server's 5-minute request series (telemetry.metrics rows) of `requests`
    (serving.predictions rows: request_ts, source, status, latency_ms), as the exporter computes
    them."""
    if requests.height == 0:
        return pl.DataFrame(schema=metrics.SERIES_SCHEMA)
    con = duckdb.connect()
    try:
        con.register("requests", requests)
        series = metrics._bucketed_requests(con, "requests")
    finally:
        con.close()
    return (
        series.select(list(metrics.SERIES_SCHEMA))
        .cast(metrics.SERIES_SCHEMA)  # type: ignore[arg-type]
        .with_columns(pl.col("value").round(6))
        .sort(KEY)
    )


def pipeline_kept(
    series: pl.DataFrame,
    faults: FaultSet,
    seed: int,
    calendar: Calendar,
    now: dt.datetime,
    periods: Periods = AS_LEFT,
) -> pl.DataFrame:
    """`series` as the running metric pipeline keeps it: the `monitor.metrics` hooks applied to
    the points of each period of the model server's configuration (`deployment.config_periods`)
    as that configuration has them, so a rollback past a fault's rollout ends its effect from
    the rollback on, not before."""
    ctx = HookContext(seed, calendar.day_of(now), calendar)
    parts = []
    for i, (start, config) in enumerate(periods):
        part = series.filter(pl.col("ts") >= start) if i else series
        if i + 1 < len(periods):
            part = part.filter(pl.col("ts") < periods[i + 1][0])
        parts.append(faults.apply("monitor.metrics", part, replace(ctx, config_as_of=config)))
    return pl.concat(parts) if len(parts) > 1 else parts[0]


def dropped_points(
    series: pl.DataFrame,
    faults: FaultSet,
    seed: int,
    calendar: Calendar,
    now: dt.datetime,
    periods: Periods = AS_LEFT,
) -> pl.DataFrame:
    """The rows of `series` the running metric pipeline drops (none when nothing is dropped)."""
    if series.height == 0:
        return series
    kept = pipeline_kept(series, faults, seed, calendar, now, periods)
    return series.join(kept.select(KEY), on=KEY, how="anti").sort(KEY)


def complete(series: pl.DataFrame, now: dt.datetime) -> pl.DataFrame:
    """The points whose bucket has ended by `now`."""
    return series.filter(pl.col("ts") + BUCKET <= now)
