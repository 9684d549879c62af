"""The hook contract holds at definition time: a fault or decoy naming a hook point no stage
exposes fails when its class is defined, with the hook named; stages cannot apply or ask about
an unknown point either; every registered fault and decoy names only real ones."""

from __future__ import annotations

from typing import Any, ClassVar

import polars as pl
import pytest

from sandbox.faults import registry
from sandbox.faults.base import Decoy, Fault, FaultSet, HookContext, UnknownHookPoint
from sandbox.faults.duplicate_billing_events import DuplicateBillingEvents
from sandbox.faults.hooks import HOOK_POINTS


def _define_fault(points: tuple[str, ...]) -> type[Fault]:
    """A real fault, moved onto `points`."""

    class Misspelled(DuplicateBillingEvents):
        hook_points: ClassVar[tuple[str, ...]] = points

    return Misspelled


def test_a_misspelled_hook_point_fails_when_the_fault_is_defined() -> None:
    with pytest.raises(UnknownHookPoint) as err:
        _define_fault(("ingest.activity", "ingest.biling"))
    message = str(err.value)
    assert "Misspelled" in message and "'ingest.biling'" in message
    assert "did you mean 'ingest.billing'" in message


def test_a_hook_point_far_from_any_lists_the_real_ones() -> None:
    with pytest.raises(UnknownHookPoint) as err:
        _define_fault(("zzz",))
    assert all(point in str(err.value) for point in HOOK_POINTS)


def test_a_decoy_is_held_to_the_same_contract() -> None:
    with pytest.raises(UnknownHookPoint, match=r"'serve\.score'"):

        class Noisy(Decoy):
            id = "noisy"
            title = "A decoy"
            hook_points: ClassVar[tuple[str, ...]] = ("serve.score",)


def test_a_fault_on_real_hook_points_is_defined_and_acts_only_there() -> None:
    class Doubler(_define_fault(("serve.traffic",))):  # type: ignore[misc]
        def apply(self, point: str, value: Any, ctx: HookContext) -> Any:
            return value * 2

    planted = FaultSet([Doubler(DuplicateBillingEvents.Params())])
    ctx = HookContext(seed=1, day=3, calendar=None)  # type: ignore[arg-type]
    assert planted.acts_at("serve.traffic") and planted.acts_at("serve.scores", "serve.traffic")
    assert not planted.acts_at("serve.scores")
    assert planted.apply("serve.traffic", 1.0, ctx) == 2.0
    frame = pl.DataFrame({"score": [0.5]})
    assert planted.apply("serve.scores", frame, ctx).equals(frame)


def test_stages_cannot_use_an_unknown_hook_point() -> None:
    planted = FaultSet([])
    ctx = HookContext(seed=1, day=3, calendar=None)  # type: ignore[arg-type]
    with pytest.raises(UnknownHookPoint, match=r"'serve\.feature'"):
        planted.apply("serve.feature", None, ctx)
    with pytest.raises(UnknownHookPoint, match=r"'serve\.score'"):
        planted.acts_at("serve.score")


def test_every_registered_fault_and_decoy_names_real_hook_points() -> None:
    from sandbox.decoys import registry as decoys

    classes = [*registry.catalog().values(), *decoys.catalog().values()]
    assert len(classes) >= 15
    for cls in classes:
        assert cls.hook_points, cls.__name__
        assert set(cls.hook_points) <= set(HOOK_POINTS), cls.__name__
