"""The fault toolkit: evidence built in a window, numbers in details, checks with three outcomes,
and `sandbox verify` counting the three apart."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sandbox import scenario
from sandbox.faults import toolkit
from sandbox.faults.base import Check, Evidence, FaultParams
from sandbox.faults.measure import score_over_churn
from sandbox.faults.toolkit import (
    PEAK_HOURS,
    QUIET_HOURS,
    Window,
    expected_by_hour,
    fmt,
    load_curve,
    routine_changes,
    window,
)
from sandbox.verify import Verification

CAL = scenario.load(None).world.calendar()


def test_a_window_runs_to_the_last_visible_day_and_builds_evidence_in_it() -> None:
    w = window(CAL, 15)
    assert w == (CAL.date(15), CAL.date(CAL.last_visible_day))
    start, end = w
    assert w.column("raw-nulls", "raw.viewing_activity.minutes_watched", "rises") == Evidence(
        id="raw-nulls",
        kind="table_column",
        ref="raw.viewing_activity.minutes_watched",
        description="rises",
        window_start=start,
        window_end=end,
    )
    kinds = [
        w.metric("m", "feature_null_ratio", "d").kind,
        w.log("l", r"nulls_imputed", "d").kind,
        w.changelog("c", "a title", "d").kind,
    ]
    assert kinds == ["metric", "log_pattern", "changelog"]
    early = w.changelog("c", "a title", "d", start=start - dt.timedelta(days=1))
    assert (early.window_start, early.window_end) == (CAL.date(14), end)
    assert window(CAL, 3, 9) == Window(CAL.date(3), CAL.date(9))


def test_fmt_writes_a_measurement_or_says_there_is_none() -> None:
    assert fmt(0.12345) == "0.12"
    assert fmt(0.12345, ".3f") == "0.123"
    assert fmt(0.12345, ".1%") == "12.3%"
    assert fmt(None) == fmt(None, ".0%") == "n/a"


def test_a_check_passes_fails_or_is_not_measurable() -> None:
    passed = Check(name="a", passed=True, detail="d")
    failed = Check(name="a", passed=False, detail="d")
    unknown = Check(name="a", outcome="not measurable", detail="too few labels")
    assert [c.outcome for c in (passed, failed, unknown)] == ["passed", "failed", "not measurable"]
    assert [c.passed for c in (passed, failed, unknown)] == [True, False, False]
    assert [c.measured for c in (passed, failed, unknown)] == [True, True, False]
    dumped = unknown.model_dump()
    assert dumped["outcome"] == "not measurable" and dumped["passed"] is False
    assert Check.model_validate(dumped) == unknown


def test_verification_counts_the_three_outcomes_apart() -> None:
    ok = Check(name="a", passed=True, detail="d")
    unknown = Check(name="b", outcome="not measurable", detail="d")
    result = Verification({"f": [ok, unknown], "decoy:x": [ok]}, [ok])
    assert result.counts == {"passed": 3, "failed": 0, "not measurable": 1}
    assert result.passed and not result.unconfirmed
    # A fault that no check that passed shows is not verified, though nothing failed.
    only_unknown = Verification({"f": [unknown]}, [ok])
    assert only_unknown.unconfirmed == ["f"] and not only_unknown.passed
    assert only_unknown.as_json()["counts"] == {"passed": 1, "failed": 0, "not measurable": 1}
    failed = Verification({"f": [ok, Check(name="c", passed=False, detail="d")]}, [ok])
    assert not failed.passed and failed.counts["failed"] == 1
    # A brief that says what the world does not show fails the world, faults verified or not.
    untrue = Verification({"f": [ok]}, [ok], [Check(name="brief", passed=False, detail="d")])
    assert not untrue.passed and untrue.counts["failed"] == 1
    assert untrue.as_json()["brief"][0]["outcome"] == "failed"


def test_mean_intensity_follows_the_ramp() -> None:
    assert FaultParams(onset_day=1, ramp_days=0).mean_intensity(42) == 1.0
    ramped = FaultParams(onset_day=40, ramp_days=7).mean_intensity(42)
    assert ramped == pytest.approx(2 / 7)


def test_load_curve_is_zero_when_quiet_and_one_at_the_peak() -> None:
    curve = load_curve(np.arange(24))
    assert curve.max() == 1.0 and int(np.argmax(curve)) in PEAK_HOURS
    assert (curve[list(QUIET_HOURS)] == 0).all()
    assert (curve[list(PEAK_HOURS)] >= 0.7).all()
    rows = pl.DataFrame({"day": [CAL.date(10), CAL.date(11)], "hour": [3, PEAK_HOURS[0]]})
    expected = expected_by_hour(rows, lambda day, hours: day * load_curve(hours), CAL)
    assert expected == [0.0, 11 * float(load_curve(np.array([PEAK_HOURS[0]]))[0])]


def test_score_over_churn_of_a_group() -> None:
    frame = pl.DataFrame(
        {"group": [True, False], "mean_score": [0.02, 0.04], "churn_rate": [0.04, 0.0]}
    )
    assert score_over_churn(frame, "group", True) == 0.5
    assert score_over_churn(frame, "group", False) == float("inf")  # never churns
    assert score_over_churn(frame.head(1), "group", False) == float("inf")  # no such group


def test_routine_changes_come_from_the_faults_data_file_within_the_visible_days() -> None:
    data = Path(toolkit.__file__).parent / "data"
    for path in sorted(data.glob("*.toml")):
        entries = routine_changes(f"sandbox.faults.{path.stem}", 30)
        assert entries, path.name
        for entry in entries:
            assert list(entry) == ["day", "hour", "kind", "service", "title", "body", "author"]
            assert all(entry[k] for k in ("kind", "service", "title", "body", "author")), entry
            assert 0 <= entry["hour"] < 24
    # Around day 2 an entry days before lands on day 1, and none after the last visible day.
    early = routine_changes("sandbox.faults.duplicate_billing_events", 2)
    assert [e["day"] for e in early] == [1, 4, 10]
    late = routine_changes("sandbox.faults.duplicate_billing_events", 2, last_day=5)
    assert [e["day"] for e in late] == [1, 4, 5]
    with pytest.raises(FileNotFoundError):
        routine_changes("sandbox.faults.label_leakage", 2)  # a fault with no routine changes
