"""Daily drift monitor, exercised with the real Evidently on small data."""

import datetime
import json
import re
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from sandbox.monitor.drift import DriftMonitor, DriftReportError, render_report_html

# Drift runs in worker processes that import Evidently: seconds each, so not in the fast tier.
pytestmark = pytest.mark.world

COLUMNS = ["basket_value", "session_minutes", "income", "tenure_days"]
REFERENCE_ROWS = 5_000
DAY_ROWS = 2_000
CLEAN, SHIFTED, HOLES, GONE = (
    datetime.date(2024, 3, 1) + datetime.timedelta(days=i) for i in range(4)
)


def _features(seed: int, n_rows: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "basket_value": rng.normal(50.0, 12.0, n_rows),
            "session_minutes": rng.normal(12.0, 4.0, n_rows),
            "income": rng.normal(3_000.0, 800.0, n_rows),
            "tenure_days": rng.integers(0, 720, n_rows),  # Int64 must work as well as Float64
            "customer_id": [f"c{i}" for i in range(n_rows)],  # not a feature: ignored
        }
    )


def _with_holes(frame: pl.DataFrame, column: str, share: float, seed: int) -> pl.DataFrame:
    hole = np.zeros(frame.height, dtype=bool)
    hole[np.random.default_rng(seed).permutation(frame.height)[: int(share * frame.height)]] = True
    return frame.with_columns(
        pl.when(pl.Series(hole)).then(None).otherwise(pl.col(column)).alias(column)
    )


@pytest.fixture(scope="module")
def reference() -> pl.DataFrame:
    return _features(0, REFERENCE_ROWS)


@pytest.fixture(scope="module")
def days(reference: pl.DataFrame) -> dict[datetime.date, pl.DataFrame]:
    shift = 2 * reference["session_minutes"].std()
    return {
        CLEAN: _features(1, DAY_ROWS),
        SHIFTED: _features(2, DAY_ROWS).with_columns(pl.col("session_minutes") + shift),
        HOLES: _with_holes(_features(3, DAY_ROWS), "income", 0.4, seed=3),
        GONE: _features(4, DAY_ROWS).with_columns(
            pl.lit(None, dtype=pl.Int64).alias("tenure_days")
        ),
    }


@pytest.fixture(scope="module")
def runs(reference, days) -> list[tuple[pl.DataFrame, pl.DataFrame]]:
    """Two independent runs on the same inputs; both start before either is fed, so the
    workers' Evidently imports overlap. The second uses two workers: scheduling must not matter."""
    with DriftMonitor(reference, COLUMNS) as first, DriftMonitor(reference, COLUMNS, 2) as second:
        for day, frame in days.items():
            first.submit(day, frame)
            second.submit(day, frame)
        return [(monitor.rows(), monitor.summary_rows()) for monitor in (first, second)]


@pytest.fixture(scope="module")
def rows(runs) -> pl.DataFrame:
    return runs[0][0]


@pytest.fixture(scope="module")
def summary(runs) -> pl.DataFrame:
    return runs[0][1]


def _day(frame: pl.DataFrame, day: datetime.date) -> pl.DataFrame:
    return frame.filter(pl.col("report_date") == day)


def _by_feature(rows: pl.DataFrame, day: datetime.date) -> dict[str, dict]:
    return {row["feature"]: row for row in _day(rows, day).iter_rows(named=True)}


def test_rows_have_one_sorted_row_per_day_and_feature(rows):
    assert rows.schema == pl.Schema(
        {
            "report_date": pl.Date,
            "feature": pl.Utf8,
            "stattest": pl.Utf8,
            "drift_score": pl.Float64,
            "threshold": pl.Float64,
            "drifted": pl.Boolean,
            "reference_mean": pl.Float64,
            "current_mean": pl.Float64,
            "current_null_share": pl.Float64,
        }
    )
    assert rows.select("report_date", "feature").rows() == [
        (day, feature) for day in (CLEAN, SHIFTED, HOLES, GONE) for feature in sorted(COLUMNS)
    ]


def test_day_from_reference_distribution_has_no_drift(rows, summary):
    clean = _day(rows, CLEAN)
    assert not clean["drifted"].any()
    assert clean["stattest"].unique().to_list() == ["Wasserstein distance (normed)"]
    assert (clean["drift_score"] < clean["threshold"]).all()
    assert _day(summary, CLEAN).row(0) == (CLEAN, DAY_ROWS, 4, 0, 0.0, False)


