"""The hook contract holds at definition time: a handler naming a hook point no stage exposes,
or with a signature that does not fit its point, fails when its class is defined, with the hook
named; stages cannot apply or ask about an unknown point either; handlers read the world's data
and nothing else."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest

from sandbox.faults import registry
from sandbox.faults.base import (
    BadHandler,
    Decoy,
    FaultSet,
    HookContext,
    UnknownHookPoint,
    WorldData,
    hook,
)
from sandbox.faults.context import NotReadOnly
from sandbox.faults.duplicate_billing_events import DuplicateBillingEvents
from sandbox.faults.hooks import HOOK_POINTS


def test_a_misspelled_hook_point_fails_when_the_fault_is_defined() -> None:
    with pytest.raises(UnknownHookPoint) as err:

        class Misspelled(DuplicateBillingEvents):
            @hook("ingest.biling")
            def more(self, events: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
                return events

    message = str(err.value)
    assert "Misspelled.more" in message and "'ingest.biling'" in message
    assert "did you mean 'ingest.billing'" in message


def test_a_hook_point_far_from_any_lists_the_real_ones() -> None:
    with pytest.raises(UnknownHookPoint) as err:
        hook("zzz")(lambda self, value, ctx: value)
    assert all(point in str(err.value) for point in HOOK_POINTS)


@pytest.mark.parametrize(
    ("source", "complaint"),
    [
        ("def h(self, events: pl.DataFrame) -> pl.DataFrame: ...", "takes (self, value"),
        ("def h(self, events, ctx: HookContext) -> pl.DataFrame: ...", "annotate the value"),
        ("def h(self, events: pl.DataFrame, ctx: HookContext): ...", "annotate the return"),
        ("def h(self, events: float, ctx: HookContext) -> float: ...", "carries pl.DataFrame"),
        ("def h(self, e: pl.DataFrame, ctx: HookContext) -> list[str]: ...", "return is list"),
        ("def h(self, e: pl.DataFrame, *, ctx: HookContext) -> pl.DataFrame: ...", "takes (self"),
        ("def h(self, e: pl.DataFrame, ctx: int) -> pl.DataFrame: ...", "is a HookContext"),
    ],
)
def test_a_handler_with_the_wrong_signature_fails_naming_its_hook(
    source: str, complaint: str
) -> None:
    namespace: dict[str, object] = {"pl": pl, "HookContext": HookContext}
    exec(source, namespace)  # annotations as real objects, as without `from __future__`
    with pytest.raises(BadHandler) as err:
        hook("ingest.billing")(namespace["h"])  # type: ignore[arg-type]
    assert "'ingest.billing'" in str(err.value) and complaint in str(err.value)


def test_string_annotations_are_checked_too() -> None:
    class Typed(DuplicateBillingEvents):
        @hook("serve.traffic")
        def double(self, multiplier: float, ctx: HookContext) -> float:
            return multiplier * 2

    with pytest.raises(BadHandler, match=r"'serve\.traffic'.*carries float"):

        class Mistyped(DuplicateBillingEvents):
            @hook("serve.traffic")
            def double(self, multiplier: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
                return multiplier

    assert Typed.hook_points == ("ingest.billing", "serve.traffic")


def test_a_list_of_hook_points_is_refused_in_favour_of_handlers() -> None:
    with pytest.raises(BadHandler, match="@hook handlers"):

        class Listed(Decoy):
            hook_points = ("serve.scores",)


def test_two_handlers_for_one_point_are_refused() -> None:
    with pytest.raises(BadHandler, match=r"two handlers for hook 'ingest\.billing'"):

        class Twice(Decoy):
            @hook("ingest.billing")
            def a(self, events: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
                return events

            @hook("ingest.billing")
            def b(self, events: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
                return events


def test_a_fault_acts_only_at_its_hook_points_and_gets_the_world_data() -> None:
    seen: list[WorldData] = []

    class Doubler(DuplicateBillingEvents):
        @hook("serve.traffic")
        def double(self, multiplier: float, ctx: HookContext) -> float:
            seen.append(ctx.data)
            return multiplier * 2

    data = WorldData(duckdb.connect())
    planted = FaultSet([Doubler(DuplicateBillingEvents.Params())]).with_data(data)
    ctx = HookContext(seed=1, day=3, calendar=None)  # type: ignore[arg-type]
    assert planted.acts_at("serve.traffic") and planted.acts_at("serve.scores", "ingest.billing")
    assert not planted.acts_at("serve.scores")
    assert planted.apply("serve.traffic", 1.0, ctx) == 2.0
    assert seen == [data]
    frame = pl.DataFrame({"score": [0.5]})
    assert planted.apply("serve.scores", frame, ctx).equals(frame)


def test_world_data_only_reads() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT 1 AS x")
    data = WorldData(con)
    assert data.sql("SELECT x + $y AS z FROM t", {"y": 1})["z"].to_list() == [2]
    frame = pl.DataFrame({"x": [5]})
    assert data.sql("SELECT * FROM f JOIN t USING (x)", f=frame).height == 0
    for query in ["DELETE FROM t", "SELECT 1; DROP TABLE t", "CREATE TABLE u AS SELECT 1"]:
        with pytest.raises(NotReadOnly):
            data.sql(query)
    assert con.execute("SELECT count(*) FROM t").fetchone() == (1,)
    with pytest.raises(LookupError, match="without the world's data"):
        FaultSet([]).data.sql("SELECT 1")


def test_stages_cannot_use_an_unknown_hook_point() -> None:
    planted = FaultSet([])
    ctx = HookContext(seed=1, day=3, calendar=None)  # type: ignore[arg-type]
    with pytest.raises(UnknownHookPoint, match=r"'serve\.feature'"):
        planted.apply("serve.feature", None, ctx)
    with pytest.raises(UnknownHookPoint, match=r"'serve\.score'"):
        planted.acts_at("serve.score")


def test_every_registered_fault_and_decoy_has_handlers_on_real_hook_points() -> None:
    from sandbox.decoys import registry as decoys

    classes = [*registry.catalog().values(), *decoys.catalog().values()]
    assert len(classes) >= 15
    for cls in classes:
        assert cls.hook_points, cls.__name__
        assert set(cls.hook_points) <= set(HOOK_POINTS), cls.__name__
        assert not hasattr(cls, "apply"), f"{cls.__name__} dispatches by hand"
