"""A day's drift report is rendered from the world on first view, then served from the cache."""

from __future__ import annotations

import datetime as dt

import pytest

from sandbox.monitor.reports import NoReport, drift_report
from sandbox.world.build import BuildSummary


def test_render_once_then_reuse(faulty_world: BuildSummary) -> None:
    day = dt.date(2026, 3, 20)
    path = drift_report(faulty_world.root, day)
    text = path.read_text()
    assert path.parent == faulty_world.root / "candidate" / "reports"
    assert "2026-03-20" in text and "avg_daily_minutes_7d" in text
    stamp = path.stat().st_mtime_ns
    assert drift_report(faulty_world.root, day) == path
    assert path.stat().st_mtime_ns == stamp


def test_a_day_without_a_report_is_refused(faulty_world: BuildSummary) -> None:
    with pytest.raises(NoReport):
        drift_report(faulty_world.root, dt.date(2025, 1, 1))