def test_column_shifted_two_sds_is_the_only_drifted_one(rows, summary):
    shifted = _by_feature(rows, SHIFTED)
    assert [f for f, row in shifted.items() if row["drifted"]] == ["session_minutes"]
    # A pure shift moves the normed Wasserstein distance by the shift in reference SDs.
    assert shifted["session_minutes"]["drift_score"] == pytest.approx(2.0, abs=0.15)
    minutes = shifted["session_minutes"]
    assert minutes["current_mean"] - minutes["reference_mean"] == pytest.approx(8.0, abs=0.5)
    assert _day(summary, SHIFTED).row(0) == (SHIFTED, DAY_ROWS, 4, 1, 0.25, False)


def test_null_share_is_reported_and_nulls_are_not_drift(rows):
    holes = _by_feature(rows, HOLES)
    assert holes["income"]["current_null_share"] == pytest.approx(0.4)
    assert holes["income"]["current_mean"] == pytest.approx(3_000.0, rel=0.02)
    assert not any(row["drifted"] for row in holes.values())
    assert {f: row["current_null_share"] for f, row in holes.items() if f != "income"} == {
        "basket_value": 0.0,
        "session_minutes": 0.0,
        "tenure_days": 0.0,
    }


def test_feature_with_no_values_is_flagged_without_a_score(rows, summary):
    tenure = _by_feature(rows, GONE)["tenure_days"]
    assert tenure["drifted"] is True
    assert tenure["current_null_share"] == 1.0
    assert (tenure["drift_score"], tenure["stattest"], tenure["current_mean"]) == (None, None, None)
    assert _day(summary, GONE)["n_drifted"].item() == 1


def test_runs_are_identical(runs):
    (rows_1, summary_1), (rows_2, summary_2) = runs
    assert_frame_equal(rows_1, rows_2)
    assert_frame_equal(summary_1, summary_2)


def test_scores_are_those_of_evidentlys_data_drift_preset(reference, days, rows):
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=COLUMNS)
    snapshot = Report([DataDriftPreset(columns=COLUMNS)]).run(
        Dataset.from_pandas(days[SHIFTED].to_pandas(), data_definition=definition),
        Dataset.from_pandas(reference.to_pandas(), data_definition=definition),
    )
    metrics = snapshot.dict()["metrics"]
    value_drift = {m["config"]["column"]: m for m in metrics if "column" in m["config"]}
    drifted_count = next(m["value"]["count"] for m in metrics if "columns" in m["config"])
    for feature, row in _by_feature(rows, SHIFTED).items():
        evidently = value_drift[feature]
        assert row["drift_score"] == pytest.approx(evidently["value"], abs=1e-6)
        assert row["stattest"] == evidently["config"]["method"]
        assert row["threshold"] == evidently["config"]["threshold"]
    assert drifted_count == 1


def _embedded_json(document: str) -> str:
    match = re.search(r"var (metric_\w+) = (\{.*?\});\n", document, re.S)
    assert match, "Evidently's dashboard data block is missing"
    return match.group(2)


def test_rendered_html_is_a_self_contained_report(reference, days):
    document = render_report_html(reference, days[SHIFTED], COLUMNS, "Drift <2024-03-02>")
    assert document.lstrip().startswith("<!DOCTYPE html>")
    assert "<title>Drift &lt;2024-03-02&gt;</title>" in document
    assert "window.drawDashboard(" in document
    assert "<script src=" not in document  # the JS library is embedded, not fetched
    data = _embedded_json(document)
    json.loads(data)
    for feature in COLUMNS:
        assert f'"{feature}"' in data


def test_rendering_survives_a_feature_with_no_values(reference, days):
    document = render_report_html(reference, days[GONE], COLUMNS, "gone")
    assert '"tenure_days"' in _embedded_json(document)


class _BrokenPayloadMonitor(DriftMonitor):
    """Ships the worker one column too few, so the failure happens inside the worker."""

    def _payload(self, current: pl.DataFrame) -> np.ndarray:
        return super()._payload(current)[:, 1:]


def test_failures_raise_in_the_parent_naming_the_date(reference, days):
    with _BrokenPayloadMonitor(reference, COLUMNS) as monitor:
        with pytest.raises(DriftReportError, match=r"2024-03-05.*missing column.*'income'"):
            monitor.submit(datetime.date(2024, 3, 5), days[CLEAN].drop("income"))
        monitor.submit(CLEAN, days[CLEAN])
        with pytest.raises(DriftReportError, match=r"2024-03-01.*expected a 2-d array"):
            monitor.rows()
        # The failed day stays failed; it must not silently vanish from later results.
        with pytest.raises(DriftReportError, match="2024-03-01"):
            monitor.summary_rows()
        with pytest.raises(ValueError, match="already submitted"):
            monitor.submit(CLEAN, days[CLEAN])


def test_importing_the_module_does_not_import_evidently():
    code = "import sys, sandbox.monitor.drift; sys.exit('evidently' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
