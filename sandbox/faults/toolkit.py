"""The mechanics faults repeat, written once: the window their evidence lies in, evidence built in
that window, numbers in a check's detail, the evening peak that load-driven faults follow, and the
common live series a fault declares as its symptom (`mean_score`, `flagged_share`, `served_mean`).

A fault's story happens in a window of days, usually from its onset to the last day the candidate
can see. `window` gives it, and builds the answer key's evidence in it:

    w = window(calendar, self.params.onset_day)
    evidence = [
        w.column("raw-nulls", "raw.viewing_activity.minutes_watched", "NULL share rises"),
        w.metric("null-metric", "feature_null_ratio", "the ratio climbs with the rollout"),
        w.log("job-log", r"nulls_imputed", "run_finished lines report imputed NULLs"),
        w.changelog("rollout", "player SDK 7.2 staged rollout", "the upstream change",
                    start=w.start - dt.timedelta(days=1)),
    ]

A check's detail writes measured numbers with `fmt` ("n/a" when there is none). A check the world
cannot decide is `Check(name=..., outcome="not measurable", detail=...)` (see `base.Check`); the
measurements several faults' checks share are in `measure`.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Callable
from importlib import resources
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from sandbox.clock import Calendar
from sandbox.faults.base import Evidence, EvidenceKind, Symptom
from sandbox.product import HOURLY_TRAFFIC


class Window(NamedTuple):
    """The days from `start` to `end` (both included) in which evidence lies. Each builder makes
    one `Evidence` in the window; `start=` or `end=` moves a bound for that item only."""

    start: dt.date
    end: dt.date

    def column(
        self,
        id: str,
        ref: str,
        description: str,
        *,
        start: dt.date | None = None,
        end: dt.date | None = None,
    ) -> Evidence:
        """A table column, `schema.table.column`."""
        return self._evidence(id, "table_column", ref, description, start, end)

    def metric(
        self,
        id: str,
        ref: str,
        description: str,
        *,
        start: dt.date | None = None,
        end: dt.date | None = None,
    ) -> Evidence:
        """A metric series of telemetry.metrics, by name."""
        return self._evidence(id, "metric", ref, description, start, end)

    def log(
        self,
        id: str,
        pattern: str,
        description: str,
        *,
        start: dt.date | None = None,
        end: dt.date | None = None,
    ) -> Evidence:
        """Log lines whose attributes match a regular expression."""
        return self._evidence(id, "log_pattern", pattern, description, start, end)

    def changelog(
        self,
        id: str,
        title: str,
        description: str,
        *,
        start: dt.date | None = None,
        end: dt.date | None = None,
    ) -> Evidence:
        """An ops.changelog entry, by its title."""
        return self._evidence(id, "changelog", title, description, start, end)

    def _evidence(
        self,
        id: str,
        kind: EvidenceKind,
        ref: str,
        description: str,
        start: dt.date | None,
        end: dt.date | None,
    ) -> Evidence:
        return Evidence(
            id=id,
            kind=kind,
            ref=ref,
            description=description,
            window_start=self.start if start is None else start,
            window_end=self.end if end is None else end,
        )


def window(calendar: Calendar, first_day: int, last_day: int | None = None) -> Window:
    """Production days `first_day` to `last_day` (by default the last day the candidate sees)."""
    last = calendar.last_visible_day if last_day is None else last_day
    return Window(calendar.date(first_day), calendar.date(last))


def fmt(value: float | None, spec: str = ".2f") -> str:
    """A measured number for a check's detail, in a format spec (".3f", ".1%"); "n/a" for none."""
    return "n/a" if value is None else format(value, spec)


def num(value: object) -> float:
    """An aggregate of a query's result (a column's max, a row's value) as a float: Polars types
    them as any Python value. None (an empty column, a NULL) is NaN, which compares false."""
    if value is None:
        return float("nan")
    if isinstance(value, int | float):
        return float(value)
    raise TypeError(f"not a number: {value!r}")


# -- the routine changes around a fault ----------------------------------------------------------
def routine_changes(module: str, around: int, last_day: int | None = None) -> list[dict[str, Any]]:
    """The ordinary changelog entries a fault's module keeps in its data file
    (`data/<module>.toml` beside it, `[[routine_changes]]`): each on day `around` plus its
    `day_offset`, kept within day 1 and `last_day`. `module` is the fault module's `__name__`, so
    a fault from another package keeps its file in its own package."""
    package, _, name = module.rpartition(".")
    text = resources.files(package).joinpath("data", f"{name}.toml").read_text()

    def day(offset: int) -> int:
        first = max(around + offset, 1)
        return first if last_day is None else min(first, last_day)

    return [
        {
            "day": day(entry["day_offset"]),
            "hour": float(entry["hour"]),
            "kind": entry["kind"],
            "service": entry["service"],
            "title": entry["title"],
            "body": entry["body"],
            "author": entry["author"],
        }
        for entry in tomllib.loads(text)["routine_changes"]
    ]


# -- the evening peak ---------------------------------------------------------------------------
LOAD = HOURLY_TRAFFIC / HOURLY_TRAFFIC.max()  # each hour's traffic as a share of the busiest's
LOAD_KNEE = 0.5  # below this share of peak traffic the serving path keeps up
PEAK_HOURS = tuple(int(h) for h in np.flatnonzero(LOAD >= 0.85))  # 19..21 with today's curve
QUIET_HOURS = tuple(int(h) for h in np.flatnonzero(LOAD < LOAD_KNEE))


def at_peak(column: str = "request_ts") -> str:
    """SQL predicate: the timestamp `column` falls in an evening peak hour."""
    return f"hour({column}) IN ({', '.join(str(h) for h in PEAK_HOURS)})"


def load_curve(hours: np.ndarray) -> np.ndarray:
    """Share of the peak hour's rate an hour of the day sees: 0 below the knee, 1 at peak."""
    return np.clip((LOAD[hours] - LOAD_KNEE) / (1 - LOAD_KNEE), 0.0, 1.0)


def expected_by_hour(
    rows: pl.DataFrame, share: Callable[[int, np.ndarray], np.ndarray], calendar: Calendar
) -> list[float]:
    """The expected share of each row of (`day` date, `hour`), from `share(day, hours)`."""
    return [
        float(share(calendar.day_of(d), np.array([h]))[0])
        for d, h in zip(rows["day"], rows["hour"], strict=True)
    ]


# -- symptoms: the live series the review charts a fault's recovery by ---------------------------
def mean_score() -> Symptom:
    return Symptom(
        id="mean_score", title="Mean churn score, online requests", unit="score", value="avg(score)"
    )


def flagged_share() -> Symptom:
    return Symptom(
        id="flagged_share",
        title="Share of online requests flagged",
        unit="ratio",
        value="avg(decision::INTEGER)::DOUBLE",
    )


def served_mean(feature: str) -> Symptom:
    """A model feature's mean as the model server served it to online requests."""
    return Symptom(
        id=f"served_{feature}",
        title=f"Mean served {feature}, online requests",
        value=f"avg({feature})",
    )
