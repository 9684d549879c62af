"""The simulated calendar: day indices and their dates, derived from the scenario, never the wall clock.

Day 1 is the first production day. Days <= 0 are pre-history (day 0 is when the model was trained);
days after the production window are the live days revealed while a session runs. A burn-in period
before pre-history lets rolling windows fill before the feature store starts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Calendar:
    start_date: dt.date  # date of production day 1
    burn_in_days: int
    prehistory_days: int
    production_days: int
    live_days: int
    label_horizon_days: int

    @property
    def first_day(self) -> int:
        """First simulated day (start of the raw-data history)."""
        return 1 - self.prehistory_days - self.burn_in_days

    @property
    def first_feature_day(self) -> int:
        """First day the feature store holds (start of pre-history)."""
        return 1 - self.prehistory_days

    @property
    def last_production_day(self) -> int:
        return self.production_days

    @property
    def last_visible_day(self) -> int:
        """Last day whose rows exist in the world (end of the live days)."""
        return self.production_days + self.live_days

    @property
    def last_simulated_day(self) -> int:
        """The simulation runs past the visible days so every visible score date gets its label."""
        return self.last_visible_day + self.label_horizon_days

    def date(self, day: int) -> dt.date:
        return self.start_date + dt.timedelta(days=day - 1)

    def midnight(self, day: int) -> dt.datetime:
        return dt.datetime.combine(self.date(day), dt.time())

    def at(self, day: int, hours: float) -> dt.datetime:
        return self.midnight(day) + dt.timedelta(hours=hours)

    def day_of(self, when: dt.date | dt.datetime) -> int:
        d = when.date() if isinstance(when, dt.datetime) else when
        return (d - self.start_date).days + 1

    def weekday(self, day: int) -> int:
        """0 = Monday."""
        return self.date(day).weekday()
