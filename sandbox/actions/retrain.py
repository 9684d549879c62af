"""A retrain applied from the ops console: the world's own training job run again on the latest
data, at the simulated time it was requested.

The training set is built the way the scheduled job builds it (`pipeline.train`): every customer
active on each score date, the features the offline store held at its score time (point in time),
and the label as the cancellations known at the request tell it, with the world's training-set
stage as it is. Its score dates are the latest `days` (`TRAINING_SNAPSHOTS` unless the candidate
chose) whose labels are at least `label_maturity_days` old at the request, none after the
`newest_score_date` chosen: with the label horizon's worth of days every label has matured; with
fewer, recent churners who have not cancelled yet count as loyal.

The new version is the one after the latest registered (or retrained) version. Its model is kept
in the run directory, never in the registry's file (the candidate's registry is read-only); the
model server loads it from there and serves it from the change's effective time.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from sandbox.actions import progress
from sandbox.clock import Calendar
from sandbox.faults.base import FaultSet, HookContext, WorldData
from sandbox.pipeline import compiled, train
from sandbox.pipeline.release import TRAINING_SNAPSHOTS

RETRAINS_DIR = "retrains"  # under the run directory: one model and its summary per retrain
FAR_FUTURE = 10**6  # a customer with no known cancellation


@dataclass(frozen=True)
class Retrained:
    """A retrained version: its model and what its training run found."""

    version: str
    model: compiled.CompiledTrees  # the serving form: the server scores with it
    features: list[str]
    threshold: float  # the cut-off its holdout chose (the servers keep theirs)
    rows: int
    score_dates: tuple[dt.date, dt.date]
    metrics: dict[str, float]


def score_days(
    calendar: Calendar,
    requested_at: dt.datetime,
    label_maturity_days: int,
    days: int = TRAINING_SNAPSHOTS,
    newest_date: dt.date | None = None,
) -> tuple[int, ...]:
    """The `days` latest score days, newest first, whose score time (the daily batch's 06:00) is
    at least `label_maturity_days` before the request, and not after `newest_date` if given."""
    newest = calendar.day_of(requested_at - dt.timedelta(days=label_maturity_days))
    if calendar.at(newest, train.SCORE_HOUR) + dt.timedelta(days=label_maturity_days) > (
        requested_at
    ):
        newest -= 1
    if newest_date is not None:
        newest = min(newest, calendar.day_of(newest_date))
    return tuple(newest - k for k in range(days))


def window_error(calendar: Calendar, days: tuple[int, ...]) -> str | None:
    """Why a window of score days cannot be trained on (None: it can): each score time reads the
    features of the day before, so the oldest must come after the feature store's first day."""
    if min(days) > calendar.first_feature_day:
        return None
    first = calendar.date(calendar.first_feature_day + 1)
    return f"the window starts on {calendar.date(min(days))}, before the first score date {first}"


def _lifecycles(world_db: Path, calendar: Calendar, known_at: dt.datetime) -> pl.DataFrame:
    """(customer_id, signup_day, cancel_day) as the warehouse knew them at `known_at`, and the
    cancellations known then (customer_id, event_ts)."""
    with duckdb.connect(str(world_db), read_only=True) as con:
        customers = pl.DataFrame(
            con.execute(
                "SELECT customer_id, signup_date FROM raw.customers WHERE signup_date <= $at",
                {"at": known_at},
            ).fetchall(),
            schema={"customer_id": pl.Int64, "signup_date": pl.Date},
            orient="row",
        )
        cancels = pl.DataFrame(
            con.execute(
                "SELECT customer_id, min(event_ts) AS event_ts FROM raw.subscription_events "
                "WHERE event_type = 'cancel' AND event_ts <= $at AND ingested_at <= $at "
                "GROUP BY customer_id",
                {"at": known_at},
            ).fetchall(),
            schema={"customer_id": pl.Int64, "event_ts": pl.Datetime("us")},
            orient="row",
        )
    start = pl.lit(calendar.start_date)
    return customers.join(cancels, on="customer_id", how="left").select(
        "customer_id",
        ((pl.col("signup_date") - start).dt.total_days() + 1).cast(pl.Int64).alias("signup_day"),
        ((pl.col("event_ts").dt.date() - start).dt.total_days() + 1)
        .fill_null(FAR_FUTURE)
        .cast(pl.Int64)
        .alias("cancel_day"),
        pl.col("event_ts").cast(pl.Datetime("us")),
    )


def training_set(
    world_db: Path,
    calendar: Calendar,
    faults: FaultSet,
    seed: int,
    requested_at: dt.datetime,
    label_maturity_days: int,
    horizon_days: int,
    serving_day: int,
    days: int = TRAINING_SNAPSHOTS,
    newest_date: dt.date | None = None,
) -> pl.DataFrame:
    """The training set the scheduled job would build at `requested_at`."""
    lifecycles = _lifecycles(world_db, calendar, requested_at)
    spine = train.training_spine(
        lifecycles.select("customer_id", "signup_day", "cancel_day"),
        calendar,
        sorted(score_days(calendar, requested_at, label_maturity_days, days, newest_date)),
    )
    known = lifecycles.filter(pl.col("event_ts").is_not_null()).select("customer_id", "event_ts")
    ctx = HookContext(seed, serving_day, calendar, WorldData.read_only(world_db))
    return train.build_training_set(spine, known, calendar, horizon_days, faults, ctx)


def retrain(
    world_db: Path,
    calendar: Calendar,
    faults: FaultSet,
    seed: int,
    version: str,
    requested_at: dt.datetime,
    effective_at: dt.datetime,
    label_maturity_days: int,
    horizon_days: int,
    features: list[str],
    days: int = TRAINING_SNAPSHOTS,
    newest_date: dt.date | None = None,
) -> Retrained:
    """Build the training set and fit the model as the scheduled job does; `features` are the
    deployed version's (those the training set lacks are left out)."""
    serving_day = calendar.day_of(effective_at)
    dataset = training_set(
        world_db,
        calendar,
        faults,
        seed,
        requested_at,
        label_maturity_days,
        horizon_days,
        serving_day,
        days,
        newest_date,
    )
    ctx = HookContext(seed, serving_day, calendar, WorldData.read_only(world_db))
    weight = faults.apply("train.class_weight", 1.0, ctx)
    inputs = [f for f in features if f in dataset.columns]
    trained = train.fit(dataset, seed, inputs, weight)
    dates = dataset["score_date"]
    return Retrained(
        version=version,
        model=compiled.compile_trees(trained.model),
        features=trained.features,
        threshold=trained.threshold,
        rows=dataset.height,
        score_dates=(dates.min(), dates.max()),  # type: ignore[arg-type]
        metrics={**trained.metrics, "churn_rate": round(float(dataset["churned"].mean()), 5)},  # type: ignore[arg-type]
    )


def kept_paths(run_dir: Path, change_id: str) -> tuple[Path, Path]:
    """Where a retrain's model and its summary are kept."""
    base = run_dir / RETRAINS_DIR
    return base / f"{change_id}.npz", base / f"{change_id}.json"


def keep(run_dir: Path, change_id: str, done: Retrained) -> None:
    """Write the model and its summary, whole or not at all (the summary last)."""
    model_path, summary_path = kept_paths(run_dir, change_id)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    partial = model_path.with_suffix(".partial")
    compiled.save(done.model, partial)
    partial.replace(model_path)
    summary = {
        "version": done.version,
        "features": done.features,
        "threshold": done.threshold,
        "rows": done.rows,
        "score_dates": [str(d) for d in done.score_dates],
        "metrics": done.metrics,
    }
    partial = summary_path.with_suffix(".partial")
    partial.write_text(json.dumps(summary, indent=1))
    partial.replace(summary_path)


def load_kept(run_dir: Path, change_id: str) -> Retrained | None:
    """A retrain kept before a restart (None: none finished)."""
    model_path, summary_path = kept_paths(run_dir, change_id)
    if not summary_path.is_file() or not model_path.is_file():
        return None
    summary = json.loads(summary_path.read_text())
    return Retrained(
        version=summary["version"],
        model=compiled.load(model_path, compiled.CompiledTrees),
        features=summary["features"],
        threshold=summary["threshold"],
        rows=summary["rows"],
        score_dates=tuple(dt.date.fromisoformat(d) for d in summary["score_dates"]),  # type: ignore[arg-type]
        metrics=summary["metrics"],
    )


def lines(
    change_id: str,
    requested_at: dt.datetime,
    effective_at: dt.datetime,
    model_name: str,
    done: Retrained,
    label_maturity_days: int,
) -> list[tuple[str, progress.LogLine]]:
    """(service, line) for a retrain's progress: started and fitted in the training job's logs,
    evaluated and registered, then loaded by the model server at the effective time."""
    attrs = {"change_id": change_id, "model_version": done.version}
    first, last = done.score_dates
    evaluated_at = progress.work_end(requested_at, effective_at)
    fitted_at = requested_at + (evaluated_at - requested_at) * 0.75
    m = done.metrics
    return [
        (
            "training",
            progress.LogLine(
                requested_at,
                "training_started",
                f"retraining {model_name} on score dates {first} to {last} (labels at least "
                f"{label_maturity_days} days old)",
                {**attrs, "label_maturity_days": label_maturity_days},
            ),
        ),
        (
            "training",
            progress.LogLine(
                fitted_at,
                "model_fitted",
                f"fitted {model_name} on {done.rows:,} rows ({int(m['train_rows']):,} training, "
                f"{int(m['holdout_rows']):,} holdout); churn rate {m['churn_rate']:.2%}",
                {**attrs, "rows": done.rows, "churn_rate": m["churn_rate"]},
            ),
        ),
        (
            "training",
            progress.LogLine(
                evaluated_at,
                "model_registered",
                f"{model_name} version {done.version} evaluated: holdout AUC "
                f"{m['holdout_auc']:.3f}, precision at its threshold "
                f"{m['holdout_precision_at_threshold']:.3f} (threshold {done.threshold}); "
                f"deploying at {effective_at:%Y-%m-%d %H:%M}",
                {**attrs, **m, "decision_threshold": done.threshold},
            ),
        ),
    ]


def window(params: dict[str, object]) -> tuple[int, dt.date | None]:
    """The window an applied retrain's parameters chose: how many score dates, and the newest
    (None: the newest whose labels are old enough). A retrain applied before the window was a
    parameter trained on the latest `TRAINING_SNAPSHOTS`."""
    newest = params.get("newest_score_date")
    return (
        int(params.get("days", TRAINING_SNAPSHOTS)),  # type: ignore[call-overload]
        dt.date.fromisoformat(str(newest)) if newest else None,
    )
