"""The rolling-reference fault: parameters, the creep, the trailing reference and its reset."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from sandbox import scenario
from sandbox.clock import Calendar
from sandbox.faults.base import FaultSet, HookContext
from sandbox.faults.rolling_drift_reference import CREPT, Params, RollingDriftReference
from sandbox.pipeline.features import MODEL_FEATURES

CAL = scenario.load(None).world.calendar()
FORBIDDEN = re.compile(r"\bfault|inject|planted|answer|sabotag|\bbug\b", re.I)


def fault(**params: object) -> RollingDriftReference:
    return RollingDriftReference(Params(**params))


def ctx(day: int, calendar: Calendar = CAL) -> HookContext:
    return HookContext(seed=1, day=day, calendar=calendar)


def batch(day: int, source: str = "batch", n: int = 50) -> pl.DataFrame:
    """A scored frame whose features all equal `day`, so a reference's days can be read off."""
    return pl.DataFrame(
        {
            "customer_id": np.arange(n, dtype=np.int64),
            "source": [source] * n,
            **{c: [float(day)] * n for c in MODEL_FEATURES},
            "score": [0.1] * n,
        }
    )


@pytest.mark.parametrize(
    "params",
    [
        {"daily_decline": 0.001},
        {"daily_decline": 0.05},
        {"window_days": 0},
        {"window_days": 30},
        {"daily_decline": 0.02, "window_days": 3},  # a day would sit 4% from its window
        {"daily_decline": 0.01, "window_days": 7},
        {"surprise": 1},
    ],
)
def test_invalid_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Params(**params)


def test_fast_creep_needs_a_short_window() -> None:
    assert Params(daily_decline=0.025, window_days=1).window_days == 1
    assert Params(daily_decline=0.005, window_days=9).window_days == 9
    assert Params(daily_decline=0.003, window_days=14).window_days == 14


def test_source_declines_compounding_from_onset() -> None:
    f = fault(onset_day=10, daily_decline=0.01)
    assert f.factor(9) == 1.0
    assert f.factor(10) == pytest.approx(0.99)
    assert f.factor(19) == pytest.approx(0.99**10)
    ramped = fault(onset_day=10, daily_decline=0.01, ramp_days=2)
    assert ramped.factor(10) == pytest.approx(0.995)
    assert ramped.factor(12) == pytest.approx(0.995 * 0.99 * 0.99)
    rows = pl.DataFrame({"customer_id": [1, 2, 3], "minutes_watched": [100.0, None, 33.3]})
    assert f.apply("ingest.activity", rows, ctx(9)).equals(rows)
    out = f.apply("ingest.activity", rows, ctx(11))
    assert out["minutes_watched"].to_list() == [98.0, None, 32.6]
    assert f.served_factor(10) == 1.0  # the day-10 batch reads raw days 3..9
    assert f.served_factor(12) == pytest.approx((0.99 + 0.99**2 + 5) / 7)


def test_reference_is_the_trailing_window_of_batch_rows_from_onset() -> None:
    f = fault(onset_day=15, window_days=3)
    faults = FaultSet([f])

    def live(day: int) -> pl.DataFrame | None:
        faults.apply("serve.scores", batch(day), ctx(day))
        faults.apply("serve.scores", batch(day + 100, "online"), ctx(day))  # never kept
        return faults.apply("monitor.drift_reference", None, ctx(day))

    assert all(live(d) is None for d in range(1, 15))
    ref_15 = live(15)
    assert ref_15 is not None and sorted(set(ref_15["tenure_days"])) == [12.0, 13.0, 14.0]
    assert ref_15.columns == MODEL_FEATURES and ref_15.height == 150
    ref_16 = live(16)
    assert ref_16 is not None and sorted(set(ref_16["tenure_days"])) == [13.0, 14.0, 15.0]
    assert len(f._served) <= 4
    # A second build with the same instance starts over: nothing from the first run leaks in.
    assert all(live(d) is None for d in range(1, 15))
    assert sorted(set(live(15)["tenure_days"])) == [12.0, 13.0, 14.0]


def test_onset_on_the_first_day_uses_the_training_reference_until_a_day_was_served() -> None:
    f = fault(onset_day=1, window_days=2)
    faults = FaultSet([f])
    faults.apply("serve.scores", batch(1), ctx(1))
    assert faults.apply("monitor.drift_reference", None, ctx(1)) is None
    faults.apply("serve.scores", batch(2), ctx(2))
    ref = faults.apply("monitor.drift_reference", None, ctx(2))
    assert ref is not None and set(ref["tenure_days"]) == {1.0}


def test_story_is_ordinary_and_the_key_is_complete() -> None:
    f = fault(onset_day=15)
    entries = f.changelog(CAL)
    assert {e["kind"] for e in entries} == {"config", "upstream"}
    for entry in entries:
        assert not FORBIDDEN.search(entry["title"] + entry["body"])
        assert f.id not in entry["title"] + entry["body"]
    key = f.key(CAL)
    assert {e.kind for e in key.evidence} == {"table_column", "metric", "changelog"}
    assert all(e.window_start <= e.window_end for e in key.evidence)
    assert {e["title"] for e in entries} <= {e.ref for e in key.evidence}
    assert 3 <= len(key.investigation) <= 5
    assert set(CREPT) == {
        "avg_daily_minutes_7d",
        "avg_daily_minutes_28d",
        "minutes_per_session_28d",
    }


def test_drift_rows_step_needs_a_moving_reference() -> None:
    step = fault(onset_day=15).investigation(CAL)[1]
    days = [CAL.date(d) for d in range(10, 20)]
    fixed = pl.DataFrame(
        {
            "report_date": days,
            "feature": ["avg_daily_minutes_7d"] * 10,
            "reference_mean": [53.0] * 10,
            "current_mean": [53.0 - d * 0.5 for d in range(10)],
            "drift_score": [0.01] * 10,
            "drifted": [False] * 10,
        }
    )
    rolling = fixed.with_columns(
        pl.Series("reference_mean", [53.0] * 5 + [52.0 - d * 0.5 for d in range(5)])
    )
    assert step.found(rolling) and not step.found(fixed)
    flagged = rolling.with_columns(pl.Series("drifted", [False] * 9 + [True]))
    assert not step.found(flagged)
