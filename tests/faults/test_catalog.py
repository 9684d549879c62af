"""Every registered fault meets the bar of `sandbox.testing` on a real small world: it verifies
where planted and not in the control world, its reference investigation reaches its evidence,
its answer key points at real data. The parts of the bar that need no world run on every fault
as it is planted, without building anything.

Difficulty: every fault world is at standard; every fault declares its tells per tier and is also
held to the bar at guided and hard (`TIER_WORLDS`), and at each tier none of its tells is in what
the candidate can read, dashboards included."""

from __future__ import annotations

from unittest.mock import patch

import pytest

from sandbox import scenario, testing
from sandbox.actions.catalog import ROLLBACK
from sandbox.catalog import fault_table_markdown, tier_table_markdown
from sandbox.decoys import registry as decoy_registry
from sandbox.difficulty import TIERS
from sandbox.faults import registry
from sandbox.faults.base import ROLLOUT_KINDS, Decoy, Fault, FaultSet
from sandbox.faults.toolkit import served_mean
from sandbox.layout import world_difficulty
from sandbox.review.actions import verdict_of
from sandbox.services import dashboards
from sandbox.testing import Worlds, connect
from sandbox.world.build import BuildSummary
from tests.conftest import EDGE_WORLDS, FAULT_WORLDS, REPO, TIER_WORLDS, scenario_for

CAL = scenario.load(None).world.calendar()


def _planted() -> dict[str, str]:
    """fault id -> the FAULT_WORLDS world it is planted in."""
    return {f.id: name for name in FAULT_WORLDS for f in scenario_for(name).faults}


def _fault(world: str, fault_id: str) -> Fault:
    return next(f for f in scenario_for(world).faults if f.id == fault_id)


FAULTS = sorted(_planted().items())
EDGE = [(name, f.id) for name in EDGE_WORLDS for f in scenario_for(name).faults]
# (fault id, world) for every fault planted at a tier other than standard.
TIERED = sorted((f.id, name) for name in TIER_WORLDS for f in scenario_for(name).faults)


def test_every_registered_fault_and_decoy_is_exercised() -> None:
    assert set(_planted()) == set(registry.catalog())
    decoys = {d.id for name in FAULT_WORLDS for d in scenario_for(name).decoys}
    decoys |= {d.id for d in scenario_for("control").decoys}
    assert decoys == set(decoy_registry.catalog())


def test_the_catalog_is_large_and_covers_every_stage() -> None:
    catalog = registry.catalog().values()
    assert len(catalog) >= 14
    stages = {stage for cls in catalog for stage in cls(cls.Params()).stages}
    assert {"ingest", "features", "materialize", "train", "serve", "retrieve", "monitor"} <= stages


@pytest.mark.parametrize("fault_id", sorted(registry.catalog()))
def test_every_fault_is_documented_and_hooks_real_points(fault_id: str) -> None:
    cls = registry.get(fault_id)
    testing.assert_documented(cls)
    testing.assert_hooks_well_formed(cls)
    assert f"`{fault_id}`" in (REPO / "README.md").read_text(), "README lists every fault"


# What the ops console's rollback takes back, by service, besides a rollout of its code or
# configuration a fault declares: a model release the model server loaded (a fault that ships one
# hooks these); the ticket encoder the retrieval service was deployed with.
RELEASE_HOOKS = {
    "model-server": {"train.releases", "serve.rollout"},
    "retrieval": {"retrieve.query_encoder"},
    "feature-server": set(),
}


@pytest.mark.parametrize("fault_id", sorted(registry.catalog()))
def test_a_rollback_verdict_rests_on_something_the_rollback_takes_back(fault_id: str) -> None:
    """The review credits a rollback only where going back one deployment of the service it
    names undoes what the fault did, and only for a rollback of that service."""
    cls = registry.get(fault_id)
    if cls.actions.get(ROLLBACK) not in ("mitigates", "fixes"):
        return
    fault = cls(cls.Params())
    calendar = scenario.load(None).world.calendar()
    service = cls.rollback_service
    rolled_out = [r for r in fault.rollouts(calendar) if r.service == service]
    assert rolled_out or RELEASE_HOOKS[service] & set(cls.hook_points), (
        f"{fault_id} says a rollback of {service} {cls.actions[ROLLBACK]}, but ships no "
        f"release and declares no {service} rollout for it to go back past"
    )
    key = fault.key(calendar)
    for other in RELEASE_HOOKS:
        verdict = verdict_of(ROLLBACK, {"faults": [key.model_dump()]}, {"service": other})[0]
        assert verdict == (cls.actions[ROLLBACK] if other == service else "no effect"), other


