"""Stage 5: the model server as the world saw it — the 06:00 batch scoring and online requests.

Every prediction is logged with the features *as served*, the score, the decision, the model
version and the latency, which is what lets a candidate compare serving with training.
"""

from __future__ import annotations

import datetime as dt
import functools

import numpy as np
import polars as pl
from threadpoolctl import ThreadpoolController

from sandbox import rng
from sandbox.clock import Calendar
from sandbox.faults.base import FaultSet, HookContext
from sandbox.logs import LogSink
from sandbox.pipeline.compiled import CompiledTrees
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.pipeline.store import MATERIALIZE_HOUR
from sandbox.pipeline.train import SCORE_HOUR
from sandbox.product import HOURLY_TRAFFIC, hours_of_day

SERVICE = "model-server"
BATCH_SERVICE = "batch-scoring"
ONLINE_SHARE = 0.05  # online requests per active customer per day (app opens the account page)
ERROR_RATE = 0.0015


def _to_ts(calendar: Calendar, day: int, hours: np.ndarray) -> np.ndarray:
    return np.datetime64(calendar.midnight(day), "us") + (hours * 3_600_000_000).astype(
        "timedelta64[us]"
    )


@functools.cache
def _threads() -> ThreadpoolController:
    """Made on first use: it only sees thread pools of libraries loaded by then (the model's)."""
    return ThreadpoolController()


def churn_scores(model: object, x: np.ndarray) -> np.ndarray:
    """Scores as served and logged: the churn-class probability, rounded to 6 places."""
    if not len(x):
        return np.empty(0)
    if isinstance(model, CompiledTrees):  # NumPy alone: no thread pool to limit
        return np.round(model.predict_proba(x)[:, 1], 6)
    # One thread: a day's requests are too few for OpenMP's fork and join per tree to pay, and
    # on a busy machine the extra threads spin waiting for each other (several times slower).
    with _threads().limit(limits=1, user_api="openmp"):
        return np.round(model.predict_proba(x)[:, 1], 6)  # type: ignore[attr-defined]


def unanswered_blank(scored: pl.DataFrame) -> pl.DataFrame:
    """A request that failed was answered with an error: it has no score and no decision."""
    failed = pl.col("status") == "error"
    return scored.with_columns(
        pl.when(failed).then(None).otherwise(pl.col("score")).alias("score"),
        pl.when(failed).then(None).otherwise(pl.col("decision")).alias("decision"),
    )


