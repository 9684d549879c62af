"""A payment provider's API migration reports failed charges as 'declined'; the features count 'failed'.

Story: payments migrates one payment method (by default card) to the provider's new API, a share of
customers at a time. The new API reports an unsuccessful charge with status 'declined' instead of
'failed'. Nothing breaks: the events land, retries happen, the support queue still sees billing
problems. But the daily feature job counts `status = 'failed'`, so `payment_failures_30d` quietly
drains to zero for the migrated customers, and the churn model loses its payment-trouble signal
exactly for the customers whose cards keep bouncing.

Its trail by difficulty: guided names the move to the provider's API v3 and its new webhook schema
in the changelog; standard logs a provider integration update for the method in vague words; hard
logs no entry for it, only ordinary payments changes around the onset, so the lost signal shows
only when the failures in the billing events are joined to the feature rows and scores of the
following day.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import duckdb
import numpy as np
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
    Step,
    Symptom,
    Verdict,
    hook,
)
from sandbox.faults.measure import visible_end
from sandbox.faults.toolkit import flagged_share, fmt, num, routine_changes, served_mean, window
from sandbox.rng import stable_unit

NEW_STATUS = "declined"
METHOD_NAMES = {
    "card": "card",
    "paypal": "PayPal",
    "direct_debit": "direct debit",
    "gift_card": "gift card",
}
UNDER_SCORED = 0.75  # score of customers with only renamed failures, relative to counted ones
MIN_ROWS = 20  # feature rows a group needs before a comparison means anything
MIN_CHURNERS = 15  # matured churn labels a label-based check needs in each group
# Tells: each alone would point at the cause at the tiers that hide it.
STANDARD_TELLS = ("provider API v3", "v3 schema", "charge webhooks")
HARD_TELLS = (*STANDARD_TELLS, "provider integration")


class Params(FaultParams):
    target_payment_method: Literal["card", "paypal", "direct_debit", "gift_card"] = Field(
        "card", description="Payment method whose traffic moves to the provider's new API."
    )
    migrated_share: float = Field(
        1.0,
        ge=0.3,
        le=1.0,
        description="Share of the method's customers migrated at full ramp.",
    )


class PaymentStatusRenamed(Fault[Params]):
    id: ClassVar[str] = "payment-status-renamed"
    actions: ClassVar[dict[str, Verdict]] = {
        "rerun-batch-scoring": "no effect",
        "backfill-online-store": "no effect",
        "retrain": "harmful",
        "set-decision-threshold": "mitigates",
        "set-imputation-fill": "no effect",
        # The feature job counts the new name as it counts the old: the signal is back.
        "count-as-failed-charge": "fixes",
    }
    title: ClassVar[str] = "Provider API migration renames failed charges to 'declined'"
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "hard"
    observation: ClassVar[str] = (
        "Payment failures in the feature store fall to almost nothing for one payment method "
        "while billing tickets and cancellations carry on; nothing errors and no alert fires."
    )

    def migrated(self, customer_ids: np.ndarray, methods: np.ndarray, day: int) -> np.ndarray:
        """Whose charges go through the new API on `day`: a stable, growing share of the method."""
        share = self.params.migrated_share * self.params.intensity(day)
        return (methods == self.params.target_payment_method) & (
            stable_unit(customer_ids, self.id) < share
        )

    @hook("ingest.billing")
    def rename_status(self, value: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        if self.params.intensity(ctx.day) == 0 or not value.height:
            return value
        migrated = self.migrated(
            value["customer_id"].to_numpy(), value["payment_method"].to_numpy(), ctx.day
        )
        return value.with_columns(
            pl.when(pl.Series(migrated) & (pl.col("status") == "failed"))
            .then(pl.lit(NEW_STATUS))
            .otherwise(pl.col("status"))
            .alias("status")
        )

    def expected_share(self, calendar: Calendar) -> float:
        """Mean share of the method's charges on the new API over the visible days after onset."""
        return self.params.migrated_share * self.params.mean_intensity(calendar.last_visible_day)

    def tells(self, tier: Tier) -> tuple[str, ...]:
        return {"guided": (), "standard": STANDARD_TELLS, "hard": HARD_TELLS}[tier]

    def _changelog_title(self) -> str | None:
        """The migration's changelog title at this tier (None: not logged)."""
        method = METHOD_NAMES[self.params.target_payment_method]
        return {
            "guided": f"payments: {method} charges moving to provider API v3",
            "standard": f"payments: {method} provider integration update",
            "hard": None,
        }[self.tier]

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        if self.tier == "hard":
            return routine_changes(__name__, self.params.onset_day, calendar.last_visible_day)
        method = METHOD_NAMES[self.params.target_payment_method]
        days = max(self.params.ramp_days, 1)
        body = {
            "guided": f"Phased migration of {method} traffic over about {days} days; charge "
            "webhooks follow the v3 schema. No change to retry policy.",
            "standard": f"Phased rollout over about {days} days. No change to retry policy.",
        }[self.tier]
        return [
            {
                "day": self.params.onset_day,
                "hour": 11.0,
                "kind": "upstream",
                "service": "billing",
                "title": self._changelog_title(),
                "body": body,
                "author": "payments-team",
            }
        ]

    def _changelog_evidence(self, calendar: Calendar) -> list[Evidence]:
        title = self._changelog_title()
        if title is None:
            return []
        w = window(calendar, self.params.onset_day)
        return [
            w.changelog(
                "api-migration", title, "the upstream migration that changed the status vocabulary"
            )
        ]

    def acts_when(self) -> dict[str, dict[str, list[Any]]]:
        return {"count-as-failed-charge": {"status": [NEW_STATUS]}}

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        # The migrated provider's customers: the feature drains for them only.
        theirs = {
            "source": "serving.predictions JOIN raw.customers USING (customer_id)",
            "where": "source = 'online' AND score IS NOT NULL "
            f"AND payment_method = '{self.params.target_payment_method}'",
            "rows": f"online requests for {self.params.target_payment_method} customers",
        }
        method = self.params.target_payment_method
        return [
            served_mean("payment_failures_30d").model_copy(
                update={"title": f"Mean served payment_failures_30d, {method} customers", **theirs}
            ),
            flagged_share().model_copy(
                update={"title": f"Share of {method} customers' online requests flagged", **theirs}
            ),
        ]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        w = window(calendar, self.params.onset_day)
        start = w.start
        method = self.params.target_payment_method
        pct = round(self.params.migrated_share * 100)
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"From {start} payments migrates {METHOD_NAMES[method]} charges to the provider's "
                f"API v3 (about {pct}% of {method} customers, reached {self.params.ramp_days} "
                f"days later). v3 reports an unsuccessful charge with status '{NEW_STATUS}' "
                "instead of 'failed'. The daily feature job counts status = 'failed' only, so "
                f"payment_failures_30d drains to zero for migrated {method} customers while their "
                "charges keep failing, retries keep happening and billing tickets keep coming. "
                "The churn model loses its payment-trouble signal for exactly those customers "
                "and stops flagging them."
            ),
            propagation=[
                f"upstream: provider API v3 for {method} -> status '{NEW_STATUS}' for failed "
                "charges",
                f"raw: raw.billing_events.status gains '{NEW_STATUS}'; the 'failed' share for "
                f"{method} collapses, the unsuccessful share does not",
                "features: payment_failures_30d counts 'failed' only -> ~0 for migrated customers "
                "(feature_mean falls; no NULLs, no errors)",
                "serving: customers with bouncing payments score like everyone else; they are "
                "not flagged",
                "business: payment-driven churn goes unaddressed; billing tickets continue",
                "labels (14 days later): churn among customers with declined charges is high, "
                "their scores are not; holdout metrics stay high",
            ],
            evidence=[
                w.column(
                    "new-status",
                    "raw.billing_events.status",
                    f"status '{NEW_STATUS}' appears at onset, for {method} only; "
                    "the 'failed' share of that method collapses",
                ),
                w.column(
                    "feature-drop",
                    "feature_store.customer_features.payment_failures_30d",
                    f"payment_failures_30d is 0 for {method} customers whose only "
                    f"recent failures are '{NEW_STATUS}'",
                ),
                w.metric(
                    "feature-mean",
                    "feature_mean",
                    "feature_mean of payment_failures_30d drifts down after onset",
                ),
                w.column(
                    "billing-tickets",
                    "raw.support_tickets.topic",
                    "billing tickets continue at the usual rate",
                ),
                *self._changelog_evidence(calendar),
            ],
            acceptable_fixes=[
                f"Map '{NEW_STATUS}' to 'failed' at ingestion (or count every unsuccessful "
                "status in the feature job) and agree the status vocabulary as a data contract "
                "with payments.",
                "Recompute payment_failures_30d since onset, re-score the affected customers, "
                "and reach out to those with failing payments.",
                "Validate categorical domains at ingestion: alert on unseen status values and on "
                "the failure share per payment method.",
            ],
            probes=[
                "Billing failures did not stop; how did you find where the signal was lost?",
                "Why did no monitor catch a new status value, and what check would you add?",
                "Would retraining have helped? What would the model learn from these rows?",
                "What would you ship first, and how would you know it worked?",
                "What experiment would you run next to size the payment-driven churn that was "
                "missed?",
            ],
        )

    def investigation(self, calendar: Calendar) -> list[Step]:
        method = self.params.target_payment_method
        onset = calendar.date(self.params.onset_day)
        return [
            Step(
                question="Which statuses does each payment method report, and since when?",
                sql="""
                    SELECT payment_method, status, count(*) AS events,
                           min(event_ts)::DATE AS first_seen, max(event_ts)::DATE AS last_seen
                    FROM raw.billing_events GROUP BY 1, 2 ORDER BY 1, 2""",
                evidence="new-status",
                finding=f"'{NEW_STATUS}' is new: it appears at onset and for {method} only",
                found=lambda f: (
                    f.filter(
                        ~pl.col("status").is_in(["failed", "succeeded"])
                        & (pl.col("first_seen") >= onset)
                    ).height
                    > 0
                ),
            ),
            Step(
                question="Did the payment failure rate change for any method?",
                sql="""
                    SELECT date_trunc('week', event_ts) AS week, payment_method,
                           round(avg((status = 'failed')::INT), 4) AS failed_share,
                           round(avg((status <> 'succeeded')::INT), 4) AS unsuccessful_share
                    FROM raw.billing_events GROUP BY 1, 2 ORDER BY 1, 2""",
                evidence="new-status",
                finding=f"the 'failed' share of {method} collapses while its unsuccessful share "
                "holds",
                found=lambda f: _collapsed(f.filter(pl.col("payment_method") == method)),
            ),
            Step(
                question="Does the feature row of the day of a failed charge count it?",
                sql="""
                    SELECT b.payment_method, b.status, count(*) AS events,
                           round(avg(f.payment_failures_30d), 3) AS payment_failures_30d
                    FROM raw.billing_events b JOIN feature_store.customer_features f
                      ON f.customer_id = b.customer_id
                     AND f.event_timestamp::DATE = b.event_ts::DATE + 1
                    WHERE b.status <> 'succeeded' GROUP BY 1, 2 ORDER BY 1, 2""",
                evidence="feature-drop",
                finding=f"after a 'failed' charge the feature is >= 1; after a '{NEW_STATUS}' "
                "one it stays ~0",
                found=lambda f: _uncounted(f),
            ),
            Step(
                question="How does the model score customers the day after a declined charge?",
                sql="""
                    SELECT b.status, p.payment_failures_30d > 0 AS failure_counted,
                           count(*) AS events, round(avg(p.score), 4) AS mean_score,
                           round(avg(p.decision::INT), 3) AS flagged_rate,
                           round(avg(l.churned), 4) AS churn_rate
                    FROM raw.billing_events b JOIN serving.predictions p
                      ON p.customer_id = b.customer_id AND p.source = 'batch'
                     AND p.request_ts::DATE = b.event_ts::DATE + 1
                    LEFT JOIN labels.churn_labels l
                      ON l.customer_id = p.customer_id AND l.score_date = p.request_ts::DATE
                    WHERE b.status <> 'succeeded' GROUP BY 1, 2 ORDER BY 1, 2""",
                evidence="feature-drop",
                finding=f"after a '{NEW_STATUS}' charge the model sees no failure and scores the "
                "customer far below one whose 'failed' charge was counted, though they churn at "
                "least as often",
                found=lambda f: _score_gap(f) <= UNDER_SCORED,
            ),
        ]

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        method = self.params.target_payment_method
        onset = calendar.date(self.params.onset_day)
        expected = self.expected_share(calendar)
        checks: list[Check] = []

        # Distinct events, so duplicated deliveries from elsewhere do not skew the shares.
        (
            declined_before,
            declined_after,
            declined_methods,
            failed_before,
            failed_after,
            renamed_after,
            unsuccessful_before,
            unsuccessful_after,
        ) = con.execute(
            """
            WITH e AS (SELECT DISTINCT event_id, event_ts::DATE >= $onset AS after,
                              payment_method, status FROM raw.billing_events),
            m AS (SELECT * FROM e WHERE payment_method = $method)
            SELECT (SELECT count(*) FROM e WHERE status = $new AND NOT after),
                   (SELECT count(*) FROM e WHERE status = $new AND after),
                   (SELECT coalesce(string_agg(DISTINCT payment_method, ','), '') FROM e
                    WHERE status = $new),
                   (SELECT avg((status = 'failed')::INT) FROM m WHERE NOT after),
                   (SELECT avg((status = 'failed')::INT) FROM m WHERE after),
                   (SELECT avg((status = $new)::INT) FILTER (WHERE status <> 'succeeded')
                    FROM m WHERE after),
                   (SELECT avg((status <> 'succeeded')::INT) FROM m WHERE NOT after),
                   (SELECT avg((status <> 'succeeded')::INT) FROM m WHERE after)
            """,
            {"onset": onset, "method": method, "new": NEW_STATUS},
        ).fetchall()[0]
        checks.append(
            Check(
                name=f"status '{NEW_STATUS}' appears at onset for the target method only",
                passed=declined_before == 0 and declined_after > 0 and declined_methods == method,
                detail=f"'{NEW_STATUS}' events: {declined_before} before onset, {declined_after} "
                f"after; methods: {declined_methods or 'none'} (expected {method})",
            )
        )
        checks.append(
            Check(
                name="the method's failed charges arrive renamed after onset",
                passed=renamed_after is not None
                and renamed_after >= 0.6 * expected
                and failed_after is not None
                and failed_before is not None
                and failed_after <= failed_before * (1 - 0.4 * expected),
                detail=f"{method}: share of unsuccessful charges reported '{NEW_STATUS}' after "
                f"onset {fmt(renamed_after, '.3f')} (expected ~{expected:.3f}); 'failed' share "
                f"{fmt(failed_before, '.4f')} before onset, {fmt(failed_after, '.4f')} after",
            )
        )
        ratio = (
            unsuccessful_after / unsuccessful_before
            if unsuccessful_after is not None and unsuccessful_before
            else None
        )
        checks.append(
            Check(
                name="the method's charges keep failing at the usual rate",
                passed=ratio is not None and 0.6 <= ratio <= 1.6,
                detail=f"{method}: unsuccessful share {fmt(unsuccessful_before, '.4f')} before "
                f"onset, {fmt(unsuccessful_after, '.4f')} after (x{fmt(ratio)})",
            )
        )

        # Feature rows whose 30-day window holds only renamed failures, against those holding
        # counted ones (the feature row of day d covers billing days d-29..d).
        groups = con.execute(
            f"""
            WITH {_WINDOWS}
            SELECT kind, count(*), avg(payment_failures_30d) FROM w GROUP BY 1
            """,
            {"onset": onset, "new": NEW_STATUS},
        ).fetchall()
        by_kind = {k: (n, v) for k, n, v in groups}
        n_renamed, value_renamed = by_kind.get("renamed_only", (0, None))
        n_counted, value_counted = by_kind.get("failed_only", (0, None))
        checks.append(
            Check(
                name="payment_failures_30d ignores the renamed failures",
                passed=n_renamed >= MIN_ROWS
                and value_renamed is not None
                and value_renamed <= 0.05
                and value_counted is not None
                and value_counted >= 0.95,
                detail=f"feature rows after onset whose window holds only '{NEW_STATUS}' "
                f"charges: {n_renamed}, mean payment_failures_30d {fmt(value_renamed, '.3f')}; "
                f"rows holding only 'failed' charges: {n_counted}, mean "
                f"{fmt(value_counted, '.3f')}",
            )
        )

        # The model's view: customers the day after an unsuccessful charge, as served (a counted
        # 'failed' charge against an uncounted renamed one).
        scored = con.execute(
            """
            SELECT b.status, count(*), avg(p.score), avg(p.decision::INT)
            FROM raw.billing_events b JOIN serving.predictions p
              ON p.customer_id = b.customer_id AND p.source = 'batch'
             AND p.request_ts::DATE = b.event_ts::DATE + 1
            WHERE b.event_ts::DATE >= $onset
              AND ((b.status = 'failed' AND p.payment_failures_30d > 0)
                   OR (b.status = $new AND p.payment_failures_30d = 0))
            GROUP BY 1
            """,
            {"onset": onset, "new": NEW_STATUS},
        ).fetchall()
        by_status = {s: (n, score, flagged) for s, n, score, flagged in scored}
        n_new, score_new, flag_new = by_status.get(NEW_STATUS, (0, None, None))
        n_old, score_old, flag_old = by_status.get("failed", (0, None, None))
        scores = (
            f"batch score the day after a charge failed, since onset: '{NEW_STATUS}' "
            f"{fmt(score_new, '.4f')} (n={n_new}, flagged {fmt(flag_new, '.3f')}), 'failed' "
            f"{fmt(score_old, '.4f')} (n={n_old}, flagged {fmt(flag_old, '.3f')})"
        )
        name = "customers with renamed failures score lower than those with counted ones"
        if n_new and min(n_new, n_old) < MIN_ROWS:
            # A late onset or a small migrated share: too few charges to compare scores.
            checks.append(
                Check(
                    name=name,
                    outcome="not measurable",
                    detail=f"not measurable with fewer than {MIN_ROWS} charges per group; "
                    f"skipped: {scores}",
                )
            )
        else:
            checks.append(
                Check(
                    name=name,
                    passed=n_new > 0
                    and score_new is not None
                    and score_old is not None
                    and score_new <= UNDER_SCORED * score_old,
                    detail=scores,
                )
            )

        labelled = con.execute(
            """
            SELECT b.status, count(*), sum(l.churned), avg(p.score), avg(l.churned)
            FROM raw.billing_events b JOIN serving.predictions p
              ON p.customer_id = b.customer_id AND p.source = 'batch'
             AND p.request_ts::DATE = b.event_ts::DATE + 1
            JOIN labels.churn_labels l
              ON l.customer_id = p.customer_id AND l.score_date = p.request_ts::DATE
            WHERE b.event_ts::DATE >= $onset AND l.label_available_at <= $matured
              AND ((b.status = 'failed' AND p.payment_failures_30d > 0)
                   OR (b.status = $new AND p.payment_failures_30d = 0))
            GROUP BY 1
            """,
            {
                "onset": onset,
                "new": NEW_STATUS,
                "matured": visible_end(calendar),
            },
        ).fetchall()
        by_label = {s: (n, c, score / rate if rate else None) for s, n, c, score, rate in labelled}
        _, churn_new, ratio_new = by_label.get(NEW_STATUS, (0, 0, None))
        _, churn_old, ratio_old = by_label.get("failed", (0, 0, None))
        name = "renamed-failure customers are under-scored for their churn"
        if min(churn_new, churn_old) < MIN_CHURNERS:
            checks.append(
                Check(
                    name=name,
                    outcome="not measurable",
                    detail=f"not measurable: {churn_new} / {churn_old} matured churn labels after "
                    f"'{NEW_STATUS}' / 'failed' charges (< {MIN_CHURNERS}); skipped",
                )
            )
        else:
            checks.append(
                Check(
                    name=name,
                    passed=ratio_new is not None
                    and ratio_old is not None
                    and ratio_new <= UNDER_SCORED * ratio_old,
                    detail=f"mean score over churn rate the day after a failed charge: "
                    f"'{NEW_STATUS}' {fmt(ratio_new)} ({churn_new} churned), 'failed' "
                    f"{fmt(ratio_old)} ({churn_old} churned)",
                )
            )
        return checks


