"""A churn-model release: when it is trained, on what, how it is registered, and what serves it.

The world starts with one release (trained at the end of pre-history, serving from day 1). Later
releases are how the model lifecycle enters a scenario: a retrain, a challenger experiment, a
threshold change. Each release is trained at 16:00 the day before its `day` and serves from that
day's 06:00 batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sandbox.pipeline.features import MODEL_FEATURES

TRAINING_SNAPSHOTS = 8  # score dates in a training set
SNAPSHOT_SPACING_DAYS = 5  # staggered, so every weekday appears
LABEL_GAP_DAYS = 14  # the newest score date is this far back: its label has matured
TRAINING_HOUR = 16.0  # a release is trained (and registered) at this hour the day before it serves


@dataclass(frozen=True)
class Release:
    day: int  # first serving day
    score_days: tuple[int, ...] = ()  # empty = the standard matured-label window
    features: tuple[str, ...] = tuple(MODEL_FEATURES)
    alias: str | None = "champion"  # registry alias the release is given (None: just registered)
    run_name: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    note: str = "scheduled retrain"

    def training_days(self) -> tuple[int, ...]:
        if self.score_days:
            return self.score_days
        newest = self.day - 1 - LABEL_GAP_DAYS
        return tuple(newest - SNAPSHOT_SPACING_DAYS * k for k in range(TRAINING_SNAPSHOTS))

    def trained_at_day(self) -> int:
        return self.day - 1


INITIAL_RELEASE = Release(day=1, note="initial model")


@dataclass(frozen=True)
class Rollout:
    """What the model servers do with a newly registered release (the `serve.rollout` hook)."""

    version: str
    trained_threshold: float  # the cut-off its training run chose (top FLAGGED_SHARE of holdout)
    current_threshold: float | None  # what the servers use today (None: nothing served yet)
    threshold: float  # what they will use with it
    deploy: bool = True  # whether they switch to it at all
