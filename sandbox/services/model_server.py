"""The live model server: the deployed churn model answering online requests in simulated time.

It loads what the built world left deployed (the deployment record, the model it names, the online
store's materializations) and scores the way the simulated server did: when anything acts at the
serving hooks, requests go through `pipeline.serve.ModelServer.score` as request frames, so it keeps
acting on live traffic; otherwise the same model call on plain arrays, without frames. Every
prediction reaches the telemetry spool before its response is sent.

A backfill of the online store applied from the ops console (`backfill-online-store`) is carried
out here too: the newest features the offline store holds at the request are loaded as a
materialization of its own, kept in the run directory, and served from the change's effective
time (simulated) until the next scheduled load; its progress is in the materialization job's logs.
While `pause-job` holds the feature job or the materialization, scheduled loads from the pause's
effective time on are not served: the store stays as last loaded (a backfill still loads), until
`resume-job` takes effect and the next scheduled load comes in.

A retrain (`retrain`) is carried out here as well, as soon as it is applied: the world's training
job run on the latest data as it stood at the request (`actions.retrain`), the model kept in the
run directory (`run/retrains/`, not the registry), its progress in the training job's logs, and the
new version served, pinned, from the change's effective time.

A run of the batch scoring on request (`rerun-batch-scoring`) is carried out here too, as soon as it
is applied (`batch_rerun`): its rows join the predictions log with source 'batch', stamped through
the run, and its progress is in the batch scoring's logs.

    python -m sandbox.services.model_server --world DIR --port P
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import duckdb
import numpy as np
import polars as pl
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from sandbox import schema
from sandbox.actions import deployment, progress, retrain, rollback, source_rules
from sandbox.actions.catalog import BACKFILL_ONLINE_STORE, CATALOG, RERUN_BATCH, RETRAIN
from sandbox.actions.overrides import Applied, Overrides, Pause
from sandbox.faults.base import HookContext
from sandbox.logs import LogSink
from sandbox.pipeline import deploy, registry, store
from sandbox.pipeline.compiled import CompiledTrees
from sandbox.pipeline.features import IMPUTED_FEATURES, MODEL_FEATURES
from sandbox.pipeline.serve import SERVICE, ModelServer, churn_scores, unanswered_blank
from sandbox.services import batch_rerun, caller, limits
from sandbox.services.common import (
    HEALTH_PATH,
    ServiceContext,
    serve,
    service_args,
    settings_or_exit,
    watching,
)
from sandbox.services.settings import Settings
from sandbox.world.routine_logs import FEATURE_SERVER, MATERIALIZATION, online_lookup_path

MAX_BATCH = 1000
HTTP_STATUS = {"ok": 200, "error": 503}
ENDPOINTS = ("/predict", "/predict/batch", "/metadata", HEALTH_PATH, "/metrics")
UNAVAILABLE = "the request could not be served in time; retry later"
_START = "sandbox.started"  # ASGI scope key: perf_counter() when the request arrived
BACKFILLS_DIR = "online-backfills"  # under the run directory: one load per applied backfill


class PredictRequest(BaseModel):
    """One prediction: a customer's features from the online store, or a full feature payload."""

    model_config = ConfigDict(extra="forbid")

    customer_id: Annotated[StrictInt, Field(ge=0, lt=2**63)] | None = Field(
        None, description="Look the customer's features up in the online store."
    )
    features: dict[str, Any] | None = Field(
        None,
        description="Every model feature by name (a number, or null for a missing value); "
        "customer_id is then optional and only recorded.",
    )


class ErrorMessage(BaseModel):
    """What a refused request gets: one line naming the wrong or missing field."""

    detail: str


# The model server answers every 422 (and its 404/503) with one readable line, not FastAPI's list.
ERRORS = {
    code: {"model": ErrorMessage, "description": text}
    for code, text in (
        (404, "unknown customer"),
        (422, "a wrong or missing field, named"),
        (503, "the prediction could not be made in time"),
    )
}


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[PredictRequest] = Field(min_length=1, max_length=MAX_BATCH)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Snapshot:
    """One materialization of the online store, indexed by customer id."""

    loaded_at: dt.datetime
    rows: dict[int, int]
    values: np.ndarray  # (customers, MODEL_FEATURES), NaN where the store holds null
    scheduled: bool = True  # the daily materialization's load (else a backfill from the console)


def snapshot_of(loaded_at: dt.datetime, frame: pl.DataFrame, scheduled: bool = True) -> Snapshot:
    rows = {cid: i for i, cid in enumerate(frame["customer_id"].to_list())}
    values = frame.select(pl.col(MODEL_FEATURES).cast(pl.Float64)).to_numpy()
    return Snapshot(loaded_at, rows, np.ascontiguousarray(values), scheduled)


