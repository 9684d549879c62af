"""What a fill value set from the ops console is judged against: the feature's mean over the
training rows of the model the daily batch served (pins and rollbacks from the ops console aside:
the versions' means differ little), which is what mean imputation should fill with (the model
learned on those values), and the fill value the feature job used before the action.

A fault that a new fill mitigates declares so in its answer key; whether a given fill helps
depends on the value, which only the world's data can tell: one set still further from the
training-time mean than the broken one makes things worse, not better."""

from __future__ import annotations

import bisect
import datetime as dt
from dataclasses import dataclass

import duckdb

from sandbox.pipeline.features import IMPUTED_FEATURES
from sandbox.review.world_reads import read_once

# A fill helps when it closes at least this share of the gap between the fill in effect and the
# training-time mean; one that widens the gap harms; anything between changes little.
CLOSES = 0.5
# Within this share of the training-time mean a fill is on target: the mean of another sample of
# the same feature (the policy's own fill before the fault, a mean read off the feature store)
# differs from it by a few percent. A move smaller than a tenth of that changes nothing.
ON_TARGET = 0.05


@dataclass(frozen=True)
class FillReference:
    # feature -> model version -> mean of the feature over that version's training rows
    training_means: dict[str, dict[str, float]]
    # the model version the daily batch served, by day
    served: dict[dt.date, str]
    # feature -> (effective from, fill value), oldest first: the feature job's policy
    policy: dict[str, list[tuple[dt.datetime, float]]]

    def training_mean(self, feature: str, at: dt.datetime) -> float | None:
        """The feature's mean over the training rows of the model served on `at`'s day (the
        nearest day before it with a batch)."""
        day = max((d for d in self.served if d <= at.date()), default=None)
        if day is None:
            return None
        return self.training_means.get(feature, {}).get(self.served[day])

    def policy_fill(self, feature: str, at: dt.datetime) -> float | None:
        """The fill value the feature job's policy had in effect at `at`."""
        changes = self.policy.get(feature, [])
        i = bisect.bisect_right([since for since, _ in changes], at)
        return changes[i - 1][1] if i else None


def judge(value: float, before: float, mean: float, on_target: float = ON_TARGET) -> str:
    """`helps`, `harms`, `little` or `unchanged` for a value moved from `before` to `value`,
    against its target `mean` (for a fill, the training-time mean): on target within
    `on_target` of it."""
    near = on_target * abs(mean)
    gap, after = abs(before - mean), abs(value - mean)
    if abs(value - before) <= near / 10:
        return "unchanged"
    if after <= near:
        return "helps" if gap > near else "little"
    if after > gap:
        return "harms"
    if after <= gap * (1 - CLOSES):
        return "helps"
    return "little"


def _read(con: duckdb.DuckDBPyConnection) -> FillReference:
    means = ", ".join(f'avg("{f}") AS "{f}"' for f in IMPUTED_FEATURES)
    rows = con.execute(
        f"SELECT model_version, {means} FROM training.churn_training_set "
        "WHERE split = 'train' GROUP BY model_version"
    ).fetchall()
    served = con.execute(
        "SELECT request_ts::DATE, arg_max(model_version, request_ts) "
        "FROM serving.predictions WHERE source = 'batch' GROUP BY 1"
    ).fetchall()
    policy = con.execute(
        "SELECT feature, effective_from, fill_value FROM feature_store.imputation_policy "
        "ORDER BY feature, effective_from"
    ).fetchall()
    training_means: dict[str, dict[str, float]] = {f: {} for f in IMPUTED_FEATURES}
    for version, *values in rows:
        for feature, mean in zip(IMPUTED_FEATURES, values, strict=True):
            if mean is not None:
                training_means[feature][str(version)] = float(mean)
    changes: dict[str, list[tuple[dt.datetime, float]]] = {}
    for feature, since, fill in policy:
        if fill is not None:
            changes.setdefault(feature, []).append((since, float(fill)))
    return FillReference(training_means, {d: str(v) for d, v in served}, changes)


# The world's fill reference, read once per built world (None when it cannot be read now).
reference = read_once(_read)
