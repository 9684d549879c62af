"""Which model version is served, and where the registry's aliases point, once the ops console's
deployment actions are in effect: without a world."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb

from sandbox.actions import rollback
from sandbox.actions.catalog import MOVE_ALIAS, PIN_VERSION, ROLLBACK, SET_FILL, SET_THRESHOLD
from sandbox.actions.deployment import (
    FIRST_CONFIG,
    Deployed,
    Deployment,
    baseline,
    config_periods,
    deploy_history,
    in_effect,
    moved_aliases,
    overlay_reply,
)
from sandbox.actions.overrides import Applied
from sandbox.pipeline.deploy import ModelDeployment

T0 = dt.datetime(2026, 4, 13, 9)
MODEL = "churn-model"


def _record(version: str = "2", uri: str = f"models:/{MODEL}@champion") -> ModelDeployment:
    return ModelDeployment(
        model_name=MODEL,
        model_version=version,
        model_uri=uri,
        threshold=0.01,
        features=["tenure_days"],
        deployed_at=T0 - dt.timedelta(days=20),
    )


# The world's servers loaded version 1 at 0.06, then version 2 at 0.01; champion names 2.
HISTORY = [("1", 0.06), ("2", 0.01)]
FOLLOWS = baseline(_record(), HISTORY, {"champion": "2"})


def _applied(action: str, params: dict, minutes: int) -> Applied:
    return Applied(
        id=f"{action}-{minutes}",
        action=action,
        params=params,
        requested_at=T0,
        effective_at=T0 + dt.timedelta(minutes=minutes),
    )


def _at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def test_nothing_applied_serves_what_the_world_left() -> None:
    state = in_effect(FOLLOWS, [_applied(SET_FILL, {"feature": "x", "fill_value": 1}, 0)], _at(5))
    assert (state.version, state.threshold, state.follows_alias) == ("2", 0.01, True)
    assert not state.changed and state.model_uri == f"models:/{MODEL}@champion"
    assert [d[:2] for d in state.history] == [("1", 0.06), ("2", 0.01)]
    assert state.config_as_of is None  # as the world left it: every change from its own time


def test_the_record_ends_the_history_even_when_the_logs_lack_it() -> None:
    assert baseline(_record("3"), HISTORY, {}).history[-1][:2] == ("3", 0.01)
    assert [d[:2] for d in baseline(_record(), [], {}).history] == [("2", 0.01)]


def test_a_pin_serves_the_version_from_its_time_with_the_threshold_it_was_served_with() -> None:
    pin = [_applied(PIN_VERSION, {"version": "1"}, 15)]
    assert in_effect(FOLLOWS, pin, _at(14)).version == "2"
    state = in_effect(FOLLOWS, pin, _at(15))
    assert (state.version, state.threshold, state.follows_alias) == ("1", 0.06, False)
    assert state.model_uri == f"models:/{MODEL}/1" and state.since == _at(15) and state.changed
    # A version never served keeps the servers' threshold.
    assert (
        in_effect(FOLLOWS, [_applied(PIN_VERSION, {"version": "3"}, 0)], _at(1)).threshold == 0.01
    )
    # Pinning what is served changes the version nothing, and leaves nothing to roll back to.
    same = in_effect(FOLLOWS, [_applied(PIN_VERSION, {"version": "2"}, 0)], _at(1))
    assert (same.version, same.follows_alias, same.history) == ("2", False, FOLLOWS.history)


def test_moving_champion_moves_a_server_that_follows_it_and_not_a_pinned_one() -> None:
    move = [_applied(MOVE_ALIAS, {"alias": "champion", "version": "1"}, 5)]
    state = in_effect(FOLLOWS, move, _at(5))
    assert (state.version, state.threshold, state.follows_alias) == ("1", 0.06, True)
    assert state.aliases == {"champion": "1"}
    assert moved_aliases(FOLLOWS, state) == {"champion": "1"}
    assert moved_aliases(FOLLOWS, in_effect(FOLLOWS, move, _at(4))) == {}

    pinned = baseline(_record(uri=f"models:/{MODEL}/2"), HISTORY, {"champion": "1"})
    state = in_effect(
        pinned, [_applied(MOVE_ALIAS, {"alias": "champion", "version": "2"}, 5)], _at(9)
    )
    assert state.version == "2" and state.aliases == {"champion": "2"}
    # Another alias is only a label.
    other = [_applied(MOVE_ALIAS, {"alias": "challenger", "version": "1"}, 5)]
    state = in_effect(FOLLOWS, other, _at(9))
    assert state.version == "2" and state.aliases == {"champion": "2", "challenger": "1"}


def test_a_rollback_goes_to_the_deployment_before_and_no_further() -> None:
    back = [_applied(ROLLBACK, {"service": "model-server"}, 20)]
    state = in_effect(FOLLOWS, back, _at(20))
    assert (state.version, state.threshold, state.follows_alias) == ("1", 0.06, False)
    assert state.aliases == {"champion": "2"}  # the registry still names the version rolled from
    twice = [*back, _applied(ROLLBACK, {"service": "model-server"}, 40)]
    assert in_effect(FOLLOWS, twice, _at(60)).version == "1"
    # After a pin, a rollback returns to what was served before the pin.
    pin_then_back = [_applied(PIN_VERSION, {"version": "3"}, 0), _applied(ROLLBACK, {}, 30)]
    assert in_effect(FOLLOWS, pin_then_back, _at(29)).version == "3"
    assert in_effect(FOLLOWS, pin_then_back, _at(30)).version == "2"


def test_a_rollback_of_another_service_leaves_the_model_server_as_it_was() -> None:
    elsewhere = [_applied(ROLLBACK, {"service": "retrieval"}, 20)]
    assert in_effect(FOLLOWS, elsewhere, _at(60)) == FOLLOWS
    # Nor does it count as one of the model server's: the next rollback goes back one.
    both = [*elsewhere, _applied(ROLLBACK, {"service": "model-server"}, 40)]
    assert in_effect(FOLLOWS, both, _at(60)).version == "1"


def test_the_latest_change_in_effect_sets_the_threshold() -> None:
    entries = [_applied(SET_THRESHOLD, {"threshold": 0.2}, 10), _applied(ROLLBACK, {}, 20)]
    assert in_effect(FOLLOWS, entries, _at(10)).threshold == 0.2
    assert in_effect(FOLLOWS, entries, _at(20)).threshold == 0.06
    later = [_applied(ROLLBACK, {}, 10), _applied(SET_THRESHOLD, {"threshold": 0.2}, 20)]
    assert in_effect(FOLLOWS, later, _at(20)).threshold == 0.2
    # Out of order in the file, in order of effect.
    assert in_effect(FOLLOWS, list(reversed(later)), _at(20)).threshold == 0.2


def test_moved_aliases_are_laid_over_the_registry_answers() -> None:
    moved = {"champion": "1"}
    model = {
        "registered_model": {
            "name": MODEL,
            "aliases": [{"alias": "champion", "version": "2"}, {"alias": "shadow", "version": "2"}],
            "latest_versions": [{"name": MODEL, "version": "2", "aliases": ["champion"]}],
        }
    }
    out = overlay_reply(model, moved)["registered_model"]
    assert out["aliases"] == [
        {"alias": "champion", "version": "1"},
        {"alias": "shadow", "version": "2"},
    ]
    assert out["latest_versions"][0]["aliases"] == []
    versions = {
        "model_versions": [
            {"name": MODEL, "version": "1", "aliases": []},
            {"name": MODEL, "version": "2", "aliases": ["champion"]},
            {"name": "ticket-encoder", "version": "1", "aliases": ["champion"]},
        ]
    }
    out_versions = overlay_reply(versions, moved)["model_versions"]
    assert [v["aliases"] for v in out_versions] == [["champion"], [], ["champion"]]
    assert overlay_reply({"registered_models": [model["registered_model"]]}, {}) == {
        "registered_models": [model["registered_model"]]
    }
    one = overlay_reply({"model_version": {"name": MODEL, "version": "1"}}, moved)
    assert one["model_version"]["aliases"] == ["champion"]


def _world_db(path: Path, loads: list[tuple[dt.datetime, str, float]]) -> Path:
    """A warehouse whose logs record the model server loading these versions."""
    db = path / "world.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE SCHEMA telemetry")
        con.execute(
            "CREATE TABLE telemetry.logs (ts TIMESTAMP, service VARCHAR, event VARCHAR, attrs VARCHAR)"
        )
        for ts, version, threshold in loads:
            attrs = json.dumps({"model_version": version, "threshold": threshold})
            con.execute(
                "INSERT INTO telemetry.logs VALUES (?, 'model-server', 'model_loaded', ?)",
                [ts, attrs],
            )
    return db


def test_a_configuration_rollout_is_a_deployment_a_rollback_goes_back_past(tmp_path: Path) -> None:
    day = dt.timedelta(days=1)
    cut, patch = T0 - 6 * day, T0 - 2 * day
    db = _world_db(tmp_path, [(T0 - 20 * day, "1", 0.06), (T0 - 10 * day, "2", 0.01)])
    history = deploy_history(db, [cut, patch])
    assert history == [
        Deployed("1", 0.06, FIRST_CONFIG),
        Deployed("2", 0.01, FIRST_CONFIG),
        Deployed("2", 0.01, cut),
        Deployed("2", 0.01, patch),
    ]
    left = baseline(_record(), history, {"champion": "2"})
    assert left.history[-1] == Deployed("2", 0.01, patch) and left.config_as_of is None

    def served(*minutes: int) -> Deployment:
        back = [_applied(ROLLBACK, {"service": "model-server"}, m) for m in minutes]
        return in_effect(left, back, _at(max(minutes)))

    # Back past the patch: the cut is still in effect, and so it is after a change of threshold.
    assert served(20).config_as_of == cut
    # The same version as before: the servers still follow champion, so moving it still moves
    # what they serve.
    assert served(20).follows_alias and served(20).model_uri == f"models:/{MODEL}@champion"
    moved = in_effect(
        left,
        [_applied(ROLLBACK, {}, 20), _applied(MOVE_ALIAS, {"version": "1"}, 30)],
        _at(30),
    )
    assert (moved.version, moved.config_as_of) == ("1", cut)
    threshold = in_effect(left, [_applied(SET_THRESHOLD, {"threshold": 0.2}, 5)], _at(5))
    assert threshold.config_as_of == patch
    # Back past the cut: the configuration from before it, with the same model version.
    before = served(20, 40)
    assert before.config_as_of == FIRST_CONFIG and (before.version, before.threshold) == ("2", 0.01)
    # A version pinned then goes out with the configuration the servers run.
    pinned = in_effect(
        left,
        [
            *[_applied(ROLLBACK, {}, m) for m in (20, 40)],
            _applied(PIN_VERSION, {"version": "1"}, 60),
        ],
        _at(60),
    )
    assert (pinned.version, pinned.config_as_of) == ("1", FIRST_CONFIG)


def test_config_periods_start_where_an_action_changed_the_configuration() -> None:
    cut, patch = T0 - dt.timedelta(days=6), T0 - dt.timedelta(days=2)
    history = [
        Deployed("2", 0.01, FIRST_CONFIG),
        Deployed("2", 0.01, cut),
        Deployed("2", 0.01, patch),
    ]
    left = baseline(_record(), history, {"champion": "2"})
    entries = [
        _applied(SET_THRESHOLD, {"threshold": 0.2}, 5),  # the configuration stays
        _applied(ROLLBACK, {}, 20),  # back past the patch
        _applied(ROLLBACK, {}, 40),  # back past the cut
    ]
    # As the world left it; from the change of threshold the same configuration, named; then
    # each rollback's.
    assert config_periods(left, entries, _at(60)) == [
        (FIRST_CONFIG, None),
        (_at(5), patch),
        (_at(20), cut),
        (_at(40), FIRST_CONFIG),
    ]
    # Only what has taken effect by then.
    assert config_periods(left, entries, _at(30)) == config_periods(left, entries[:2], _at(30))
    assert config_periods(left, [], _at(60)) == [(FIRST_CONFIG, None)]


def test_a_feature_server_rollback_goes_back_one_declared_rollout_at_a_time() -> None:
    rollouts = [_at(-600), _at(-60)]
    back = [_applied(ROLLBACK, {"service": "feature-server"}, m) for m in (20, 40, 60)]
    config = [rollback.config_as_of("feature-server", rollouts, back, _at(m)) for m in (10, 20, 40)]
    assert config == [None, _at(-600), FIRST_CONFIG]  # as left, before the latest, before both
    assert rollback.config_as_of("feature-server", rollouts, back, _at(90)) == FIRST_CONFIG
    # Nothing rolled out before the rollback: back to the first configuration, as it was.
    assert rollback.config_as_of("feature-server", [_at(30)], back[:1], _at(90)) == FIRST_CONFIG
    # A rollback of another service is not one of the feature server's.
    model = [_applied(ROLLBACK, {"service": "model-server"}, 20)]
    assert rollback.config_as_of("feature-server", rollouts, model, _at(90)) is None
    assert rollback.rollbacks("feature-server", [*model, *back], _at(40)) == [_at(20), _at(40)]
