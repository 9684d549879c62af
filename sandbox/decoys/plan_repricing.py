"""A plan's monthly price goes up, each existing subscriber moving to it at their next renewal.

Ordinary business life, and genuine drift: the CRM, the billing amounts and the `monthly_price`
feature all carry the new price, so the drift monitor flags `monthly_price` more each day as the
renewals come round, in the same weeks as whatever else goes wrong. Nothing in the pipeline is
broken and the customers behave as before; the candidate has to read the announcement, see that
the data tell the truth, and look elsewhere.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import duckdb
import numpy as np
from pydantic import Field, model_validator

from sandbox.clock import Calendar
from sandbox.faults.base import Check, Decoy, DecoyNote, DecoyParams, HookContext, Verdict, hook
from sandbox.faults.toolkit import fmt, window
from sandbox.product import BILLING_CYCLE_DAYS, PLANS

if TYPE_CHECKING:
    # The world hands its state to the `world.state` hook; only the annotation names it.
    from sandbox.world.behaviour import WorldState

# A share measured on thousands of customers against the one the renewal calendar gives.
SHARE_TOLERANCE = 0.02


class Params(DecoyParams):
    plan: Literal[tuple(PLANS)] = Field(  # type: ignore[valid-type]
        "basic", description="The plan whose price changes."
    )
    new_price: float = Field(
        8.99, gt=0.0, le=99.99, description="The plan's new monthly price in USD."
    )

    @model_validator(mode="after")
    def _a_change(self) -> Params:
        if round(self.new_price, 2) != self.new_price:
            raise ValueError("new_price is in whole cents")
        if self.new_price == PLANS[self.plan]:
            raise ValueError(f"new_price is the {self.plan} plan's price already")
        return self


class PlanRepricing(Decoy[Params]):
    id: ClassVar[str] = "plan-repricing"
    # A real change in what customers pay: chasing it moves the flagged list or the model for
    # nothing wrong, and none of the pipeline's settings touch it.
    actions: ClassVar[dict[str, Verdict]] = {
        "rollback-deploy": "no effect",
        "retrain": "no effect",
        "set-decision-threshold": "harmful",
        "set-drift-reference-window": "no effect",
        "set-imputation-fill": "no effect",
    }
    title: ClassVar[str] = "A plan's price changes at each customer's renewal"

    @property
    def old_price(self) -> float:
        return PLANS[self.params.plan]

    @hook("world.state")
    def reprice_at_renewal(self, state: WorldState, ctx: HookContext) -> WorldState:
        if ctx.day >= self.params.day:
            renewing = state.renews(ctx.day) & (state.plan == self.params.plan)
            state.monthly_price = np.where(renewing, self.params.new_price, state.monthly_price)
        return state

    def _title(self, calendar: Calendar) -> str:
        return (
            f"pricing: {self.params.plan.capitalize()} plan ${self.old_price:.2f} -> "
            f"${self.params.new_price:.2f} a month from {calendar.date(self.params.day)}"
        )

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        new = f"${self.params.new_price:.2f}"
        return [
            {
                # Announced the afternoon before: the day's first renewals bill after midnight.
                "day": self.params.day - 1,
                "hour": 16.0,
                "kind": "business",
                "service": "billing",
                "title": self._title(calendar),
                "body": f"The {self.params.plan} plan costs {new} a month from "
                f"{calendar.date(self.params.day)} (was ${self.old_price:.2f}). New subscribers "
                f"pay {new} from signup; existing subscribers move to {new} at their next monthly "
                f"renewal from that day, so all of them within {BILLING_CYCLE_DAYS} days. Other "
                "plans are unchanged.",
                "author": "pricing-team",
            }
        ]

    def note(self, calendar: Calendar) -> DecoyNote:
        w = window(calendar, self.params.day)
        return DecoyNote(
            decoy_id=self.id,
            title=self.title,
            what_happened=f"From {w.start} the {self.params.plan} plan costs "
            f"${self.params.new_price:.2f} instead of ${self.old_price:.2f}; each subscriber "
            "moves at their next monthly renewal. Within days the drift reports flag "
            "monthly_price, and go on flagging it as the renewals come round.",
            why_harmless="A real, announced change in the world, recorded truthfully: the CRM, "
            "the billing amounts and the monthly_price feature agree, and the plan's customers "
            "watch, pay and churn as before. The model scores the world as it is; retraining "
            "later takes the new price in. It is not a pipeline defect and explains none of the "
            "other symptoms.",
            evidence=[
                w.column(
                    "repriced-feature",
                    "feature_store.customer_features.monthly_price",
                    "the plan's customers move to the new price at their renewals",
                ),
                w.column(
                    "repriced-billing",
                    "raw.billing_events.amount",
                    "renewals on the plan are charged the new price",
                ),
                w.changelog(
                    "pricing-notice",
                    self._title(calendar),
                    "the price-change announcement",
                    start=w.start - dt.timedelta(days=1),
                ),
            ],
        )

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        return [
            self._announced(con, calendar),
            self._charged(con, calendar),
            self._moved_at_renewal(con, calendar),
            self._drift_flagged(con, calendar),
        ]

    def _announced(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> Check:
        title = self._title(calendar)
        (days,) = con.execute(
            "SELECT list(DISTINCT ts::DATE) FROM ops.changelog WHERE kind = 'business' "
            "AND title = $title",
            {"title": title},
        ).fetchall()[0]
        return Check(
            name="the price change is announced the day before it takes effect",
            passed=days == [calendar.date(self.params.day - 1)],
            detail=f"business changelog entries titled {title!r} on {days}",
        )

    def _charged(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> Check:
        """Before the day the plan's bills are all at the old price; from it, at the old or the
        new one, the new one appearing."""
        row = con.execute(
            """
            SELECT count(*) FILTER (WHERE b.event_ts < $start AND b.amount <> $old),
                   count(*) FILTER (WHERE b.event_ts >= $start AND b.amount NOT IN ($old, $new)),
                   min(b.event_ts) FILTER (WHERE b.amount = $new),
                   count(*) FILTER (WHERE b.amount = $new)
            FROM raw.billing_events b JOIN raw.customers c USING (customer_id)
            WHERE c.plan = $plan
            """,
            {
                "start": calendar.midnight(self.params.day),
                "old": self.old_price,
                "new": self.params.new_price,
                "plan": self.params.plan,
            },
        ).fetchall()[0]
        off_before, off_after, first_new, n_new = row
        return Check(
            name="the plan's bills move from the old price to the new one on its day",
            passed=off_before == 0 and off_after == 0 and n_new > 0,
            detail=f"{off_before} bills off ${self.old_price:.2f} before, {off_after} off both "
            f"prices after; {n_new} bills at ${self.params.new_price:.2f}, the first {first_new}",
        )

    def _moved_at_renewal(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> Check:
        """On the feature store's last day, the plan's customers whose renewal came round since
        the change (and they only) carry the new price, and so does the CRM."""
        row = con.execute(
            """
            WITH last AS (
                SELECT f.customer_id, f.tenure_days, f.monthly_price, c.monthly_price AS crm,
                       f.event_timestamp::DATE - INTERVAL 1 DAY AS d
                FROM feature_store.customer_features f JOIN raw.customers c USING (customer_id)
                WHERE c.plan = $plan AND f.event_timestamp =
                    (SELECT max(event_timestamp) FROM feature_store.customer_features)
            )
            SELECT count(*),
                   avg((monthly_price = $new)::INT),
                   avg((tenure_days % $cycle <= datediff('day', $start, d))::INT),
                   avg(((monthly_price = $new) = (tenure_days % $cycle
                        <= datediff('day', $start, d)))::INT),
                   avg((crm = $new)::INT)
            FROM last
            """,
            {
                "plan": self.params.plan,
                "new": self.params.new_price,
                "cycle": BILLING_CYCLE_DAYS,
                "start": calendar.date(self.params.day),
            },
        ).fetchall()[0]
        n, share, renewed, agree, crm = row
        passed = (
            n > 0
            and agree is not None
            and agree >= 1 - SHARE_TOLERANCE
            # The CRM is read a day later than the last feature rows: a day's renewals more.
            and crm is not None
            and share is not None
            and share - SHARE_TOLERANCE <= crm <= share + 1 / BILLING_CYCLE_DAYS + SHARE_TOLERANCE
        )
        return Check(
            name="the plan's customers move to the new price at their next renewal",
            passed=passed,
            detail=f"of {n} {self.params.plan} customers on the last feature day, {fmt(share, '.1%')}"
            f" carry ${self.params.new_price:.2f} ({fmt(renewed, '.1%')} renewed since the "
            f"change; {fmt(agree, '.1%')} agree), {fmt(crm, '.1%')} in the CRM",
        )

    def _drift_flagged(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> Check:
        before, after = con.execute(
            """
            SELECT count(*) FILTER (WHERE drifted AND report_date < $start),
                   count(*) FILTER (WHERE drifted AND report_date >= $start)
            FROM monitoring.drift_feature_daily WHERE feature = 'monthly_price'
            """,
            {"start": calendar.date(self.params.day)},
        ).fetchall()[0]
        return Check(
            name="the drift reports flag monthly_price after the change, not before",
            passed=before == 0 and after > 0,
            detail=f"monthly_price drifted on {before} report days before, {after} from then on",
        )
