"""One payment method's charge amounts arrive in cents after its settlement API is upgraded.

Story: payments moves one payment method (by default PayPal) onto its provider's v4 settlement
API overnight. v4 reports amounts in minor units, cents where v3 reported dollars, and nobody
updated the ingestion contract: from the switch on, every charge of that method lands in
raw.billing_events at a hundred times its plan price, while its currency still reads USD. Nothing
errors and nothing alerts; charges, failures and customers look as they always did, but revenue
summed from the table jumps overnight, and anything that reads amounts is off by the factor for
exactly one payment method.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal

import duckdb
import polars as pl
from pydantic import Field

from sandbox.clock import Calendar
from sandbox.faults.base import (
    AnswerKey,
    Check,
    Fault,
    FaultParams,
    HookContext,
    Step,
    Symptom,
    Verdict,
    hook,
)
from sandbox.faults.toolkit import fmt, window
from sandbox.product import PLANS

METHOD_NAMES = {
    "card": "card",
    "paypal": "PayPal",
    "direct_debit": "direct debit",
    "gift_card": "gift card",
}
PLAN_PRICES = list(PLANS.values())
PRICES = ", ".join(f"{p:.2f}" for p in PLAN_PRICES)


class Params(FaultParams):
    ramp_days: int = Field(0, ge=0, le=0, description="The API switch is a step change.")
    payment_method: Literal["card", "paypal", "direct_debit", "gift_card"] = Field(
        "paypal", description="The payment method whose settlement moves to the new API."
    )
    factor: float = Field(
        100.0, ge=10.0, le=1000.0, description="What the new API multiplies amounts by (cents)."
    )


class BillingUnitChange(Fault[Params]):
    id: ClassVar[str] = "billing-unit-change"
    # What each ops-console action does to it (`sandbox.actions.catalog`); unnamed: no effect.
    actions: ClassVar[dict[str, Verdict]] = {
        "rerun-batch-scoring": "mitigates",
        "retrain": "harmful",
    }
    title: ClassVar[str] = "Payment amounts arrive in cents for one payment method"
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "easy"
    observation: ClassVar[str] = (
        "Revenue from one payment method jumps a hundredfold overnight while charges, failures "
        "and customers look the same."
    )

    @hook("ingest.billing")
    def amounts_in_cents(self, events: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        if self.params.intensity(ctx.day) == 0:
            return events
        return events.with_columns(
            pl.when(pl.col("payment_method") == self.params.payment_method)
            .then((pl.col("amount") * self.params.factor).round(2))
            .otherwise(pl.col("amount"))
            .alias("amount")
        )

    def _method(self) -> str:
        return METHOD_NAMES[self.params.payment_method]

    def _title(self) -> str:
        return f"payments: {self._method()} settlement moved to provider API v4"

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        return [
            {
                "day": self.params.onset_day - 1,
                "hour": 22.0,
                "kind": "upstream",
                "service": "billing",
                "title": self._title(),
                "body": f"{self._method()} charges settle through the provider's v4 API from "
                "tonight; same webhooks, new payload schema.",
                "author": "payments-team",
            }
        ]

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        return [
            Symptom(
                id="mean_charge",
                title=f"Mean {self._method()} charge",
                unit="USD",
                value="avg(amount)",
                source="raw.billing_events",
                time="event_ts",
                where=f"payment_method = '{self.params.payment_method}'",
                own=None,
                rows=f"{self._method()} billing events",
            )
        ]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        w = window(calendar, self.params.onset_day)
        method, factor = self._method(), self.params.factor
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"From {w.start} {method} charges settle through the provider's v4 API, which "
                f"reports amounts in cents; ingestion still reads them as dollars, so every "
                f"{method} amount in raw.billing_events is {factor:g}x its plan price while the "
                "currency still says USD."
            ),
            propagation=[
                f"upstream: {method} settlement moves to provider API v4 (amounts in cents)",
                f"raw: raw.billing_events.amount is {factor:g}x the plan price for {method}",
                "reporting: revenue summed from the table jumps overnight",
                "nothing errors: charges, failures and customer counts are unchanged",
            ],
            evidence=[
                w.column(
                    "amounts",
                    "raw.billing_events.amount",
                    f"{method} amounts are {factor:g}x the plan prices from the switch",
                ),
                w.column(
                    "method",
                    "raw.billing_events.payment_method",
                    "only one payment method's amounts changed",
                ),
                w.changelog(
                    "api-switch",
                    self._title(),
                    "the settlement change after which amounts arrived in cents",
                    start=w.start - dt.timedelta(days=1),
                ),
            ],
            acceptable_fixes=[
                "Convert v4 amounts from minor units at ingestion, and backfill the affected rows.",
                "Add a contract test: every amount matches a plan price in its currency.",
            ],
            probes=[
                "How did you show it is a unit change and not a price change?",
                "What experiment would you run next to confirm which API version sent which rows?",
            ],
        )

    def investigation(self, calendar: Calendar) -> list[Step]:
        return [
            Step(
                question="Do charge amounts still look like plan prices, per payment method?",
                sql="""
                    SELECT payment_method, date_trunc('week', event_ts) AS week,
                           round(avg(amount), 2) AS mean_amount
                    FROM raw.billing_events GROUP BY 1, 2 ORDER BY 1, 2""",
                evidence="amounts",
                finding="one method's mean amount jumps by the factor",
                found=lambda f: _largest_jump(f) >= 0.5 * self.params.factor,
            ),
            Step(
                question="Which amounts match no plan price?",
                sql=f"""
                    SELECT payment_method, count(*) AS charges,
                           count(*) FILTER (WHERE round(amount, 2) NOT IN ({PRICES}))
                               AS off_price,
                           min(event_ts) FILTER (WHERE round(amount, 2) NOT IN ({PRICES}))
                               AS first_off_price
                    FROM raw.billing_events GROUP BY 1 ORDER BY 1""",
                evidence="method",
                finding="only the one method has amounts off the price list, all since the switch",
                found=lambda f: f.filter(pl.col("off_price") > 0).height == 1,
            ),
            Step(
                question="What changed in billing the night before?",
                sql="""
                    SELECT ts, kind, service, title, body FROM ops.changelog
                    WHERE service = 'billing' ORDER BY ts""",
                evidence="api-switch",
                finding="the method's settlement moved to the provider's v4 API",
                found=lambda f: self._title() in f["title"].to_list(),
            ),
        ]

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        onset = calendar.date(self.params.onset_day)
        method, factor = self.params.payment_method, self.params.factor
        means = {
            (target, after): mean
            for target, after, mean in con.execute(
                """
                SELECT payment_method = $method, event_ts::DATE >= $onset, avg(amount)
                FROM raw.billing_events GROUP BY ALL
                """,
                {"method": method, "onset": onset},
            ).fetchall()
        }
        mine, others = _ratio(means, True), _ratio(means, False)
        in_cents = con.execute(
            """
            SELECT avg(list_contains($prices, round(amount / $factor, 2))::INT)
            FROM raw.billing_events WHERE payment_method = $method AND event_ts::DATE >= $onset
            """,
            {"prices": list(PLAN_PRICES), "factor": factor, "method": method, "onset": onset},
        ).fetchall()[0][0]
        return [
            Check(
                name="one method's amounts jump by the factor at the switch, no other's",
                passed=mine is not None
                and 0.8 * factor <= mine <= 1.2 * factor
                and others is not None
                and 0.9 <= others <= 1.1,
                detail=f"mean amount after over before the switch: {method} x{fmt(mine)} "
                f"(expected ~{factor:g}), other methods x{fmt(others)}",
            ),
            Check(
                name="its amounts are plan prices in cents",
                passed=in_cents is not None and in_cents >= 0.99,
                detail=f"{fmt(in_cents, '.1%')} of {method} amounts since the switch are a "
                f"plan price ({PRICES}) times {factor:g}",
            ),
        ]


def _ratio(means: dict[tuple[bool, bool], float], target: bool) -> float | None:
    """Mean amount after the switch over before it, for the target method or the others."""
    before, after = means.get((target, False)), means.get((target, True))
    return after / before if before and after is not None else None


def _largest_jump(frame: pl.DataFrame) -> float:
    """The largest ratio between one method's highest and lowest weekly mean amount."""
    spread = frame.group_by("payment_method").agg(
        (pl.col("mean_amount").max() / pl.col("mean_amount").min()).alias("spread")
    )
    return float(spread["spread"].max() or 0.0)