@pytest.mark.parametrize("fault_id", sorted(registry.catalog()))
def test_every_deploy_the_changelog_tells_of_is_one_a_rollback_goes_back_past(
    fault_id: str,
) -> None:
    """The story is true of the deploy system: a service's deploy or config change in the
    changelog is in its deploy history at every tier, as is every rollout declared."""
    cls = registry.get(fault_id)
    calendar = scenario.load(None).world.calendar()
    for tier in TIERS:
        fault = cls(cls.Params(), tier)
        planted = FaultSet([fault])
        for entry in fault.changelog(calendar):
            if entry["kind"] in ROLLOUT_KINDS:
                at = calendar.at(entry["day"], entry["hour"])
                assert at in planted.rollouts(calendar, entry["service"]), (tier, entry["title"])
        for rollout in fault.rollouts(calendar):
            assert rollout.at in planted.rollouts(calendar, rollout.service), (tier, rollout)


def test_the_readme_fault_table_is_current() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- fault-table -->\n")[1].split("\n<!-- /fault-table -->")[0]
    assert table == fault_table_markdown(), "regenerate it: sandbox faults list --markdown"


def test_the_readme_tier_table_is_current() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- tier-table -->\n")[1].split("\n<!-- /tier-table -->")[0]
    assert table == tier_table_markdown(), "regenerate it: sandbox faults list --tiers"


@pytest.mark.parametrize(("fault_id", "world"), [*FAULTS, *((f, w) for w, f in EDGE)])
def test_answer_key_is_complete_and_dated_in_the_faults_window(fault_id: str, world: str) -> None:
    testing.assert_answer_key_complete(_fault(world, fault_id), CAL)


@pytest.mark.parametrize(("fault_id", "world"), FAULTS)
def test_fault_verifies_where_planted(worlds: Worlds, fault_id: str, world: str) -> None:
    testing.assert_verifies_where_planted(_fault(world, fault_id), worlds.get(world), CAL)


@pytest.mark.parametrize(("fault_id", "world"), FAULTS)
def test_fault_symptom_is_absent_without_the_fault(
    control_world: BuildSummary, fault_id: str, world: str
) -> None:
    testing.assert_absent_without_it(_fault(world, fault_id), control_world, CAL)


@pytest.mark.parametrize(("fault_id", "world"), FAULTS)
def test_reference_investigation_reaches_the_evidence(
    worlds: Worlds, control_world: BuildSummary, fault_id: str, world: str
) -> None:
    fault = _fault(world, fault_id)
    testing.assert_investigation_reaches_evidence(fault, worlds.get(world), control_world, CAL)


@pytest.mark.parametrize(("fault_id", "world"), FAULTS)
def test_answer_key_points_at_real_evidence(worlds: Worlds, fault_id: str, world: str) -> None:
    testing.assert_evidence_exists(_fault(world, fault_id), worlds.get(world), CAL)


@pytest.mark.parametrize(("fault_id", "world"), FAULTS)
def test_fault_symptom_moves_where_planted_and_not_without_it(
    worlds: Worlds, control_world: BuildSummary, fault_id: str, world: str
) -> None:
    testing.assert_symptom_shows(_fault(world, fault_id), worlds.get(world), control_world, CAL)


def test_a_symptom_the_fault_does_not_move_is_refused(
    faulty_world: BuildSummary, control_world: BuildSummary
) -> None:
    """The default world's fault charted by a feature it leaves alone, or by SQL that does not
    run: refused, saying why."""
    fault = _fault("default", "feature-nulls-wrong-mean")
    untouched = served_mean("tenure_days")
    broken = untouched.model_copy(update={"value": "avg(no_such_column)"})
    for symptom, why in ((untouched, "served_tenure_days does not show it"), (broken, "not run")):
        with (
            patch.object(type(fault), "symptoms", lambda self, calendar, s=symptom: [s]),
            pytest.raises(testing.FaultFailure, match=why),
        ):
            testing.assert_symptom_shows(fault, faulty_world, control_world, CAL)


@pytest.mark.parametrize(("world", "fault_id"), EDGE)
def test_unusual_parameters_still_verify(worlds: Worlds, world: str, fault_id: str) -> None:
    fault, built = _fault(world, fault_id), worlds.get(world)
    testing.assert_verifies_where_planted(fault, built, CAL)
    testing.assert_evidence_exists(fault, built, CAL)