class ModelServer:
    def __init__(
        self,
        seed: int,
        calendar: Calendar,
        faults: FaultSet,
        model_name: str,
        logs: LogSink,
    ) -> None:
        self.seed = seed
        self.calendar = calendar
        self.faults = faults
        self.model_name = model_name
        self.logs = logs
        self.model: object | None = None
        self.model_version = ""
        self.threshold = 0.0
        self.features: list[str] = list(MODEL_FEATURES)
        self._next_id = 1

    def deploy(self, model: object, version: str, threshold: float, features: list[str]) -> None:
        """Load a model version; requests from now on are scored by it."""
        self.model = model
        self.model_version = version
        self.threshold = threshold
        self.features = list(features)

    def _ctx(self, day: int) -> HookContext:
        return HookContext(seed=self.seed, day=day, calendar=self.calendar)

    def _score(self, day: int, requests: pl.DataFrame) -> pl.DataFrame:
        return self.score(requests, self._ctx(day))

    def score(
        self, requests: pl.DataFrame, ctx: HookContext, ids: np.ndarray | None = None
    ) -> pl.DataFrame:
        """Score requests (customer_id, request_ts, source, latency_ms, status, features), with
        whatever acts at the serving hooks; `ids` are the prediction ids (else the next in turn)."""
        if self.model is None:
            raise RuntimeError("no model deployed")
        requests = self.faults.apply("serve.features", requests, ctx)
        scores = churn_scores(self.model, requests.select(self.features).to_numpy())
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + requests.height, dtype=np.int64)
            self._next_id += requests.height
        scored = requests.with_columns(
            pl.Series("prediction_id", ids),
            pl.Series("score", scores),
            pl.lit(self.model_name).alias("model_name"),
            pl.lit(self.model_version).alias("model_version"),
            pl.lit(self.threshold).alias("threshold"),
        ).with_columns((pl.col("score") >= pl.col("threshold")).alias("decision"))
        return self.faults.apply("serve.scores", scored, ctx)

    def batch(self, day: int, online_store: pl.DataFrame) -> pl.DataFrame:
        """Score every customer in the online store; flagged ones get a retention offer."""
        start = self.calendar.at(day, SCORE_HOUR)
        offsets = np.arange(online_store.height) * 400  # the job works through customers in ~10 s
        requests = online_store.select("customer_id", *MODEL_FEATURES).with_columns(
            pl.Series("request_ts", np.datetime64(start, "us") + offsets.astype("timedelta64[us]")),
            pl.lit("batch").alias("source"),
            pl.lit(None, dtype=pl.Float64).alias("latency_ms"),
            pl.lit("ok").alias("status"),
        )
        scored = self._score(day, requests)
        flagged = int(scored["decision"].sum())
        self.logs.emit(
            start,
            BATCH_SERVICE,
            "info",
            "batch_started",
            f"daily churn scoring started for {scored.height} customers",
            model=f"{self.model_name}/{self.model_version}",
        )
        self.logs.emit(
            start + dt.timedelta(microseconds=int(offsets[-1]) if len(offsets) else 0),
            BATCH_SERVICE,
            "info",
            "batch_finished",
            f"daily churn scoring finished: {flagged} customers flagged for retention",
            rows=scored.height,
            flagged=flagged,
            threshold=self.threshold,
        )
        return scored

    def online(
        self, day: int, before_refresh: pl.DataFrame, after_refresh: pl.DataFrame
    ) -> pl.DataFrame:
        """Requests through the day; before the 04:00 refresh they see yesterday's online store."""
        g = rng.stream(self.seed, "online-requests", day)
        if before_refresh.height == 0:  # first production day: no earlier online store
            before_refresh = after_refresh
        season = HOURLY_TRAFFIC.mean() / HOURLY_TRAFFIC.max()
        volume = self.faults.apply("serve.traffic", 1.0, self._ctx(day))
        n = int(g.poisson(ONLINE_SHARE * after_refresh.height * (0.8 + 0.4 * season) * volume))
        hours = np.sort(hours_of_day(g, n))
        early = hours < MATERIALIZE_HOUR
        pick_after = g.integers(0, max(after_refresh.height, 1), n)
        pick_before = g.integers(0, max(before_refresh.height, 1), n)
        # Latency follows load: the evening peak is slower, and a few requests time out.
        load = HOURLY_TRAFFIC[hours.astype(int)] / HOURLY_TRAFFIC.max()
        latency = g.lognormal(np.log(6.0), 0.35, n) * (1 + 0.6 * load)
        failed = g.random(n) < ERROR_RATE
        requests = pl.concat(
            [
                before_refresh[pick_before[early]],
                after_refresh[pick_after[~early]],
            ]
        ).select(
            "customer_id",
            pl.Series("request_ts", _to_ts(self.calendar, day, hours)),
            pl.lit("online").alias("source"),
            pl.Series("latency_ms", np.round(np.where(failed, 2000.0, latency), 2)),
            pl.Series("status", np.where(failed, "error", "ok")),
            *MODEL_FEATURES,
        )
        scored = unanswered_blank(self._score(day, requests))
        self._log_requests(scored)
        return scored

    def _log_requests(self, scored: pl.DataFrame) -> None:
        status = pl.when(pl.col("status") == "ok").then(200).otherwise(503)
        self.logs.emit_frame(
            scored.select(
                pl.col("request_ts").alias("ts"),
                pl.lit(SERVICE).alias("service"),
                pl.when(pl.col("status") == "ok")
                .then(pl.lit("info"))
                .otherwise(pl.lit("error"))
                .alias("level"),
                pl.lit("request").alias("event"),
                pl.format("POST /predict {} {}ms", status, pl.col("latency_ms").round(1)).alias(
                    "message"
                ),
                pl.format(
                    '{{"customer_id": {}, "model_version": "{}", "status": {}}}',
                    pl.col("customer_id"),
                    pl.col("model_version"),
                    status,
                ).alias("attrs"),
            )
        )
