"""`sandbox build`: run the simulation through the production stack and write a complete world.

The world directory is written in place and `manifest.json` goes last: a build that dies halfway
leaves no manifest (and is removed when the failure is seen), so nothing accepts it as a world.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from sandbox import __version__, schema
from sandbox.clock import Calendar
from sandbox.faults.base import HookContext
from sandbox.layout import WorldPaths
from sandbox.monitor import alerts, metrics, performance
from sandbox.monitor.drift import DriftMonitor
from sandbox.pipeline import deploy, label, registry, registry_stamp, retrieve, train
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.pipeline.ops import changelog
from sandbox.pipeline.release import TRAINING_HOUR, Release
from sandbox.product import corpus
from sandbox.scenario import Scenario
from sandbox.world import finance
from sandbox.world.libraries import library_versions
from sandbox.world.routine_logs import routine_logs
from sandbox.world.simulate import Simulation, SimulationResult
from sandbox.world.warehouse import Warehouse, content_digest, row_counts

# Score dates whose model quality is computed at once: a week of joined predictions is what the
# build holds of them at any scale.
PERFORMANCE_DAYS = 7

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class WorldExists(FileExistsError):
    pass


@dataclass
class BuildSummary:
    root: Path
    manifest: dict[str, Any]
    seconds: float


def _drift_reference(training_set: pl.DataFrame) -> pl.DataFrame:
    holdout_from = train.holdout_start(training_set)
    return training_set.filter(pl.col("score_date") < holdout_from).select(MODEL_FEATURES)


def build(
    scenario: Scenario,
    out: Path,
    force: bool = False,
    progress: Progress = lambda stage, done, total: None,
) -> BuildSummary:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise WorldExists(f"{out} already exists; use --force to replace it")
        shutil.rmtree(out)
    paths = WorldPaths(out)
    paths.make()
    started = time.perf_counter()
    try:
        manifest = _build_into(scenario, paths, progress)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    manifest["build_seconds"] = round(seconds, 1)
    manifest["complete"] = True
    # Written last and whole (a rename): a build killed now leaves no half manifest.
    partial = paths.manifest.with_suffix(".partial")
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    partial.replace(paths.manifest)
    return BuildSummary(root=out, manifest=manifest, seconds=seconds)


def _build_into(scenario: Scenario, paths: WorldPaths, progress: Progress) -> dict[str, Any]:
    cal = scenario.world.calendar()
    seed = scenario.world.seed
    # The candidate's tables as declared, with the columns the planted faults add.
    wh = Warehouse(paths.duckdb, schema.with_added(scenario.fault_set.added_columns()))
    truth = Warehouse(paths.truth, schema.TRUTH)

    progress("retrieval index", 0, 1)
    articles = corpus.help_articles()
    wh.append("retrieval.help_articles", articles.select("article_id", "topic", "title", "body"))
    truth.append("sim.article_coverage", articles.select("article_id", "problem", "device"))
    encoder = retrieve.fit_encoder(seed, version=1)
    index = retrieve.build_index(encoder, articles, built_on=cal.date(cal.first_day))

    def index_on(day: int) -> retrieve.ArticleIndex:
        """The index production searches on `day` (the simulation asks the same each day)."""
        return scenario.fault_set.apply("retrieve.index", index, HookContext(seed, day, cal))

    # The live service loads the index the stack's first day has; the encoder is registered
    # with the one it was first built into.
    index_on(cal.last_production_day + 1).save(paths.indexes)
    _register_encoder(encoder, index_on(cal.first_day), paths, cal, cal.first_day)
    progress("retrieval index", 1, 1)

    drift: DriftMonitor | None = None
    reports_due = cal.last_production_day
    total_days = cal.last_simulated_day - cal.first_day + 1

    def register_model(
        release: Release, trained: train.TrainedModel, training_set: pl.DataFrame
    ) -> str:
        nonlocal drift
        if drift is None:  # monitoring compares against the first model's training data
            drift = DriftMonitor(_drift_reference(training_set), MODEL_FEATURES, workers=1)
        return train.register(
            trained,
            paths.mlflow,
            training_set,
            trained_at=cal.at(release.trained_at_day(), TRAINING_HOUR),
            deployed_on=cal.date(release.day),
            alias=release.alias,
            run_name=release.run_name,
            tags=release.tags,
        )

    def on_day(day: int, served: pl.DataFrame | None) -> None:
        progress("simulate", day - cal.first_day + 1, total_days)
        if drift is not None and served is not None and day <= reports_due:
            reference = sim.faults.apply("monitor.drift_reference", None, sim.context(day))
            drift.submit(cal.date(day), served.select(MODEL_FEATURES), reference)

    sim = Simulation(scenario, wh, truth, register_model, on_day)
    result = sim.run(articles, encoder, index)

    progress("labels and monitoring", 0, 3)
    job = result.feature_job
    # The loop ran past the visible days to mature their labels; keep only what happened by then.
    cutoff = cal.midnight(cal.last_visible_day + 1)
    wh.append("ops.feature_job_runs", job.run_frame().filter(pl.col("started_at") < cutoff))
    wh.append("feature_store.imputation_policy", job.policy_frame())
    wh.append("ops.changelog", changelog(cal, sim.faults))
    for deployment in result.deployments:
        dataset = deployment.training_set
        wh.append(
            "training.churn_training_set",
            dataset.with_columns(
                pl.lit(deployment.version).alias("model_version"),
                pl.when(pl.col("score_date") >= train.holdout_start(dataset))
                .then(pl.lit("holdout"))
                .otherwise(pl.lit("train"))
                .alias("split"),
            ),
        )
    wh.flush()
    wh.append(finance.PLAN_TABLE, finance.weekly_plan(wh.con, cal))
    batch = wh.con.sql(
        "SELECT customer_id, request_ts::DATE AS score_date, score, decision "
        "FROM serving.predictions WHERE source = 'batch'"
    ).pl()
    labels = label.churn_labels(batch, result.cancellations, cal, scenario.world.label_horizon_days)
    wh.append("labels.churn_labels", labels)
    progress("labels and monitoring", 2, 3)

    wh.append("monitoring.model_performance_daily", _performance(wh.con, batch, labels))
    series = metrics.build_series(wh.con, job.health_frame().filter(pl.col("ts") < cutoff))
    series = sim.faults.apply("monitor.metrics", series, sim.context(cal.last_visible_day))
    wh.append(metrics.METRIC_TABLE, series)
    rules = alerts.rules_for(scenario.difficulty)
    wh.append("monitoring.alerts", alerts.evaluate(series, rules))
    wh.append("monitoring.alert_rules", alerts.rules_frame(rules))
    progress("labels and monitoring", 3, 3)

    progress("drift reports", 0, 1)
    assert drift is not None
    with drift:
        wh.append("monitoring.drift_feature_daily", drift.rows())
        wh.append("monitoring.drift_daily", drift.summary_rows())
    wh.append("monitoring.drift_reference", _drift_reference(result.initial.training_set))
    progress("drift reports", 1, 1)

    wh.flush()  # the routine lines are read off the tables
    logs = (
        pl.concat([result.logs.frame(), routine_logs(wh.con, cal)])
        .filter(pl.col("ts") < cutoff)
        .sort("ts", "service", "event", "message", maintain_order=True)
    )
    wh.append("telemetry.logs", logs)
    wh.close()
    truth.close()
    _export_logs(logs, paths)

    for version, (later, first_day) in sorted(result.encoders.items()):
        if version != encoder.version:
            _register_encoder(later, None, paths, cal, first_day)
    registry_stamp.seal(paths.mlflow)  # the last MLflow write of the build
    _write_deployment(result, paths, cal)
    paths.scenario.write_text(scenario.as_toml())
    keys = [f.key(cal).model_dump(mode="json") for f in scenario.faults]
    decoys = [d.key(cal).model_dump(mode="json") for d in scenario.decoys]
    paths.answer_key.write_text(json.dumps({"faults": keys, "decoys": decoys}, indent=2))

    con = duckdb.connect(str(paths.duckdb), read_only=True)
    try:
        counts = row_counts(con)
        digest = hashlib.sha256(content_digest(con).encode())
    finally:
        con.close()
    digest.update((paths.indexes / retrieve.INDEX_META_FILE).read_bytes())
    return {
        "name": scenario.world.name,
        "seed": seed,
        # The services show the dashboards panels of this difficulty.
        "difficulty": scenario.difficulty,
        "scale": scenario.world.scale,
        "customers": scenario.world.n_customers,
        "content_hash": digest.hexdigest(),
        "tables": counts,
        "calendar": {
            "first_raw_date": str(cal.date(cal.first_day)),
            "first_feature_date": str(cal.date(cal.first_feature_day)),
            "production_start": str(cal.date(1)),
            "production_end": str(cal.date(cal.last_production_day)),
            "live_end": str(cal.date(cal.last_visible_day)),
        },
        "model": {
            "name": registry.CHURN_MODEL,
            "version": result.initial.version,
            **{k: v for k, v in result.initial.trained.metrics.items() if k.startswith("holdout_")},
        },
        "sandbox_version": __version__,
        "libraries": library_versions(),
    }


def _write_deployment(result: SimulationResult, paths: WorldPaths, cal: Calendar) -> None:
    """Hand the stack its state at the end of production: what the model servers load, and the
    online store as each remaining day's materialization leaves it."""
    server = result.serving
    champion = [d.version for d in result.deployments if d.release.alias == "champion"]
    follows_alias = bool(champion) and champion[-1] == server.model_version
    loaded = next(
        (d for d in reversed(result.deployments) if d.version == server.model_version), None
    )
    deploy.write_model_deployment(
        paths.deploy,
        deploy.ModelDeployment(
            model_name=registry.CHURN_MODEL,
            model_version=server.model_version,
            model_uri=f"models:/{registry.CHURN_MODEL}@champion"
            if follows_alias
            else f"models:/{registry.CHURN_MODEL}/{server.model_version}",
            threshold=server.threshold,
            features=server.features,
            deployed_at=cal.at(loaded.release.day if loaded else 1, 5.5),
        ),
    )
    for _, online in sorted(result.online_snapshots.items()):
        deploy.write_online_snapshot(paths.online_store, online)


