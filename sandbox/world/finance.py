"""Finance's plan: the weekly forecast of subscribers, cancellations and revenue made before
production started, and the actual weeks to hold against it.

The plan is what a finance team would have written from the last weeks of pre-history: the
subscriber base continues its linear trend, the revenue per subscriber stays at its pre-history
average, and so does the weekly churn rate, less the share of cancellations the retention
programme (which starts with production) was budgeted to save. Everything but that budget is
computed in DuckDB from the raw tables the candidate sees, so anyone can redo the plan with the
SQL console.
"""

from __future__ import annotations

import math

import duckdb
import polars as pl

from sandbox import schema
from sandbox.clock import Calendar

PLAN_TABLE = "finance.weekly_plan"
BASIS_WEEKS = 8  # the pre-history weeks the plan is fitted on
PLANNED_ON_DAY = -4  # the plan was signed off in the week before production
PLANNED_AT_HOUR = 15.0
# What the retention programme's business case promised: about what a healthy churn model's
# offers do save in the simulated world (`sandbox.world.behaviour.OFFER_EFFECT`).
RETENTION_SAVING = 0.05


def week_start_day(week: int) -> int:
    """The first production day of production week `week` (week 1 starts on day 1)."""
    return 1 + 7 * (week - 1)


def plan_weeks(calendar: Calendar) -> int:
    """Production weeks the plan covers: every week the world shows a day of."""
    return math.ceil(calendar.last_visible_day / 7)


# Active subscribers at the start of a day: signed up before it and not cancelled before it.
_ACTIVE_AT = """
    SELECT d.day, count(c.customer_id) AS active
    FROM days d
    LEFT JOIN raw.customers c ON c.signup_date <= d.day
    LEFT JOIN (
        SELECT customer_id, min(event_ts)::DATE AS cancel_date
        FROM raw.subscription_events WHERE event_type = 'cancel' GROUP BY 1
    ) x ON x.customer_id = c.customer_id
    WHERE x.cancel_date IS NULL OR x.cancel_date >= d.day
    GROUP BY d.day
"""


def weekly_plan(con: duckdb.DuckDBPyConnection, calendar: Calendar) -> pl.DataFrame:
    """The plan's rows (`finance.weekly_plan`), one per production week."""
    basis_start = calendar.date(week_start_day(1 - BASIS_WEEKS))
    first_week = calendar.date(1)
    weeks = plan_weeks(calendar)
    frame = con.sql(
        f"""
        WITH days AS (
            SELECT unnest(range($basis, $first, INTERVAL 1 DAY))::DATE AS day
        ), active AS ({_ACTIVE_AT}),
        basis AS (
            SELECT a.day, a.active, date_diff('day', $first, a.day) AS x,
                   date_diff('day', $basis, a.day) % 7 = 0 AS week_start
            FROM active a
        ), cancels AS (
            SELECT count(*) AS n FROM raw.subscription_events
            WHERE event_type = 'cancel' AND event_ts >= $basis AND event_ts < $first
        ), revenue AS (
            SELECT coalesce(sum(amount), 0) AS amount FROM raw.billing_events
            WHERE status = 'succeeded' AND event_ts >= $basis AND event_ts < $first
        ), fit AS (
            SELECT regr_slope(active, x) AS slope, regr_intercept(active, x) AS intercept,
                   sum(active) FILTER (WHERE week_start) AS subscriber_weeks
            FROM basis
        ), planned AS (
            SELECT w, ($first + INTERVAL (7 * w) DAY)::DATE AS week_start,
                   f.intercept + f.slope * (7 * w) AS subscribers
            FROM range(0, $weeks) t(w), fit f
        )
        SELECT p.week_start,
               round(p.subscribers)::BIGINT AS active_subscribers,
               round(p.subscribers * c.n / f.subscriber_weeks * (1 - $saving))::BIGINT
                 AS cancellations,
               round(c.n / f.subscriber_weeks * (1 - $saving), 5) AS weekly_churn_rate,
               $saving AS retention_saving,
               round(p.subscribers * r.amount / f.subscriber_weeks, 2) AS revenue,
               $planned_at::TIMESTAMP AS planned_at
        FROM planned p, fit f, cancels c, revenue r
        ORDER BY p.week_start
        """,
        params={
            "basis": basis_start,
            "first": first_week,
            "weeks": weeks,
            "planned_at": calendar.at(PLANNED_ON_DAY, PLANNED_AT_HOUR),
            "saving": RETENTION_SAVING,
        },
    ).pl()
    return frame.select(schema.names(PLAN_TABLE)).cast(schema.polars_schema(PLAN_TABLE))


def actual_against_plan(con: duckdb.DuckDBPyConnection, calendar: Calendar) -> pl.DataFrame:
    """Per plan week: planned and actual cancellations and revenue, and the days of the week the
    world has (a week the world ends in is partial)."""
    return con.sql(
        f"""
        SELECT p.week_start, p.cancellations AS plan_cancellations,
               (SELECT count(*) FROM raw.subscription_events e
                WHERE e.event_type = 'cancel' AND e.event_ts >= p.week_start
                  AND e.event_ts < p.week_start + INTERVAL 7 DAY) AS cancellations,
               p.revenue AS plan_revenue,
               (SELECT coalesce(sum(amount), 0) FROM raw.billing_events b
                WHERE b.status = 'succeeded' AND b.event_ts >= p.week_start
                  AND b.event_ts < p.week_start + INTERVAL 7 DAY) AS revenue,
               least(7, date_diff('day', p.week_start, $end) + 1) AS days
        FROM {PLAN_TABLE} p ORDER BY p.week_start
        """,
        params={"end": calendar.date(calendar.last_visible_day)},
    ).pl()
