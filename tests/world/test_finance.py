"""Finance's plan: made from pre-history alone, it follows the base's trend and its churn and
revenue per subscriber; a healthy world lands on it."""

from __future__ import annotations

import datetime as dt

import duckdb
import polars as pl

from sandbox import schema
from sandbox.clock import Calendar
from sandbox.scenario import Claim
from sandbox.world import finance
from sandbox.world.build import BuildSummary
from sandbox.world.claims import deviation
from tests.conftest import connect

CAL = Calendar(dt.date(2026, 3, 2), 28, 56, 42, 5, 14)
BASE = 2_000
LEAVING_PER_WEEK = 20
PRICE = 10.0


def _declining_world() -> duckdb.DuckDBPyConnection:
    """A base that loses 20 customers at the start of every week and where everyone still there
    pays 10 once a week; production rows that are wildly off must not move the plan."""
    con = duckdb.connect()
    for name in ("raw.customers", "raw.subscription_events", "raw.billing_events"):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {name.split('.')[0]}")
        con.execute(schema.table(name).create_sql())
    con.execute(
        "INSERT INTO raw.customers (customer_id, signup_date) SELECT i, DATE '2025-01-01' "
        f"FROM range({BASE}) t(i)"
    )
    weeks = range(-12, 7)
    leaving = {w: range((w + 12) * LEAVING_PER_WEEK, (w + 13) * LEAVING_PER_WEEK) for w in weeks}
    # In production the business falls apart: the plan must not know.
    leaving[3] = range(1_000, 1_300)
    cancels = [
        (i, "cancel", CAL.at(finance.week_start_day(w), 12)) for w in weeks for i in leaving[w]
    ]
    con.executemany(
        "INSERT INTO raw.subscription_events (customer_id, event_type, event_ts) VALUES (?, ?, ?)",
        cancels,
    )
    gone_by = {i: ts for i, _, ts in cancels}
    charges = pl.DataFrame(
        [
            (i, CAL.at(finance.week_start_day(w) + 3, 10), PRICE, "succeeded")
            for w in range(-12, 1)
            for i in range(BASE)
            if i not in gone_by or gone_by[i] > CAL.at(finance.week_start_day(w) + 3, 10)
        ],
        schema=["customer_id", "event_ts", "amount", "status"],
        orient="row",
    )
    con.register("charges", charges.to_arrow())
    con.execute("INSERT INTO raw.billing_events BY NAME SELECT * FROM charges")
    return con


def test_the_plan_continues_the_pre_history_trend_and_rates() -> None:
    con = _declining_world()
    plan = finance.weekly_plan(con, CAL)
    assert plan.columns == schema.names(finance.PLAN_TABLE)
    assert plan.height == finance.plan_weeks(CAL) == 7
    assert plan["week_start"].to_list() == [CAL.date(1 + 7 * w) for w in range(7)]
    # Week 1 starts after 13 weeks of 20 leaving a week: 1740 remain; the trend keeps falling.
    expected = [BASE - LEAVING_PER_WEEK * (13 + w) for w in range(7)]
    for planned, want in zip(plan["active_subscribers"], expected, strict=True):
        assert abs(planned - want) <= LEAVING_PER_WEEK, (planned, want)
    rate = plan["weekly_churn_rate"][0]
    assert (plan["retention_saving"] == finance.RETENTION_SAVING).all()
    pre_history_rate = rate / (1 - finance.RETENTION_SAVING)
    assert 0.9 * LEAVING_PER_WEEK / 1_900 <= pre_history_rate <= 1.1 * LEAVING_PER_WEEK / 1_900
    for row in plan.iter_rows(named=True):
        assert abs(row["cancellations"] - rate * row["active_subscribers"]) <= 1
        assert abs(row["revenue"] - PRICE * row["active_subscribers"]) <= 0.05 * row["revenue"]
    assert (plan["planned_at"] < CAL.midnight(1)).all()


def test_actual_weeks_are_held_against_the_plan() -> None:
    con = _declining_world()
    con.execute("CREATE SCHEMA finance")
    con.execute(schema.table(finance.PLAN_TABLE).create_sql())
    con.register("plan", finance.weekly_plan(con, CAL).to_arrow())
    con.execute(f"INSERT INTO {finance.PLAN_TABLE} SELECT * FROM plan")
    weeks = finance.actual_against_plan(con, CAL)
    assert weeks["cancellations"].to_list() == [20, 20, 300, 20, 20, 20, 0]
    assert weeks["days"].to_list() == [7, 7, 7, 7, 7, 7, 5]
    actual, plan, clear = deviation(
        Claim(metric="cancellations", direction="above", weeks=(3, 3)), weeks
    )
    assert actual == 300 and actual - plan > clear


def test_a_healthy_world_is_on_plan_until_its_fault_starts(faulty_world: BuildSummary) -> None:
    con = connect(faulty_world)
    try:
        weeks = finance.actual_against_plan(con, CAL)
    finally:
        con.close()
    # The default fault starts on day 15: weeks 1 and 2 are the healthy world.
    actual, plan, clear = deviation(
        Claim(metric="cancellations", direction="not above", weeks=(1, 2)), weeks
    )
    assert abs(actual - plan) < clear, (actual, plan, clear)
    actual, plan, clear = deviation(
        Claim(metric="revenue", direction="not above", weeks=(1, 6)), weeks
    )
    assert abs(actual - plan) < clear, (actual, plan, clear)