def _register_encoder(
    encoder: retrieve.Encoder,
    index: retrieve.ArticleIndex | None,
    paths: WorldPaths,
    cal: Calendar,
    serving_day: int,
) -> None:
    """Register an encoder version, fitted the day before `serving_day` like a model release,
    and make it the production alias; `index` is the article index built with it, if one was."""
    trained_at = cal.at(serving_day - 1, TRAINING_HOUR)
    mlflow = registry.connect(paths.mlflow, "ticket-encoder")
    with registry.job_run(
        mlflow,
        paths.mlflow,
        f"ticket-encoder-v{encoder.version}",
        registry_stamp.ENCODER_JOB,
        trained_at,
    ):
        mlflow.log_params(
            {
                "kind": "tfidf+svd",
                "dimension": retrieve.ENCODER_DIM,
                "encoder_version": encoder.version,
            }
        )
        tags = {"training_date": str(trained_at.date())}
        if index is not None:
            tags["index_version"] = str(index.meta["index_version"])
        mlflow.set_tags(tags)
        with registry.quiet(), registry.serving_form(encoder.model) as extra_files:
            info = mlflow.sklearn.log_model(
                encoder.model,
                name="encoder",
                registered_model_name=registry.TICKET_ENCODER,
                pip_requirements=registry.pip_requirements(),
                extra_files=extra_files,
            )
    registry.set_alias(
        mlflow,
        registry.TICKET_ENCODER,
        "production",
        str(info.registered_model_version),
        {"encoder_version": str(encoder.version), "deployed_on": str(cal.date(serving_day))},
    )


