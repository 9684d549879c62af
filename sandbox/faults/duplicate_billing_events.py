"""Payment webhook retries land a share of billing events twice; the feature job counts rows.

Story: billing ingestion moves its webhook receiver behind a new queue. Acknowledgements now
sometimes miss the provider's timeout, so the provider retries, and the receiver stores the retry
as a second row: same event_id, same payload, a later ingested_at. Nobody deduplicates. The daily
feature job counts failed-charge rows, so `payment_failures_30d` is inflated for every customer
whose failure arrived twice: one bounced card looks like two. The model treats them as a step from
involuntary churn, the retention team spends offers on customers who were never at risk, and
precision falls.

Its trail by difficulty: guided says the release moved the webhook receiver behind the event bus;
standard logs the release by its version only; hard does not log it, but ordinary billing changes
around the onset, so the repeats are found only by counting event_ids and joining the served
counts to the distinct failed events.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal

import duckdb
import numpy as np
import polars as pl
from pydantic import Field

from sandbox import rng
from sandbox.clock import Calendar
from sandbox.difficulty import Tier
from sandbox.faults.base import (
    AnswerKey,
    Check,
    Evidence,
    Fault,
    FaultParams,
    HookContext,
    Step,
    Symptom,
    Verdict,
    hook,
)
from sandbox.faults.measure import visible_end
from sandbox.faults.toolkit import flagged_share, fmt, num, routine_changes, served_mean, window
from sandbox.rng import stable_unit

RETRY_MINUTES = (2.0, 45.0)  # how much later the provider's retry lands
OVER_SCORED = 1.25  # score of customers served an inflated count, relative to a correct one
OVER_CALIBRATED = 1.15  # the same for score over churn rate (churn rates add label noise)
MIN_CUSTOMERS = 30  # customers a score comparison needs in each group
MIN_CHURNERS = 15  # matured churn labels a label-based comparison needs in each group
RELEASE_TITLE = "billing-ingest 3.4: webhook receiver moved to the event bus"
# Tells: each alone would point at the cause at the tiers that hide it.
STANDARD_TELLS = ("webhook", "event bus", "ack latency", "queued before")
HARD_TELLS = (*STANDARD_TELLS, "billing-ingest 3.4")


class Params(FaultParams):
    duplicate_share: float = Field(
        0.3,
        ge=0.05,
        le=0.8,
        description="Share of billing events delivered twice at full ramp.",
    )


class DuplicateBillingEvents(Fault[Params]):
    id: ClassVar[str] = "duplicate-billing-events"
    actions: ClassVar[dict[str, Verdict]] = {
        "rerun-batch-scoring": "no effect",
        "backfill-online-store": "no effect",
        "retrain": "harmful",
        "set-decision-threshold": "mitigates",
        "set-imputation-fill": "no effect",
    }
    title: ClassVar[str] = (
        "Webhook retries deliver billing events twice; failures are counted twice"
    )
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "medium"
    observation: ClassVar[str] = (
        "More customers are flagged for retention and precision falls; payment failures in the "
        "feature store rise although the payment provider reports no incident."
    )

    def duplicated(self, event_ids: np.ndarray, day: int) -> np.ndarray:
        share = self.params.duplicate_share * self.params.intensity(day)
        return stable_unit(event_ids, self.id) < share

    @hook("ingest.billing")
    def retry_some_events(self, events: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        if self.params.intensity(ctx.day) == 0 or not events.height:
            return events
        twice = self.duplicated(events["event_id"].to_numpy(), ctx.day)
        if not twice.any():
            return events
        g = rng.stream(ctx.seed, self.id, ctx.day)
        delay_us = (g.uniform(*RETRY_MINUTES, int(twice.sum())) * 60_000_000).astype(np.int64)
        retries = events.filter(pl.Series(twice)).with_columns(
            # Polars takes a Series here (one duration per row); its stubs name only scalars.
            pl.col("ingested_at") + pl.duration(microseconds=pl.Series(delay_us))  # type: ignore[arg-type]
        )
        return pl.concat([events, retries]).sort("event_id", "ingested_at")

    def expected_share(self, calendar: Calendar) -> float:
        """Mean share of events delivered twice over the visible days after onset."""
        return self.params.duplicate_share * self.params.mean_intensity(calendar.last_visible_day)

    def tells(self, tier: Tier) -> tuple[str, ...]:
        return {"guided": (), "standard": STANDARD_TELLS, "hard": HARD_TELLS}[tier]

    def _release_title(self) -> str | None:
        """The changelog title of the receiver release at this tier (None: absent)."""
        return {
            "guided": RELEASE_TITLE,
            "standard": "billing-ingest 3.4 rollout",
            "hard": None,
        }[self.tier]

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        title = self._release_title()
        if title is None:
            return routine_changes(__name__, self.params.onset_day)
        days = max(self.params.ramp_days, 1)
        body = {
            "guided": "Provider webhooks are queued before they are written; rolled out "
            f"gradually over about {days} days. Ack latency slightly higher at peak.",
            "standard": f"Rolled out gradually over about {days} days.",
        }[self.tier]
        return [
            {
                "day": self.params.onset_day - 1,
                "hour": 15.0,
                "kind": "deploy",
                "service": "billing-ingest",
                "title": title,
                "body": body,
                "author": "payments-team",
            }
        ]

    def _changelog_evidence(self, calendar: Calendar) -> list[Evidence]:
        title = self._release_title()
        if title is None:
            return []
        w = window(calendar, self.params.onset_day)
        return [
            w.changelog(
                "receiver-change",
                title,
                "the deploy after which deliveries started repeating",
                start=w.start - dt.timedelta(days=1),
            )
        ]

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        return [served_mean("payment_failures_30d"), flagged_share()]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        w = window(calendar, self.params.onset_day)
        start = w.start
        pct = round(self.params.duplicate_share * 100)
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"From {start} the billing webhook receiver sits behind a new queue; its acks "
                "miss the provider's timeout for a growing share of deliveries (about "
                f"{pct}% of events, reached {self.params.ramp_days} days later), the provider "
                "retries, and both deliveries are stored: raw.billing_events holds the same "
                "event_id twice with a later ingested_at. The feature job counts failed-charge "
                "rows, not distinct events, so payment_failures_30d is inflated (one failure "
                "counts as two) for customers whose failures were delivered twice. The model "
                "reads them as repeated payment trouble and over-flags them; retention offers "
                "go to customers who were never at risk and precision falls."
            ),
            propagation=[
                "upstream: webhook acks time out -> provider retries -> duplicate deliveries",
                f"raw: ~{pct}% of raw.billing_events rows after onset repeat an event_id "
                "(identical payload, later ingested_at)",
                "features: payment_failures_30d counts rows -> inflated for customers with a "
                "duplicated failure (feature_mean rises; no NULLs, no errors)",
                "serving: those customers score higher; more of them are flagged",
                "business: offers spent on customers who were not at risk; precision falls",
                "labels (14 days later): precision among customers with inflated counts is far "
                "below the rest; holdout metrics stay high",
            ],
            evidence=[
                w.column(
                    "duplicate-events",
                    "raw.billing_events.event_id",
                    "count(*) exceeds count(DISTINCT event_id) from onset",
                ),
                w.column(
                    "late-copies",
                    "raw.billing_events.ingested_at",
                    "repeated events are exact copies ingested minutes later",
                ),
                w.column(
                    "inflated-feature",
                    "feature_store.customer_features.payment_failures_30d",
                    "payment_failures_30d exceeds the distinct failed events in its window",
                ),
                w.metric(
                    "feature-mean",
                    "feature_mean",
                    "feature_mean of payment_failures_30d rises after onset",
                ),
                w.log(
                    "job-input",
                    r'"rows_in"',
                    "feature-job run_finished lines report more input rows",
                ),
                *self._changelog_evidence(calendar),
            ],
            acceptable_fixes=[
                "Deduplicate on event_id at ingestion (idempotent writes / a unique key) and fix "
                "the receiver's ack so the provider stops retrying.",
                "Count distinct event_ids in the feature job; recompute payment_failures_30d "
                "since onset and re-score affected customers.",
                "Add a uniqueness check on raw.billing_events.event_id and alert on duplicates.",
            ],
            probes=[
                "How did you show the extra failures were not a real payment incident?",
                "Which customers got offers they should not have, and what did that cost?",
                "Why did no alert fire, and what data test would have caught it?",
                "What would you ship first, and how would you know it worked?",
                "What experiment would you run next to measure the precision lost?",
            ],
        )

    def investigation(self, calendar: Calendar) -> list[Step]:
        share = self.params.duplicate_share
        return [
            Step(
                question="Are billing events unique per event_id?",
                sql="""
                    SELECT date_trunc('week', event_ts) AS week, count(*) AS rows,
                           count(DISTINCT event_id) AS events,
                           round(count(*) / count(DISTINCT event_id) - 1, 4) AS extra_share
                    FROM raw.billing_events GROUP BY 1 ORDER BY 1""",
                evidence="duplicate-events",
                finding="from onset, a growing share of rows repeat an event_id",
                found=lambda f: f.height > 0 and num(f["extra_share"].max()) >= 0.4 * share,
            ),
            Step(
                question="What do the repeated events look like?",
                sql="""
                    SELECT event_id, count(*) AS copies,
                           count(DISTINCT (customer_id, event_ts, amount, status, attempt))
                               AS payloads,
                           min(ingested_at) AS first_ingested, max(ingested_at) AS last_ingested
                    FROM raw.billing_events GROUP BY 1 HAVING count(*) > 1
                    ORDER BY event_id LIMIT 50""",
                evidence="late-copies",
                finding="exact copies of the payload, ingested minutes after the original",
                found=lambda f: (
                    f.height > 0
                    and (f["payloads"] == 1).all()
                    and (f["last_ingested"] > f["first_ingested"]).all()
                ),
            ),
            Step(
                question="Does payment_failures_30d match the distinct failed events?",
                sql="""
                    WITH fails AS (SELECT DISTINCT event_id, customer_id, event_ts::DATE AS d
                                   FROM raw.billing_events WHERE status = 'failed'),
                    j AS (SELECT p.prediction_id, p.request_ts,
                                 any_value(p.payment_failures_30d) AS served,
                                 count(f.event_id) AS events
                          FROM serving.predictions p LEFT JOIN fails f
                            ON f.customer_id = p.customer_id
                           AND f.d BETWEEN p.request_ts::DATE - 30 AND p.request_ts::DATE - 1
                          WHERE p.source = 'batch' AND p.payment_failures_30d > 0
                          GROUP BY 1, 2)
                    SELECT date_trunc('week', request_ts) AS week, count(*) AS scored,
                           count(*) FILTER (WHERE served > events) AS overcounted,
                           sum(served) AS served_failures, sum(events) AS distinct_failures
                    FROM j GROUP BY 1 ORDER BY 1""",
                evidence="inflated-feature",
                finding="from onset, the served feature counts more failures than there were "
                "distinct events",
                found=lambda f: f.height > 0 and f["overcounted"].sum() >= 5,
            ),
            Step(
                question="After one failed charge, are customers served an inflated count over-flagged?",
                sql="""
                    WITH fails AS (SELECT DISTINCT event_id, customer_id, event_ts::DATE AS d
                                   FROM raw.billing_events WHERE status = 'failed'),
                    j AS (SELECT p.prediction_id,
                                 any_value(p.payment_failures_30d) AS served,
                                 count(f.event_id) AS events,
                                 any_value(p.score) AS score, any_value(p.decision) AS decision,
                                 any_value(l.churned) AS churned
                          FROM serving.predictions p
                          JOIN fails f
                            ON f.customer_id = p.customer_id
                           AND f.d BETWEEN p.request_ts::DATE - 30 AND p.request_ts::DATE - 1
                          LEFT JOIN labels.churn_labels l
                            ON l.customer_id = p.customer_id
                           AND l.score_date = p.request_ts::DATE
                          WHERE p.source = 'batch' GROUP BY 1)
                    SELECT served > events AS inflated, count(*) AS n,
                           round(avg(score), 4) AS mean_score,
                           round(avg(decision::INT), 3) AS flagged_rate,
                           round(avg(churned), 4) AS churn_rate
                    FROM j WHERE events = 1 GROUP BY 1 ORDER BY 1""",
                evidence="inflated-feature",
                finding="after a single failed charge, customers served a count of two score "
                "higher and get flagged more often than those served the true count",
                found=lambda f: (
                    f.filter(pl.col("inflated")).height == 1
                    and f.filter(~pl.col("inflated")).height == 1
                    and f.filter(pl.col("inflated"))["mean_score"][0]
                    >= OVER_SCORED * f.filter(~pl.col("inflated"))["mean_score"][0]
                ),
            ),
        ]

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        onset = calendar.date(self.params.onset_day)
        expected = self.expected_share(calendar)
        checks: list[Check] = []

        days = con.execute(
            """
            WITH d AS (
                SELECT event_ts::DATE AS day, count(*) AS rows, count(DISTINCT event_id) AS events,
                       count(*) FILTER (WHERE status = 'failed') AS failed_rows,
                       count(DISTINCT event_id) FILTER (WHERE status = 'failed') AS failed_events
                FROM raw.billing_events GROUP BY 1)
            SELECT day >= $onset AS after, count(*), count(*) FILTER (WHERE rows > events),
                   sum(rows), sum(events), sum(failed_rows), sum(failed_events)
            FROM d GROUP BY 1
            """,
            {"onset": onset},
        ).fetchall()
        by_window = {after: rest for after, *rest in days}
        n_days_b, dup_days_b, rows_b, events_b, _, _ = by_window.get(False, (0, 0, 0, 0, 0, 0))
        n_days_a, dup_days_a, rows_a, events_a, failed_rows, failed_events = by_window.get(
            True, (0, 0, 0, 0, 0, 0)
        )
        extra = rows_a / events_a - 1 if events_a else None
        checks.append(
            Check(
                name="billing events are delivered twice after onset, never before",
                passed=dup_days_b == 0
                and extra is not None
                and 0.6 * expected <= extra <= 1.4 * expected + 0.01,
                detail=f"days with repeated event_ids: {dup_days_b} of {n_days_b} before onset, "
                f"{dup_days_a} of {n_days_a} after; rows over distinct event_ids {rows_b}/"
                f"{events_b} before, {rows_a}/{events_a} after (extra {fmt(extra, '.3f')}, "
                f"expected ~{expected:.3f}); failed charges after onset: {failed_rows} rows for "
                f"{failed_events} events",
            )
        )

        n_dup, n_exact, n_later = con.execute(
            """
            WITH d AS (
                SELECT event_id,
                       count(DISTINCT (customer_id, event_ts, amount, currency, status, attempt,
                                       payment_method)) AS payloads,
                       min(ingested_at) AS first_in, max(ingested_at) AS last_in
                FROM raw.billing_events GROUP BY 1 HAVING count(*) > 1)
            SELECT count(*), count(*) FILTER (WHERE payloads = 1),
                   count(*) FILTER (WHERE last_in > first_in)
            FROM d
            """
        ).fetchall()[0]
        checks.append(
            Check(
                name="repeated events are identical copies ingested later",
                passed=n_dup > 0 and n_exact == n_dup and n_later == n_dup,
                detail=f"{n_dup} repeated event_ids: {n_exact} with one payload, {n_later} with "
                "a later second ingestion",
            )
        )

        # In the offline store: the feature row of day d covers billing days d-29..d. The job
        # counts failed rows; without repeats rows and distinct events are the same number.
        inflation = con.execute(
            f"""
            WITH {_STORED}
            SELECT feature_date >= $onset AS after, count(*), sum(stored), sum(rows),
                   sum(events), sum(events_after), count(*) FILTER (WHERE stored > events)
            FROM s GROUP BY 1
            """,
            {"onset": onset},
        ).fetchall()
        by_after = {a: rest for a, *rest in inflation}
        _, stored_b, _, events_b2, _, _ = by_after.get(False, (0, 0, 0, 0, 0, 0))
        n_a, stored_a, rows_a2, events_a2, events_new, n_inflated = by_after.get(
            True, (0, 0, 0, 0, 0, 0)
        )
        before_ratio = stored_b / events_b2 if events_b2 else None
        # Only failures since onset can have been delivered twice: the extra counts over them.
        counted_twice = (stored_a - events_a2) / events_new if events_new else None
        checks.append(
            Check(
                name="payment_failures_30d counts duplicated failures twice",
                passed=(before_ratio is None or abs(before_ratio - 1) <= 0.01)
                and stored_a == rows_a2
                and stored_a > events_a2,
                detail=f"payment_failures_30d over distinct failed events in its window: "
                f"{fmt(before_ratio, '.3f')} before onset; after onset {n_inflated} of {n_a} "
                f"feature rows are inflated, the feature sums to {stored_a or 0:.0f} = {rows_a2} failed "
                f"rows for {events_a2} distinct events ({fmt(counted_twice, '.3f')} extra per "
                f"distinct failure since onset; ~{expected:.3f} of events repeat)",
            )
        )

        # Like for like: exactly one distinct failed charge in the window, since onset; was it
        # served once or twice? Too few customers served an inflated count (a late onset, a small
        # share) cannot show the model's response above the customer-to-customer noise.
        scored = con.execute(
            f"""
            WITH {_SERVED}
            SELECT served > events AS inflated, count(*), count(DISTINCT customer_id), avg(score),
                   avg(decision::INT)
            FROM j WHERE request_date > $onset AND events = 1 AND events_after = 1 GROUP BY 1
            """,
            {"onset": onset},
        ).fetchall()
        by_group = {g: (n, c, s, f) for g, n, c, s, f in scored}
        n_inf, c_inf, s_inf, f_inf = by_group.get(True, (0, 0, None, None))
        n_ok, c_ok, s_ok, f_ok = by_group.get(False, (0, 0, None, None))
        scores = (
            f"batch predictions after one failed charge since onset: counted twice "
            f"{fmt(s_inf, '.4f')} mean score, flagged {fmt(f_inf, '.3f')} (n={n_inf}, {c_inf} "
            f"customers); counted once {fmt(s_ok, '.4f')}, flagged {fmt(f_ok, '.3f')} "
            f"(n={n_ok}, {c_ok} customers)"
        )
        name = "customers served an inflated count score higher"
        if n_inf and min(c_inf, c_ok) < MIN_CUSTOMERS:
            checks.append(
                Check(
                    name=name,
                    outcome="not measurable",
                    detail=f"not measurable with fewer than {MIN_CUSTOMERS} customers per group; "
                    f"skipped: {scores}",
                )
            )
        else:
            checks.append(
                Check(
                    name=name,
                    passed=n_inf > 0
                    and s_inf is not None
                    and s_ok is not None
                    and s_inf >= OVER_SCORED * s_ok,
                    detail=scores,
                )
            )

        # With matured labels, like for like: the inflated group churns no more than the rest,
        # so its scores run ahead of its churn, and the offers it gets are less often needed.
        labelled = con.execute(
            f"""
            WITH {_SERVED}
            SELECT served > events AS inflated, count(*), sum(l.churned), avg(j.score),
                   avg(l.churned), avg(l.churned) FILTER (WHERE j.decision)
            FROM j JOIN labels.churn_labels l
              ON l.customer_id = j.customer_id AND l.score_date = j.request_date
            WHERE j.request_date > $onset AND j.events = 1 AND j.events_after = 1
              AND l.label_available_at <= $matured
            GROUP BY 1
            """,
            {"onset": onset, "matured": visible_end(calendar)},
        ).fetchall()
        by_label = {g: (n, c, s / r if r else None, p) for g, n, c, s, r, p in labelled}
        n_l_inf, churn_inf, ratio_inf, prec_inf = by_label.get(True, (0, 0, None, None))
        n_l_ok, churn_ok, ratio_ok, prec_ok = by_label.get(False, (0, 0, None, None))
        name = "customers served an inflated count are over-scored for their churn"
        if min(churn_inf, churn_ok) < MIN_CHURNERS:
            checks.append(
                Check(
                    name=name,
                    outcome="not measurable",
                    detail=f"not measurable: {churn_inf} / {churn_ok} matured churn labels with "
                    f"inflated / correct counts (< {MIN_CHURNERS}); skipped",
                )
            )
        else:
            checks.append(
                Check(
                    name=name,
                    passed=ratio_inf is not None
                    and ratio_ok is not None
                    and ratio_inf >= OVER_CALIBRATED * ratio_ok,
                    detail=f"mean score over churn rate after one failed charge since onset: "
                    f"{fmt(ratio_inf)} counted twice (n={n_l_inf}, {churn_inf} churned), "
                    f"{fmt(ratio_ok)} counted once (n={n_l_ok}, {churn_ok} churned); precision "
                    f"of their flags {fmt(prec_inf, '.3f')} vs {fmt(prec_ok, '.3f')}",
                )
            )
        return checks


_FAILS = """fails AS (SELECT DISTINCT event_id, customer_id, event_ts::DATE AS d
                  FROM raw.billing_events WHERE status = 'failed')"""

# Offline feature rows with a non-zero payment_failures_30d, with the failed rows and distinct
# failed events (all, and since onset) in the billing days their window covers.
_STORED = """failed_rows AS (SELECT event_id, customer_id, event_ts::DATE AS d
                        FROM raw.billing_events WHERE status = 'failed'),
            s AS (SELECT f.customer_id, f.event_timestamp::DATE - 1 AS feature_date,
                         any_value(f.payment_failures_30d) AS stored,
                         count(x.event_id) AS rows,
                         count(DISTINCT x.event_id) AS events,
                         count(DISTINCT x.event_id) FILTER (WHERE x.d >= $onset) AS events_after
                  FROM feature_store.customer_features f LEFT JOIN failed_rows x
                    ON x.customer_id = f.customer_id
                   AND x.d BETWEEN f.event_timestamp::DATE - 30 AND f.event_timestamp::DATE - 1
                  WHERE f.payment_failures_30d > 0
                  GROUP BY f.customer_id, f.event_timestamp)"""

# Batch predictions served a non-zero payment_failures_30d, with the distinct failed events in the
# window their feature row covers (billing days request_date-30 .. request_date-1).
_SERVED = f"""{_FAILS},
            j AS (SELECT p.prediction_id, any_value(p.customer_id) AS customer_id,
                         any_value(p.request_ts::DATE) AS request_date,
                         any_value(p.payment_failures_30d) AS served,
                         count(f.event_id) AS events,
                         count(f.event_id) FILTER (WHERE f.d >= $onset) AS events_after,
                         any_value(p.score) AS score,
                         any_value(p.decision) AS decision
                  FROM serving.predictions p LEFT JOIN fails f
                    ON f.customer_id = p.customer_id
                   AND f.d BETWEEN p.request_ts::DATE - 30 AND p.request_ts::DATE - 1
                  WHERE p.source = 'batch' AND p.payment_failures_30d > 0
                  GROUP BY 1)"""
