"""The ops console through the gateway (in-process, on a clock standing at live start): who may
act, what a bad request gets, what an applied action leaves for the services, the one-session
rule of a stack with actions on, the review's verdicts and the interviewer's fast-forward."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from sandbox.actions.catalog import (
    CATALOG,
    COUNT_AS_FAILED,
    MOVE_ALIAS,
    PAUSE_JOB,
    PIN_VERSION,
    QUARANTINE_RELEASE,
    RERUN_BATCH,
    RESUME_JOB,
    RETRAIN,
    SET_FILL,
    SET_THRESHOLD,
)
from sandbox.actions.deployment import Registry
from sandbox.actions.overrides import Overrides
from sandbox.layout import WorldPaths
from sandbox.review import fills
from sandbox.services import spool, stack
from sandbox.services.simclock import SimClock
from sandbox.services.supervisor import Supervisor
from tests import waiting
from tests.services.conftest import MakeSession


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_session_with_actions_off_is_refused_and_the_refusal_recorded(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    links = make_session()
    candidate = bearer(links["candidate_token"])
    catalog = client.get("/api/actions", headers=candidate).json()
    assert catalog["enabled"] is False
    assert {a["id"] for a in catalog["actions"]} == set(CATALOG)
    reply = client.post(
        "/api/actions",
        json={"action": SET_THRESHOLD, "params": {"threshold": 0.2}},
        headers=candidate,
    )
    assert reply.status_code == 403, reply.text
    assert "actions are off" in reply.json()["detail"]
    assert not Overrides(paths.run).entries()
    [event] = client.get("/api/my/history?kind=action", headers=candidate).json()
    assert event["detail"]["status"] == "refused"


def test_bad_params_get_a_422_naming_the_field_and_nothing_changes(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    candidate = bearer(make_session(actions=True)["candidate_token"])
    cases = [
        ({"action": SET_THRESHOLD, "params": {"threshold": 1.5}}, "threshold"),
        ({"action": SET_THRESHOLD, "params": {}}, "threshold"),
        ({"action": SET_FILL, "params": {"feature": "monthly_price", "fill_value": 1}}, "feature"),
        (
            {"action": SET_FILL, "params": {"feature": "avg_daily_minutes_7d", "fill_value": -3}},
            "fill_value",
        ),
        ({"action": SET_FILL, "params": {"feature": "avg_daily_minutes_7d"}}, "fill_value"),
        (
            {
                "action": SET_FILL,
                "params": {
                    "feature": "avg_daily_minutes_7d",
                    "policy": "training-mean",
                    "fill_value": 5,
                },
            },
            "fill_value",
        ),
        (
            {"action": SET_FILL, "params": {"feature": "avg_daily_minutes_7d", "policy": "median"}},
            "policy",
        ),
        ({"action": SET_THRESHOLD, "params": {"threshold": 0.2, "extra": 1}}, "extra"),
        ({"action": "drop-tables", "params": {}}, "action"),
        (
            {"action": QUARANTINE_RELEASE, "params": {"device": "fridge", "app_version": "5.2.0"}},
            "device",
        ),
        (
            {"action": QUARANTINE_RELEASE, "params": {"device": "ios", "app_version": "5.2;--"}},
            "app_version",
        ),
        ({"action": COUNT_AS_FAILED, "params": {"status": "failed"}}, "status"),
        ({"action": COUNT_AS_FAILED, "params": {"status": "bounced"}}, "status"),
        # A release no viewing row reports (the world's are 5.x).
        (
            {"action": QUARANTINE_RELEASE, "params": {"device": "ios", "app_version": "9.9.9"}},
            "app_version",
        ),
    ]
    for body, field in cases:
        reply = client.post("/api/actions", json=body, headers=candidate)
        assert reply.status_code == 422, (body, reply.text)
        assert any(field in d["loc"] for d in reply.json()["detail"]), reply.text
    assert not Overrides(paths.run).entries()
    events = client.get("/api/my/history?kind=action", headers=candidate).json()
    assert [e["detail"]["status"] for e in events] == ["invalid"] * len(cases)


def test_the_training_mean_policy_fills_with_what_the_review_judges_against(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    links = make_session(actions=True)
    candidate = bearer(links["candidate_token"])
    feature = "avg_daily_minutes_7d"
    reply = client.post(
        "/api/actions",
        json={"action": SET_FILL, "params": {"feature": feature, "policy": "training-mean"}},
        headers=candidate,
    )
    assert reply.status_code == 202, reply.text
    applied = reply.json()
    requested = dt.datetime.fromisoformat(applied["requested_at"])
    effective = dt.datetime.fromisoformat(applied["effective_at"])
    reference = fills.reference(paths.root)
    assert reference is not None
    mean = reference.training_mean(feature, requested)
    assert mean is not None and applied["params"]["fill_value"] == round(mean, 4)
    # The wrong refresh filled far from it; the policy's value is what the servers fill with.
    wrong = reference.policy_fill(feature, requested)
    assert wrong is not None and abs(wrong - mean) > 0.2 * mean
    assert Overrides(paths.run).fill_values(effective) == {feature: round(mean, 4)}
    review = client.get(
        f"/api/sessions/{links['session_id']}/review", headers=bearer(links["interviewer_token"])
    ).json()
    (judged,) = review["actions"]
    assert (judged["params"]["policy"], judged["verdict"]) == ("training-mean", "mitigates")


def test_an_action_this_version_cannot_apply_says_so_and_changes_nothing(
    client: TestClient,
    paths: WorldPaths,
    make_session: MakeSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    candidate = bearer(make_session(actions=True)["candidate_token"])
    listed = {a["id"]: a for a in client.get("/api/actions", headers=candidate).json()["actions"]}
    assert all(a["available"] for a in listed.values())
    # Every action is live in this version: one taken out stands for an action not built yet.
    monkeypatch.setitem(CATALOG, SET_FILL, replace(CATALOG[SET_FILL], available=False))
    reply = client.post(
        "/api/actions",
        json={"action": SET_FILL, "params": {"feature": "avg_daily_minutes_7d", "fill_value": 1}},
        headers=candidate,
    )
    assert reply.status_code == 501
    assert "not available in this version" in reply.json()["detail"]
    assert not Overrides(paths.run).entries()


def test_an_applied_action_is_in_effect_after_its_delay_and_logged(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    links = make_session(actions=True)
    candidate = bearer(links["candidate_token"])
    now = SimClock.load(paths.run).now()
    reply = client.post(
        "/api/actions",
        json={"action": SET_THRESHOLD, "params": {"threshold": 0.25}},
        headers=candidate,
    )
    assert reply.status_code == 202, reply.text
    effective = dt.datetime.fromisoformat(reply.json()["effective_at"])
    assert effective - now >= CATALOG[SET_THRESHOLD].delay - dt.timedelta(seconds=1)
    overrides = Overrides(paths.run)
    assert overrides.threshold(now) is None
    assert overrides.threshold(effective) == 0.25
    lines, _ = spool.read_new(spool.spool_path(paths.run, "gateway", "telemetry.logs"), 0)
    progress = [line for line in lines if json.loads(line["attrs"]).get("action") == SET_THRESHOLD]
    assert [line["event"] for line in progress] == ["change_requested", "change_applied"]
    assert progress[1]["ts"] == effective.isoformat()

    # The changelog tells of the request now, and of the change in effect once time gets there.
    def on_call() -> list[dict]:
        entries = client.get("/api/changelog", headers=candidate).json()
        return [
            e
            for e in entries
            if e["author"] == "oncall" and e["title"].endswith(("requested", "in effect"))
        ]

    mine = waiting.until(on_call, "the request in the changelog")
    assert [(e["kind"], e["service"], e["title"]) for e in mine] == [
        ("config", "model-server", "model-server: set-decision-threshold requested")
    ]
    assert mine[0]["body"].startswith("threshold=0.25. In effect from ")
    lines, _ = spool.read_new(spool.spool_path(paths.run, "gateway", "ops.changelog"), 0)
    stamped = [dt.datetime.fromisoformat(line["ts"]) for line in lines[-2:]]
    assert stamped == [dt.datetime.fromisoformat(mine[0]["ts"]), effective]
    # The interviewers see it in the history; the operator cannot act for the candidate.
    admin = bearer(stack.admin_token(paths))
    assert (
        client.post("/api/actions", json={"action": SET_THRESHOLD, "params": {}}, headers=admin)
    ).status_code == 403


def test_a_retrain_window_before_the_feature_store_is_refused(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    candidate = bearer(make_session(actions=True)["candidate_token"])
    for params, field in (
        ({"newest_score_date": "2020-01-01"}, "newest_score_date"),
        ({"days": 28, "newest_score_date": "2026-01-10"}, "newest_score_date"),
    ):
        reply = client.post(
            "/api/actions", json={"action": RETRAIN, "params": params}, headers=candidate
        )
        assert reply.status_code == 422, reply.text
        (error,) = reply.json()["detail"]
        assert error["loc"] == ["body", "params", field]
        assert "before the first score date" in error["msg"]
    assert not Overrides(paths.run).entries()


def test_only_a_paused_job_is_resumed(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    candidate = bearer(make_session(actions=True)["candidate_token"])
    job = {"job": "materialization"}

    def act(action: str) -> dict:
        reply = client.post(
            "/api/actions", json={"action": action, "params": job}, headers=candidate
        )
        return {"status": reply.status_code, **reply.json()}

    refused = act(RESUME_JOB)
    assert refused["status"] == 409 and "not paused: nothing changed" in refused["detail"]
    assert not Overrides(paths.run).entries()
    paused, resumed = act(PAUSE_JOB), act(RESUME_JOB)
    assert paused["status"] == resumed["status"] == 202
    assert act(RESUME_JOB)["status"] == 409  # resumed once it takes effect: nothing to end
    until = dt.datetime.fromisoformat(resumed["effective_at"])
    spans = Overrides(paths.run).pauses("materialization", until)
    assert [(p.pause.id, p.until) for p in spans] == [(paused["id"], until)]
    events = client.get("/api/my/history?kind=action", headers=candidate).json()
    assert [e["detail"]["status"] for e in events] == ["invalid", "applied", "applied", "invalid"]


def test_a_session_with_actions_on_is_its_stacks_only_session(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    admin = bearer(stack.admin_token(paths))
    make_session("first")
    refused = client.post("/api/sessions", json={"actions": True}, headers=admin)
    assert refused.status_code == 409 and "only one on its stack" in refused.json()["detail"]


def test_no_session_joins_a_stack_with_an_actions_on_session(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    admin = bearer(stack.admin_token(paths))
    links = make_session(actions=True)
    for actions in (False, True):
        refused = client.post("/api/sessions", json={"actions": actions}, headers=admin)
        assert refused.status_code == 409 and links["session_id"] in refused.json()["detail"]
    listed = client.get("/api/sessions", headers=admin).json()
    assert [s["actions"] for s in listed] == [True]


def test_a_revoked_acting_session_still_holds_its_stack_and_the_refusal_says_why(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    admin = bearer(stack.admin_token(paths))
    links = make_session(actions=True)
    revoked = client.post(f"/api/sessions/{links['session_id']}/revoke", headers=admin)
    assert revoked.status_code == 200, revoked.text
    refused = client.post("/api/sessions", json={"actions": False}, headers=admin)
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert links["session_id"] in detail and "revoked since" in detail
    assert "what it changed stays in the live stack" in detail


def test_the_review_judges_each_action_by_the_answer_key(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    links = make_session(actions=True)
    candidate = bearer(links["candidate_token"])
    interviewer = bearer(links["interviewer_token"])
    for body in (
        {"action": SET_THRESHOLD, "params": {"threshold": 0.3}},
        {"action": SET_FILL, "params": {"feature": "avg_daily_minutes_7d", "fill_value": 20.0}},
        {"action": RERUN_BATCH, "params": {}},
        {"action": RERUN_BATCH, "params": {"days": 3}},  # refused: no verdict
    ):
        client.post("/api/actions", json=body, headers=candidate)
    review = client.get(f"/api/sessions/{links['session_id']}/review", headers=interviewer).json()
    key = json.loads(paths.answer_key.read_text())
    [fault] = key["faults"]
    # The fault declares a threshold harmful (it would hide the shrinking list); one that
    # flags almost nobody moves the list further from the plan, harmful all the same.
    assert fault["actions"][SET_THRESHOLD] == "harmful"
    expected = {
        SET_THRESHOLD: "harmful",
        SET_FILL: fault["actions"][SET_FILL],
        RERUN_BATCH: fault["actions"].get(RERUN_BATCH, "no effect"),
    }
    verdicts = [(a["id"], a["verdict"]) for a in review["actions"]]
    assert verdicts == [*expected.items(), (RERUN_BATCH, None)]
    assert expected[SET_FILL] == "mitigates"
    threshold = review["actions"][0]
    assert threshold["share_moved"] == "harms"
    assert "→ 0.3: flags 0." in threshold["verdict_note"], threshold["verdict_note"]
    assert threshold["verdict_note"].endswith("further from the planned 10%")
    fill = next(a for a in review["actions"] if a["id"] == SET_FILL)
    assert review["action_summary"]["time_to_first_mitigation_s"] == fill["offset_s"]
    assert fill["at"] and fill["params"]["fill_value"] == 20.0
    timeline = {i["seq"]: i for i in review["timeline"]}
    assert timeline[fill["seq"]]["verdict"] == "mitigates"
    for fmt in ("md", "html"):
        text = client.get(
            f"/api/sessions/{links['session_id']}/export.{fmt}", headers=interviewer
        ).text
        assert "Actions" in text and SET_FILL in text and "mitigates" in text
    # The candidate's own surfaces never carry a verdict.
    for surface in (
        client.get("/api/actions", headers=candidate).text,
        client.get("/api/my/history?kind=action", headers=candidate).text,
        client.get("/ops", headers=candidate).text,
    ):
        assert not any(v in surface for v in ("mitigates", "harmful", "no effect", "fixes"))


def test_a_fill_further_from_the_training_mean_is_judged_harmful_in_the_review(
    client: TestClient, make_session: MakeSession
) -> None:
    """The answer key says a new fill mitigates; the review holds the value to the feature's
    training-time mean, read from the world: a fill still further from it than the broken one
    harms, and one halfway back or closer mitigates."""
    links = make_session(actions=True)
    candidate = bearer(links["candidate_token"])
    for value in (1000.0, 52.0):
        body = {"feature": "avg_daily_minutes_7d", "fill_value": value}
        reply = client.post(
            "/api/actions", json={"action": SET_FILL, "params": body}, headers=candidate
        )
        assert reply.status_code == 202, reply.text
    review = client.get(
        f"/api/sessions/{links['session_id']}/review", headers=bearer(links["interviewer_token"])
    ).json()
    judged = [(a["params"]["fill_value"], a["verdict"], a["fill_moved"]) for a in review["actions"]]
    assert judged == [(1000.0, "harmful", "harms"), (52.0, "mitigates", "helps")]
    assert (
        review["action_summary"]["time_to_first_mitigation_s"] == review["actions"][1]["offset_s"]
    )
    harm, helped = (a["verdict_note"] for a in review["actions"])
    assert harm.startswith("fill ") and "→ 1000: further from the training-time mean" in harm
    assert "1000 → 52: near or at least halfway back to the training-time mean" in helped
    exported = client.get(
        f"/api/sessions/{links['session_id']}/export.md", headers=bearer(links["interviewer_token"])
    ).text
    assert harm in exported


def test_the_interviewer_fast_forwards_only_a_session_with_actions_on(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    links = make_session(actions=True)
    interviewer = bearer(links["interviewer_token"])
    candidate = bearer(links["candidate_token"])
    before = SimClock.load(paths.run).now()
    url = f"/api/sessions/{links['session_id']}/clock/forward"
    assert client.post(url, json={"hours": 6}, headers=candidate).status_code == 403
    assert client.post(url, json={"hours": 100}, headers=interviewer).status_code == 422
    reply = client.post(url, json={"hours": 6}, headers=interviewer)
    assert reply.status_code == 200, reply.text
    after = SimClock.load(paths.run).now()
    assert dt.timedelta(hours=6) <= after - before < dt.timedelta(hours=6, minutes=1)
    clock = client.get("/api/clock", headers=candidate).json()
    assert dt.datetime.fromisoformat(clock["now"]) >= before + dt.timedelta(hours=6)


def test_a_fast_forward_while_the_stack_starts_is_where_time_starts_from(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    """The supervisor holds time still until every service is healthy, and the gateway is up
    before the others: the interviewer's forward can land before time starts moving."""
    supervisor = Supervisor(paths.root, port=0, speed=60.0, say=lambda _: None)
    try:
        supervisor.hold_time()
        links = make_session(actions=True)
        reply = client.post(
            f"/api/sessions/{links['session_id']}/clock/forward",
            json={"hours": 6},
            headers=bearer(links["interviewer_token"]),
        )
        assert reply.status_code == 200, reply.text
        forwarded = dt.datetime.fromisoformat(reply.json()["now"])
        supervisor.start_time()
        started = SimClock.load(paths.run)
        assert started.speed == 60.0
        assert forwarded <= started.now() < forwarded + dt.timedelta(minutes=5)
    finally:
        supervisor.stop()


