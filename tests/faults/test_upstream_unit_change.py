"""The unit-change fault: its parameters, and what it does to one day's raw viewing activity."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from sandbox import scenario
from sandbox.faults.base import HookContext
from sandbox.faults.upstream_unit_change import Params, UpstreamUnitChange, release_version
from sandbox.product import APP_RELEASES, DEVICES

CAL = scenario.load(None).world.calendar()
N = 20_000


def fault(**params: object) -> UpstreamUnitChange:
    return UpstreamUnitChange(Params(**params))


def ctx(day: int) -> HookContext:
    return HookContext(seed=1, day=day, calendar=CAL)


def activity(n: int = N) -> pl.DataFrame:
    """One day's raw activity rows: every device, a few opted-out (NULL) watch times."""
    ids = np.arange(100_000, 100_000 + n)
    minutes = np.round(np.linspace(5.0, 120.0, n), 1)
    return pl.DataFrame(
        {
            "customer_id": ids,
            "activity_date": [CAL.date(1)] * n,
            "sessions": np.full(n, 2, dtype=np.int64),
            "minutes_watched": pl.Series(minutes).scatter(list(range(0, n, 97)), None),
            "playback_errors": np.zeros(n, dtype=np.int64),
            "app_version": ["5.1.0"] * n,
            "device": np.asarray(DEVICES)[ids % len(DEVICES)],
        }
    )


@pytest.mark.parametrize(
    "params",
    [
        {"multiplier": 9.0},
        {"multiplier": 1001.0},
        {"adoption_share": 0.2},
        {"adoption_share": 1.1},
        {"target_device": "playstation"},
        {"onset_day": 43},
        {"ramp_days": -1},
        {"surprise": 1},
    ],
)
def test_invalid_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Params(**params)


def test_defaults_match_the_story() -> None:
    p = Params()
    assert (p.target_device, p.multiplier, p.onset_day, p.ramp_days) == ("smart_tv", 60.0, 15, 7)


def test_release_is_a_patch_on_the_newest_app_release() -> None:
    released = {v for v, _ in APP_RELEASES}
    assert release_version(1) == "5.1.1"
    assert release_version(15) == "5.2.1"
    assert release_version(40) == "5.3.1"
    assert all(release_version(d) not in released for d in range(1, 43))


def test_nothing_changes_before_onset() -> None:
    rows = activity()
    assert fault(onset_day=10).handle("ingest.activity", rows, ctx(9)).equals(rows)


def test_adoption_ramps_on_the_target_device_only() -> None:
    f = fault(onset_day=10, ramp_days=4, adoption_share=0.8, target_device="web")
    rows = activity()
    is_web = rows["device"] == "web"

    def adopted(day: int) -> pl.Series:
        return f.handle("ingest.activity", rows, ctx(day))["app_version"] == f.version

    assert not adopted(10).filter(~is_web).any()
    assert adopted(10).filter(is_web).mean() == pytest.approx(0.2, abs=0.03)
    assert adopted(13).filter(is_web).mean() == pytest.approx(0.8, abs=0.03)
    assert adopted(30).filter(is_web).mean() == pytest.approx(0.8, abs=0.03)
    # The same customers stay on the release: an update, not noise.
    assert (adopted(11) & ~adopted(13)).sum() == 0
    assert (adopted(13) == adopted(30)).all()


def test_updated_rows_report_whole_multiples_of_the_minutes() -> None:
    f = fault(onset_day=1, ramp_days=0, adoption_share=1.0, multiplier=60.0)
    rows = activity()
    out = f.handle("ingest.activity", rows, ctx(5))
    hit = (out["app_version"] == "5.1.1").to_numpy()
    assert hit.sum() == (rows["device"] == "smart_tv").sum()
    before = rows["minutes_watched"].to_numpy()[hit]
    after = out["minutes_watched"].to_numpy()[hit]
    known = ~np.isnan(before)
    # Seconds of the true watch time: whole numbers, ~60x, within the 0.1-minute rounding.
    assert np.all(after[known] == np.round(after[known]))
    assert np.all(np.abs(after[known] - 60 * before[known]) <= 0.05 * 60 + 0.5)
    # Customers without telemetry still send nothing.
    assert np.isnan(after[~known]).all() and (~known).any()
    # Other devices and every other column are untouched.
    assert out.filter(~pl.Series(hit)).equals(rows.filter(~pl.Series(hit)))
    assert out.drop("minutes_watched", "app_version").equals(
        rows.drop("minutes_watched", "app_version")
    )


