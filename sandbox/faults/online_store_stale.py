"""The online store silently stops refreshing: it keeps serving the values of the last good load.

Story: the online store moves to a new cluster. Reads are cut over and the data copied, but the
nightly materialization keeps writing to the old cluster for a shard of customers (or for all of
them). The job still runs every morning and reports success with a fresh `materialized_at`; the
values it leaves behind in the new cluster are those of the last good load, whose distribution
looks exactly like a normal day's. Batch scoring and the online API therefore score a frozen picture:
customers who have started to disengage are scored as they were before and never flagged, customers
who signed up since have no online row and are never scored, and customers who cancelled keep being
scored. Only the event and created timestamps of the served rows, and the materialization's
`max_event_timestamp` when the whole store is stuck, tell that the values are old.

Its trail by difficulty: guided logs the cutover of reads to the new cluster the evening before the
first stale load; standard logs the same evening as planned online-store maintenance; hard logs no
entry for it, only routine online-store and scheduler changes around it, so the stall shows when
the online rows, or the features batch scoring served, are read against the offline store and the
feature job's runs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal

import duckdb
import polars as pl
from pydantic import Field

from sandbox.clock import Calendar
from sandbox.difficulty import Tier
from sandbox.faults.base import (
    AnswerKey,
    Check,
    Evidence,
    Fault,
    FaultParams,
    HookContext,
    Rollout,
    Step,
    Symptom,
    Verdict,
    hook,
)
from sandbox.faults.toolkit import fmt, mean_score, num, routine_changes, window
from sandbox.pipeline import store
from sandbox.pipeline.features import MODEL_FEATURES, feature_timestamp
from sandbox.rng import stable_unit

FRESH_LAG_HOURS = 6.0  # a healthy load holds rows from the feature day that ended 4 hours earlier
MIN_NEW_CUSTOMERS = 30  # customers who signed up after the stall, needed to measure who is missed
CUTOVER_HOUR = 21.0  # the evening of the last good load: reads move to the new cluster
# Tells: each alone would point at the cause at the tiers that hide it.
STANDARD_TELLS = ("cut over", "cutover", "new cluster", "old cluster", "Redis cluster")
HARD_TELLS = (*STANDARD_TELLS, "planned maintenance")


class Params(FaultParams):
    ramp_days: int = Field(
        0,
        ge=0,
        le=21,
        description="Kept for a uniform interface; a stall is a step change, so it is ignored.",
    )
    affected_share: float = Field(
        1.0,
        ge=0.1,
        le=1.0,
        description="Share of customers (stable per customer) in the shard that stops refreshing.",
    )


class OnlineStoreStale(Fault[Params]):
    id: ClassVar[str] = "online-store-stale"
    actions: ClassVar[dict[str, Verdict]] = {
        "backfill-online-store": "mitigates",
        # Back past the cutover: reads go to the old cluster, which the job still loads.
        "rollback-deploy": "mitigates",
        # Scores the same online store again: after a backfill it brings today's list in early,
        # alone it changes nothing.
        "rerun-batch-scoring": "no effect",
        "retrain": "no effect",
        "set-decision-threshold": "no effect",
        "set-imputation-fill": "no effect",
    }
    rollback_service: ClassVar[str] = "feature-server"
    title: ClassVar[str] = "Online store silently stops refreshing and serves frozen features"
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "medium"
    observation: ClassVar[str] = (
        "Churn rises while the flagged list, the score distribution and every materialization "
        "run look normal and successful."
    )

    def stalled(self, customer_id: pl.Series) -> pl.Series:
        return pl.Series(stable_unit(customer_id.to_numpy(), self.id) < self.params.affected_share)

    def last_good_load(self) -> int:
        """The day of the last load the new cluster got (with onset on the first day, that
        first load)."""
        return max(self.params.onset_day - 1, 1)

    def _cutover_at(self, calendar: Calendar) -> dt.datetime:
        """When the feature server's reads moved to the new cluster: the evening of the last good
        load (the changelog's entry, where the tier logs one)."""
        return calendar.at(self.last_good_load(), CUTOVER_HOUR)

    def rollouts(self, calendar: Calendar) -> list[Rollout]:
        """The cutover is a feature-server configuration change: rolling it back points reads at
        the old cluster again, which the materialization never stopped loading."""
        return [Rollout("feature-server", self._cutover_at(calendar), "reads on the new cluster")]

    @hook("materialize.online")
    def freeze_some_customers(self, value: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        good = self.last_good_load()
        if ctx.day < self.params.onset_day or ctx.day <= good:
            return value
        if not ctx.rolled_out(self._cutover_at(ctx.calendar)):
            return value
        # What that load wrote: the offline rows of the day before it.
        loaded = ctx.data.sql(
            f"SELECT * FROM {store.OFFLINE_TABLE} WHERE event_timestamp = $ts",
            {"ts": feature_timestamp(ctx.calendar, good - 1)},
        )
        snapshot = store.materialize(loaded, ctx.calendar.at(good, store.MATERIALIZE_HOUR))
        frozen = snapshot.filter(self.stalled(snapshot["customer_id"]))
        if value.height:
            # The job believes it wrote everything: the load time is today's for every row.
            frozen = frozen.with_columns(
                pl.lit(value["materialized_at"][0])
                .cast(value.schema["materialized_at"])
                .alias("materialized_at")
            )
        return pl.concat(
            [
                value.filter(~self.stalled(value["customer_id"])),
                frozen.select(value.columns).cast(value.schema),  # type: ignore[arg-type]
            ]
        ).sort("customer_id")

    def tells(self, tier: Tier) -> tuple[str, ...]:
        return {"guided": (), "standard": STANDARD_TELLS, "hard": HARD_TELLS}[tier]

    def _changelog_title(self) -> str | None:
        """The cutover's changelog title at this tier (None: not logged)."""
        return {
            "guided": "online store: reads cut over to the new cluster",
            "standard": "online store: planned maintenance",
            "hard": None,
        }[self.tier]

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        day = self.last_good_load()
        if self.tier == "hard":
            return routine_changes(__name__, day, calendar.last_visible_day)
        body = {
            "guided": "Feature-server reads now go to the new Redis cluster (more memory, "
            "faster failover); data copied at cutover. Old cluster to be decommissioned "
            "next sprint.",
            "standard": "Evening maintenance window; reads served throughout.",
        }[self.tier]
        return [
            {
                "day": day,
                "hour": CUTOVER_HOUR,
                "kind": "config",
                "service": "online-store",
                "title": self._changelog_title(),
                "body": body,
                "author": "sre",
            },
        ]

    def _changelog_evidence(self, calendar: Calendar) -> list[Evidence]:
        title = self._changelog_title()
        if title is None:
            return []
        w = window(calendar, self._stale_from())
        return [
            w.changelog(
                "cutover",
                title,
                "the infra change after which the store stopped refreshing",
                start=w.start - dt.timedelta(days=1),
            )
        ]

    def _snapshot_timestamp(self, calendar: Calendar) -> dt.datetime:
        """event_timestamp of the rows in the last good load (the day before onset, or day 1)."""
        return calendar.midnight(max(self.params.onset_day - 1, 1))

    def _stale_from(self) -> int:
        """First production day whose load is stale."""
        return max(self.params.onset_day, 2)

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        # A served row's tenure is that of the day its features describe: how far it trails the
        # request's day tells how old the served features are.
        return [
            Symptom(
                id="served_feature_age_days",
                title="Days the served features trail the request, online requests",
                unit="days",
                value="avg(date_diff('day', signup_date, request_ts::DATE) - tenure_days)",
                source="serving.predictions JOIN raw.customers USING (customer_id)",
            ),
            mean_score(),
        ]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        w = window(calendar, self._stale_from())
        start = w.start
        pct = round(self.params.affected_share * 100)
        snap = self._snapshot_timestamp(calendar)
        scope = "every customer" if pct == 100 else f"a shard of about {pct}% of customers"
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"From {start} the online store stops refreshing for {scope}: after the cutover "
                "to a new cluster the materialization keeps writing to the old one, so the new "
                f"cluster keeps serving the rows of the last good load (event_timestamp {snap}). "
                "The job still runs daily and reports success with a fresh materialized_at, and "
                "the frozen values look like any normal day's. Batch scoring and the online API "
                "score that frozen picture: customers who start to disengage keep their old, "
                "healthy features and are not flagged; customers who signed up since have no "
                "online row and are never scored; customers who cancelled are still scored."
            ),
            propagation=[
                f"infra: online-store cutover; materialization stops reaching {scope}",
                "online store: rows keep the event_timestamp and created_timestamp of the last "
                "good load while materialized_at stays fresh; the job reports success",
                "serving: stalled customers are scored on frozen features (tenure_days stops "
                "counting); new signups in the shard are never scored; cancelled ones still are",
                "business: deteriorating customers are not flagged and get no retention offer; "
                "churn rises",
                "labels (14 days later): production AUC and precision fall; holdout stays high",
            ],
            evidence=[
                w.column(
                    "online-event-ts",
                    "feature_store.customer_features_online.event_timestamp",
                    f"stalled rows carry event_timestamp {snap} although "
                    "materialized_at is current",
                    start=calendar.date(calendar.last_production_day),
                    end=calendar.date(calendar.last_production_day),
                ),
                w.column(
                    "materialization-lag",
                    "ops.materialization_runs.max_event_timestamp",
                    "max_event_timestamp stops advancing when every shard is stuck; "
                    "rows stop matching the feature job's rows_out",
                ),
                w.column(
                    "served-vs-offline",
                    "serving.predictions.tenure_days",
                    "served features equal the offline row of the last good load, "
                    "not today's (tenure_days stops increasing)",
                ),
                w.column(
                    "unscored-signups",
                    "raw.subscription_events.customer_id",
                    "customers who signed up after the stall never appear in batch scoring",
                ),
                w.metric(
                    "scored-count",
                    "active_subscribers",
                    "the number of customers scored each day stops following "
                    "signups and cancellations",
                ),
                w.log(
                    "batch-rows",
                    r'"rows": \d+',
                    "batch_finished lines: rows scored per day no longer track the "
                    "feature job's rows_out",
                ),
                *self._changelog_evidence(calendar),
            ],
            acceptable_fixes=[
                "Point the materialization at the new cluster (or roll reads back), re-materialize "
                "from the offline store, and re-score every customer, including new signups.",
                "Make the materialization verify what it wrote: read back row counts and "
                "event_timestamps per shard from the store the server reads.",
                "Alert on served-feature freshness: the oldest event_timestamp among served rows "
                "(not the newest), and on scored customers vs active customers.",
                "Reach out to customers missed since the stall (new signups, those who "
                "deteriorated) with the retention offer.",
            ],
            probes=[
                "Why did the materialization job report success? What should it have checked?",
                "Why did the score distribution and flagged share look normal?",
                "How would you find every customer who was missed or scored on old data?",
                "What experiment would you run next to confirm the store, not the model, is stale?",
                "What freshness SLO and alert would you set, and on which timestamp?",
            ],
        )

    def investigation(self, calendar: Calendar) -> list[Step]:
        share = self.params.affected_share
        return [
            Step(
                question="How fresh are the rows in the online store?",
                sql="""
                    SELECT event_timestamp, max(materialized_at) AS materialized_at,
                           event_timestamp < max(date_trunc('day', materialized_at))
                               AS older_than_load_day,
                           count(*) AS n, round(count(*) / sum(count(*)) OVER (), 3) AS share
                    FROM feature_store.customer_features_online GROUP BY 1 ORDER BY 1""",
                evidence="online-event-ts",
                finding="a large block of rows holds an event_timestamp days older than the load "
                "time, though materialized_at is current",
                found=lambda f: (
                    f.filter(pl.col("older_than_load_day"))["share"].sum() >= 0.5 * share
                ),
            ),
            Step(
                question="Does each online load match what the feature job produced?",
                sql="""
                    SELECT m.materialized_at, m.rows AS loaded_rows, f.rows_out AS job_rows,
                           m.max_event_timestamp,
                           round(date_diff('minute', m.max_event_timestamp, m.materialized_at)
                                 / 60.0, 1) AS lag_hours
                    FROM ops.materialization_runs m
                    JOIN ops.feature_job_runs f
                      ON f.feature_date = m.materialized_at::DATE - INTERVAL 1 DAY
                    ORDER BY 1""",
                evidence="materialization-lag",
                finding="from the cutover the loaded rows stop matching the job's rows_out "
                "(and, with every shard stuck, the lag grows by a day each day)",
                found=lambda f: (f["loaded_rows"] != f["job_rows"]).any(),
            ),
            Step(
                question="Were customers scored on today's features?",
                sql="""
                    SELECT p.request_ts::DATE AS score_date, count(*) AS scored,
                           round(avg((o.customer_id IS NULL
                                      OR p.tenure_days <> o.tenure_days)::INT), 3) AS stale_share
                    FROM serving.predictions p
                    LEFT JOIN feature_store.customer_features o
                      ON o.customer_id = p.customer_id
                     AND o.event_timestamp = p.request_ts::DATE::TIMESTAMP
                    WHERE p.source = 'batch' GROUP BY 1 ORDER BY 1""",
                evidence="served-vs-offline",
                finding="from the stall on, a fixed share of scored customers carries features "
                "older than the offline store's latest row",
                found=lambda f: num(f["stale_share"].max()) >= 0.5 * share,
            ),
            Step(
                question="Does every customer who appears in the feature store get scored?",
                sql="""
                    WITH first_rows AS (
                        SELECT customer_id, min(event_timestamp) AS first_ts
                        FROM feature_store.customer_features GROUP BY 1
                    ), scored AS (
                        SELECT DISTINCT customer_id FROM serving.predictions
                        WHERE source = 'batch'
                    )
                    SELECT date_trunc('week', f.first_ts) AS week, count(*) AS new_customers,
                           round(avg((s.customer_id IS NULL)::INT), 3) AS never_scored
                    FROM first_rows f LEFT JOIN scored s USING (customer_id)
                    WHERE f.first_ts >= (SELECT min(request_ts)::DATE FROM serving.predictions)
                    GROUP BY 1 ORDER BY 1""",
                evidence="unscored-signups",
                finding="a share of the customers who signed up after the stall have feature rows "
                "but were never scored",
                found=lambda f: (
                    num(f.filter(pl.col("new_customers") >= 5)["never_scored"].max()) >= 0.5 * share
                ),
            ),
        ]

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        share = self.params.affected_share
        stale_from = calendar.date(self._stale_from())
        snap = self._snapshot_timestamp(calendar)
        lag_before, lag_after = con.execute(
            """
            SELECT max(date_diff('minute', max_event_timestamp, materialized_at) / 60.0)
                       FILTER (WHERE materialized_at::DATE < $start),
                   min(date_diff('minute', max_event_timestamp, materialized_at) / 60.0)
                       FILTER (WHERE materialized_at::DATE >= $start)
            FROM ops.materialization_runs
            """,
            {"start": stale_from},
        ).fetchall()[0]
        # With part of the store still refreshing, the newest row stays fresh; only a full stall
        # shows in max_event_timestamp.
        whole = share >= 1.0
        checks = [
            Check(
                name="materialization freshness goes stale after onset only",
                passed=(lag_before is None or lag_before <= FRESH_LAG_HOURS)
                and lag_after is not None
                and (lag_after >= 24 if whole else lag_after <= FRESH_LAG_HOURS),
                detail=f"hours from max_event_timestamp to materialized_at: at most "
                f"{fmt(lag_before, '.1f')} before onset, at least {fmt(lag_after, '.1f')} after "
                f"(expected <= {FRESH_LAG_HOURS} before; after, "
                + (">= 24 with the whole store stuck)" if whole else "still fresh: a shard only)"),
            )
        ]
        stale_online, n_online = con.execute(
            """
            SELECT avg((event_timestamp <= $snap)::INT), count(*)
            FROM feature_store.customer_features_online
            """,
            {"snap": snap},
        ).fetchall()[0]
        checks.append(
            Check(
                name="online rows keep the last good load's event_timestamp",
                passed=n_online > 0 and stale_online >= 0.8 * share,
                detail=f"{fmt(stale_online, '.3f')} of {n_online} online rows have "
                f"event_timestamp <= {snap} (expected >= {0.8 * share:.2f})",
            )
        )
        features = " AND ".join(f"p.{c} = s.{c}" for c in MODEL_FEATURES)
        before, after, n_after, frozen = con.execute(
            f"""
            WITH p AS (
                SELECT * FROM serving.predictions WHERE source = 'batch'
            )
            SELECT avg(CASE WHEN p.request_ts::DATE < $start
                            THEN (o.customer_id IS NULL OR p.tenure_days <> o.tenure_days)::INT END),
                   avg(CASE WHEN p.request_ts::DATE >= $start
                            THEN (o.customer_id IS NULL OR p.tenure_days <> o.tenure_days)::INT END),
                   count(*) FILTER (WHERE p.request_ts::DATE >= $start),
                   avg(CASE WHEN p.request_ts::DATE >= $start
                             AND (o.customer_id IS NULL OR p.tenure_days <> o.tenure_days)
                            THEN (s.customer_id IS NOT NULL AND {features})::INT END)
            FROM p
            LEFT JOIN feature_store.customer_features o
              ON o.customer_id = p.customer_id
             AND o.event_timestamp = p.request_ts::DATE::TIMESTAMP
            LEFT JOIN feature_store.customer_features s
              ON s.customer_id = p.customer_id AND s.event_timestamp = $snap
            """,
            {"start": stale_from, "snap": snap},
        ).fetchall()[0]
        checks.append(
            Check(
                name="batch scoring serves the frozen snapshot after onset only",
                passed=(before is None or before <= 0.01)
                and after is not None
                and after >= 0.8 * share
                and frozen is not None
                and frozen >= 0.95,
                detail=f"batch predictions not matching the offline row of their date: "
                f"{fmt(before, '.3f')} before onset, {fmt(after, '.3f')} of {n_after} after "
                f"(expected <= 0.01 then >= {0.8 * share:.2f}); {fmt(frozen, '.3f')} of those "
                f"equal the {snap} row in every feature (expected >= 0.95)",
            )
        )
        missed, n_new = con.execute(
            """
            WITH first_rows AS (
                SELECT customer_id, min(event_timestamp) AS first_ts
                FROM feature_store.customer_features GROUP BY 1
            ), scored AS (
                SELECT DISTINCT customer_id FROM serving.predictions WHERE source = 'batch'
            )
            SELECT avg((s.customer_id IS NULL)::INT), count(*)
            FROM first_rows f LEFT JOIN scored s USING (customer_id)
            WHERE f.first_ts > $snap
              AND f.first_ts <= (SELECT max(request_ts)::DATE::TIMESTAMP FROM serving.predictions)
            """,
            {"snap": snap},
        ).fetchall()[0]
        checks.append(
            Check(
                name="customers who sign up after onset are never scored",
                passed=n_new >= MIN_NEW_CUSTOMERS and missed is not None and missed >= 0.5 * share,
                detail=f"{fmt(missed, '.3f')} of {n_new} customers whose first feature row is "
                "newer than the last good load were never batch-scored (expected >= "
                f"{0.5 * share:.2f})",
            )
        )
        return checks