def _performance(
    con: duckdb.DuckDBPyConnection, batch: pl.DataFrame, labels: pl.DataFrame
) -> pl.DataFrame:
    """The daily model quality by segment, judged `PERFORMANCE_DAYS` score dates at a time: each
    day's figures are its own rows', and the joined rows of every day at once would be the
    build's largest frame (gigabytes at scale 10)."""
    segments = con.sql("SELECT customer_id, device, plan, region FROM raw.customers").pl()
    # No batch at all: one empty window, for the table's columns.
    dates = batch["score_date"].unique().sort().to_list() or [dt.date.min]
    daily = []
    for i in range(0, len(dates), PERFORMANCE_DAYS):
        first, last = dates[i], dates[min(i + PERFORMANCE_DAYS, len(dates)) - 1]
        window = pl.col("score_date").is_between(first, last)
        scored = (
            batch.filter(window)
            .join(labels.filter(window), on=["customer_id", "score_date"])
            .join(segments, on="customer_id")
            .join(_app_versions(con, first, last), on=["customer_id", "score_date"], how="left")
        )
        daily.append(performance.daily_performance(scored))
    return pl.concat(daily).sort(performance.KEY)


def _app_versions(con: duckdb.DuckDBPyConnection, first: dt.date, last: dt.date) -> pl.DataFrame:
    """The app version each customer batch-scored from `first` to `last` last used on or before
    the score date ('none' before their first session)."""
    return con.sql(
        """
        SELECT p.customer_id, p.request_ts::DATE AS score_date,
               coalesce(v.app_version, 'none') AS app_version
        FROM serving.predictions p
        ASOF LEFT JOIN raw.viewing_activity v
          ON v.customer_id = p.customer_id AND v.activity_date <= p.request_ts::DATE
        WHERE p.source = 'batch' AND p.request_ts::DATE BETWEEN $first AND $last
        """,
        params={"first": first, "last": last},
    ).pl()


def _export_logs(logs: pl.DataFrame, paths: WorldPaths) -> None:
    """One JSON-lines file per service, as a log shipper would have left them."""
    for (service,), part in logs.group_by("service", maintain_order=True):
        part.select(
            pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
            "level",
            "service",
            "event",
            "message",
            "attrs",
        ).write_ndjson(paths.logs / f"{service}.jsonl")
