"""The lookup-deadline fault: parameters, the zero vector at busy hours, and its story."""

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
from sandbox.faults.serving_default_fallback import (
    OVERHEAD_MS,
    SERIALIZER_SAVING_MS,
    Params,
    ServingDefaultFallback,
)
from sandbox.faults.toolkit import load_curve
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.testing import tables_read

CAL = scenario.load(None).world.calendar()
N = 4000  # requests per hour in the synthetic day
FORBIDDEN = re.compile(
    r"\bfault|inject|planted|answer|sabotag|\bbug\b|fallback|default|timeout", re.I
)


def fault(**params: object) -> ServingDefaultFallback:
    return ServingDefaultFallback(Params(**params))


def ctx(day: int, calendar: Calendar = CAL) -> HookContext:
    return HookContext(seed=1, day=day, calendar=calendar)


def requests(
    day: int, hours: list[int], source: str = "online", status: str = "ok"
) -> pl.DataFrame:
    """N requests in each of `hours` of `day`, every feature 1.0, latency 6 ms."""
    ts = [CAL.at(day, h + (i + 0.5) / N) for h in hours for i in range(N)]
    n = len(ts)
    return pl.DataFrame(
        {
            "customer_id": np.arange(n, dtype=np.int64),
            "request_ts": pl.Series(ts, dtype=pl.Datetime("us")),
            "source": [source] * n,
            "latency_ms": [None if source == "batch" else 6.0] * n,
            "status": [status] * n,
            **{c: [1.0] * n for c in MODEL_FEATURES},
        },
        schema_overrides={"latency_ms": pl.Float64},
    )


def zero_share(frame: pl.DataFrame) -> float:
    return float(
        frame.select(pl.all_horizontal(pl.col(c) == 0 for c in MODEL_FEATURES)).mean().item()
    )


@pytest.mark.parametrize(
    "params",
    [
        {"peak_share": 0.05},
        {"peak_share": 1.5},
        {"deadline_ms": 2.0},
        {"deadline_ms": 60.0},
        {"onset_day": 43},
        {"ramp_days": 22},
        {"surprise": 1},
    ],
)
def test_invalid_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Params(**params)


def test_busy_hours_get_the_zero_vector_at_the_deadline() -> None:
    f = fault(onset_day=10, ramp_days=0, peak_share=0.5, deadline_ms=10.0)
    frame = requests(12, [3, 20])
    out = f.handle("serve.features", frame, ctx(12))
    quiet = out.filter(pl.col("request_ts").dt.hour() == 3)
    peak = out.filter(pl.col("request_ts").dt.hour() == 20)
    assert quiet.equals(frame.filter(pl.col("request_ts").dt.hour() == 3))
    assert zero_share(peak) == pytest.approx(0.5, abs=0.03)
    zeroed = peak.filter(pl.col("monthly_price") == 0)
    # Every feature at once, never a partial vector; latency just above the deadline; still ok.
    assert zeroed.select(pl.sum_horizontal(MODEL_FEATURES)).to_series().max() == 0
    assert zeroed["latency_ms"].min() >= 10.0 + OVERHEAD_MS[0] - 1e-9
    assert zeroed["latency_ms"].max() <= 10.0 + OVERHEAD_MS[1] + 1e-9
    assert (zeroed["status"] == "ok").all()
    untouched = peak.filter(pl.col("monthly_price") != 0)
    assert (untouched["latency_ms"] == 6.0).all()
    assert out.schema == frame.schema


def test_only_online_successes_after_the_change() -> None:
    f = fault(onset_day=10, ramp_days=0, peak_share=1.0)
    assert zero_share(f.handle("serve.features", requests(9, [20]), ctx(9))) == 0
    assert zero_share(f.handle("serve.features", requests(12, [20]), ctx(12))) == 1.0
    assert zero_share(f.handle("serve.features", requests(12, [20], "batch"), ctx(12))) == 0
    assert zero_share(f.handle("serve.features", requests(12, [20], status="error"), ctx(12))) == 0


def test_share_ramps_and_is_deterministic() -> None:
    f = fault(onset_day=10, ramp_days=4, peak_share=0.8)
    frame = requests(10, [20])
    first = f.handle("serve.features", frame, ctx(10))
    assert zero_share(first) == pytest.approx(0.2, abs=0.03)
    assert first.equals(f.handle("serve.features", frame, ctx(10)))
    later = requests(13, [20])
    assert zero_share(f.handle("serve.features", later, ctx(13))) == pytest.approx(0.8, abs=0.03)


def test_story_is_ordinary_and_the_key_is_complete() -> None:
    f = fault(onset_day=15)
    entries = f.changelog(CAL)
    assert len(entries) == 1 and entries[0]["day"] == 15 and entries[0]["kind"] == "config"
    for entry in entries:
        assert not FORBIDDEN.search(entry["title"] + entry["body"])
        assert f.id not in entry["title"] + entry["body"]
    key = f.key(CAL)
    assert key.root_cause and key.propagation and key.acceptable_fixes and key.probes
    assert {e.kind for e in key.evidence} == {"table_column", "metric", "log_pattern", "changelog"}
    assert all(e.window_start <= e.window_end for e in key.evidence)
    assert key.evidence[-1].ref == entries[0]["title"]
    assert 3 <= len(key.investigation) <= 5
    assert any(p.startswith("What experiment") for p in key.probes)


