"""Stage 2: the daily feature job.

Runs at 02:00 for the previous day, reads the raw tables over rolling windows, imputes missing
values by the feature store's policy, writes one row per active customer to the offline store with
its event and created timestamps, and records the run (rows, nulls seen and imputed, duration).
"""

from __future__ import annotations

import datetime as dt
from collections import deque

import numpy as np
import polars as pl

from sandbox import rng
from sandbox.clock import Calendar
from sandbox.faults.base import FaultSet, HookContext
from sandbox.logs import LogSink
from sandbox.schema import FEATURES

SERVICE = "feature-job"
JOB_NAME = "customer_features_daily"
# The features, with their descriptions and sources, are declared with the tables that hold them
# (`sandbox.schema`).
MODEL_FEATURES: list[str] = list(FEATURES)
IMPUTED_FEATURES: tuple[str, ...] = (
    "avg_daily_minutes_7d",
    "avg_daily_minutes_28d",
    "minutes_per_session_28d",
)
FEATURE_SCHEMA = {name: pl.Float64 for name in MODEL_FEATURES}
MIN_COVERAGE = 0.75  # share of a window's active days that must report watch time
# The job's one release in the production weeks (the changelog announces it): window aggregates
# moved to polars. Deployed at 11:00 on its day, so that night's run is the first on it.
FAST_RELEASE = "1.8.0"
FAST_RELEASE_DAY = 29
FAST_RELEASE_SPEEDUP = 3.0


WINDOW_DAYS = 28  # the long window; the job keeps this many days of raw rows
RECENT_DAYS = 7  # the short window, its last days
BILLING_DAYS = 30  # the billing window: the job keeps this many days of billing events
FAILED_CHARGE = "failed"  # the billing status the job counts as a failed charge


def feature_timestamp(calendar: Calendar, day: int) -> dt.datetime:
    """Features for a day describe data up to its end."""
    return calendar.midnight(day + 1)


class ViewingWindow:
    """Each customer's viewing totals over the last `RECENT_DAYS` and `WINDOW_DAYS` days the job
    ingested, kept as running totals.

    A day's rows are added once and the day leaving a window is taken off, so the nightly job
    works in proportion to one day's rows instead of regrouping four weeks of them. The counts
    are exact integers. Watch time is summed afresh from the days' slots, oldest first, so no
    rounding builds up over the weeks."""

    COUNTS = ("rows", "sessions", "known", "known_sessions", "errors")

    def __init__(self, customer_ids: np.ndarray) -> None:
        self._ids = np.sort(customer_ids)
        n = len(self._ids)
        # One slot a day, the newest in slot (_days - 1) % WINDOW_DAYS: what a day leaving a
        # window takes off its totals.
        self._counts = {name: np.zeros((WINDOW_DAYS, n), dtype=np.int32) for name in self.COUNTS}
        self._minutes = np.zeros((WINDOW_DAYS, n), dtype=np.float64)
        self._heights = np.zeros(WINDOW_DAYS, dtype=np.int64)
        self._long = {name: np.zeros(n, dtype=np.int64) for name in self.COUNTS}
        self._short = {name: np.zeros(n, dtype=np.int64) for name in self.COUNTS}
        self._last_seen = np.full(n, -1, dtype=np.int64)  # the last day with a row, or -1
        self._days = 0  # days added so far
        self._last_date: dt.date | None = None  # of the last day's rows

    def add(self, activity: pl.DataFrame) -> None:
        """One day's raw viewing rows as ingested, each day after the last."""
        dates = activity["activity_date"].unique().to_list()
        if len(dates) > 1 or (
            dates and self._last_date is not None and dates[0] <= self._last_date
        ):
            # Rows of another day would need their own slot: refused, never counted in the wrong one.
            raise ValueError(
                f"the feature job takes one day of viewing rows at a time, each after the last "
                f"({self._last_date}); these are of {', '.join(map(str, sorted(dates)))}"
            )
        self._last_date = dates[0] if dates else self._last_date
        ids = activity["customer_id"].to_numpy()
        at = np.searchsorted(self._ids, ids)
        if len(at) and (at.max() >= len(self._ids) or (self._ids[at] != ids).any()):
            raise ValueError("viewing rows of a customer the feature job was not made with")
        n = len(self._ids)
        known = activity["minutes_watched"].is_not_null().to_numpy()
        sessions = activity["sessions"].fill_null(0).to_numpy()
        values = {
            "rows": None,
            "sessions": sessions,
            "known": known,
            "known_sessions": np.where(known, sessions, 0),
            "errors": activity["playback_errors"].fill_null(0).to_numpy(),
        }
        slot = self._days % WINDOW_DAYS
        leaving_short = (self._days - RECENT_DAYS) % WINDOW_DAYS
        for name in self.COUNTS:
            # Per-day counts are small whole numbers, which a float's sum holds exactly.
            day = np.bincount(at, values[name], minlength=n).astype(np.int64)
            held = self._counts[name]
            self._long[name] += day - held[slot]  # the slot still holds the day leaving
            self._short[name] += day - (held[leaving_short] if self._days >= RECENT_DAYS else 0)
            held[slot] = day
        minutes = activity["minutes_watched"].fill_null(0.0).to_numpy()
        self._minutes[slot] = np.bincount(at[known], minutes[known], minlength=n)
        self._heights[slot] = activity.height
        self._last_seen[self._counts["rows"][slot] > 0] = self._days
        self._days += 1

    def _slots(self, days: int) -> list[int]:
        """The slots of the last `days` days, oldest first."""
        held = min(self._days, days)
        return [(self._days - held + i) % WINDOW_DAYS for i in range(held)]

    def rows_in(self) -> int:
        """Raw rows the window holds."""
        return int(self._heights.sum())

    def aggregates(self) -> pl.DataFrame:
        """Per customer with any viewing row in the long window: its totals over both windows,
        named as the job's features are made from them."""
        minutes_long, minutes_short = np.zeros(len(self._ids)), np.zeros(len(self._ids))
        for slot in self._slots(WINDOW_DAYS):
            minutes_long += self._minutes[slot]
        for slot in self._slots(RECENT_DAYS):
            minutes_short += self._minutes[slot]
        long, short = self._long, self._short
        return pl.DataFrame(
            {
                "customer_id": self._ids,
                "sessions_7d": short["sessions"],
                "sessions_28d": long["sessions"],
                "days_since_last_session": self._days - 1 - self._last_seen,
                "playback_errors_7d": short["errors"],
                "_min_7": minutes_short,
                "_known_7": short["known"],
                "_days_7": short["rows"],
                "_min_28": minutes_long,
                "_known_sessions_28": long["known_sessions"],
                "_known_28": long["known"],
                "_days_28": long["rows"],
            }
        ).filter(pl.Series(long["rows"] > 0))


