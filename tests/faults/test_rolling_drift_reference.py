"""The rolling-reference fault: parameters, the creep, the trailing reference and its reset."""

from __future__ import annotations

import re

import duckdb
import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from sandbox import scenario
from sandbox.clock import Calendar
from sandbox.faults.base import FaultSet, HookContext, WorldData
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
    assert f.handle("ingest.activity", rows, ctx(9)).equals(rows)
    out = f.handle("ingest.activity", rows, ctx(11))
    assert out["minutes_watched"].to_list() == [98.0, None, 32.6]
    assert f.served_factor(10) == 1.0  # the day-10 batch reads raw days 3..9
    assert f.served_factor(12) == pytest.approx((0.99 + 0.99**2 + 5) / 7)


class Predictions:
    """The predictions log in a real DuckDB, as the hook reads it; each day's batch rows carry
    features equal to the day, so a reference's days can be read off."""

    def __init__(self) -> None:
        self.con = duckdb.connect()
        self.con.execute("CREATE SCHEMA serving")
        self.data = WorldData(self.con)
        self.next_id = 0

    def log(self, day: int, source: str = "batch") -> None:
        rows = batch(day if source == "batch" else day + 100, source).with_columns(
            prediction_id=pl.int_range(self.next_id, self.next_id + 50),
            request_ts=pl.lit(CAL.at(day, 6.0)).cast(pl.Datetime("us")),
        )
        self.next_id += 50
        self.con.register("rows", rows.to_arrow())
        exists = self.con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'predictions'"
        ).fetchone()
        verb = (
            "INSERT INTO serving.predictions"
            if exists and exists[0]
            else ("CREATE TABLE serving.predictions AS")
        )
        self.con.execute(f"{verb} SELECT * FROM rows")
        self.con.unregister("rows")

    def reference(self, faults: FaultSet, day: int) -> pl.DataFrame | None:
        return faults.with_data(self.data).apply("monitor.drift_reference", None, ctx(day))


def test_reference_is_the_trailing_window_of_batch_rows_from_onset() -> None:
    faults = FaultSet([fault(onset_day=15, window_days=3)])
    log = Predictions()

    def live(day: int) -> pl.DataFrame | None:
        log.log(day)
        log.log(day, "online")  # never in the reference
        return log.reference(faults, day)

    assert all(live(d) is None for d in range(1, 15))
    ref_15 = live(15)
    assert ref_15 is not None and sorted(set(ref_15["tenure_days"])) == [12.0, 13.0, 14.0]
    assert ref_15.columns == MODEL_FEATURES and ref_15.height == 150
    ref_16 = live(16)
    assert ref_16 is not None and sorted(set(ref_16["tenure_days"])) == [13.0, 14.0, 15.0]
    # Asked again later (a scheduler starting mid-history), a day gets the same reference.
    live(17)
    again = log.reference(faults, 15)
    assert again is not None and again.equals(ref_15)


def test_onset_on_the_first_day_uses_the_training_reference_until_a_day_was_served() -> None:
    faults = FaultSet([fault(onset_day=1, window_days=2)])
    log = Predictions()
    log.log(1)
    assert log.reference(faults, 1) is None
    log.log(2)
    ref = log.reference(faults, 2)
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