def test_investigation_tells_the_zero_vectors_from_a_clean_day() -> None:
    steps = fault(onset_day=15).investigation(CAL)
    hours = pl.Series("hour", list(range(24)), dtype=pl.Int64)
    clean = pl.DataFrame({"hour": hours, "requests": [100] * 24, "share_all_zero": [0.0] * 24})
    faulty = clean.with_columns(
        pl.Series("share_all_zero", np.round(0.5 * load_curve(np.arange(24)), 3))
    )
    assert steps[0].found(faulty) and not steps[0].found(clean)
    changelog = pl.DataFrame({"title": [fault(onset_day=15)._change_title()]})
    assert steps[-1].found(changelog)
    assert not steps[-1].found(pl.DataFrame({"title": ["model-server image 2.4.1"]}))


def test_change_lands_on_the_onset_day() -> None:
    entry = fault(onset_day=20).changelog(CAL)[0]
    assert CAL.date(entry["day"]) == CAL.date(20)
    assert dt.time(int(entry["hour"])) < dt.time(19)  # before the evening peak it breaks


def _tiered(tier: str, **params: object) -> ServingDefaultFallback:
    return ServingDefaultFallback(Params(**params), tier)  # type: ignore[arg-type]


def test_only_guided_names_the_lookup_deadline() -> None:
    text = {
        tier: " ".join(e["title"] + " " + e["body"] for e in _tiered(tier).changelog(CAL))
        for tier in ("guided", "standard", "hard")
    }
    assert "lookup deadline" in text["guided"] and "p99 budget" in text["guided"]
    for tier in ("standard", "hard"):
        tells = _tiered(tier).tells(tier)  # type: ignore[arg-type]
        assert not [t for t in tells if t.lower() in text[tier].lower()], tier
        assert "deadline" not in text[tier] and "lookup" not in text[tier]
        assert not FORBIDDEN.search(text[tier])
    assert "config update" in text["standard"] and "replica by replica" in text["standard"]


def test_hard_logs_ordinary_model_server_changes_around_the_onset() -> None:
    f = _tiered("hard", onset_day=15)
    entries = f.changelog(CAL)
    days = [e["day"] for e in entries]
    assert len(entries) == 2 and all(e["service"] == "model-server" for e in entries)
    assert min(days) < 15 < max(days)
    assert not [e for e in f.answer_key(CAL).evidence if e.kind == "changelog"]
    # No room before an early onset: only the patch after it.
    assert [e["day"] for e in _tiered("hard", onset_day=2).changelog(CAL)] == [6]


def test_at_hard_the_serializer_change_really_saves_latency() -> None:
    f = _tiered("hard", onset_day=15, ramp_days=0, peak_share=1.0)
    before = requests(12, [20])
    assert f.handle("serve.features", before, ctx(12)).equals(before)
    # From 14:00 of the day two before onset: every successful online request, and only them.
    day = requests(13, [13, 20])
    out = f.handle("serve.features", day, ctx(13))
    late = pl.col("request_ts").dt.hour() == 20
    assert (out.filter(~late)["latency_ms"] == 6.0).all()
    assert (out.filter(late)["latency_ms"] == 6.0 - SERIALIZER_SAVING_MS).all()
    assert zero_share(out) == 0
    for source, status in (("batch", "ok"), ("online", "error")):
        frame = requests(13, [20], source, status)
        assert f.handle("serve.features", frame, ctx(13)).equals(frame)
    # The missed lookups still answer at the deadline.
    missed = f.handle("serve.features", requests(16, [20]), ctx(16))
    assert zero_share(missed) == 1.0
    assert missed["latency_ms"].min() >= f.params.deadline_ms
    # Below hard nothing changes before onset.
    assert _tiered("standard", onset_day=15).handle("serve.features", day, ctx(13)).equals(day)
    assert "0.5 ms" in f.answer_key(CAL).root_cause


def test_the_hard_investigation_reads_no_changelog_and_joins_the_store() -> None:
    f = _tiered("hard")
    steps = f.investigation(CAL)
    assert len(steps) >= 4
    assert not any("ops.changelog" in s.sql for s in steps)
    assert {"serving.predictions", "feature_store.customer_features"} in [
        tables_read(s.sql) for s in steps
    ]
    last = steps[-1]
    stored = pl.DataFrame(
        {
            "all_zero_requests": [120],
            "with_stored_row": [120],
            "share_priced_in_store": [1.0],
            "share_active_in_store": [0.93],
        }
    )
    assert last.found(stored)
    assert not last.found(stored.with_columns(pl.Series("share_priced_in_store", [0.0])))
    none = pl.DataFrame(
        {
            "all_zero_requests": [0],
            "with_stored_row": [0],
            "share_priced_in_store": [None],
            "share_active_in_store": [None],
        },
        schema_overrides={"share_priced_in_store": pl.Float64, "share_active_in_store": pl.Float64},
    )
    assert not last.found(none)