@pytest.mark.parametrize("world", [*FAULT_WORLDS, *EDGE_WORLDS, "control"])
def test_decoys_happen_and_are_explained_to_the_interviewer(worlds: Worlds, world: str) -> None:
    spec, built = scenario_for(world), worlds.get(world)
    con = connect(built)
    try:
        decoys: list[Decoy] = spec.decoys
        for decoy in decoys:
            checks = decoy.verify(con, CAL)
            assert all(c.passed for c in checks), (decoy.id, checks)
    finally:
        con.close()
    key = (built.root / "interviewer" / "answer_key.json").read_text()
    for decoy in spec.decoys:
        assert decoy.id in key


def test_every_fault_declares_its_tells_and_is_planted_at_every_tier() -> None:
    for fault_id in registry.catalog():
        cls = registry.get(fault_id)
        assert cls.tells is not Fault.tells, f"{fault_id}: declares no tells"
        assert cls(cls.Params()).tells("hard"), f"{fault_id}: hides nothing at hard"
        planted = {
            f.tier
            for name in [*FAULT_WORLDS, *TIER_WORLDS]
            for f in scenario_for(name).faults
            if f.id == fault_id
        }
        assert planted == set(TIERS), f"{fault_id} is planted at {sorted(planted)}"


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("fault_id", sorted(registry.catalog()))
def test_the_investigation_fits_each_tier(fault_id: str, tier: str) -> None:
    cls = registry.get(fault_id)
    fault = cls(cls.Params(), tier)  # type: ignore[arg-type]
    testing.assert_answer_key_complete(fault, CAL)
    testing.assert_investigation_fits_tier(fault, CAL)
    assert fault.key(CAL).difficulty == tier


@pytest.mark.parametrize(("fault_id", "world"), TIERED)
def test_tiered_fault_meets_the_bar_at_its_tier(
    worlds: Worlds, control_world: BuildSummary, fault_id: str, world: str
) -> None:
    fault, built = _fault(world, fault_id), worlds.get(world)
    testing.assert_verifies_where_planted(fault, built, CAL)
    testing.assert_investigation_reaches_evidence(fault, built, control_world, CAL)
    testing.assert_evidence_exists(fault, built, CAL)


def _dashboard_texts(built: BuildSummary) -> list[tuple[str, list[str]]]:
    """The titles and descriptions of the dashboards the stack serves for this world."""
    boards = dashboards.for_tier(dashboards.catalog(), world_difficulty(built.root))
    return [
        (
            f"dashboard {board.id}",
            [board.title, board.description]
            + [text for p in board.panels for text in (p.title, p.description)],
        )
        for board in boards.values()
    ]


@pytest.mark.parametrize(
    ("fault_id", "world"),
    [*FAULTS, *TIERED],
)
def test_nothing_candidate_visible_names_the_fault_or_tells_its_tier(
    worlds: Worlds, fault_id: str, world: str
) -> None:
    """One test per world for both scans: reading a world's every text takes longer than
    scanning it."""
    built = worlds.get(world)
    fault = _fault(world, fault_id)
    assert world_difficulty(built.root) == scenario_for(world).difficulty
    testing.assert_nothing_names(built, [fault.id, type(fault).__name__])
    testing.assert_no_tells(fault, built, _dashboard_texts(built))


def test_the_tells_scan_catches_a_tell_on_a_dashboard(faulty_world: BuildSummary) -> None:
    fault = _fault("default", "feature-nulls-wrong-mean")
    shown = [("dashboard feature-health", ["Null rate before imputation by feature"])]
    with pytest.raises(testing.FaultFailure, match="Null rate before imputation"):
        testing.assert_no_tells(fault, faulty_world, shown)


@pytest.mark.parametrize(
    ("fault_id", "world"),
    [(f, w) for f, w in TIERED if scenario_for(w).difficulty == "guided"],
)
def test_the_guided_world_shows_what_harder_tiers_hide(
    worlds: Worlds, fault_id: str, world: str
) -> None:
    """The tells are real: each tier that hides any has one the guided world shows."""
    fault, built = _fault(world, fault_id), worlds.get(world)
    texts = [*testing.candidate_texts(built), *_dashboard_texts(built)]
    readable = "\n".join(v for _, values in texts for v in values).lower()
    for tier in ("standard", "hard"):
        tells = [t.lower() for t in fault.tells(tier)]  # type: ignore[arg-type]
        shown = {t for t in tells if t in readable}
        assert shown, f"{fault_id}: no tell of {tier} shows at guided: {tells}"
