"""What a decision threshold set from the ops console is judged against: the share of the daily
batch it would flag, against the share the retention team plans for (`FLAGGED_SHARE`: each
release's threshold is the score that flags it on the holdout).

A fault that a new threshold mitigates declares so in its answer key; whether a given threshold
helps depends on the value, which only the world's data can tell. One that brings the list back
to the team's capacity mitigates; one that shrinks or swells it further from it harms the
retention team whatever was planted; one that flags the same customers changes nothing."""

from __future__ import annotations

import bisect
import datetime as dt
import functools
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from sandbox.layout import WorldPaths, read_manifest
from sandbox.pipeline.train import FLAGGED_SHARE
from sandbox.review.fills import judge

# Within this share of the plan a list is on plan: the no-fault world's daily flagged share moves
# between about 9.7% and 11.4% of the base with a fixed threshold.
ON_PLAN = 0.2
# The batch's scores are kept as this many quantiles a day: a share is read to a tenth of a
# percent, finer than any move the judgement tells apart, and a world's worth stays small.
QUANTILES = 1000


@dataclass(frozen=True)
class ThresholdReference:
    # batch day -> the day's scores at every 1/QUANTILES quantile, ascending
    quantiles: dict[dt.date, np.ndarray]
    # batch day -> the threshold the day's batch decided with
    thresholds: dict[dt.date, float]

    def _day(self, at: dt.datetime) -> dt.date | None:
        days = sorted(self.quantiles)
        i = bisect.bisect_right(days, at.date())
        return days[i - 1] if i else None

    def share(self, threshold: float, at: dt.datetime) -> float | None:
        """The share of the last batch before `at` that `threshold` flags (score at or above)."""
        day = self._day(at)
        if day is None:
            return None
        return float(np.mean(self.quantiles[day] >= threshold))

    def threshold(self, at: dt.datetime) -> float | None:
        """The threshold the last batch before `at` decided with."""
        day = self._day(at)
        return None if day is None else self.thresholds[day]


def judge_share(after: float, before: float) -> str:
    """`helps`, `harms`, `little` or `unchanged` for a flagged share moved from `before` to
    `after`, against the plan."""
    return judge(after, before, FLAGGED_SHARE, on_target=ON_PLAN)


def reference(world: Path) -> ThresholdReference | None:
    """The world's threshold reference, read once per built world; None when it cannot be read
    now (not remembered: the next review tries again)."""
    try:
        manifest = read_manifest(world)
        return _read(str(Path(world).resolve()), str(manifest.get("content_hash")))
    except Exception:  # a world being rebuilt, or one without these tables
        return None


@functools.lru_cache(maxsize=4)
def _read(world: str, content_hash: str) -> ThresholdReference:
    """Raises when the world cannot be read, so a failure is never cached."""
    points = ", ".join(f"{i / QUANTILES:.4f}" for i in range(QUANTILES + 1))
    con = duckdb.connect(str(WorldPaths(Path(world)).duckdb), read_only=True)
    try:
        rows = con.execute(
            f"SELECT request_ts::DATE, quantile_disc(score, [{points}]), "
            "arg_max(threshold, request_ts) FROM serving.predictions "
            "WHERE source = 'batch' GROUP BY 1"
        ).fetchall()
    finally:
        con.close()
    return ThresholdReference(
        {day: np.asarray(q, dtype=np.float64) for day, q, _ in rows},
        {day: float(t) for day, _, t in rows},
    )