class FeatureJob:
    def __init__(
        self,
        seed: int,
        calendar: Calendar,
        faults: FaultSet,
        customers: pl.DataFrame,
        logs: LogSink,
    ) -> None:
        self.seed = seed
        self.calendar = calendar
        self.faults = faults
        self.logs = logs
        self.customers = customers.select("customer_id", "signup_day", "monthly_price")
        self.viewing = ViewingWindow(self.customers["customer_id"].to_numpy())
        self.billing: deque[pl.DataFrame] = deque(maxlen=BILLING_DAYS)
        self.tickets: deque[pl.DataFrame] = deque(maxlen=30)
        self.fill_values: dict[str, float] | None = None
        self.runs: list[dict] = []
        self.policy: list[dict] = []
        self.health: list[pl.DataFrame] = []

    def observe(
        self,
        activity: pl.DataFrame,
        billing: pl.DataFrame,
        tickets: pl.DataFrame,
        prices: np.ndarray,
    ) -> None:
        """One day's raw rows as ingested, and each customer's monthly price as the CRM holds it
        at the day's end (in the order of the customers the job was made with)."""
        # A copy: the world goes on changing its own array.
        self.customers = self.customers.with_columns(pl.Series("monthly_price", prices.copy()))
        self.viewing.add(activity)
        self.billing.append(billing.select("customer_id", "status"))
        self.tickets.append(tickets.select("customer_id", "resolved_at"))

    def _aggregate(self, day: int, active_ids: np.ndarray) -> pl.DataFrame:
        as_of = feature_timestamp(self.calendar, day)
        agg = self.viewing.aggregates()
        failures = (
            pl.concat(list(self.billing))
            .filter(pl.col("status") == FAILED_CHARGE)
            .group_by("customer_id")
            .agg(pl.len().alias("payment_failures_30d"))
        )
        tickets = (
            pl.concat(list(self.tickets))
            .group_by("customer_id")
            .agg(
                pl.len().alias("tickets_30d"),
                (pl.col("resolved_at").is_null() | (pl.col("resolved_at") > as_of))
                .sum()
                .alias("unresolved_tickets_30d"),
            )
        )

        def covered(known: str, days: str) -> pl.Expr:
            # A window with watch time for under MIN_COVERAGE of its active days is not trusted.
            return pl.col(known) >= MIN_COVERAGE * pl.col(days)

        def avg_minutes(total: str, known: str, days: str, window: int) -> pl.Expr:
            # Scale the known days up to all active days; no activity at all is a real zero.
            return (
                pl.when(pl.col(days).fill_null(0) == 0)
                .then(0.0)
                .when(~covered(known, days))
                .then(None)
                .otherwise(pl.col(total) * pl.col(days) / (pl.col(known) * window))
            )

        base = pl.DataFrame({"customer_id": active_ids}).join(
            self.customers, on="customer_id", how="left"
        )
        return (
            base.join(agg, on="customer_id", how="left")
            .join(failures, on="customer_id", how="left")
            .join(tickets, on="customer_id", how="left")
            .with_columns(
                (day - pl.col("signup_day")).alias("tenure_days"),
                avg_minutes("_min_7", "_known_7", "_days_7", 7).alias("avg_daily_minutes_7d"),
                avg_minutes("_min_28", "_known_28", "_days_28", 28).alias("avg_daily_minutes_28d"),
                pl.when(pl.col("_days_28").fill_null(0) == 0)
                .then(0.0)
                .when(~covered("_known_28", "_days_28"))
                .then(None)
                .otherwise(pl.col("_min_28") / pl.col("_known_sessions_28"))
                .alias("minutes_per_session_28d"),
                pl.col("days_since_last_session").fill_null(28),
                *[
                    pl.col(c).fill_null(0)
                    for c in (
                        "sessions_7d",
                        "sessions_28d",
                        "playback_errors_7d",
                        "payment_failures_30d",
                        "tickets_30d",
                        "unresolved_tickets_30d",
                    )
                ],
            )
            .with_columns(
                ((pl.col("sessions_7d") / 7) / (pl.col("sessions_28d") / 28 + 0.1)).alias(
                    "sessions_trend"
                )
            )
            .select("customer_id", *MODEL_FEATURES)
            .cast(FEATURE_SCHEMA)
            .with_columns(pl.col(c).round(4) for c in MODEL_FEATURES)
        )

    def _policy_for(self, day: int, features: pl.DataFrame) -> dict[str, float]:
        if self.fill_values is None:
            # The policy was set when these features were first backfilled: the column mean.
            self.fill_values = {c: round(float(features[c].mean()), 4) for c in IMPUTED_FEATURES}
        ctx = HookContext(seed=self.seed, day=day, calendar=self.calendar)
        policy = self.faults.apply("features.imputation", dict(self.fill_values), ctx)
        last = {row["feature"]: row["fill_value"] for row in self.policy}
        for feature, value in policy.items():
            if last.get(feature) != value:
                self.policy.append(
                    {
                        "feature": feature,
                        "strategy": "mean",
                        "fill_value": value,
                        "effective_from": feature_timestamp(self.calendar, day),
                    }
                )
        return policy

    def run(self, day: int, active_ids: np.ndarray) -> pl.DataFrame:
        g = rng.stream(self.seed, "feature-job", day)
        started = feature_timestamp(self.calendar, day) + dt.timedelta(
            hours=2, seconds=g.uniform(0, 240)
        )
        features = self._aggregate(day, active_ids)
        policy = self._policy_for(day, features)
        nulls_seen = int(sum(features[c].null_count() for c in IMPUTED_FEATURES))
        null_ratio = {c: features[c].null_count() / max(features.height, 1) for c in MODEL_FEATURES}
        features = features.with_columns(pl.col(c).fill_null(v) for c, v in policy.items())
        ctx = HookContext(seed=self.seed, day=day, calendar=self.calendar)
        features = self.faults.apply("features.rows", features, ctx)
        nulls_left = int(sum(features[c].null_count() for c in MODEL_FEATURES))
        rows_in = self.viewing.rows_in() + sum(f.height for f in self.billing)
        duration = 18 + rows_in / 9000 + g.gamma(2.0, 3.0)
        if day >= FAST_RELEASE_DAY:
            duration /= FAST_RELEASE_SPEEDUP
        duration = round(duration, 2)
        finished = started + dt.timedelta(seconds=duration)
        run = {
            "run_id": f"{JOB_NAME}-{self.calendar.date(day):%Y%m%d}",
            "job": JOB_NAME,
            "feature_date": self.calendar.date(day),
            "started_at": started,
            "finished_at": finished,
            "duration_s": duration,
            "rows_in": rows_in,
            "rows_out": features.height,
            "nulls_seen": nulls_seen,
            "nulls_imputed": nulls_seen - min(nulls_seen, nulls_left),
            "status": "success",
        }
        self.runs.append(run)
        self.health.append(
            pl.DataFrame(
                {
                    "ts": [finished] * (2 * len(MODEL_FEATURES)),
                    "metric": ["feature_null_ratio"] * len(MODEL_FEATURES)
                    + ["feature_mean"] * len(MODEL_FEATURES),
                    "label": MODEL_FEATURES * 2,
                    "value": [null_ratio[c] for c in MODEL_FEATURES]
                    + [features[c].mean() for c in MODEL_FEATURES],
                },
                schema={
                    "ts": pl.Datetime("us"),
                    "metric": pl.Utf8,
                    "label": pl.Utf8,
                    "value": pl.Float64,
                },
            )
        )
        self.logs.emit(
            started,
            SERVICE,
            "info",
            "run_started",
            f"{JOB_NAME} started",
            run_id=run["run_id"],
            feature_date=str(run["feature_date"]),
        )
        self.logs.emit(
            finished,
            SERVICE,
            "info",
            "run_finished",
            f"{JOB_NAME} finished: {run['rows_out']} rows written in {duration:.1f}s",
            **{k: run[k] for k in ("run_id", "rows_in", "rows_out", "nulls_seen", "nulls_imputed")},
        )
        return features.with_columns(
            pl.lit(feature_timestamp(self.calendar, day))
            .cast(pl.Datetime("us"))
            .alias("event_timestamp"),
            pl.lit(finished).cast(pl.Datetime("us")).alias("created_timestamp"),
        ).select("customer_id", "event_timestamp", "created_timestamp", *MODEL_FEATURES)

    def run_frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.runs)

    def health_frame(self) -> pl.DataFrame:
        return pl.concat(self.health)

    def policy_frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.policy)
