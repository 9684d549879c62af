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
from dataclasses import dataclass

import duckdb
import numpy as np

from sandbox.pipeline.train import FLAGGED_SHARE
from sandbox.review.fills import judge
from sandbox.review.world_reads import read_once

# Within this share of the plan a list is on plan: the no-fault world's daily flagged share moves
# between about 9.7% and 11.4% of the base with a fixed threshold.
ON_PLAN = 0.2
# The batch's scores are kept as this many quantiles a day (each the middle of its thousandth): a
# share is read to a tenth of a percent, finer than any move the judgement tells apart, and a
# world's worth stays small.
QUANTILES = 1000


@dataclass(frozen=True)
class ThresholdReference:
    # batch day -> when its batch ran, its scores at every 1/QUANTILES quantile (ascending), and
    # the threshold it decided with
    ran_at: dict[dt.date, dt.datetime]
    quantiles: dict[dt.date, np.ndarray]
    thresholds: dict[dt.date, float]

    def _day(self, at: dt.datetime) -> dt.date | None:
        """The day of the last batch that had run by `at`."""
        days = sorted(self.ran_at)
        i = bisect.bisect_right([self.ran_at[d] for d in days], at)
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


def _read(con: duckdb.DuckDBPyConnection) -> ThresholdReference:
    points = ", ".join(f"{(i + 0.5) / QUANTILES:.5f}" for i in range(QUANTILES))
    rows = con.execute(
        f"SELECT request_ts::DATE, min(request_ts), quantile_disc(score, [{points}]), "
        "arg_max(threshold, request_ts) FROM serving.predictions "
        "WHERE source = 'batch' AND score IS NOT NULL AND threshold IS NOT NULL GROUP BY 1"
    ).fetchall()
    return ThresholdReference(
        {day: ran for day, ran, _, _ in rows},
        {day: np.asarray(q, dtype=np.float64) for day, _, q, _ in rows},
        {day: float(t) for day, _, _, t in rows},
    )


# The world's threshold reference, read once per built world (None when it cannot be read now).
reference = read_once(_read)
