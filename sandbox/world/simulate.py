"""The day loop: the world lives each simulated day and the production stack processes it.

Order within a day, as in production:
  02:00 feature job for yesterday -> 04:00 online materialization -> 06:00 batch scoring and
  retention offers -> the day's viewing, billing, tickets (with retrieval) and cancellations ->
  after midnight, raw loads land for tomorrow's feature job.
The model is trained at the end of pre-history (day 0) and serves from day 1. The loop runs past the
visible days by the label horizon so every visible score date gets its label; rows from those extra
days are never written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from sandbox import rng, schema
from sandbox.clock import Calendar
from sandbox.faults.base import HookContext, WorldData
from sandbox.logs import LogSink
from sandbox.pipeline import retrieve, store, train
from sandbox.pipeline.features import FeatureJob
from sandbox.pipeline.ingest import Ingest
from sandbox.pipeline.registry import CHURN_MODEL
from sandbox.pipeline.release import INITIAL_RELEASE, Release, Rollout
from sandbox.pipeline.serve import ModelServer
from sandbox.pipeline.store import MATERIALIZE_HOUR
from sandbox.scenario import Scenario
from sandbox.world import population, support
from sandbox.world.behaviour import WorldState
from sandbox.world.warehouse import Warehouse

OFFER_TEXT = "50% off for 2 months"


@dataclass
class Deployment:
    """A release as it happened: the trained model, its training set and registry version."""

    release: Release
    trained: train.TrainedModel
    training_set: pl.DataFrame
    version: str


@dataclass
class SimulationResult:
    customers: pl.DataFrame
    deployments: list[Deployment]
    cancellations: pl.DataFrame
    feature_job: FeatureJob
    logs: LogSink
    encoders: dict[int, tuple[retrieve.Encoder, int]]  # version -> (encoder, first day used)
    serving: ModelServer  # as the world leaves it: the loaded version and its threshold
    online_snapshots: dict[int, pl.DataFrame]  # the online store from the last production day on

    @property
    def initial(self) -> Deployment:
        return self.deployments[0]


class Simulation:
    def __init__(
        self,
        scenario: Scenario,
        warehouse: Warehouse,
        truth: Warehouse,
        register_model: Callable[[Release, train.TrainedModel, pl.DataFrame], str],
        on_day: Callable[[int, pl.DataFrame | None], None] = lambda day, served: None,
    ) -> None:
        self.scenario = scenario
        self.seed = scenario.world.seed
        self.calendar = scenario.world.calendar()
        self.wh = warehouse
        # Hooks read what has been written so far; buffered rows are written first.
        self.data = WorldData(warehouse.con, before_read=warehouse.flush)
        self.faults = scenario.fault_set.with_data(self.data)
        self.truth = truth
        self.register_model = register_model
        self.on_day = on_day
        self.logs = LogSink()

    # -- helpers -----------------------------------------------------------------------------
    def context(self, day: int) -> HookContext:
        """What a hook sees on `day`: the world's seed and calendar, and its data so far."""
        return HookContext(self.seed, day, self.calendar, self.data)

    def _visible(self, day: int) -> bool:
        return day <= self.calendar.last_visible_day

    def _append(self, day: int, table: str, frame: pl.DataFrame) -> None:
        if self._visible(day) and frame.height:
            self.wh.append(table, frame)

    def _active_lifecycle(self, state: WorldState) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "customer_id": state.customer_id,
                "signup_day": state.signup_day,
                "cancel_day": state.cancel_day,
            }
        )

    # -- the loop ------------------------------------------------------------------------------
    def run(
        self, articles: pl.DataFrame, encoder: retrieve.Encoder, index: retrieve.ArticleIndex
    ) -> SimulationResult:
        cal = self.calendar
        customers = population.generate(self.seed, self.scenario.world.n_customers, cal)
        state = WorldState(self.seed, customers, cal)
        ingest = Ingest(self.seed, cal, self.faults)
        job = FeatureJob(self.seed, cal, self.faults, customers, self.logs)
        cancellations: list[pl.DataFrame] = []
        online: pl.DataFrame | None = None
        server = ModelServer(self.seed, cal, self.faults, CHURN_MODEL, self.logs)
        releases = self._releases()
        deployments: list[Deployment] = []
        self.encoders: dict[int, tuple[retrieve.Encoder, int]] = {}
        prev_active = np.empty(0, dtype=np.int64)
        snapshots: dict[int, pl.DataFrame] = {}
        crm_prices = state.monthly_price.copy()
        for day in range(cal.first_day - population.WARM_UP_DAYS, cal.first_day):
            state.warm_up(day)

        for day in range(cal.first_day, cal.last_simulated_day + 1):
            state.start_day(day)
            self.faults.apply("world.state", state, self.context(day))
            served: pl.DataFrame | None = None
            if day - 1 >= cal.first_feature_day:
                rows = job.run(day - 1, prev_active)
                self._append(day, store.OFFLINE_TABLE, rows)
            if day in releases:
                deployment = self._release(releases[day], state, cancellations, server)
                deployments.append(deployment)
            if day >= 1:
                before = online if online is not None else rows[:0]
                materialized_at = cal.at(day, MATERIALIZE_HOUR)
                online = store.materialize(rows, materialized_at)
                online = self.faults.apply("materialize.online", online, self.context(day))
                self._append(
                    day,
                    "ops.materialization_runs",
                    pl.DataFrame(
                        {
                            "materialized_at": [materialized_at],
                            "rows": [online.height],
                            "max_event_timestamp": [online["event_timestamp"].max()],
                            "status": ["success"],
                        }
                    ),
                )
                # The loads the live days reveal one by one, after the one live time starts on.
                if cal.last_production_day <= day <= cal.last_visible_day:
                    self.wh.append(store.ONLINE_TABLE, online)
                    snapshots[day] = online
                served = server.batch(day, online)
                offered = state.grant_offers(
                    served.filter(pl.col("decision"))["customer_id"].to_numpy(), day
                )
                self._append(
                    day,
                    "crm.retention_offers",
                    pl.DataFrame(
                        {
                            "customer_id": offered,
                            "offered_at": [cal.at(day, 9.0)] * len(offered),
                            "offer": [OFFER_TEXT] * len(offered),
                            "model_version": [server.model_version] * len(offered),
                        },
                        schema_overrides={
                            "offered_at": pl.Datetime("us"),
                            "offer": pl.Utf8,
                            "model_version": pl.Utf8,
                        },
                    ),
                )
                requests = server.online(day, before, online)
                self._append(day, "serving.predictions", _prediction_rows(served))
                self._append(day, "serving.predictions", _prediction_rows(requests))

            activity = state.activity(day)
            billing = state.billing(day)
            demand = state.ticket_demand(day, activity, billing)
            tickets, searches = self._support_day(
                day, state, ingest, demand, articles, encoder, index
            )
            leaving = state.churn(day)

            act_rows = ingest.activity(day, activity)
            bill_rows = ingest.billing(day, billing)
            ticket_rows = ingest.tickets(day, tickets)
            cancel_rows = ingest.cancellations(day, leaving)
            job.observe(act_rows, bill_rows, ticket_rows, state.monthly_price)
            if day == cal.last_visible_day:
                crm_prices = state.monthly_price.copy()  # the CRM as the candidate's data ends
            cancellations.append(cancel_rows)
            self._append(day, "raw.viewing_activity", act_rows)
            self._append(day, "raw.billing_events", bill_rows)
            self._append(day, "raw.support_tickets", ticket_rows.drop("problem_key"))
            self._append(day, "raw.subscription_events", cancel_rows)
            self._append(day, "retrieval.search_log", searches)
            if self._visible(day):
                self.truth.append("sim.tickets", tickets.select("ticket_id", "problem_key"))
                self.truth.append(
                    "sim.cancellations",
                    leaving.select(
                        "customer_id", pl.lit(day).alias("day"), "reason", "latent_hazard"
                    ),
                )
                if day >= 1:
                    self.truth.append("sim.daily_state", state.truth(day))
            prev_active = state.customer_id[state.active & (state.cancel_day != day)]
            self.on_day(day, served)

        # Customers who left before the data history starts never reach the warehouse.
        seen = customers.with_columns(pl.Series("monthly_price", crm_prices)).filter(
            pl.Series(state.cancel_day >= cal.first_day)
        )
        self.wh.append("raw.customers", population.raw_customer_rows(seen, cal))
        self.wh.append("raw.subscription_events", _signup_rows(self.seed, customers, cal))
        self.truth.append("sim.customers", seen.select("customer_id", pl.col("^latent_.*$")))
        return SimulationResult(
            customers=customers,
            deployments=deployments,
            cancellations=pl.concat(cancellations),
            feature_job=job,
            logs=self.logs,
            encoders=self.encoders,
            serving=server,
            online_snapshots=snapshots,
        )

    def _releases(self) -> dict[int, Release]:
        cal = self.calendar
        planned = self.faults.apply("train.releases", [INITIAL_RELEASE], self.context(0))
        by_day = {r.day: r for r in sorted(planned, key=lambda r: r.day)}
        if 1 not in by_day or any(d < 1 or d > cal.last_production_day for d in by_day):
            raise ValueError("releases must include day 1 and fall within production")
        return by_day

    def _release(
        self,
        release: Release,
        state: WorldState,
        cancellations: list[pl.DataFrame],
        server: ModelServer,
    ) -> Deployment:
        """Train at 16:00 the day before `release.day`, register, and maybe deploy."""
        cal = self.calendar
        trained_day = release.day - 1
        trained_at = cal.at(trained_day, 16)
        self.wh.flush()  # the training set is read from the offline store
        spine = train.training_spine(
            self._active_lifecycle(state), cal, list(release.training_days())
        )
        known = pl.concat(cancellations).filter(pl.col("event_ts") < cal.midnight(release.day))
        ctx = self.context(release.day)
        training_set = train.build_training_set(
            spine,
            known,
            cal,
            self.scenario.world.label_horizon_days,
            self.faults,
            ctx,
        )
        weight = self.faults.apply("train.class_weight", 1.0, ctx)
        trained = train.fit(training_set, self.seed, list(release.features), weight)
        version = self.register_model(release, trained, training_set)
        self.logs.emit(
            trained_at,
            "training",
            "info",
            "model_registered",
            f"{CHURN_MODEL} version {version} registered"
            + (f" and aliased {release.alias}" if release.alias else ""),
            **trained.metrics,
        )
        current = server.threshold if server.model is not None else None
        rollout = self.faults.apply(
            "serve.rollout",
            Rollout(version, trained.threshold, current, threshold=trained.threshold),
            ctx,
        )
        if rollout.deploy:
            threshold = rollout.threshold
            server.deploy(trained.model, version, threshold, trained.features)
            self.logs.emit(
                cal.at(release.day, 5.5),
                "model-server",
                "info",
                "model_loaded",
                f"loaded {CHURN_MODEL} version {version}",
                model_version=version,
                threshold=threshold,
            )
        return Deployment(release, trained, training_set, version)

    def _support_day(
        self,
        day: int,
        state: WorldState,
        ingest: Ingest,
        demand: pl.DataFrame,
        articles: pl.DataFrame,
        encoder: retrieve.Encoder,
        index: retrieve.ArticleIndex,
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        cal = self.calendar
        tickets = support.open_tickets(
            self.seed, day, cal, demand, ingest.ticket_ids(demand.height)
        )
        ctx = self.context(day)
        query_encoder = self.faults.apply("retrieve.query_encoder", encoder, ctx)
        index = self.faults.apply("retrieve.index", index, ctx)
        self.encoders.setdefault(query_encoder.version, (query_encoder, day))
        if tickets.height:
            ids, scores = index.search(query_encoder.encode(tickets["body"]))
        else:
            ids = np.empty((0, retrieve.TOP_K), dtype=np.int64)
            scores = np.empty((0, retrieve.TOP_K), dtype=np.float32)
        relevant = support.relevant_mask(tickets, ids, articles)
        outcome = support.agent_outcomes(self.seed, day, tickets, ids, relevant)
        g = rng.stream(self.seed, "retrieval-latency", day)
        searches = pl.DataFrame(
            {
                "request_id": tickets["ticket_id"],
                "ticket_id": tickets["ticket_id"],
                "request_ts": tickets["created_at"].to_numpy()
                + g.integers(2_000, 30_000, tickets.height).astype("timedelta64[ms]"),
                "query_text": tickets["body"],
                "top_k_ids": pl.Series(ids.tolist(), dtype=pl.List(pl.Int64)),
                "top_k_scores": pl.Series(np.round(scores, 4).tolist(), dtype=pl.List(pl.Float64)),
                "top1_score": np.round(scores[:, 0], 4) if len(scores) else np.empty(0),
                "encoder_version": [query_encoder.version] * tickets.height,
                "index_version": [str(index.meta["index_version"])] * tickets.height,
                "latency_ms": np.round(g.lognormal(np.log(18.0), 0.3, tickets.height), 2),
            },
            schema_overrides={
                "encoder_version": pl.Int64,
                "index_version": pl.Utf8,
                "top1_score": pl.Float64,
                "latency_ms": pl.Float64,
            },
        ).join(outcome.select("ticket_id", "clicked_article_id", "click_rank"), on="ticket_id")
        tickets = tickets.join(outcome.select("ticket_id", "resolved_at"), on="ticket_id")
        unresolved = tickets.filter(pl.col("resolved_at").is_null())
        state.record_unresolved(
            unresolved["customer_id"].to_numpy(),
            np.full(unresolved.height, support.frustration_day(day)),
        )
        return (
            tickets.select(
                "ticket_id",
                "customer_id",
                "created_at",
                "channel",
                "topic",
                "body",
                "resolved_at",
                "problem_key",
            ),
            searches,
        )


def _prediction_rows(scored: pl.DataFrame) -> pl.DataFrame:
    """Scored requests as `serving.predictions` rows: its declared columns and types."""
    columns = schema.polars_schema("serving.predictions")
    return scored.select(list(columns)).cast(columns)


def _signup_rows(seed: int, customers: pl.DataFrame, cal: Calendar) -> pl.DataFrame:
    visible = customers.filter(
        (pl.col("signup_day") >= cal.first_day) & (pl.col("signup_day") <= cal.last_visible_day)
    )
    hours = rng.stream(seed, "signup-hours").random(visible.height) * 24
    start = np.datetime64(cal.midnight(1), "us")
    ts = start + (
        (visible["signup_day"].to_numpy() - 1) * 86_400_000_000
        + (hours * 3_600_000_000).astype(np.int64)
    ).astype("timedelta64[us]")
    return pl.DataFrame(
        {
            "customer_id": visible["customer_id"],
            "event_type": ["signup"] * visible.height,
            "event_ts": ts,
            "reason": [None] * visible.height,
            "ingested_at": ts + np.timedelta64(90, "m"),
        },
        schema_overrides={"event_type": pl.Utf8, "reason": pl.Utf8},
    )