def test_apply_is_deterministic_and_ignores_other_hooks() -> None:
    f = fault(onset_day=1, ramp_days=0)
    rows = activity(2_000)
    assert f.handle("ingest.activity", rows, ctx(3)).equals(
        f.handle("ingest.activity", rows, ctx(3))
    )
    assert f.handle("ingest.billing", rows, ctx(3)) is rows
    assert f.handle("ingest.activity", rows.head(0), ctx(3)).height == 0


def test_candidate_visible_text_names_nothing() -> None:
    f = fault()
    texts = [f.version] + [v for e in f.changelog(CAL) for v in e.values() if isinstance(v, str)]
    for text in texts:
        lowered = text.lower()
        for word in ("fault", "inject", "planted", "answer", "sabotag", "bug", "second", "unit"):
            assert word not in lowered, (word, text)
        assert f.id not in lowered and type(f).__name__.lower() not in lowered


def test_answer_key_names_the_release_and_the_multiplier() -> None:
    f = fault(onset_day=20, multiplier=100.0, target_device="android")
    key = f.key(CAL)
    assert "5.2.1" in key.root_cause and "100" in key.root_cause
    assert {e.kind for e in key.evidence} >= {"table_column", "metric", "changelog"}
    assert all(e.window_start >= CAL.date(20) for e in key.evidence)
    titles = {e["title"] for e in f.changelog(CAL)}
    assert {e.ref for e in key.evidence if e.kind == "changelog"} <= titles
    assert any("experiment" in p for p in key.probes)
    assert 3 <= len(key.investigation) <= 6


def test_hard_adds_a_routine_patch_release_on_another_device() -> None:
    f = UpstreamUnitChange(Params(onset_day=10, ramp_days=0, adoption_share=1.0), "hard")
    rows = activity()
    out = f.handle("ingest.activity", rows, ctx(10 + 4))
    assert f.routine_device != f.params.target_device
    assert f.routine_version not in {f.version, *(v for v, _ in APP_RELEASES)}
    routine = (out["app_version"] == f.routine_version).to_numpy()
    on_device = (rows["device"] == f.routine_device).to_numpy()
    assert routine[on_device].all() and not routine[~on_device].any()
    # It changes the version its customers report, and nothing else.
    assert (
        out.filter(pl.Series(routine))
        .drop("app_version")
        .equals(rows.filter(pl.Series(routine)).drop("app_version"))
    )
    # Its changelog entry names it, and not the release that changed the unit.
    titles = [e["title"] for e in f.changelog(CAL)]
    assert any(f.routine_version in t for t in titles)
    assert not any(f.version in t for t in titles)


def test_customers_on_the_next_release_stay_on_it() -> None:
    f = UpstreamUnitChange(Params(onset_day=10, ramp_days=0, adoption_share=1.0), "hard")
    newer = next(v for v, d in APP_RELEASES if d > 10 + 4)
    rows = activity().with_columns(pl.lit(newer).alias("app_version"))
    out = f.handle("ingest.activity", rows, ctx(30))
    assert not (out["app_version"] == f.routine_version).any()


@pytest.mark.parametrize("tier", ["guided", "standard"])
def test_below_hard_there_is_no_routine_release(tier: str) -> None:
    f = UpstreamUnitChange(Params(onset_day=10, ramp_days=0), tier)  # type: ignore[arg-type]
    out = f.handle("ingest.activity", activity(), ctx(30))
    assert not (out["app_version"] == f.routine_version).any()
    assert [e["title"] for e in f.changelog(CAL)] == [
        f"smart TV app {f.version} staged rollout started"
    ]


def test_only_guided_names_the_mechanism() -> None:
    bodies = {
        tier: " ".join(e["body"] for e in UpstreamUnitChange(Params(), tier).changelog(CAL))
        for tier in ("guided", "standard", "hard")
    }
    assert "media SDK" in bodies["guided"]
    assert "SDK" not in bodies["standard"] and "SDK" not in bodies["hard"]