class OnlineStore:
    """Every materialization the world left, and any backfill since; a request sees the newest
    one loaded by now."""

    def __init__(self, directory: Path) -> None:
        snapshots = [
            snapshot_of(loaded_at, pl.read_parquet(path, columns=["customer_id", *MODEL_FEATURES]))
            for loaded_at, path in deploy.online_snapshots(directory)
        ]
        # One attribute, replaced whole: a reader never sees times and loads out of step.
        self._loads = (snapshots, [s.loaded_at for s in snapshots])

    @property
    def snapshots(self) -> list[Snapshot]:
        return self._loads[0]

    def add(self, snapshot: Snapshot) -> None:
        """A load outside the schedule (a backfill), in its place by load time."""
        snapshots = sorted([*self._loads[0], snapshot], key=lambda s: s.loaded_at)
        self._loads = (snapshots, [s.loaded_at for s in snapshots])

    def at(self, now: dt.datetime, pauses: Sequence[Pause] = ()) -> Snapshot | None:
        """The newest load by `now`; scheduled loads while a job feeding the store was paused
        never happened (`pauses`), a backfill still loads."""
        snapshots, times = self._loads
        i = bisect.bisect_right(times, now)
        while i and any(p.holds(snapshots[i - 1].loaded_at) for p in pauses):
            if not snapshots[i - 1].scheduled:
                break
            i -= 1
        return snapshots[i - 1] if i else None


