"""The dropped-series fault: parameters, the failing requests, the missing series, the silent alert."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from sandbox import scenario
from sandbox.clock import Calendar
from sandbox.faults.base import HookContext
from sandbox.faults.metric_series_dropped import (
    ALERT,
    DEPLOY_HOUR,
    FAILED_LATENCY_MS,
    SERIES,
    MetricSeriesDropped,
    Params,
)
from sandbox.monitor import alerts
from sandbox.pipeline.features import MODEL_FEATURES

CAL = scenario.load(None).world.calendar()
N = 4000
FORBIDDEN = re.compile(r"\bfault|inject|planted|answer|sabotag|\bbug\b", re.I)


def fault(**params: object) -> MetricSeriesDropped:
    return MetricSeriesDropped(Params(**params))


def ctx(day: int, calendar: Calendar = CAL) -> HookContext:
    return HookContext(seed=1, day=day, calendar=calendar)


def requests(day: int, hours: list[int], source: str = "online") -> pl.DataFrame:
    ts = [CAL.at(day, h + (i + 0.5) / N) for h in hours for i in range(N)]
    n = len(ts)
    return pl.DataFrame(
        {
            "customer_id": np.arange(n, dtype=np.int64),
            "request_ts": pl.Series(ts, dtype=pl.Datetime("us")),
            "source": [source] * n,
            "latency_ms": [6.0] * n,
            "status": ["ok"] * n,
            **{c: [1.0] * n for c in MODEL_FEATURES},
        }
    )


def series(days: range, error_ratio: float) -> pl.DataFrame:
    """Every model-server series every 5 minutes from 18:00 to 21:00 (errors from 19:00), plus
    another service's."""
    ts = [CAL.at(d, 18 + m / 60) for d in days for m in range(0, 180, 5)]
    rows = [
        (
            t,
            "model-server",
            metric,
            "",
            (error_ratio if t.hour >= 19 else 0.0) if metric == "error_ratio" else 1.0,
        )
        for t in ts
        for metric in SERIES
    ] + [(t, "retrieval", "latency_p95_ms", "", 20.0) for t in ts]
    return pl.DataFrame(
        rows, schema=["ts", "service", "metric", "label", "value"], orient="row"
    ).cast({"ts": pl.Datetime("us")})


@pytest.mark.parametrize(
    "params",
    [
        {"peak_error_share": 0.05},
        {"peak_error_share": 0.95},
        {"dropped_series": ["latency_p99_ms"]},
        {"dropped_series": ["error_ratio", "cpu_seconds"]},
        {"dropped_series": ["error_ratio", "error_ratio"]},
        {"dropped_series": []},
        {"surprise": 1},
    ],
)
def test_invalid_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Params(**params)


def test_several_series_may_go() -> None:
    assert Params(dropped_series=["error_ratio", "latency_p99_ms"]).dropped_series == [
        "error_ratio",
        "latency_p99_ms",
    ]


def test_peak_requests_fail_from_the_deploy() -> None:
    f = fault(onset_day=10, ramp_days=0, peak_error_share=0.4)
    frame = requests(12, [3, 20])
    out = f.handle("serve.features", frame, ctx(12))
    peak = out.filter(pl.col("request_ts").dt.hour() == 20)
    quiet = out.filter(pl.col("request_ts").dt.hour() == 3)
    assert (quiet["status"] == "ok").all()
    assert (peak["status"] == "error").mean() == pytest.approx(0.4, abs=0.03)
    failed = peak.filter(pl.col("status") == "error")
    assert (failed["latency_ms"] == FAILED_LATENCY_MS).all()
    # Features are not touched: the requests fail, they are not scored differently.
    assert out.select(MODEL_FEATURES).equals(frame.select(MODEL_FEATURES))
    assert f.handle("serve.features", requests(9, [20]), ctx(9))["status"].eq("ok").all()
    batch = requests(12, [20], "batch")
    assert f.handle("serve.features", batch, ctx(12)).equals(batch)
    # Deterministic, and ramping when asked to.
    assert out.equals(f.handle("serve.features", frame, ctx(12)))
    ramped = fault(onset_day=10, ramp_days=4, peak_error_share=0.4)
    first = ramped.handle("serve.features", requests(10, [20]), ctx(10))
    assert (first["status"] == "error").mean() == pytest.approx(0.1, abs=0.02)


