"""The leakage fault: its release, the near-copy of the label in training, noise at serving."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from sandbox import scenario
from sandbox.difficulty import Tier
from sandbox.faults.base import HookContext
from sandbox.faults.label_leakage import LEAK_FEATURE, LabelLeakage, Params
from sandbox.pipeline.release import INITIAL_RELEASE, Rollout

CAL = scenario.load(None).world.calendar()


def ctx(day: int) -> HookContext:
    return HookContext(seed=3, day=day, calendar=CAL)


@pytest.mark.parametrize(
    "params", [{"leak_strength": 0.3}, {"leak_strength": 1.0}, {"ramp_days": 3}, {"onset_day": 43}]
)
def test_invalid_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Params(**params)


def test_a_release_with_the_extra_feature_serves_from_onset() -> None:
    fault = LabelLeakage(Params(onset_day=12))
    releases = fault.handle("train.releases", [INITIAL_RELEASE], ctx(0))
    assert [r.day for r in releases] == [1, 12]
    assert LEAK_FEATURE in releases[1].features and releases[1].alias == "champion"
    assert LEAK_FEATURE not in releases[0].features


def test_training_column_copies_the_label_and_serving_is_noise() -> None:
    fault = LabelLeakage(Params(onset_day=12, leak_strength=0.9))
    churned = (np.arange(20_000) % 10 == 0).astype(np.int8)
    dataset = pl.DataFrame({"customer_id": np.arange(20_000), "churned": churned})
    assert fault.handle("train.dataset", dataset, ctx(1)).equals(dataset)  # other releases
    leaky = fault.handle("train.dataset", dataset, ctx(12))
    visited = leaky[LEAK_FEATURE].to_numpy() > 0
    assert visited[churned == 1].mean() == pytest.approx(0.9, abs=0.03)
    assert visited[churned == 0].mean() == pytest.approx(0.05, abs=0.01)
    requests = pl.DataFrame({"customer_id": np.arange(20_000)})
    assert fault.handle("serve.features", requests, ctx(11)).equals(requests)
    served = fault.handle("serve.features", requests, ctx(12))[LEAK_FEATURE].to_numpy()
    assert (served > 0).mean() == pytest.approx(0.05, abs=0.01)


def _trail(fault: LabelLeakage) -> list[str]:
    """The run names, tags and changelog text this fault writes."""
    texts = []
    for release in fault.handle("train.releases", [INITIAL_RELEASE], ctx(0)):
        texts += [release.run_name, *release.tags, *release.tags.values()]
    return texts + [text for e in fault.changelog(CAL) for text in (e["title"], e["body"])]


def test_guided_names_the_web_analytics_feature_in_its_trail() -> None:
    texts = _trail(LabelLeakage(Params(onset_day=15), "guided"))
    assert "churn-gbm-20260315-web-analytics" in texts
    assert "churn-model: new version with web-analytics signal promoted to champion" in texts


@pytest.mark.parametrize("tier", ["standard", "hard"])
def test_the_trail_carries_no_tell_of_its_tier(tier: Tier) -> None:
    fault = LabelLeakage(Params(), tier)
    text = " ".join(_trail(fault)).lower()
    assert text and not [tell for tell in fault.tells(tier) if tell.lower() in text]
    titles = {e.ref for e in fault.answer_key(CAL).evidence if e.kind == "changelog"}
    assert titles <= {e["title"] for e in fault.changelog(CAL)}


def test_hard_registers_a_candidate_the_week_before_that_never_serves() -> None:
    fault = LabelLeakage(Params(onset_day=15), "hard")
    releases = fault.handle("train.releases", [INITIAL_RELEASE], ctx(0))
    assert [(r.day, r.alias) for r in releases] == [(1, "champion"), (8, None), (15, "champion")]
    assert LEAK_FEATURE not in releases[1].features
    rollout = Rollout("2", trained_threshold=0.03, current_threshold=0.05, threshold=0.03)
    assert not fault.handle("serve.rollout", rollout, ctx(8)).deploy
    assert fault.handle("serve.rollout", rollout, ctx(15)).deploy