def test_time_stands_for_a_session_with_actions_off(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    links = make_session()
    before = SimClock.load(paths.run).now()
    reply = client.post(
        f"/api/sessions/{links['session_id']}/clock/forward",
        json={"hours": 1},
        headers=bearer(links["interviewer_token"]),
    )
    assert reply.status_code == 409
    assert SimClock.load(paths.run).now() - before < dt.timedelta(minutes=1)


def test_a_retrained_version_may_be_pinned_once_its_retrain_is_in_effect(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    links = make_session(actions=True)
    candidate = bearer(links["candidate_token"])
    retrain = client.post(
        "/api/actions", json={"action": RETRAIN, "params": {}}, headers=candidate
    ).json()
    # The version after the registry's latest, registered when the retrain takes effect.
    versions = Registry.read(paths.mlflow).versions
    retrained = str(max(int(v) for v in versions) + 1)
    pin = {"action": PIN_VERSION, "params": {"version": retrained}}
    early = client.post("/api/actions", json=pin, headers=candidate)
    assert early.status_code == 422 and "no churn-model version" in early.text
    interviewer = bearer(links["interviewer_token"])
    forwarded = client.post(
        f"/api/sessions/{links['session_id']}/clock/forward",
        json={"hours": CATALOG[RETRAIN].delay.total_seconds() / 3600 + 0.5},
        headers=interviewer,
    )
    assert forwarded.status_code == 200, forwarded.text
    assert dt.datetime.fromisoformat(forwarded.json()["now"]) >= dt.datetime.fromisoformat(
        retrain["effective_at"]
    )
    for body in (pin, {"action": MOVE_ALIAS, "params": {"version": retrained}}):
        reply = client.post("/api/actions", json=body, headers=candidate)
        assert reply.status_code == 202, reply.text
    assert retrained not in Registry.read(paths.mlflow).versions  # the registry stays as built
    unknown = {"action": PIN_VERSION, "params": {"version": str(int(retrained) + 1)}}
    assert client.post("/api/actions", json=unknown, headers=candidate).status_code == 422
