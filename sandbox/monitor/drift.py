"""Daily Evidently drift monitoring of served features against a training reference.

Two products per production day:

* queryable metric rows, computed at world-build time by `DriftMonitor`;
* a full Evidently HTML report, rendered only when someone opens it (`render_report_html`);
  the caller caches the HTML, the arguments here are data frames and not hashable keys.

Why it is built this way:

* `import evidently` costs seconds and hundreds of MB, and other processes import this module,
  so Evidently is imported only inside the worker process and inside `render_report_html`.
* The rows come from Evidently's drift engine itself (the stattest registry that
  `DataDriftPreset` and `ValueDrift` call: same automatic test choice, same default thresholds),
  not from a `Report`. A Report with DataDriftPreset + DataSummaryPreset spends ~3.6 s per day
  (20k reference / 25k current rows, 12 columns) mostly on plotly widgets and summary statistics
  the rows do not need; the engine alone takes ~0.16 s, and means and null shares are cheap
  numpy. `tests/monitor/test_drift.py` checks the scores against a real `DataDriftPreset` run.
* The reference is subsampled once, deterministically, to `REFERENCE_SAMPLE_ROWS` rows: the
  score's sampling noise then stays far below Evidently's thresholds, and the HTML report uses
  the same sample, so its drift scores equal the rows. The current day is used in full: at
  25k rows that costs ~0.09 s a day more than a 10k sample, and the report's row counts stay
  true.
* Everything is rounded to `DECIMALS` places, because the world's content hash covers the rows.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import importlib.util
import multiprocessing
import os
import sys
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import numpy as np
import polars as pl

from sandbox import schema

REFERENCE_SAMPLE_ROWS = 20_000
SAMPLE_SEED = 20_240_101
DECIMALS = 6

# Evidently's telemetry (and the iterative-telemetry library under it) checks these at send
# time; setting them guarantees nothing tries to reach the network, which this machine lacks.
NO_TELEMETRY_ENV = {"DO_NOT_TRACK": "1", "ITERATIVE_DO_NOT_TRACK": "1"}

ROW_SCHEMA = schema.polars_schema("monitoring.drift_feature_daily")
SUMMARY_SCHEMA = schema.polars_schema("monitoring.drift_daily")


class DriftReportError(RuntimeError):
    """A day's drift report could not be produced; the message names the report date."""


@dataclass(frozen=True)
class _ColumnResult:
    stattest: str | None
    drift_score: float | None
    threshold: float | None
    drifted: bool
    current_mean: float | None
    current_null_share: float | None


@dataclass(frozen=True)
class _DayResult:
    n_rows: int
    dataset_drift: bool
    columns: tuple[_ColumnResult, ...]
    reference_means: tuple[float | None, ...] | None = None  # set when the day had its own


# ---------------------------------------------------------------------------------------------
# Shared helpers (parent, worker and renderer must sample and convert identically)


def _sample_indices(n_rows: int, limit: int) -> np.ndarray | None:
    """Sorted row positions of a deterministic sample, or None when no sampling is needed."""
    if n_rows <= limit:
        return None
    rng = np.random.default_rng(SAMPLE_SEED)
    return np.sort(rng.choice(n_rows, size=limit, replace=False))


def _numeric_frame(frame: pl.DataFrame, columns: list[str], what: str) -> pl.DataFrame:
    """The requested columns as Float64; nulls and NaN both mean "missing" from here on."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} frame is missing column(s) {missing}")
    non_numeric = [c for c in columns if not frame.schema[c].is_numeric()]
    if non_numeric:
        raise ValueError(f"{what} frame has non-numeric column(s) {non_numeric}")
    return frame.select(pl.col(c).cast(pl.Float64) for c in columns)


def _sample_reference(numeric: pl.DataFrame) -> pl.DataFrame:
    indices = _sample_indices(numeric.height, REFERENCE_SAMPLE_ROWS)
    return numeric if indices is None else numeric[indices]


def _round(value: float) -> float | None:
    """Rounded float, with NaN mapped to None so rows hold proper nulls."""
    value = float(value)
    return None if np.isnan(value) else round(value, DECIMALS)


def _mean_and_null_share(values: np.ndarray) -> tuple[float | None, float | None]:
    """Mean over present values and share of missing ones, as Evidently's summary counts them."""
    if values.size == 0:
        return None, None
    present = values[~np.isnan(values)]
    mean = _round(present.mean()) if present.size else None
    return mean, _round(1.0 - present.size / values.size)


