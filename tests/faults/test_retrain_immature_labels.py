"""The immature-labels retrain: which score dates it trains on."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sandbox import scenario
from sandbox.faults.base import HookContext
from sandbox.faults.retrain_immature_labels import Params, RetrainImmatureLabels
from sandbox.pipeline.release import INITIAL_RELEASE

CAL = scenario.load(None).world.calendar()


@pytest.mark.parametrize("params", [{"newest_label_age_days": 8}, {"ramp_days": 1}])
def test_invalid_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Params(**params)


def test_the_retrain_uses_score_dates_whose_labels_are_not_in() -> None:
    fault = RetrainImmatureLabels(Params(onset_day=20, newest_label_age_days=1))
    releases = fault.handle("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL))
    assert [r.day for r in releases] == [1, 20]
    days = releases[1].training_days()
    assert max(days) == 18  # trained on day 19: one day old
    assert all(20 - 1 - d < 14 for d in days)  # no label has had its 14 days
    assert all(19 - d >= 14 for d in releases[0].training_days())  # the healthy window
