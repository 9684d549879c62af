"""The plan price change: its parameters, its hook on the customers' prices, and on built hard
worlds the genuine drift it leaves beside the fault's, with its announcement's facts true."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from sandbox import scenario, testing
from sandbox.decoys import registry as decoy_registry
from sandbox.decoys.plan_repricing import Params, PlanRepricing
from sandbox.faults import registry
from sandbox.faults.base import HookContext
from sandbox.pipeline.features import IMPUTED_FEATURES
from sandbox.product import BILLING_CYCLE_DAYS, PLANS
from sandbox.testing import Worlds, connect
from sandbox.world import population
from sandbox.world.behaviour import WorldState
from tests.conftest import TIER_WORLDS, scenario_for

CAL = scenario.load(None).world.calendar()
WATCH_TIME = set(IMPUTED_FEATURES)
# Hard worlds with the price change, and the features their faults move on the drift reports.
FAULTS_MOVE = {
    "default-hard": WATCH_TIME,
    "immature-labels-hard": WATCH_TIME,
    "version-mismatch-hard": {"sessions_trend"},
}


def _repricing(world: str) -> PlanRepricing:
    return next(d for d in scenario_for(world).decoys if isinstance(d, PlanRepricing))


# The hard tier worlds that plant the price change.
HARD_WITH_REPRICING = [
    name
    for name in TIER_WORLDS
    if scenario_for(name).difficulty == "hard"
    and any(isinstance(d, PlanRepricing) for d in scenario_for(name).decoys)
]


@pytest.mark.parametrize(
    "params",
    [
        {"plan": "basic", "new_price": PLANS["basic"]},
        {"new_price": 8.995},
        {"new_price": 0.0},
        {"plan": "family"},
        {"day": 0},
        {"surprise": 1},
    ],
)
def test_invalid_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Params(**params)


def test_customers_move_to_the_new_price_at_their_renewal() -> None:
    customers = population.generate(3, 3000, CAL)
    state = WorldState(3, customers, CAL)
    decoy = PlanRepricing(Params(day=10, plan="standard", new_price=14.49))
    on_plan = state.plan == "standard"

    def reprice(day: int) -> np.ndarray:
        decoy.handle("world.state", state, HookContext(seed=3, day=day, calendar=CAL))
        return state.monthly_price.copy()

    assert (reprice(9) == customers["monthly_price"].to_numpy()).all()
    moved = reprice(10) == 14.49
    assert moved.any() and (moved == (on_plan & state.renews(10))).all()
    for day in range(11, 10 + BILLING_CYCLE_DAYS):
        prices = reprice(day)
    # A cycle later every customer on the plan pays the new price, and nobody else does.
    assert (prices[on_plan] == 14.49).all()
    assert (prices[~on_plan] == customers["monthly_price"].to_numpy()[~on_plan]).all()


def test_the_hard_worlds_whose_faults_move_features_plant_it_in_the_faults_weeks() -> None:
    assert set(HARD_WITH_REPRICING) == set(FAULTS_MOVE)
    for world in HARD_WITH_REPRICING:
        onset = min(f.params.onset_day for f in scenario_for(world).faults)
        # Late enough to overlap the fault, early enough to drift for a week and more.
        assert onset <= _repricing(world).params.day <= CAL.last_production_day - 14, world


@pytest.mark.parametrize("world", HARD_WITH_REPRICING)
def test_its_announcement_holds_in_the_built_world(worlds: Worlds, world: str) -> None:
    decoy = _repricing(world)
    con = connect(worlds.get(world))
    try:
        checks = decoy.verify(con, CAL)
        missing = [e.id for e in decoy.note(CAL).evidence if not testing.evidence_exists(con, e)]
    finally:
        con.close()
    assert all(c.passed for c in checks), checks
    assert not missing, f"the interviewer's note points at evidence the world lacks: {missing}"


@pytest.mark.parametrize("world", HARD_WITH_REPRICING)
def test_monthly_price_drifts_from_its_day_and_not_before(worlds: Worlds, world: str) -> None:
    day = CAL.date(_repricing(world).params.day)
    con = connect(worlds.get(world))
    try:
        drifted = [
            d
            for (d,) in con.execute(
                "SELECT report_date FROM monitoring.drift_feature_daily "
                "WHERE feature = 'monthly_price' AND drifted ORDER BY 1"
            ).fetchall()
        ]
    finally:
        con.close()
    assert drifted and drifted[0] >= day
    # Once enough renewals have come round it stays flagged to the end of production.
    assert drifted[-1] == CAL.date(CAL.last_production_day)


@pytest.mark.parametrize("world", HARD_WITH_REPRICING)
def test_the_drift_reports_flag_more_than_the_faults_feature_family(
    worlds: Worlds, world: str
) -> None:
    """Outside the fault's family a feature drifts for a week or more of the fault's weeks, not
    only on the odd day a noisy count feature crosses its threshold."""
    onset = min(f.params.onset_day for f in scenario_for(world).faults)
    con = connect(worlds.get(world))
    try:
        days = dict(
            con.execute(
                "SELECT feature, count(*) FROM monitoring.drift_feature_daily "
                "WHERE drifted AND report_date >= $onset GROUP BY 1",
                {"onset": CAL.date(onset)},
            ).fetchall()
        )
    finally:
        con.close()
    assert set(days) >= FAULTS_MOVE[world], f"the fault's own drift is gone: {days}"
    benign = {f: n for f, n in days.items() if f not in FAULTS_MOVE[world] and n >= 7}
    assert benign, f"only the fault's family drifts for long: {days}"


@pytest.mark.parametrize("world", HARD_WITH_REPRICING)
def test_nothing_a_candidate_can_read_names_what_is_planted(worlds: Worlds, world: str) -> None:
    names = [
        *registry.catalog(),
        *(cls.__name__ for cls in registry.catalog().values()),
        *decoy_registry.catalog(),
        *(cls.__name__ for cls in decoy_registry.catalog().values()),
    ]
    testing.assert_nothing_names(worlds.get(world), names)