def _finite_values(frame: pl.DataFrame) -> dict[str, int]:
    """Count of finite values per column; Evidently drops NaN and +-inf before testing."""
    counts = frame.select(pl.col(c).is_finite().sum() for c in frame.columns)
    return {c: int(counts[c][0] or 0) for c in frame.columns}


# ---------------------------------------------------------------------------------------------
# Worker process


@dataclass
class _WorkerState:
    reference: list[Any]  # one cleaned pandas Series per column, reused every day
    drift_share: float
    get_stattest: Any
    numerical: Any


_STATE: _WorkerState | None = None


def _init_worker(reference: np.ndarray) -> None:
    """Import Evidently's drift engine once per worker and keep the cleaned reference columns."""
    global _STATE
    os.environ.update(NO_TELEMETRY_ENV)
    _skip_evidentlys_package_imports()
    import pandas as pd
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType
    from evidently.legacy.options.data_drift import DataDriftOptions
    from threadpoolctl import threadpool_limits

    # The worker shares two cores with the simulation. OpenBLAS/OpenMP threads (numpy's, scipy's,
    # loaded by now) spin-wait for the busy core and made each day ~3x slower in measurement.
    threadpool_limits(limits=1)
    _STATE = _WorkerState(
        reference=[pd.Series(_finite(reference[:, j])) for j in range(reference.shape[1])],
        drift_share=DataDriftOptions().drift_share,
        get_stattest=get_stattest,
        numerical=ColumnType.Numerical,
    )


def _skip_evidentlys_package_imports() -> None:
    """Let this worker import the engine's modules without running `evidently/__init__.py`.

    That file imports Evidently's UI, LLM and NLP modules up front: about 5 s of every worker's
    start (and so of every build), where the engine's own modules take under 2. The package is
    entered as a module object with its search path only; its submodules import as usual. Only
    for the worker process, which never imports anything else of Evidently."""
    if "evidently" in sys.modules:
        return
    spec = importlib.util.find_spec("evidently")
    if spec is None:
        return
    sys.modules["evidently"] = importlib.util.module_from_spec(spec)


def _warm_up() -> None:
    """No-op task: submitting it makes the pool start its worker (and Evidently import) now."""


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _drift_test(
    state: _WorkerState, j: int, values: np.ndarray
) -> tuple[str | None, float | None, float | None, bool]:
    """(stattest, score, threshold, drifted) exactly as Evidently's get_one_column_drift."""
    import pandas as pd

    current = pd.Series(_finite(values))
    if current.empty:
        # Evidently refuses to test an empty column. A feature that stopped being served is the
        # kind of incident this monitor exists for, so flag it as drifted, without a score.
        return None, None, None, True
    reference = state.reference[j]
    test = state.get_stattest(reference, current, state.numerical, None)
    result = test(reference, current, state.numerical, None)
    score, threshold = _round(result.drift_score), _round(result.actual_threshold)
    return test.display_name, score, threshold, bool(result.drifted)


def _column_result(state: _WorkerState, j: int, values: np.ndarray) -> _ColumnResult:
    stattest, score, threshold, drifted = _drift_test(state, j, values)
    mean, null_share = _mean_and_null_share(values)
    return _ColumnResult(stattest, score, threshold, drifted, mean, null_share)


