"""The brief's claims about the business, checked against the built world.

A claim compares an actual weekly metric with finance's plan over a window of complete
production weeks. "above" and "below" need a clear difference: larger than `CLEAR_SHARE` of the
plan and, for counts, larger than `NOISE_Z` times their Poisson noise, so week-to-week noise
cannot make a brief true. "not below" and "not above" hold unless the opposite is clear.
"""

from __future__ import annotations

import math

import duckdb
import polars as pl

from sandbox.clock import Calendar
from sandbox.faults.base import Check
from sandbox.scenario import Claim
from sandbox.world import finance

CLEAR_SHARE = 0.05
NOISE_Z = 3.0
COUNTS = ("cancellations",)


def deviation(claim: Claim, weeks: pl.DataFrame) -> tuple[float, float, float]:
    """(actual, plan, the smallest difference that is clear) summed over the claim's weeks."""
    first, last = claim.weeks
    window = weeks.slice(first - 1, last - first + 1)
    actual = float(window[claim.metric].sum())
    plan = float(window[f"plan_{claim.metric}"].sum())
    clear = CLEAR_SHARE * plan
    if claim.metric in COUNTS:
        clear = max(clear, NOISE_Z * math.sqrt(max(plan, 1.0)))
    return actual, plan, clear


def holds(claim: Claim, actual: float, plan: float, clear: float) -> bool:
    above, below = actual - plan >= clear, plan - actual >= clear
    return {
        "above": above,
        "below": below,
        "not below": not below,
        "not above": not above,
    }[claim.direction]


def checks(con: duckdb.DuckDBPyConnection, calendar: Calendar, claims: list[Claim]) -> list[Check]:
    """One check per claim: does the world bear it out?"""
    if not claims:
        return []
    weeks = finance.actual_against_plan(con, calendar)
    out = []
    for claim in claims:
        first, last = claim.weeks
        name = f"brief: {claim.metric} weeks {first}-{last} {claim.direction} plan"
        if last > weeks.filter(pl.col("days") == 7).height:
            out.append(Check(name=name, passed=False, detail="the world has no such weeks"))
            continue
        actual, plan, clear = deviation(claim, weeks)
        out.append(
            Check(
                name=name,
                passed=holds(claim, actual, plan, clear),
                detail=f"actual {actual:,.0f} vs plan {plan:,.0f} "
                f"({(actual - plan) / plan:+.1%}); a clear difference is {clear:,.0f} or more",
            )
        )
    return out
