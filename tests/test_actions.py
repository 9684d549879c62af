"""The ops console's catalog and the verdicts planted faults and decoys declare for its actions:
without a world."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pydantic import ValidationError

from sandbox.actions.catalog import (
    ACTIONS,
    BACKFILL_ONLINE_STORE,
    CATALOG,
    COUNT_AS_FAILED,
    MOVE_ALIAS,
    PAUSE_JOB,
    PIN_VERSION,
    QUARANTINE_RELEASE,
    REBUILD_INDEX,
    RERUN_BATCH,
    RESTORE_SERIES,
    RESUME_JOB,
    RETRAIN,
    ROLLBACK,
    SET_DRIFT_WINDOW,
    SET_FILL,
    SET_THRESHOLD,
)
from sandbox.actions.overrides import Applied, Overrides
from sandbox.decoys import registry as decoy_registry
from sandbox.faults import registry as fault_registry
from sandbox.faults.base import VERDICTS
from sandbox.review.actions import review, verdict_of

T0 = dt.datetime(2026, 4, 13)


def test_every_fault_declares_an_action_that_helps_and_only_known_actions() -> None:
    for fault in fault_registry.catalog().values():
        assert set(fault.actions) <= set(CATALOG), fault.id
        assert set(fault.actions.values()) <= set(VERDICTS), fault.id
        assert {"mitigates", "fixes"} & set(fault.actions.values()), (
            f"{fault.id} declares no action that mitigates or fixes it"
        )


def test_every_decoy_declares_what_acting_on_it_does() -> None:
    """Nothing is wrong behind a decoy, so nothing mitigates it; chasing it costs something or
    nothing, and each says which."""
    for decoy in decoy_registry.catalog().values():
        assert decoy.actions, decoy.id
        assert set(decoy.actions) <= set(CATALOG), decoy.id
        assert not {"mitigates", "fixes"} & set(decoy.actions.values()), decoy.id


def test_the_catalog_describes_every_action_without_a_verdict() -> None:
    for action in ACTIONS:
        described = action.describe()
        assert described["id"] == action.id and described["description"]
        assert described["params_schema"]["type"] == "object"
        assert not any(v in str(described) for v in VERDICTS)
    assert {a.id for a in ACTIONS if a.available} == {
        SET_THRESHOLD,
        SET_FILL,
        PIN_VERSION,
        MOVE_ALIAS,
        ROLLBACK,
        REBUILD_INDEX,
        BACKFILL_ONLINE_STORE,
        RETRAIN,
        SET_DRIFT_WINDOW,
        PAUSE_JOB,
        RESUME_JOB,
        RESTORE_SERIES,
        RERUN_BATCH,
        QUARANTINE_RELEASE,
        COUNT_AS_FAILED,
    }


@pytest.mark.parametrize(
    ("action", "params"),
    [
        (SET_THRESHOLD, {"threshold": 0}),
        (SET_THRESHOLD, {"threshold": 1}),
        (SET_THRESHOLD, {"threshold": "high"}),
        (SET_THRESHOLD, {}),
        (SET_FILL, {"feature": "monthly_price", "fill_value": 3.0}),
        (SET_FILL, {"feature": "avg_daily_minutes_7d", "fill_value": -1}),
        (SET_FILL, {"feature": "avg_daily_minutes_7d"}),
        ("pin-served-version", {"version": "latest"}),
        ("pause-job", {"job": "everything"}),
        ("resume-job", {}),
        ("rollback-deploy", {"to": "yesterday"}),
        ("rollback-deploy", {"service": "everything"}),
        ("move-alias", {"alias": "Champion", "version": "1"}),
    ],
)
def test_bad_params_are_refused(action: str, params: dict) -> None:
    with pytest.raises(ValidationError):
        CATALOG[action].params.model_validate(params)


def test_good_params_pass() -> None:
    CATALOG[SET_THRESHOLD].params.model_validate({"threshold": 0.3})
    CATALOG[SET_FILL].params.model_validate({"feature": "avg_daily_minutes_28d", "fill_value": 41})
    CATALOG["pause-job"].params.model_validate({"job": "drift-monitor"})


def test_an_override_is_in_effect_from_its_time_the_latest_winning(tmp_path: Path) -> None:
    writer, reader = Overrides(tmp_path), Overrides(tmp_path)
    assert reader.threshold(T0) is None and reader.fill_values(T0) == {}

    def apply(action: str, params: dict, minutes: int) -> None:
        at = T0 + dt.timedelta(minutes=minutes)
        writer.append(
            Applied(id=str(minutes), action=action, params=params, requested_at=T0, effective_at=at)
        )

    apply(SET_THRESHOLD, {"threshold": 0.3}, 10)
    apply(SET_THRESHOLD, {"threshold": 0.2}, 40)
    apply(SET_FILL, {"feature": "avg_daily_minutes_7d", "fill_value": 21.5}, 45)
    assert reader.threshold(T0 + dt.timedelta(minutes=9)) is None
    assert reader.threshold(T0 + dt.timedelta(minutes=10)) == 0.3
    assert reader.threshold(T0 + dt.timedelta(hours=1)) == 0.2
    assert reader.fill_values(T0 + dt.timedelta(minutes=44)) == {}
    assert reader.fill_values(T0 + dt.timedelta(hours=1)) == {"avg_daily_minutes_7d": 21.5}
    assert [e.id for e in Overrides(tmp_path).entries()] == ["10", "40", "45"]


KEY = {
    "faults": [
        {"fault_id": "a", "actions": {SET_FILL: "mitigates", "retrain": "harmful"}},
        {"fault_id": "b", "actions": {SET_THRESHOLD: "fixes"}},
    ],
    "decoys": [{"decoy_id": "d", "actions": {SET_THRESHOLD: "harmful"}}],
}


def test_a_harm_anywhere_is_the_verdict_then_the_best_help() -> None:
    assert verdict_of(SET_FILL, KEY)[0] == "mitigates"
    assert verdict_of(SET_THRESHOLD, KEY)[0] == "harmful"
    assert verdict_of("rebuild-index", KEY)[0] == "no effect"
    _, each = verdict_of(SET_THRESHOLD, KEY)
    assert {(e["id"], e["verdict"]) for e in each} == {
        ("a", "no effect"),
        ("b", "fixes"),
        ("d", "harmful"),
    }


def test_a_verdict_that_needs_a_parameter_value_holds_only_with_it() -> None:
    """Setting the fill of a feature the fault did not touch does nothing to it."""
    key = {
        "faults": [
            {
                "fault_id": "a",
                "actions": {SET_FILL: "mitigates", PAUSE_JOB: "mitigates"},
                "acts_when": {
                    SET_FILL: {"feature": ["avg_daily_minutes_7d", "avg_daily_minutes_28d"]},
                    PAUSE_JOB: {"job": ["materialization"]},
                },
            }
        ]
    }
    touched = {"feature": "avg_daily_minutes_28d", "fill_value": 40.0}
    assert verdict_of(SET_FILL, key, touched)[0] == "mitigates"
    assert verdict_of(SET_FILL, key, {"feature": "tenure_days", "fill_value": 40.0})[0] == (
        "no effect"
    )
    assert verdict_of(PAUSE_JOB, key, {"job": "drift-monitor"})[0] == "no effect"
    assert verdict_of(PAUSE_JOB, key, {})[0] == "no effect"  # a parameter it needs is missing
    timeline = [_event(1, 30, PAUSE_JOB, "applied", {"job": "materialization"})]
    assert review(timeline, key)["list"][0]["verdict"] == "mitigates"


def test_a_version_helps_only_if_it_served_before_the_fault_began() -> None:
    """A pin, or champion moved, back to the release before the fault helps; to the version the
    fault shipped, or one that never served, it does not; another alias never does."""
    began = dt.datetime(2026, 3, 15)
    key = {
        "faults": [
            {
                "fault_id": "leak",
                "actions": {PIN_VERSION: "mitigates", MOVE_ALIAS: "mitigates"},
                "acts_when": {MOVE_ALIAS: {"alias": ["champion"]}},
                "evidence": [
                    {"kind": "changelog", "window_start": "2026-03-14"},
                    {"kind": "table_column", "window_start": began.date().isoformat()},
                ],
            }
        ]
    }
    served = {"1": dt.datetime(2026, 2, 1), "2": began + dt.timedelta(hours=6)}

    def judged(action: str, params: dict) -> str:
        return verdict_of(action, key, params, served=served)[0]

    assert judged(PIN_VERSION, {"version": "1"}) == "mitigates"
    assert judged(PIN_VERSION, {"version": "2"}) == "no effect"  # the fault's own
    assert judged(PIN_VERSION, {"version": "3"}) == "no effect"  # registered, never served
    assert judged(MOVE_ALIAS, {"alias": "champion", "version": "1"}) == "mitigates"
    assert judged(MOVE_ALIAS, {"alias": "champion", "version": "2"}) == "no effect"
    assert judged(MOVE_ALIAS, {"alias": "shadow", "version": "1"}) == "no effect"
    # Without the world's versions (none could be read) the declared verdict stands.
    assert verdict_of(PIN_VERSION, key, {"version": "2"})[0] == "mitigates"
    timeline = [
        _event(1, 30, PIN_VERSION, "applied", {"version": "2"}),
        _event(2, 60, PIN_VERSION, "applied", {"version": "1"}),
    ]
    listed = review(timeline, key, versions=lambda: served)["list"]
    assert [a["verdict"] for a in listed] == ["no effect", "mitigates"]


def test_every_parameter_a_verdict_needs_is_one_its_action_takes_with_valid_values() -> None:
    planted = [
        *(cls(cls.Params()) for cls in fault_registry.catalog().values()),
        *(cls(cls.Params()) for cls in decoy_registry.catalog().values()),
    ]
    for fault in planted:
        for action, needs in fault.acts_when().items():
            assert fault.actions.get(action) in ("mitigates", "fixes", "harmful"), fault.id
            fields = CATALOG[action].params.model_fields
            for name, values in needs.items():
                assert name in fields and values, (fault.id, action, name)
                for value in values:
                    got = CATALOG[action].params.model_validate(_valid(action) | {name: value})
                    assert getattr(got, name) == value, (fault.id, action, name, value)


def _valid(action: str) -> dict:
    """Parameters the action accepts, to vary one of them."""
    return {
        SET_FILL: {"feature": "avg_daily_minutes_7d", "fill_value": 1.0},
        PAUSE_JOB: {"job": "materialization"},
        SET_DRIFT_WINDOW: {"days": 42},
        QUARANTINE_RELEASE: {"device": "android", "app_version": "5.2.0"},
        COUNT_AS_FAILED: {"status": "refunded"},
    }.get(action, {})


def _event(seq: int, offset: float, action: str, status: str, params: dict | None = None) -> dict:
    return {
        "seq": seq,
        "kind": "action",
        "offset_s": offset,
        "sim_ts": (T0 + dt.timedelta(seconds=offset)).isoformat(),
        "detail": {"action": action, "params": params or {}, "status": status},
    }


def test_time_to_first_mitigation_counts_applied_actions_that_help() -> None:
    timeline = [
        _event(1, 30, SET_FILL, "refused"),
        _event(2, 60, "rebuild-index", "applied"),
        _event(3, 90, SET_FILL, "applied"),
        _event(4, 120, SET_FILL, "applied"),
    ]
    judged = review(timeline, KEY)
    assert [a["verdict"] for a in judged["list"]] == [None, "no effect", "mitigates", "mitigates"]
    assert judged["applied"] == 3
    assert judged["time_to_first_mitigation_s"] == 90
    assert review(timeline[:2], KEY)["time_to_first_mitigation_s"] is None
