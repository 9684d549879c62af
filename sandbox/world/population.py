"""Who the customers are: attributes drawn once, signups spread over the whole timeline."""

from __future__ import annotations

import numpy as np
import polars as pl

from sandbox import rng
from sandbox.clock import Calendar
from sandbox.product import DEVICES, PLANS, REGIONS

PLAN_P = [0.45, 0.38, 0.17]
REGION_P = [0.40, 0.30, 0.18, 0.12]  # shares of REGIONS
DEVICE_P = [0.30, 0.32, 0.18, 0.20]  # shares of DEVICES
CHANNELS, CHANNEL_P = ["organic", "paid_social", "referral", "partner"], [0.45, 0.25, 0.18, 0.12]
PAYMENT_METHODS = ["card", "paypal", "direct_debit", "gift_card"]
PAYMENT_P = [0.55, 0.22, 0.18, 0.05]
CUSTOMER_ID_BASE = 100_000
DAILY_SIGNUP_RATE = 0.0016  # replaces churn so the base stays roughly level
WARM_UP_DAYS = 365  # latent-only history so the base reaches its steady state before any data
TELEMETRY_OPT_OUT = 0.01  # customers whose app sends no watch-time telemetry


def generate(seed: int, n_initial: int, calendar: Calendar) -> pl.DataFrame:
    """All customers who will ever exist in the world, with their latent traits.

    Columns starting with `latent_` are simulation truth and never reach candidate-visible tables.
    """
    g = rng.stream(seed, "population")
    warm_up_start = calendar.first_day - WARM_UP_DAYS
    days = np.arange(warm_up_start, calendar.last_simulated_day + 1)
    new_per_day = g.poisson(n_initial * DAILY_SIGNUP_RATE, len(days))
    signup_day = np.concatenate(
        [
            warm_up_start - 1 - g.integers(0, 900, n_initial),
            np.repeat(days, new_per_day),
        ]
    )
    n = len(signup_day)
    plan = np.asarray(list(PLANS))[g.choice(3, n, p=PLAN_P)]
    channel = np.asarray(CHANNELS)[g.choice(4, n, p=CHANNEL_P)]
    engagement = g.normal(0.0, 0.85, n) - 0.3 * (channel == "paid_social")
    return pl.DataFrame(
        {
            "customer_id": np.arange(CUSTOMER_ID_BASE, CUSTOMER_ID_BASE + n, dtype=np.int64),
            "signup_day": signup_day.astype(np.int64),
            "plan": plan,
            "monthly_price": np.vectorize(PLANS.get)(plan).astype(np.float64),
            "region": np.asarray(REGIONS)[g.choice(4, n, p=REGION_P)],
            "device": np.asarray(DEVICES)[g.choice(4, n, p=DEVICE_P)],
            "channel": channel,
            "payment_method": np.asarray(PAYMENT_METHODS)[g.choice(4, n, p=PAYMENT_P)],
            "latent_engagement": engagement,
            "latent_satisfaction": g.normal(0.0, 0.8, n),
            "latent_frailty": g.normal(0.0, 0.2, n),
            "latent_telemetry_opt_out": g.random(n) < TELEMETRY_OPT_OUT,
        }
    )


def raw_customer_rows(customers: pl.DataFrame, calendar: Calendar) -> pl.DataFrame:
    """The CRM's customer table as the warehouse sees it (no latent traits)."""
    start = pl.lit(calendar.start_date)
    return customers.filter(pl.col("signup_day") <= calendar.last_visible_day).select(
        "customer_id",
        (start + pl.duration(days=pl.col("signup_day") - 1)).alias("signup_date"),
        "plan",
        "monthly_price",
        "region",
        "device",
        "channel",
        "payment_method",
    )