def _run_day(current: np.ndarray, reference: np.ndarray | None = None) -> _DayResult:
    """One day's drift and summary numbers, computed in the worker; `reference` replaces the
    fixed reference for this day only."""
    if _STATE is None:
        raise RuntimeError("drift worker was not initialised")
    state = _STATE
    if reference is not None:
        import pandas as pd

        state = dataclasses.replace(
            _STATE,
            reference=[pd.Series(_finite(reference[:, j])) for j in range(reference.shape[1])],
        )
    n_columns = len(state.reference)
    if current.ndim != 2 or current.shape[1] != n_columns:
        raise ValueError(f"expected a 2-d array with {n_columns} columns, got {current.shape}")
    columns = tuple(_column_result(state, j, current[:, j]) for j in range(n_columns))
    n_drifted = sum(c.drifted for c in columns)
    # Same rule as Evidently's get_dataset_drift, with its default share.
    dataset_drift = n_drifted / n_columns >= state.drift_share
    means = None if reference is None else tuple(_mean_and_null_share(c)[0] for c in reference.T)
    return _DayResult(
        n_rows=current.shape[0],
        dataset_drift=dataset_drift,
        columns=columns,
        reference_means=means,
    )


# ---------------------------------------------------------------------------------------------
# Parent-side API


class DriftMonitor:
    """Runs one drift+summary report per production day in background worker processes (or,
    with `workers=0`, in a thread of this process)."""

    def __init__(self, reference: pl.DataFrame, columns: list[str], workers: int = 1) -> None:
        """`workers` processes compute the days; 0 computes them in a thread of this process,
        for a caller that is itself a short-lived process of its own (a worker would only cost
        it another interpreter and another import of Evidently)."""
        if workers < 0:
            raise ValueError("workers must not be negative")
        if not columns or len(set(columns)) != len(columns):
            raise ValueError("columns must be a non-empty list of distinct names")
        self._columns = list(columns)
        numeric = _numeric_frame(reference, self._columns, "reference")
        # Means over the full reference, not the sample: the training mean readers expect.
        self._reference_means = [_mean_and_null_share(s.to_numpy())[0] for s in numeric]
        sample = _sample_reference(numeric)
        _check_testable_reference(sample)
        self._futures: dict[datetime.date, Future[_DayResult]] = {}
        self._executor: Executor
        if workers == 0:
            self._executor = ThreadPoolExecutor(
                max_workers=1, initializer=_init_worker, initargs=(sample.to_numpy(),)
            )
        else:
            # spawn, not fork: the parent runs polars/duckdb thread pools that fork would corrupt.
            self._executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(sample.to_numpy(),),
            )
        for _ in range(max(workers, 1)):
            self._executor.submit(_warm_up)

    def submit(
        self,
        report_date: datetime.date,
        current: pl.DataFrame,
        reference: pl.DataFrame | None = None,
    ) -> None:
        """Queue one day's served features; returns at once. Problems surface naming the date.

        `reference` compares this day against other rows than the monitor's reference."""
        _check_date(report_date)
        if report_date in self._futures:
            raise ValueError(f"drift report for {report_date} was already submitted")
        try:
            day_reference = None
            if reference is not None:
                sample = _sample_reference(_numeric_frame(reference, self._columns, "reference"))
                day_reference = sample.to_numpy()
            self._futures[report_date] = self._executor.submit(
                _run_day, self._payload(current), day_reference
            )
        except Exception as exc:
            raise DriftReportError(f"drift report for {report_date} failed: {exc}") from exc

    def rows(self) -> pl.DataFrame:
        """Wait for every submitted day; one row per (report_date, feature)."""
        records = [
            _row_record(day, feature, reference_mean, column)
            for day, result in self._results().items()
            for feature, reference_mean, column in zip(
                self._columns,
                result.reference_means or self._reference_means,
                result.columns,
                strict=True,
            )
        ]
        frame = pl.DataFrame(records, schema=ROW_SCHEMA)
        return frame.sort("report_date", "feature")

    def summary_rows(self) -> pl.DataFrame:
        """Wait for every submitted day; one row per report_date."""
        n_features = len(self._columns)
        records = []
        for day, result in self._results().items():
            n_drifted = sum(c.drifted for c in result.columns)
            share = _round(n_drifted / n_features)
            records.append((day, result.n_rows, n_features, n_drifted, share, result.dataset_drift))
        return pl.DataFrame(records, schema=SUMMARY_SCHEMA, orient="row")

    def close(self) -> None:
        """Stop the workers; finished results stay readable."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _payload(self, current: pl.DataFrame) -> np.ndarray:
        # A plain float matrix pickles fast and spares the worker any polars work.
        return _numeric_frame(current, self._columns, "current").to_numpy()

    def _results(self) -> dict[datetime.date, _DayResult]:
        # Futures keep their outcome, so a failed day raises again on every call instead of
        # silently dropping out of later results.
        results = {}
        for day in sorted(self._futures):
            try:
                results[day] = self._futures[day].result()
            except Exception as exc:
                raise DriftReportError(f"drift report for {day} failed: {exc!r}") from exc
        return results


def _row_record(
    day: datetime.date, feature: str, reference_mean: float | None, column: _ColumnResult
) -> dict[str, Any]:
    return {
        "report_date": day,
        "feature": feature,
        "stattest": column.stattest,
        "drift_score": column.drift_score,
        "threshold": column.threshold,
        "drifted": column.drifted,
        "reference_mean": reference_mean,
        "current_mean": column.current_mean,
        "current_null_share": column.current_null_share,
    }


def _check_date(report_date: datetime.date) -> None:
    # A datetime would silently lose its time in the Date column and collide with other keys.
    if isinstance(report_date, datetime.datetime) or not isinstance(report_date, datetime.date):
        raise TypeError(f"report_date must be a datetime.date, got {type(report_date).__name__}")


def _check_testable_reference(sample: pl.DataFrame) -> None:
    # Evidently cannot test against an empty reference column; fail here, not 42 times later.
    empty = [c for c, n in _finite_values(sample).items() if n == 0]
    if empty:
        raise ValueError(f"reference has no finite values in column(s) {empty}")


# ---------------------------------------------------------------------------------------------
# HTML report


def render_report_html(
    reference: pl.DataFrame, current: pl.DataFrame, columns: list[str], title: str
) -> str:
    """Full Evidently HTML for one day (drift + summary). Imports evidently lazily."""
    for name, value in NO_TELEMETRY_ENV.items():
        os.environ.setdefault(name, value)
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    # Same reference sample and full current day as DriftMonitor: the scores match the rows.
    ref = _sample_reference(_numeric_frame(reference, columns, "reference"))
    cur = _numeric_frame(current, columns, "current")
    # DataDriftPreset raises on a column with no values; leave it to the summary, which shows it
    # 100% missing. (The rows count such a column as drifted, so the drifted counts can differ.)
    testable = [c for c, n in _finite_values(cur).items() if n > 0]
    metrics: list[Any] = [DataDriftPreset(columns=testable)] if testable else []
    metrics.append(DataSummaryPreset(columns=list(columns)))
    definition = DataDefinition(numerical_columns=list(columns))
    snapshot = Report(metrics).run(
        Dataset.from_pandas(cur.to_pandas(), data_definition=definition),
        Dataset.from_pandas(ref.to_pandas(), data_definition=definition),
    )
    return _with_title(snapshot.get_html_str(as_iframe=False), title)


def _with_title(document: str, title: str) -> str:
    # Evidently's standalone page has no <title> or heading; one report per day needs both.
    escaped = html.escape(title)
    document = document.replace("<head>", f"<head>\n<title>{escaped}</title>", 1)
    heading = f'<h1 style="font-family: sans-serif; margin: 16px">{escaped}</h1>\n'
    root = document.find('<div id="root_')
    return document if root < 0 else document[:root] + heading + document[root:]
