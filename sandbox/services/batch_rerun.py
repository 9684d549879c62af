"""A run of the daily batch scoring on request (`rerun-batch-scoring`), carried out by the model
server: every customer in the online store it serves at the request, with the fill values, the
version and the threshold in effect then, scored as the 06:00 batch scores (the world's seed and
the day at the serving hooks) and spooled as `serving.predictions` rows with source 'batch'.

The scheduled 06:00 batch itself is the world's until a change from the ops console takes
effect; from the first 06:00 after it the model server runs each day's batch the same way, so
the next days' rows and the retention list carry what the console changed (the candidate's views
drop the world's batch rows and lines from then on).

The rows are stamped through the run's working time and its progress lines through its delay, so
the candidate sees them arrive as simulated time passes. A marker file in the run directory says
the run's rows are spooled: a restart does not score it twice.
"""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from sandbox.actions import deployment, progress
from sandbox.actions.catalog import CATALOG, RERUN_BATCH
from sandbox.actions.overrides import Applied, first_live_batch
from sandbox.faults.base import HookContext
from sandbox.logs import LogSink
from sandbox.pipeline.serve import BATCH_SERVICE, ModelServer
from sandbox.pipeline.train import SCORE_HOUR

if TYPE_CHECKING:
    from sandbox.services.model_server import LiveModelServer

RERUNS_DIR = "batch-reruns"  # under the run directory: one marker per run spooled
DAILY_DIR = "daily-batches"  # under the run directory: one marker per scheduled batch run live
DAILY_STEP = dt.timedelta(microseconds=400)  # per customer: the world's job takes ~10 s


def done_ids(run_dir: Path) -> set[str]:
    """The applied reruns whose rows are spooled already."""
    return {p.stem for p in (run_dir / RERUNS_DIR).glob("*.done")}


def scored(
    live: LiveModelServer, at: dt.datetime, work: dt.timedelta | None = None
) -> pl.DataFrame:
    """A batch's predictions from `at`, stamped evenly through `work` (None: at the scheduled
    job's pace): the spool's columns, one row per customer in the online store served then."""
    ctx = live.ctx
    state = deployment.in_effect(live.baseline, live.overrides.entries(), at)
    live.refresh_backfills()
    snapshot = live.snapshot(at)
    if snapshot is None:
        raise RuntimeError(f"no online-store load by {at:%Y-%m-%d %H:%M}")
    # Its own refill cache: the server's serves requests at another time, maybe other fills.
    refill = type(live.refilled)(live.refilled.fills)
    stored = refill.values(snapshot, live.overrides.fill_values(at))
    n = len(snapshot.rows)
    values = np.full((n, len(live.columns)), np.nan)
    values[:, : stored.shape[1]] = stored
    customers = sorted(snapshot.rows, key=snapshot.rows.__getitem__)
    # The job works through the customers evenly over its working time.
    work = DAILY_STEP * n if work is None else work
    offsets = (np.arange(n) * (work.total_seconds() * 1e6 / max(n, 1))).astype("timedelta64[us]")
    requests = pl.DataFrame(
        [
            pl.Series("customer_id", customers, dtype=pl.Int64),
            pl.Series("request_ts", np.datetime64(at, "us") + offsets, dtype=pl.Datetime("us")),
            pl.Series("source", ["batch"] * n, dtype=pl.Utf8),
            pl.Series("latency_ms", [None] * n, dtype=pl.Float64),
            pl.Series("status", ["ok"] * n, dtype=pl.Utf8),
            *(
                pl.Series(name, values[:, j], dtype=pl.Float64, nan_to_null=True)
                for j, name in enumerate(live.columns)
            ),
        ]
    )
    server = ModelServer(live.seed, ctx.calendar, ctx.fault_set, live.record.model_name, LogSink())
    server.deploy(
        live.model_of(state.version),
        state.version,
        state.threshold,
        live.features_of(state.version),
    )
    # As the 06:00 batch: the world's seed and the day at the serving hooks.
    hooks = HookContext(
        seed=live.seed,
        day=ctx.calendar.day_of(at),
        calendar=ctx.calendar,
        config_as_of=state.config_as_of,
    )
    ids = np.array([secrets.randbits(63) for _ in range(n)], dtype=np.int64)
    frame = server.score(requests, hooks, ids)
    if state.changed:  # decisions at the threshold set from the ops console, as online
        frame = frame.with_columns((pl.col("score") >= state.threshold).alias("decision"))
    return frame


def carry_out(live: LiveModelServer, applied: Applied, columns: tuple[str, ...]) -> int:
    """Score, spool the rows (`columns` of each) and write the progress lines; how many were
    flagged."""
    at = applied.requested_at
    frame = scored(live, at, progress.work_end(at, applied.effective_at) - at)
    flagged = _spool(live, frame, columns)
    version, threshold = frame["model_version"][0], float(frame["threshold"][0])
    service = CATALOG[RERUN_BATCH].service
    for line in progress.batch_rerun(
        applied.id,
        applied.requested_at,
        applied.effective_at,
        frame.height,
        flagged,
        f"{live.record.model_name}/{version}",
        threshold,
    ):
        live.ctx.log_at(line.ts, service, "info", line.event, line.message, **line.attrs)
    _mark(live.ctx.paths.run / RERUNS_DIR / f"{applied.id}.done")
    return flagged


def _spool(live: LiveModelServer, frame: pl.DataFrame, columns: tuple[str, ...]) -> int:
    """Spool a batch's rows (`columns` of each); how many it flagged."""
    rows: list[dict[str, Any]] = [
        {k: v.isoformat() if k == "request_ts" else v for k, v in row.items()}
        for row in frame.select(columns).iter_rows(named=True)
    ]
    live.ctx.spool("serving.predictions").write(*rows)
    return int(frame["decision"].sum())


def _mark(marker: Path) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def due_daily(live: LiveModelServer, now: dt.datetime) -> list[dt.datetime]:
    """The daily batches (06:00) the model server runs itself by `now` and has not run yet: every
    one from the first after a change from the ops console took effect."""
    calendar = live.ctx.calendar
    first = first_live_batch(live.overrides.entries(), calendar)
    if first is None:
        return []
    done = {p.stem for p in (live.ctx.paths.run / DAILY_DIR).glob("*.done")}
    due, day = [], calendar.day_of(first)
    while (at := calendar.at(day, SCORE_HOUR)) <= now:
        if str(at.date()) not in done:
            due.append(at)
        day += 1
    return due


def run_daily(live: LiveModelServer, at: dt.datetime, columns: tuple[str, ...]) -> int:
    """The day's scheduled batch, as the world's job runs it (started at 06:00, through the
    customers in a few seconds), with what the ops console changed in effect: rows spooled,
    its two lines logged, marked done; how many were flagged."""
    frame = scored(live, at)
    flagged = _spool(live, frame, columns)
    model = f"{live.record.model_name}/{frame['model_version'][0]}"
    finished = frame["request_ts"].max() if frame.height else at
    live.ctx.log_at(
        at,
        BATCH_SERVICE,
        "info",
        "batch_started",
        f"daily churn scoring started for {frame.height} customers",
        model=model,
    )
    live.ctx.log_at(
        finished,  # type: ignore[arg-type]
        BATCH_SERVICE,
        "info",
        "batch_finished",
        f"daily churn scoring finished: {flagged} customers flagged for retention",
        rows=frame.height,
        flagged=flagged,
        threshold=float(frame["threshold"][0]) if frame.height else None,
    )
    _mark(live.ctx.paths.run / DAILY_DIR / f"{at.date()}.done")
    return flagged