def offline_latest(world_db: Path, known_at: dt.datetime) -> pl.DataFrame:
    """The offline store's newest feature day as it stood at `known_at` (rows written by then):
    what a load at that moment puts in the online store, one row per customer."""
    with duckdb.connect(str(world_db), read_only=True) as con:
        rows = con.execute(
            f"""
            SELECT customer_id, {", ".join(MODEL_FEATURES)}, event_timestamp
            FROM {store.OFFLINE_TABLE}
            WHERE created_timestamp <= $at AND event_timestamp = (
                SELECT max(event_timestamp) FROM {store.OFFLINE_TABLE}
                WHERE created_timestamp <= $at
            )
            ORDER BY customer_id
            """,
            {"at": known_at},
        ).fetchall()
    return pl.DataFrame(
        rows,
        schema={
            "customer_id": pl.Int64,
            **dict.fromkeys(MODEL_FEATURES, pl.Float64),
            "event_timestamp": pl.Datetime("us"),
        },
        orient="row",
    )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "model_server_requests", "HTTP requests.", ["endpoint", "status"], registry=r
        )
        self.duration = Histogram(
            "model_server_request_duration_seconds",
            "Wall-clock time to answer an HTTP request.",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.latency = Histogram(
            "model_server_prediction_latency_seconds",
            "Latency of each prediction as recorded in the predictions log.",
            buckets=(0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5),
            registry=r,
        )
        self.scores = Histogram(
            "model_server_prediction_score",
            "Churn scores served.",
            buckets=(0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0),
            registry=r,
        )
        self.predictions = Counter(
            "model_server_predictions", "Predictions served, by decision.", ["decision"], registry=r
        )
        self.store_age = Gauge(
            "model_server_online_store_age_seconds",
            "Simulated seconds since the online-store materialization in use was loaded.",
            registry=r,
        )


def policy_fills(world_db: Path) -> dict[str, np.ndarray]:
    """Every fill value the feature job's imputation policy ever used, by feature: a stored
    value equal to one of them is one the job filled in."""
    with duckdb.connect(str(world_db), read_only=True) as con:
        rows = con.execute(
            "SELECT feature, list(DISTINCT fill_value) FROM feature_store.imputation_policy "
            "GROUP BY feature"
        ).fetchall()
    return {feature: np.array(values, dtype=float) for feature, values in rows}


class RolledBack:
    """The online store's loads once a rollback of the feature server is in effect. From the
    rollback's effective time, and at every scheduled load after it, the store is loaded the way
    the configuration rolled back to loads it: the offline store's newest rows at the load, through
    the materialization hooks with that configuration (`HookContext.config_as_of`), so a change a
    fault rolled out to the feature server after it no longer shapes what is served. A backfill
    since still loads. Without a planted rollout to go back past, the reloads hold what the
    world's loads held."""

    def __init__(self, ctx: ServiceContext, seed: int) -> None:
        self.ctx = ctx
        self.seed = seed
        self.rollouts = ctx.fault_set.rollouts(ctx.calendar, FEATURE_SERVER)
        self._loads: dict[tuple[dt.datetime, dt.datetime], Snapshot] = {}
        self._lock = threading.Lock()

    def served(
        self, now: dt.datetime, world: Snapshot | None, entries: Sequence[Applied]
    ) -> Snapshot | None:
        """What is served at `now` in place of `world`, the load the world (and the console's
        pauses and backfills) leave in effect."""
        config = rollback.config_as_of(FEATURE_SERVER, self.rollouts, entries, now)
        if config is None:
            return world
        last = rollback.rollbacks(FEATURE_SERVER, entries, now)[-1]
        if world is None or world.loaded_at < last:
            return self._load(last, config, scheduled=False)
        if not world.scheduled:
            return world  # a backfill after the rollback
        return self._load(world.loaded_at, config, scheduled=True)

    def _load(self, at: dt.datetime, config: dt.datetime, scheduled: bool) -> Snapshot:
        with self._lock:
            found = self._loads.get((at, config))
            if found is None:
                rows = offline_latest(self.ctx.paths.duckdb, at)
                online = self.ctx.fault_set.apply(
                    "materialize.online",
                    store.materialize(rows, at),
                    HookContext(
                        self.seed,
                        self.ctx.calendar.day_of(at),
                        self.ctx.calendar,
                        config_as_of=config,
                    ),
                )
                found = snapshot_of(at, online.select(["customer_id", *MODEL_FEATURES]), scheduled)
                self._loads[(at, config)] = found
                if not scheduled:  # the reload at the rollback; the scheduled ones log as jobs
                    newest = online["event_timestamp"].max() if online.height else None
                    self.ctx.log_at(
                        at,
                        MATERIALIZATION,
                        "info",
                        "materialization_reloaded",
                        f"online store reloaded: {online.height} rows, newest event_timestamp "
                        f"{newest}",
                        rows=online.height,
                    )
            return found


class Refilled:
    """The online store as the ops console's fill values leave it: a value the feature job filled
    in is replaced by the fill value set for its feature. Recomputed only when the snapshot or the
    fill values in effect change."""

    def __init__(self, fills: dict[str, np.ndarray]) -> None:
        self.fills = fills
        self._of: Snapshot | None = None
        self._key: tuple[tuple[str, float], ...] | None = None
        self._values: np.ndarray | None = None

    def values(self, snapshot: Snapshot, set_fills: dict[str, float]) -> np.ndarray:
        if not set_fills:
            return snapshot.values
        # The snapshot itself, not its load time: a reload can share a scheduled load's time.
        key = tuple(sorted(set_fills.items()))
        if snapshot is not self._of or key != self._key or self._values is None:
            values = snapshot.values.copy()
            for feature, fill in set_fills.items():
                if feature in IMPUTED_FEATURES and feature in self.fills:
                    j = MODEL_FEATURES.index(feature)
                    filled = np.isin(values[:, j], self.fills[feature])
                    values[filled, j] = fill
            self._of, self._key, self._values = snapshot, key, values
        return self._values


class SourceRules:
    """The online store's loads as the ops console's changes to how the feature job reads its
    sources leave them (`actions.source_rules`): a quarantined app release's watch time, a billing
    status counted as a failed charge. Made once per load and set of rules."""

    def __init__(self, world_db: Path) -> None:
        self.world_db = world_db
        self._made: dict[tuple[int, tuple[Any, ...]], tuple[Snapshot, Snapshot]] = {}
        self._lock = threading.Lock()

    def served(
        self,
        snapshot: Snapshot | None,
        releases: Sequence[source_rules.Release],
        statuses: Sequence[str],
    ) -> Snapshot | None:
        if snapshot is None or not (releases or statuses):
            return snapshot
        key = (id(snapshot), (tuple(releases), tuple(statuses)))
        with self._lock:
            found = self._made.get(key)
            if found is None or found[0] is not snapshot:
                values = source_rules.reloaded(
                    self.world_db,
                    snapshot.values,
                    snapshot.rows,
                    snapshot.loaded_at,
                    releases,
                    statuses,
                )
                found = (snapshot, replace(snapshot, values=values))
                self._made[key] = found
            return found[1]


class LiveModelServer:
    """Scores requests at the simulated now; framework-free so the app stays thin."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.record = deploy.read_model_deployment(ctx.paths.deploy)
        self.seed = ctx.scenario.world.seed
        # The registered versions the ops console may deploy, and what the world left deployed.
        self.registry = deployment.Registry.read(ctx.paths.mlflow)
        # The same the gateway reads, so both count the same deployments back on a rollback.
        self.baseline = deployment.world_baseline(
            ctx.paths.duckdb,
            ctx.paths.mlflow,
            ctx.paths.deploy,
            ctx.fault_set.rollouts(ctx.calendar, SERVICE),
        )
        self._features = {self.record.model_version: list(self.record.features)}
        for version in self.registry.versions:
            found = self.registry.features(ctx.paths.mlflow, version)
            if found:
                self._features.setdefault(version, found)
        # The request carries the stored features; a model input the store lacks comes from
        # elsewhere at serving time (optional in a payload, null until then).
        extra = [f for fs in self._features.values() for f in fs if f not in MODEL_FEATURES]
        self.columns = [*MODEL_FEATURES, *dict.fromkeys(extra)]
        self.store = OnlineStore(ctx.paths.online_store)
        self.rolled_back = RolledBack(ctx, self.seed)
        # Changes applied from the ops console, each in effect from its simulated time.
        self.overrides = Overrides(ctx.paths.run)
        self.refilled = Refilled(policy_fills(ctx.paths.duckdb))
        self.source_rules = SourceRules(ctx.paths.duckdb)
        self._backfilled: set[str] = set()
        self._backfill_lock = threading.Lock()
        self.refresh_backfills()  # every backfill applied before a restart
        self._reruns = batch_rerun.done_ids(ctx.paths.run)  # batch reruns already spooled
        self._rerun_lock = threading.Lock()
        self._retrained: dict[str, retrain.Retrained] = {}  # by version
        self._retrain_lock = threading.Lock()
        model = registry.load_serving(ctx.paths.mlflow, self.record.model_uri, CompiledTrees)
        self._models: dict[str, CompiledTrees] = {self.record.model_version: model}
        self.refresh_retrains()  # every retrain applied before a restart
        self.server = ModelServer(
            self.seed, ctx.calendar, ctx.fault_set, self.record.model_name, LogSink()
        )
        self.deployed = self.baseline
        self._load(self.baseline)
        self.hooked = self.server.faults.acts_at("serve.features", "serve.scores")
        self.loaded_at = ctx.now()
        ctx.log(
            "info",
            "model_loaded",
            f"loaded {self.record.model_name} version {self.record.model_version}",
            model_version=self.record.model_version,
            threshold=self.record.threshold,
        )

    def _load(self, state: deployment.Deployment) -> None:
        """Serve `state`'s version with its threshold (a version loaded once stays in memory)."""
        version = state.version
        features = self.features_of(version)
        self.server.deploy(self.model_of(version), version, state.threshold, features)
        self.required = [f for f in features if f in MODEL_FEATURES]
        self._model_columns = [self.columns.index(f) for f in features]
        self.deployed = state

    def model_of(self, version: str) -> CompiledTrees:
        """The model of a registered or retrained version (loaded once, then kept in memory)."""
        if version not in self._models:
            self.refresh_retrains()
        if version not in self._models:
            self._models[version] = registry.load_serving(
                self.ctx.paths.mlflow, f"models:/{self.record.model_name}/{version}", CompiledTrees
            )
        return self._models[version]

    def features_of(self, version: str) -> list[str]:
        return list(self._features.get(version, self.record.features))

    def deployment(self, now: dt.datetime) -> deployment.Deployment:
        """What is deployed at `now`, with the ops console's changes in effect; the server loads
        it on the first request that needs it."""
        state = deployment.in_effect(self.baseline, self.overrides.entries(), now)
        if (state.version, state.threshold) != (self.deployed.version, self.deployed.threshold):
            self._load(state)
        else:
            self.deployed = state
        return state

    # -- retrains applied from the ops console --------------------------------------------------
    def refresh_retrains(self) -> None:
        """Carry out every applied retrain not yet trained: train it (or load the one kept before
        a restart, logged only once), keep it and make its version loadable."""
        versions = deployment.retrain_versions(self.baseline.latest, self.overrides.entries())
        if all(v in self._models for v in versions.values()):
            return
        with self._retrain_lock:
            for applied in self.overrides.entries():
                version = versions.get(applied.id)
                if version is None or version in self._models:
                    continue
                done = retrain.load_kept(self.ctx.paths.run, applied.id) or self._retrain(
                    applied, version
                )
                self._retrained[version] = done
                self._features[version] = list(done.features)
                self._models[version] = done.model

    def _retrain(self, applied: Applied, version: str) -> retrain.Retrained:
        ctx = self.ctx
        maturity = int(applied.params["label_maturity_days"])
        # It retrains the version served at the request, on that version's inputs.
        served = deployment.in_effect(self.baseline, self.overrides.entries(), applied.requested_at)
        done = retrain.retrain(
            ctx.paths.duckdb,
            ctx.calendar,
            ctx.fault_set,
            self.seed,
            version,
            applied.requested_at,
            applied.effective_at,
            maturity,
            ctx.scenario.world.label_horizon_days,
            self._features.get(served.version, list(self.record.features)),
            *retrain.window(applied.params),
        )
        retrain.keep(ctx.paths.run, applied.id, done)
        name = self.record.model_name
        lines = retrain.lines(
            applied.id, applied.requested_at, applied.effective_at, name, done, maturity
        )
        for service, line in lines:
            ctx.log_at(line.ts, service, "info", line.event, line.message, **line.attrs)
        # The servers keep their threshold: the retrain changes the model, not the config.
        threshold = deployment.in_effect(
            self.baseline, self.overrides.entries(), applied.effective_at
        ).threshold
        ctx.log_at(
            applied.effective_at,
            SERVICE,
            "info",
            "model_loaded",
            f"loaded {name} version {version}",
            model_version=version,
            threshold=threshold,
            change_id=applied.id,
        )
        return done

    # -- backfills applied from the ops console -------------------------------------------------
    def refresh_backfills(self) -> None:
        """Carry out every applied backfill not yet loaded: read the offline store's newest
        features, keep the load in the run directory and write its progress lines (stamped in
        simulated time). One kept before a restart is loaded again, and logged only once."""
        if not any(
            e.action == BACKFILL_ONLINE_STORE and e.id not in self._backfilled
            for e in self.overrides.entries()
        ):
            return
        with self._backfill_lock:
            for applied in self.overrides.entries():
                if applied.action == BACKFILL_ONLINE_STORE and applied.id not in self._backfilled:
                    self.store.add(self._backfill(applied))
                    self._backfilled.add(applied.id)

    def _backfill(self, applied: Applied) -> Snapshot:
        kept = self.ctx.paths.run / BACKFILLS_DIR / f"{applied.id}.parquet"
        if kept.is_file():
            return snapshot_of(applied.effective_at, pl.read_parquet(kept), scheduled=False)
        frame = store.materialize(
            offline_latest(self.ctx.paths.duckdb, applied.requested_at), applied.effective_at
        )
        newest = frame["event_timestamp"].max() if frame.height else None
        service = CATALOG[BACKFILL_ONLINE_STORE].service
        for line in progress.online_backfill(
            applied.id,
            applied.requested_at,
            applied.effective_at,
            frame.height,
            newest,  # type: ignore[arg-type]
        ):
            self.ctx.log_at(line.ts, service, "info", line.event, line.message, **line.attrs)
        # Whole or not at all: a restart finds either the finished load or none.
        kept.parent.mkdir(parents=True, exist_ok=True)
        partial = kept.with_suffix(".partial")
        frame.write_parquet(partial)
        partial.replace(kept)
        return snapshot_of(applied.effective_at, frame, scheduled=False)

    # -- batch scoring run again from the ops console -----------------------------------------
    def refresh_reruns(self) -> None:
        """Carry out every applied batch rerun not yet spooled (`batch_rerun`)."""
        if not any(
            e.action == RERUN_BATCH and e.id not in self._reruns for e in self.overrides.entries()
        ):
            return
        with self._rerun_lock:
            for applied in self.overrides.entries():
                if applied.action == RERUN_BATCH and applied.id not in self._reruns:
                    # Tried once: a failure is logged, not retried on every look.
                    self._reruns.add(applied.id)
                    batch_rerun.carry_out(self, applied, SPOOL_COLUMNS)

    def refresh_daily_batches(self) -> None:
        """Run the scheduled batches that fell due since a change from the ops console took
        effect (`batch_rerun.due_daily`), oldest first."""
        with self._rerun_lock:
            for at in batch_rerun.due_daily(self, self.ctx.now()):
                batch_rerun.run_daily(self, at, SPOOL_COLUMNS)

    def look(self) -> None:
        """Carry out newly applied retrains, backfills, feature-server rollbacks and batch reruns
        (the running app's watcher calls it)."""
        try:
            self.refresh_retrains()
        except Exception as exc:  # a failed retrain must not stop the server answering
            self.ctx.log_as(
                CATALOG[RETRAIN].service, "error", "retrain_failed", f"retrain failed: {exc}"
            )
        try:
            self.refresh_backfills()
            self.snapshot(self.ctx.now())  # a reload after a rollback, before the next request
        except Exception as exc:  # a bad backfill must not stop the server answering
            self.ctx.log_as(
                CATALOG[BACKFILL_ONLINE_STORE].service,
                "error",
                "backfill_failed",
                f"online-store backfill failed: {exc}",
            )
        try:
            self.refresh_reruns()
            self.refresh_daily_batches()
        except Exception as exc:  # a failed rerun must not stop the server answering
            self.ctx.log_as(
                CATALOG[RERUN_BATCH].service,
                "error",
                "batch_failed",
                f"batch scoring failed: {exc}",
            )

    def snapshot(self, now: dt.datetime) -> Snapshot | None:
        """The online-store load served at `now`, with the console's pauses and rollbacks of the
        feature server and its changes to how the feature job reads its sources in effect."""
        world = self.store.at(now, self.overrides.online_store_pauses(now))
        loaded = self.rolled_back.served(now, world, self.overrides.entries())
        return self.source_rules.served(
            loaded, self.overrides.quarantined(now), self.overrides.failed_statuses(now)
        )

    def store_age(self) -> float:
        now = self.ctx.now()
        snapshot = self.snapshot(now)
        return (now - snapshot.loaded_at).total_seconds() if snapshot else math.nan

    def _payload(self, features: dict[str, Any], where: str) -> np.ndarray:
        for name in features:
            if name not in self.columns:
                raise ApiError(
                    422,
                    f"{where}features.{name}: unknown feature; expected {', '.join(self.columns)}",
                )
        for name in self.required:
            if name not in features:
                raise ApiError(422, f"{where}features.{name}: missing (send null if unknown)")
        row = np.full(len(self.columns), np.nan)
        for j, name in enumerate(self.columns):
            value = features.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ApiError(422, f"{where}features.{name}: must be a number or null")
            try:
                row[j] = float(value)
            except OverflowError:
                row[j] = math.inf
            if not math.isfinite(row[j]):
                raise ApiError(422, f"{where}features.{name}: must be a finite number")
        return row

    def _resolve(
        self, items: list[PredictRequest], now: dt.datetime, batch: bool
    ) -> tuple[list[int | None], np.ndarray]:
        values = np.full((len(items), len(self.columns)), np.nan)
        self.refresh_backfills()
        snapshot = self.snapshot(now)
        stored = (
            self.refilled.values(snapshot, self.overrides.fill_values(now)) if snapshot else None
        )
        for i, item in enumerate(items):
            where = f"requests[{i}]." if batch else ""
            if item.features is not None:
                values[i] = self._payload(item.features, where)
            elif item.customer_id is not None:
                row = snapshot.rows.get(item.customer_id) if snapshot else None
                if row is None:
                    raise ApiError(
                        404,
                        f"{where}customer_id: no online features for customer {item.customer_id}",
                    )
                values[i, : len(MODEL_FEATURES)] = stored[row]  # type: ignore[index]
            else:
                raise ApiError(422, f"{where}customer_id or features: one of them is required")
        return [item.customer_id for item in items], values

    def predict(
        self,
        items: list[PredictRequest],
        started: float,
        batch: bool = False,
        session_id: str | None = None,
    ) -> tuple[dt.datetime, list[dict[str, Any]]]:
        """Score the items together; returns the simulated request time and one row per item,
        with the spool row's columns plus prediction_id. Raises ApiError for a bad request.
        The spooled rows carry `session_id` when a session's call asked for them."""
        now = self.ctx.now()
        served = self.deployment(now)
        customer_ids, values = self._resolve(items, now, batch)
        ids = [secrets.randbits(63) for _ in items]
        if self.hooked:
            cols = self._score_frame(now, customer_ids, values, ids, started)
        else:
            cols = self._score_rows(customer_ids, values, ids)
        self._decide(cols, served.threshold if served.changed else None)
        measured = (time.perf_counter() - started) * 1000
        # A slow dependency shows as a longer latency than this process measured.
        latency = np.round(np.fmax(np.array(cols["latency_ms"], dtype=float), measured), 2)
        ts = now.isoformat()
        rows = [
            {
                "prediction_id": cols["prediction_id"][i],
                "request_ts": ts,
                "source": "online",
                "customer_id": cols["customer_id"][i],
                "model_name": cols["model_name"][i],
                "model_version": cols["model_version"][i],
                **{name: cols[name][i] for name in self.columns},
                "score": cols["score"][i],
                "threshold": cols["threshold"][i],
                "decision": cols["decision"][i],
                "latency_ms": float(latency[i]),
                "status": cols["status"][i],
            }
            for i in range(len(items))
        ]
        self.ctx.spool("serving.predictions").write(
            *(caller.marked({k: row[k] for k in SPOOL_COLUMNS}, session_id) for row in rows)
        )
        return now, rows

    @staticmethod
    def _decide(cols: dict[str, list[Any]], threshold: float | None) -> None:
        """Decisions at the threshold set from the ops console, when one is in effect."""
        if threshold is None:
            return
        for i, score in enumerate(cols["score"]):
            if cols["status"][i] == "ok" and score is not None:
                cols["threshold"][i] = threshold
                cols["decision"][i] = score >= threshold

    def _score_frame(
        self,
        now: dt.datetime,
        customer_ids: list[int | None],
        values: np.ndarray,
        ids: list[int],
        started: float,
    ) -> dict[str, list[Any]]:
        """Score as the world's server did: request frames through the serving hooks."""
        n = len(ids)
        so_far = round((time.perf_counter() - started) * 1000, 2)
        requests = pl.DataFrame(
            [
                pl.Series("customer_id", customer_ids, dtype=pl.Int64),
                pl.Series("request_ts", [now] * n, dtype=pl.Datetime("us")),
                pl.Series("source", ["online"] * n, dtype=pl.Utf8),
                pl.Series("latency_ms", [so_far] * n, dtype=pl.Float64),
                pl.Series("status", ["ok"] * n, dtype=pl.Utf8),
                *(
                    pl.Series(name, values[:, j], dtype=pl.Float64, nan_to_null=True)
                    for j, name in enumerate(self.columns)
                ),
            ]
        )
        # One random stream per scoring call: with the world's seed every single-row request
        # of a day would get the same draws, so per-request behaviour would be all-or-nothing.
        hook_ctx = HookContext(
            seed=secrets.randbits(32),
            day=self.ctx.calendar.day_of(now),
            calendar=self.ctx.calendar,
            config_as_of=self.deployed.config_as_of,
        )
        scored = self.server.score(requests, hook_ctx, np.array(ids, dtype=np.int64))
        kept = ["prediction_id", "customer_id", "model_name", "model_version", *self.columns]
        kept += ["score", "threshold", "decision", "status", "latency_ms"]
        return unanswered_blank(scored).select(kept).to_dict(as_series=False)

    def _score_rows(
        self, customer_ids: list[int | None], values: np.ndarray, ids: list[int]
    ) -> dict[str, list[Any]]:
        """The same scores without building frames, when nothing acts at the serving hooks."""
        n = len(ids)
        scores = churn_scores(self.server.model, values[:, self._model_columns])
        nulls = np.isnan(values)
        return {
            "prediction_id": ids,
            "customer_id": customer_ids,
            "model_name": [self.server.model_name] * n,
            "model_version": [self.server.model_version] * n,
            **{
                name: [None if null else v for v, null in zip(col, isnull, strict=True)]
                for name, col, isnull in zip(
                    self.columns, values.T.tolist(), nulls.T.tolist(), strict=True
                )
            },
            "score": scores.tolist(),
            "threshold": [self.server.threshold] * n,
            "decision": (scores >= self.server.threshold).tolist(),
            "status": ["ok"] * n,
            "latency_ms": [0.0] * n,
        }

    def response(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "prediction_id": row["prediction_id"],
            "customer_id": row["customer_id"],
            "model_name": row["model_name"],
            "model_version": row["model_version"],
            "score": row["score"],
            "threshold": row["threshold"],
            "decision": row["decision"],
            "features": {name: row[name] for name in self.columns},
            "request_ts": row["request_ts"],
        }

    def threshold(self, now: dt.datetime) -> float:
        """The threshold decisions are made at now: the deployment's, or one set since."""
        return self.deployment(now).threshold

    def metadata(self) -> dict[str, Any]:
        now = self.ctx.now()
        served = self.deployment(now)
        snapshot = self.snapshot(now)
        return {
            "model_name": self.record.model_name,
            "model_version": served.version,
            "model_uri": served.model_uri,
            "aliases": dict(sorted(served.aliases.items())),
            "features": list(self.server.features),
            "threshold": served.threshold,
            "deployed_at": (served.since or self.record.deployed_at).isoformat(),
            "loaded_at": self.loaded_at.isoformat(),
            "now": now.isoformat(),
            "online_store": {
                "loaded_at": snapshot.loaded_at.isoformat() if snapshot else None,
                "customers": len(snapshot.rows) if snapshot else 0,
                "age_seconds": (now - snapshot.loaded_at).total_seconds() if snapshot else None,
            },
        }


# A spooled prediction has the declared columns of the table it joins.
SPOOL_COLUMNS = tuple(schema.names("serving.predictions"))


class _Instrument:
    """Pure ASGI middleware: request count and duration per endpoint and status, of
    production's calls only (a session's calls are its own, see `caller`)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = scope[_START] = time.perf_counter()
        status = 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if caller.session_of(scope) is None:
                endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
                self.metrics.requests.labels(endpoint, str(status)).inc()
                self.metrics.duration.labels(endpoint).observe(time.perf_counter() - started)


def _elapsed_ms(request: Request) -> float:
    return round((time.perf_counter() - request.scope.get(_START, time.perf_counter())) * 1000, 1)


def _field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "body"


def create_app(world: Path, settings: Settings | None = None) -> FastAPI:
    ctx = ServiceContext(Path(world), SERVICE)
    live = LiveModelServer(ctx)
    metrics = Metrics()
    metrics.store_age.set_function(live.store_age)

    lifespan = watching(live.look, "online-backfills")

    app = FastAPI(
        title="model-server",
        version=live.record.model_version,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    # Innermost: the middleware added below sees its refusals.
    limits.install(app, settings or Settings())
    app.state.live = live
    app.state.metrics = metrics
    app.add_middleware(_Instrument, metrics=metrics)
    app.add_middleware(caller.SessionCalls)  # outermost: the others read the session it finds

    def log_request(request: Request, path: str, code: int, ms: float, **attrs: Any) -> None:
        level = "info" if code < 400 else "warning" if code < 500 else "error"
        ctx.log(
            level,
            "request",
            f"POST {path} {code} {round(ms, 1)}ms",
            session_id=caller.session_of(request.scope),
            **attrs,
            model_version=live.deployed.version,
            status=code,
        )

    def log_lookup(request: Request, items: list[PredictRequest], code: int) -> None:
        """The online-store reads a request made, as the feature server logs them (the world's
        history has the same lines: `sandbox.world.routine_logs`)."""
        keys = [i.customer_id for i in items if i.features is None and i.customer_id is not None]
        if not keys:
            return
        if len(keys) == 1:
            path, attrs = online_lookup_path(keys[0]), {"customer_id": keys[0]}
        else:
            path, attrs = f"{online_lookup_path(None)}/batch", {"keys": len(keys)}
        ctx.log_as(
            FEATURE_SERVER,
            "info" if code < 400 else "warning",
            "lookup",
            f"GET {path} {code}",
            session_id=caller.session_of(request.scope),
            **attrs,
            status=code,
        )

    def record(request: Request, rows: list[dict[str, Any]]) -> None:
        if caller.session_of(request.scope) is not None:
            return
        for row in rows:
            metrics.latency.observe(row["latency_ms"] / 1000)
            if row["status"] == "ok":
                metrics.scores.observe(row["score"])
                metrics.predictions.labels(str(row["decision"]).lower()).inc()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        message = "; ".join(f"{_field(tuple(e['loc']))}: {e['msg']}" for e in errors[:5])
        if request.url.path in ENDPOINTS:
            log_request(request, request.url.path, 422, _elapsed_ms(request), customer_id=None)
        return JSONResponse({"detail": message}, status_code=422)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        ctx.log(
            "error",
            "request",
            f"{request.method} {request.url.path} 500",
            session_id=caller.session_of(request.scope),
            status=500,
        )
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.post("/predict", responses=ERRORS)
    async def predict(body: PredictRequest, request: Request) -> JSONResponse:
        """Score one customer (by id, from the online store) or one full feature payload."""
        started = request.scope.get(_START, time.perf_counter())
        session = caller.session_of(request.scope)
        try:
            _, rows = live.predict([body], started, session_id=session)
        except ApiError as err:
            if err.status == 404:
                log_lookup(request, [body], 404)
            log_request(
                request, "/predict", err.status, _elapsed_ms(request), customer_id=body.customer_id
            )
            return JSONResponse({"detail": err.message}, status_code=err.status)
        log_lookup(request, [body], 200)
        row = rows[0]
        record(request, rows)
        code = HTTP_STATUS[row["status"]]
        log_request(request, "/predict", code, row["latency_ms"], customer_id=row["customer_id"])
        if code != 200:
            return JSONResponse({"detail": UNAVAILABLE}, status_code=code)
        return JSONResponse(live.response(row))

    @app.post("/predict/batch", responses=ERRORS)
    async def predict_batch(body: BatchRequest, request: Request) -> JSONResponse:
        """Score up to 1000 requests (each as for /predict) together."""
        started = request.scope.get(_START, time.perf_counter())
        session = caller.session_of(request.scope)
        try:
            _, rows = live.predict(body.requests, started, batch=True, session_id=session)
        except ApiError as err:
            if err.status == 404:
                log_lookup(request, body.requests, 404)
            log_request(
                request, "/predict/batch", err.status, _elapsed_ms(request), rows=len(body.requests)
            )
            return JSONResponse({"detail": err.message}, status_code=err.status)
        log_lookup(request, body.requests, 200)
        record(request, rows)
        failed = sum(row["status"] != "ok" for row in rows)
        log_request(
            request,
            "/predict/batch",
            200,
            max(row["latency_ms"] for row in rows),
            rows=len(rows),
            failed=failed,
        )
        return JSONResponse(
            {
                "predictions": [
                    {**live.response(row), "status": row["status"]}
                    if row["status"] == "ok"
                    else {**live.response(row), "status": row["status"], "detail": UNAVAILABLE}
                    for row in rows
                ],
                "count": len(rows),
                "failed": failed,
            }
        )

    @app.get("/metadata")
    async def metadata() -> JSONResponse:
        """The deployed model and the online-store materialization requests read."""
        return JSONResponse(live.metadata())

    @app.get(HEALTH_PATH)
    async def health() -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "model_name": live.record.model_name,
                "model_version": live.deployment(ctx.now()).version,
            }
        )

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def main() -> None:
    args = service_args("The live model server: the deployed churn model in simulated time.")
    settings = settings_or_exit()
    serve(create_app(args.world, settings), args.host, args.port, settings, args.fd)


if __name__ == "__main__":
    main()