def test_series_vanish_from_the_deploy_and_the_alert_goes_blind() -> None:
    f = fault(onset_day=10, dropped_series=["error_ratio", "latency_p99_ms"])
    full = series(range(8, 13), error_ratio=0.3)
    # Without the fault every evening breaches the rule.
    assert alerts.evaluate(full).filter(pl.col("alert") == ALERT.name).height == 5
    out = f.handle("monitor.metrics", full, ctx(CAL.last_visible_day))
    deployed = CAL.at(10, DEPLOY_HOUR)
    server = out.filter(pl.col("service") == "model-server")
    after = server.filter(pl.col("ts") >= deployed)
    assert set(after["metric"]) == set(SERIES) - {"error_ratio", "latency_p99_ms"}
    assert (
        server.filter(pl.col("ts") < deployed).height
        == full.filter((pl.col("service") == "model-server") & (pl.col("ts") < deployed)).height
    )
    assert (
        out.filter(pl.col("service") == "retrieval").height
        == full.filter(pl.col("service") == "retrieval").height
    )
    fired = alerts.evaluate(out).filter(pl.col("alert") == ALERT.name)
    assert fired.height == 2 and (fired["started_at"] < deployed).all()


def test_story_is_ordinary_and_the_key_is_complete() -> None:
    f = fault(onset_day=15)
    entries = f.changelog(CAL)
    assert [e["kind"] for e in entries] == ["deploy", "oncall"]
    assert CAL.at(entries[0]["day"], entries[0]["hour"]) == f.deploy_time(CAL)
    for entry in entries:
        assert not FORBIDDEN.search(entry["title"] + entry["body"])
        assert f.id not in entry["title"] + entry["body"]
    key = f.key(CAL)
    assert {e.kind for e in key.evidence} == {"table_column", "metric", "log_pattern", "changelog"}
    assert all(e.window_start <= e.window_end for e in key.evidence)
    assert entries[0]["title"] in {e.ref for e in key.evidence}
    assert 3 <= len(key.investigation) <= 5
    assert any(p.startswith("What experiment") for p in key.probes)


def test_series_step_finds_the_gap_only_when_there_is_one() -> None:
    step = fault(onset_day=15).investigation(CAL)[1]
    days = [dt.date(2026, 3, d) for d in range(10, 20)]
    full = pl.DataFrame(
        {"day": days, "online_requests": [450] * 10, **{m: [288] * 10 for m in SERIES}}
    )
    gap = full.with_columns(pl.Series("error_ratio", [288] * 5 + [120] + [0] * 4))
    assert step.found(gap) and not step.found(full)
    # Even when every series of the service went, the served requests show the gap.
    everything = full.with_columns(pl.Series(m, [288] * 5 + [0] * 5) for m in SERIES)
    assert step.found(everything)


def test_each_tier_logs_what_it_shows_and_no_tell_of_its_own() -> None:
    logged = {
        tier: MetricSeriesDropped(Params(onset_day=15), tier).changelog(CAL)  # type: ignore[arg-type]
        for tier in ("guided", "standard", "hard")
    }
    assert [e["title"] for e in logged["standard"] if e["kind"] == "deploy"] == [
        "model-server 2.5.0"
    ]
    # Hard does not log the release; routine serving-path changes sit around it.
    assert not [e for e in logged["hard"] if "2.5.0" in e["title"]]
    around = sorted(e["day"] for e in logged["hard"] if e["kind"] != "oncall")
    assert around[0] < 15 < around[-1]
    for tier, entries in logged.items():
        text = " ".join(e["title"] + " " + e["body"] for e in entries).lower()
        assert not FORBIDDEN.search(text)
        tells = MetricSeriesDropped(Params(), tier).tells(tier)  # type: ignore[arg-type]
        assert not [t for t in tells if t.lower() in text], tier
    guided = " ".join(e["title"] + " " + e["body"] for e in logged["guided"]).lower()
    assert any(t.lower() in guided for t in MetricSeriesDropped(Params()).tells("hard"))


def test_hard_investigation_joins_requests_to_series_without_the_changelog() -> None:
    hard = MetricSeriesDropped(Params(onset_day=15), "hard")
    steps = hard.investigation(CAL)
    assert len(steps) == 4 and not any("ops.changelog" in s.sql for s in steps)
    assert {e.kind for e in hard.key(CAL).evidence} == {"table_column", "metric", "log_pattern"}
    assert len(fault(onset_day=15).investigation(CAL)) == 5
