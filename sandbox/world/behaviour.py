"""How customers behave, one simulated day at a time, vectorized over all customers.

`WorldState` holds the latent state (engagement, billing cycle, unresolved support issues, offers)
as arrays indexed by customer position. Each method advances one causal process for one day and
returns that day's events as a Polars frame; nothing here knows about the ML pipeline.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from sandbox import rng
from sandbox.clock import Calendar
from sandbox.product import APP_RELEASES, BILLING_CYCLE_DAYS, hours_of_day
from sandbox.world.population import PAYMENT_METHODS

WEEKLY_SEASON = np.array([0.95, 0.92, 0.94, 1.0, 1.1, 1.28, 1.22])  # Mon..Sun
APP_UPGRADE_P = 0.12
PAYMENT_FAIL_P = dict(zip(PAYMENT_METHODS, [0.045, 0.02, 0.06, 0.035], strict=True))
RETRY_AFTER_DAYS = 3
MAX_PAYMENT_ATTEMPTS = 3
# A card that bounced usually bounces again (expired, no funds): retries are what make failed
# payments a real churn driver, as involuntary churn is in subscription businesses.
RETRY_FAIL_P = 0.55
OFFER_EFFECT = 0.9  # hazard multiplier while a retention offer is running
OFFER_DAYS = 30
HAZARD_BASE = -7.3


class WorldState:
    def __init__(self, seed: int, customers: pl.DataFrame, calendar: Calendar) -> None:
        self.seed = seed
        self.calendar = calendar
        self.customer_id = customers["customer_id"].to_numpy()
        self.signup_day = customers["signup_day"].to_numpy()
        self.device = customers["device"].to_numpy()
        self.region = customers["region"].to_numpy()
        self.payment_method = customers["payment_method"].to_numpy()
        self.plan = customers["plan"].to_numpy()
        # What each customer pays a month; a price change reaches a customer at their renewal.
        self.monthly_price = customers["monthly_price"].to_numpy().copy()
        self.price_tier = (
            customers["plan"]
            .replace_strict({"basic": 0, "standard": 1, "premium": 2}, return_dtype=pl.Int8)
            .to_numpy()
        )
        self.opt_out = customers["latent_telemetry_opt_out"].to_numpy()
        self.frailty = customers["latent_frailty"].to_numpy()
        n = len(self.customer_id)
        self.base_engagement = customers["latent_engagement"].to_numpy()
        self.target = self.base_engagement.copy()
        # Satisfaction shows in how long people watch, not how often: only watch time reveals it.
        self.base_satisfaction = customers["latent_satisfaction"].to_numpy()
        self.satisfaction_target = self.base_satisfaction.copy()
        self.satisfaction = self.satisfaction_target.copy()
        self.engagement = self.target.copy()
        self.engagement_slow = self.target.copy()
        self.active = np.zeros(n, dtype=bool)
        self.cancel_day = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        self.app_version = np.zeros(n, dtype=np.int64)
        self.payment_attempts = np.zeros(n, dtype=np.int64)
        self.retry_day = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
        self.recent_payment_failures = np.zeros(n)
        self.unresolved = np.zeros(n)
        self.last_offer_day = np.full(n, -10_000, dtype=np.int64)
        self._pending_unresolved: dict[int, np.ndarray] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def start_day(self, day: int) -> None:
        self.active = (self.signup_day <= day) & (self.cancel_day >= day)
        g = rng.stream(self.seed, "engagement", day)
        n = len(self.engagement)
        # Life events: a small share of customers start drifting away each day.
        decline = g.random(n) < 0.004
        self.target = np.where(decline, self.target - g.uniform(0.8, 1.6, n), self.target)
        self.satisfaction_target = np.where(
            decline & (g.random(n) < 0.5), self.satisfaction_target - 0.8, self.satisfaction_target
        )
        # People slowly drift back to their own normal, so the base stays in a steady state.
        self.target += 0.02 * (self.base_engagement - self.target)
        self.satisfaction_target += 0.02 * (self.base_satisfaction - self.satisfaction_target)
        self.engagement += 0.09 * (self.target - self.engagement) + g.normal(0, 0.1, n)
        self.satisfaction += 0.08 * (self.satisfaction_target - self.satisfaction) + g.normal(
            0, 0.06, n
        )
        self.engagement_slow += (self.engagement - self.engagement_slow) / 28.0
        for version_index, (_, release_day) in enumerate(APP_RELEASES):
            if day >= release_day and version_index > 0:
                behind = self.app_version < version_index
                self.app_version = np.where(
                    behind & (g.random(n) < APP_UPGRADE_P), version_index, self.app_version
                )
        self.recent_payment_failures *= np.exp(-1 / 15)
        self.unresolved *= np.exp(-1 / 20)
        self.unresolved += self._pending_unresolved.pop(day, 0.0)

    def renews(self, day: int) -> np.ndarray:
        """Whose monthly billing cycle starts on `day` (a signup starts the first)."""
        return (day - self.signup_day) % BILLING_CYCLE_DAYS == 0

    # -- processes -----------------------------------------------------------------------------
    def activity(self, day: int) -> pl.DataFrame:
        g = rng.stream(self.seed, "activity", day)
        idx = np.flatnonzero(self.active)
        season = WEEKLY_SEASON[self.calendar.weekday(day)]
        sessions = g.poisson(np.exp(-0.2 + self.engagement[idx]) * season)
        per_session = 19.0 * np.exp(0.45 * self.satisfaction[idx])
        minutes = g.gamma(np.maximum(sessions, 1) * 2.0, per_session) * (sessions > 0)
        version = self.app_version[idx]
        device = self.device[idx]
        error_rate = np.where(device == "smart_tv", 0.05, 0.028)
        # 5.2.0 shipped a player regression on Android until 5.3.0: real noise, not a fault.
        error_rate = error_rate * np.where((version == 2) & (device == "android"), 1.7, 1.0)
        errors = g.poisson(sessions * error_rate)
        keep = sessions > 0
        versions = np.asarray([v for v, _ in APP_RELEASES])
        frame = pl.DataFrame(
            {
                "customer_id": self.customer_id[idx][keep],
                "sessions": sessions[keep].astype(np.int64),
                "minutes_watched": np.round(minutes[keep], 1),
                "playback_errors": errors[keep].astype(np.int64),
                "app_version": versions[version[keep]],
                "device": device[keep],
            }
        )
        opted_out = self.opt_out[idx][keep]
        return frame.with_columns(
            pl.when(pl.Series(opted_out))
            .then(None)
            .otherwise(pl.col("minutes_watched"))
            .alias("minutes_watched")
        )

    def billing(self, day: int) -> pl.DataFrame:
        g = rng.stream(self.seed, "billing", day)
        cycle_due = self.renews(day) & (self.payment_attempts == 0)
        due = self.active & (cycle_due | (self.retry_day == day))
        idx = np.flatnonzero(due)
        p_fail = np.vectorize(PAYMENT_FAIL_P.get, otypes=[float])(self.payment_method[idx])
        p_fail = np.where(self.payment_attempts[idx] > 0, RETRY_FAIL_P, p_fail)
        failed = g.random(len(idx)) < p_fail
        attempt = self.payment_attempts[idx] + 1
        self.payment_attempts[idx] = np.where(failed, attempt, 0)
        self.retry_day[idx] = np.where(failed, day + RETRY_AFTER_DAYS, np.iinfo(np.int64).min)
        self.recent_payment_failures[idx] += failed
        return pl.DataFrame(
            {
                "customer_id": self.customer_id[idx],
                "hour": hours_of_day(g, len(idx)),
                "attempt": attempt.astype(np.int64),
                "status": np.where(failed, "failed", "succeeded"),
                "payment_method": self.payment_method[idx],
                "amount": self.monthly_price[idx],
            }
        )

    def ticket_demand(
        self, day: int, activity: pl.DataFrame, billing: pl.DataFrame
    ) -> pl.DataFrame:
        """Which customers open a support ticket today, and about what."""
        g = rng.stream(self.seed, "tickets", day)
        n = len(self.customer_id)
        errors = np.zeros(n)
        pos = activity["customer_id"].to_numpy() - self.customer_id[0]
        errors[pos] = activity["playback_errors"].to_numpy()
        failed = np.zeros(n, dtype=bool)
        failed_ids = billing.filter(pl.col("status") == "failed")["customer_id"].to_numpy()
        failed[failed_ids - self.customer_id[0]] = True
        p = 0.0025 + 0.04 * np.minimum(errors, 3) + 0.3 * failed
        opens = self.active & (g.random(n) < p)
        idx = np.flatnonzero(opens)
        u = g.random(len(idx))
        reason = np.where(failed[idx], "billing", np.where(errors[idx] > 0, "playback", "other"))
        return pl.DataFrame(
            {
                "customer_id": self.customer_id[idx],
                "device": self.device[idx],
                "reason": reason,
                "u_problem": u,
                "hour": hours_of_day(g, len(idx)),
            }
        )

    def record_unresolved(self, customer_ids: np.ndarray, days: np.ndarray) -> None:
        """Tickets that will end unresolved start weighing on the customer when they are closed."""
        for close_day in np.unique(days):
            ids = customer_ids[days == close_day]
            bump = np.zeros(len(self.customer_id))
            np.add.at(bump, ids - self.customer_id[0], 1.0)
            self._pending_unresolved[int(close_day)] = (
                self._pending_unresolved.get(int(close_day), 0.0) + bump
            )

    def grant_offers(self, customer_ids: np.ndarray, day: int) -> np.ndarray:
        """Give retention offers to customers without a running one; returns who got one."""
        pos = customer_ids - self.customer_id[0]
        eligible = self.last_offer_day[pos] <= day - OFFER_DAYS
        self.last_offer_day[pos[eligible]] = day
        return customer_ids[eligible]

    def churn(self, day: int) -> pl.DataFrame:
        g = rng.stream(self.seed, "churn", day)
        n = len(self.customer_id)
        u = g.random(n)
        hours = hours_of_day(g, n)
        tenure_years = np.minimum((day - self.signup_day) / 365.0, 2.0)
        logit = (
            HAZARD_BASE
            + self.frailty
            - 0.6 * self.engagement
            - 1.7 * self.satisfaction
            + 3.0 * np.maximum(self.engagement_slow - self.engagement, 0.0)
            + 1.0 * np.minimum(self.recent_payment_failures, 2.0)
            + 1.0 * np.minimum(self.unresolved, 2.0)
            + 0.22 * self.price_tier
            - 0.35 * tenure_years
            + 0.3 * ((day - self.signup_day) < 60)
        )
        hazard = 1.0 / (1.0 + np.exp(-logit))
        hazard *= np.where(day - self.last_offer_day < OFFER_DAYS, OFFER_EFFECT, 1.0)
        voluntary = self.active & (u < hazard)
        involuntary = self.active & (self.payment_attempts >= MAX_PAYMENT_ATTEMPTS) & ~voluntary
        leaving = voluntary | involuntary
        self.cancel_day = np.where(leaving, day, self.cancel_day)
        self.payment_attempts[involuntary] = 0
        idx = np.flatnonzero(leaving)
        return pl.DataFrame(
            {
                "customer_id": self.customer_id[idx],
                "hour": hours[idx],
                "reason": np.where(involuntary[idx], "payment_failed", "voluntary"),
                "latent_hazard": hazard[idx],
            }
        )

    def warm_up(self, day: int) -> None:
        """A latent-only day before the data starts: people join, pay, and leave; nothing is logged."""
        self.start_day(day)
        self.billing(day)
        self.churn(day)

    def truth(self, day: int) -> pl.DataFrame:
        """The latent state of active customers (interviewer-only truth)."""
        idx = np.flatnonzero(self.active)
        return pl.DataFrame(
            {
                "customer_id": self.customer_id[idx],
                "engagement": np.round(self.engagement[idx], 4),
                "engagement_trend": np.round(self.engagement[idx] - self.engagement_slow[idx], 4),
                "satisfaction": np.round(self.satisfaction[idx], 4),
            }
        ).with_columns(pl.lit(day).alias("day"))