# Feature rows after onset (customer, feature day) whose 30-day billing window holds unsuccessful
# charges of only one kind: renamed_only or failed_only.
_WINDOWS = """u AS (SELECT DISTINCT event_id, customer_id, event_ts::DATE AS d, status
                FROM raw.billing_events WHERE status IN ('failed', $new)),
            j AS (SELECT f.customer_id, f.event_timestamp, any_value(f.payment_failures_30d)
                         AS payment_failures_30d,
                         count(*) FILTER (WHERE u.status = 'failed') AS n_failed,
                         count(*) FILTER (WHERE u.status = $new) AS n_renamed
                  FROM feature_store.customer_features f JOIN u
                    ON u.customer_id = f.customer_id
                   AND u.d BETWEEN f.event_timestamp::DATE - 30 AND f.event_timestamp::DATE - 1
                  WHERE f.event_timestamp::DATE > $onset GROUP BY 1, 2),
            w AS (SELECT *, CASE WHEN n_failed = 0 THEN 'renamed_only'
                                 WHEN n_renamed = 0 THEN 'failed_only' ELSE 'both' END AS kind
                  FROM j)"""


def _collapsed(frame: pl.DataFrame) -> bool:
    """The failed share drops far below its usual level while the unsuccessful share holds."""
    if frame.height < 3:
        return False
    usual = num(frame["failed_share"].median())
    low = frame.sort("failed_share").row(0, named=True)
    return bool(
        usual
        and low["failed_share"] <= 0.4 * usual
        and low["unsuccessful_share"] >= 0.5 * num(frame["unsuccessful_share"].median())
    )


def _uncounted(frame: pl.DataFrame) -> bool:
    renamed = frame.filter(pl.col("status") == NEW_STATUS)
    failed = frame.filter(pl.col("status") == "failed")
    return bool(
        renamed.height
        and failed.height
        and num(renamed["payment_failures_30d"].max()) <= 0.5
        and num(failed["payment_failures_30d"].min()) >= 0.9
    )


def _score_gap(frame: pl.DataFrame) -> float:
    """Mean score after an uncounted renamed charge over that after a counted failed one."""
    renamed = frame.filter((pl.col("status") == NEW_STATUS) & ~pl.col("failure_counted"))
    failed = frame.filter((pl.col("status") == "failed") & pl.col("failure_counted"))
    if not (renamed.height and failed.height and failed["mean_score"][0]):
        return float("inf")
    return float(renamed["mean_score"][0] / failed["mean_score"][0])
