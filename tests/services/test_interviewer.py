"""The interviewer's side in-process: a scripted investigation through the candidate's API and
the review that marks exactly the events that touched planted evidence; sessions' states, limits
and revocation; candidate tokens refused on every interviewer route; the exports."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from sandbox.layout import WorldPaths
from sandbox.review import store as sessions
from sandbox.review.store import SessionStore
from sandbox.services.gateway import builder, fleet, interviewer
from sandbox.testing import Worlds
from tests.services.conftest import MakeSession, gateway_client, session_maker, world_paths
from tests.services.running import SANDBOX

# Reads that look for the problem in the wrong places: the dead end.
DEAD_END = [
    "SELECT count(*) FROM retrieval.search_log",
    "SELECT status, count(*) FROM raw.billing_events GROUP BY status",
    "SELECT device, count(*) FROM raw.customers GROUP BY device",
    "SELECT avg(latency_ms) FROM serving.predictions WHERE source = 'online'",
    "SELECT count(*) FROM raw.support_tickets",
    "SELECT plan, count(*) FROM raw.customers GROUP BY plan",
]
# The queries that expose the fault of the default world: the raw column going NULL, the
# feature's fill value piling up, and the fill value itself.
FINDINGS = {
    "SELECT date_trunc('week', activity_date) AS week, avg((minutes_watched IS NULL)::INT) "
    "FROM raw.viewing_activity GROUP BY 1 ORDER BY 1": "raw-nulls",
    "SELECT avg_daily_minutes_7d, count(*) AS n FROM feature_store.customer_features "
    "GROUP BY 1 ORDER BY n DESC LIMIT 5": "imputed-spike",
    "SELECT feature, fill_value, effective_from FROM feature_store.imputation_policy": (
        "policy-change"
    ),
}
DIAGNOSIS = {
    "root_cause": "Since mid-March raw minutes_watched arrives NULL for a growing share of "
    "customers; the feature job imputes avg_daily_minutes_7d with a fill_value far above the "
    "real mean, so those customers look engaged.",
    "evidence": "Weekly NULL share of minutes_watched; identical avg_daily_minutes_7d values.",
    "fix": "Restore the fill value to the training mean and fix the upstream column.",
    "ship_first": "The fill value.",
    "next_experiment": "Re-score last week's customers with the corrected value.",
}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _sql(client: TestClient, token: str, sql: str) -> None:
    reply = client.post("/api/sql", json={"sql": sql}, headers=_bearer(token))
    assert reply.status_code == 200, reply.text


def _review(client: TestClient, links: dict[str, str]) -> dict:
    reply = client.get(
        f"/api/sessions/{links['session_id']}/review", headers=_bearer(links["interviewer_token"])
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_the_review_marks_exactly_the_evidence_the_investigation_touched(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    token = links["candidate_token"]
    client.get("/brief", headers=_bearer(token))
    for sql in DEAD_END:
        _sql(client, token, sql)
    for sql in FINDINGS:
        _sql(client, token, sql)
    reply = client.post("/api/diagnosis/submit", json=DIAGNOSIS, headers=_bearer(token))
    assert reply.status_code == 200

    review = _review(client, links)
    marked = {i["detail"].get("sql"): i["evidence"] for i in review["timeline"] if i["evidence"]}
    assert marked == {sql: [evidence] for sql, evidence in FINDINGS.items()}

    [fault] = review["faults"]
    assert fault["fault_id"] == "feature-nulls-wrong-mean"
    first = next(i for i in review["timeline"] if i["evidence"])
    assert fault["time_to_first_evidence_s"] == first["offset_s"]
    found = {e["id"] for e in fault["evidence"] if e["first_seq"] is not None}
    assert found == set(FINDINGS.values())
    assert fault["named_in_diagnosis"] == "yes"
    assert {"minutes_watched", "avg_daily_minutes_7d", "fill_value"} <= set(
        fault["diagnosis_mentions"]
    )

    [dead_end] = review["dead_ends"]
    assert dead_end["events"] == len(DEAD_END)
    assert "retrieval.search_log" in dead_end["tables"]
    assert review["diagnosis"]["final"] == DIAGNOSIS
    assert review["diagnosis"]["versions"][-1]["submitted"]
    assert review["session"]["state"] == "submitted"
    assert any("next experiment" in p["text"] for p in review["probes"])


def _rows(client: TestClient, token: str, sql: str) -> list[list]:
    reply = client.post("/api/sql", json={"sql": sql}, headers=_bearer(token))
    assert reply.status_code == 200, reply.text
    return reply.json()["rows"]


def test_the_review_tells_seeing_from_querying_from_citing_and_traces_the_claims(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    token = links["candidate_token"]
    # Seen: the column comes back, but the query asks nothing of it.
    _rows(
        client,
        token,
        "SELECT activity_date, minutes_watched FROM raw.viewing_activity "
        "WHERE activity_date >= DATE '2026-03-20' LIMIT 5",
    )
    # Queried: the weeks whose NULL share stands out, found by a condition on the column.
    weeks = _rows(
        client,
        token,
        "SELECT date_trunc('week', activity_date) AS week, "
        "round(avg((minutes_watched IS NULL)::INT), 3) AS null_share FROM raw.viewing_activity "
        "GROUP BY 1 HAVING avg((minutes_watched IS NULL)::INT) > 0.1 ORDER BY 1",
    )
    peak = max(share for _, share in weeks)
    diagnosis = {
        "root_cause": f"The NULL share of minutes_watched reached {peak:.1%}. "
        "SDK 9.9 caused it, and avg_daily_minutes_7d took the fill value.",
    }
    reply = client.post("/api/diagnosis/submit", json=diagnosis, headers=_bearer(token))
    assert reply.status_code == 200, reply.text

    review = _review(client, links)
    queries = [i for i in review["timeline"] if i["kind"] == "sql"]
    [fault] = review["faults"]
    nulls = next(e for e in fault["evidence"] if e["id"] == "raw-nulls")
    assert nulls["strength"] == "cited"
    assert nulls["strengths"]["shown"]["seq"] == queries[0]["seq"]
    assert nulls["strengths"]["queried"]["seq"] == queries[1]["seq"]
    assert nulls["strengths"]["cited"]["seq"] == queries[1]["seq"]
    assert fault["time_to_first_s"]["queried"] == queries[1]["offset_s"]

    claims = {c["value"]: c for c in review["claims"]}
    assert [b["seq"] for b in claims[f"{peak:.1%}"]["backed_by"]] == [queries[1]["seq"]]
    assert claims["9.9"]["backed_by"] == []
    # Named from the world's schema, though nothing the candidate ran read it.
    assert claims["avg_daily_minutes_7d"]["kind"] == "feature"
    assert claims["avg_daily_minutes_7d"]["backed_by"] == []

    probes = review["probes"]
    decisive = [p["events"] for p in probes if p["kind"] == "decisive_query"]
    assert decisive == [[queries[0]["seq"]], [queries[1]["seq"]]]
    assert any(
        p["kind"] == "unbacked_claim" and "where did you see 9.9?" in p["text"] for p in probes
    )
    markdown = client.get(
        f"/api/sessions/{links['session_id']}/export.md",
        headers=_bearer(links["interviewer_token"]),
    ).text
    assert "nothing the candidate ran showed 9.9 (number)" in markdown
    assert f"cited “{peak:.1%}”, seen" in markdown


@pytest.fixture(scope="module")
def composite(worlds: Worlds) -> Iterator[tuple[TestClient, WorldPaths]]:
    with world_paths(worlds.get("composite")) as paths, gateway_client(paths) as client:
        yield client, paths


def test_with_two_faults_the_review_tells_the_found_from_the_missed(
    composite: tuple[TestClient, WorldPaths],
) -> None:
    client, paths = composite
    links = session_maker(client, paths)()
    key = client.get(
        f"/api/sessions/{links['session_id']}/answer-key",
        headers=_bearer(links["interviewer_token"]),
    ).json()
    assert len(key["faults"]) == 2
    found, missed = key["faults"]
    # The reference investigation of one fault only, then a diagnosis naming only that one.
    for step in found["investigation"]:
        _sql(client, links["candidate_token"], step["sql"])
    mentions = [e["ref"].rsplit(".", 1)[-1] for e in found["evidence"]]
    client.put(
        "/api/diagnosis",
        json={"root_cause": " ".join(m for m in mentions if "{" not in m)},
        headers=_bearer(links["candidate_token"]),
    )
    faults = {f["fault_id"]: f for f in _review(client, links)["faults"]}
    assert faults[found["fault_id"]]["evidence_found"] >= 1
    assert faults[found["fault_id"]]["time_to_first_evidence_s"] is not None
    assert faults[found["fault_id"]]["named_in_diagnosis"] == "yes"
    assert faults[missed["fault_id"]]["evidence_found"] == 0
    assert faults[missed["fault_id"]]["time_to_first_evidence_s"] is None
    assert faults[missed["fault_id"]]["named_in_diagnosis"] == "no"


def test_a_candidate_token_is_refused_on_every_interviewer_route(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    token = _bearer(links["candidate_token"])
    routes = [
        r
        for r in [*interviewer.router.routes, *builder.router.routes, *fleet.router.routes]
        if isinstance(r, APIRoute)
    ]
    assert len(routes) >= 10
    for route in routes:
        path = (
            route.path.replace("{session_id}", links["session_id"])
            .replace("{fmt}", "html")
            .replace("{build_id}", "any")
            .replace("{name}", "any")
        )
        for method in route.methods:
            reply = client.request(method, path, headers=token, json={})
            assert reply.status_code == 403, f"{method} {path}: {reply.status_code}"


def test_an_interviewer_sees_only_their_own_session(
    client: TestClient, make_session: MakeSession
) -> None:
    ada, bob = make_session("ada"), make_session("bob")
    ada_interviewer = _bearer(ada["interviewer_token"])
    assert [s["id"] for s in client.get("/api/sessions", headers=ada_interviewer).json()] == [
        ada["session_id"]
    ]
    for path in ("history", "review", "answer-key", "export.md"):
        other = client.get(f"/api/sessions/{bob['session_id']}/{path}", headers=ada_interviewer)
        assert other.status_code == 403, path
    assert (
        client.get(
            "/api/sessions/nope/review", headers=_bearer(ada["interviewer_token"])
        ).status_code
        == 403
    )


def test_session_states_time_limits_and_revocation(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    links = make_session(time_limit_min=90)
    admin = _bearer((paths.interviewer / "operator-token").read_text().strip())
    token = _bearer(links["candidate_token"])

    def state() -> str:
        return client.get(f"/api/sessions/{links['session_id']}", headers=admin).json()["state"]

    assert state() == "not started"
    assert client.get("/brief", headers=token).status_code == 200
    assert state() == "active"
    store: SessionStore = client.app.state.sessions
    session = store.get(links["session_id"])
    later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=91)
    assert store.state(session, now=later) == "expired"

    revoked = client.post(f"/api/sessions/{links['session_id']}/revoke", headers=admin).json()
    assert revoked["state"] == "revoked"
    assert client.get("/brief", headers=token).status_code == 401
    assert client.get("/api/my/history", headers=token).status_code == 401
    # Its history stays readable for the review, by the operator and by its interviewer.
    assert client.get(f"/api/sessions/{links['session_id']}/history", headers=admin).json()
    interviewer = _bearer(links["interviewer_token"])
    review = client.get(f"/api/sessions/{links['session_id']}/review", headers=interviewer)
    assert review.status_code == 200 and review.json()["session"]["state"] == "revoked"


def test_an_expired_session_refuses_the_candidate(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session(time_limit_min=1)
    token = _bearer(links["candidate_token"])
    assert client.get("/brief", headers=token).status_code == 200
    store: SessionStore = client.app.state.sessions
    store._started[links["session_id"]] -= dt.timedelta(minutes=2)  # a minute and more ago
    refused = client.post("/api/sql", json={"sql": "SELECT 1"}, headers=token)
    assert refused.status_code == 403 and "time is up" in refused.json()["detail"]


def test_the_rubric_summary_is_the_lowest_must_have(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    who = _bearer(links["interviewer_token"])
    url = f"/api/sessions/{links['session_id']}/rubric"
    levels = {"investigation": 4, "root_cause": 2, "fix": 3, "communication": 1}
    for dimension, level in levels.items():
        reply = client.put(
            url, json={"dimension": dimension, "level": level, "note": "n"}, headers=who
        )
        assert reply.status_code == 200
    summary = reply.json()["summary"]
    assert summary["level"] == 2 and summary["limited_by"] == ["root_cause"]
    assert client.put(url, json={"dimension": "charm", "level": 3}, headers=who).status_code == 422
    assert client.put(url, json={"dimension": "fix", "level": 9}, headers=who).status_code == 422
    scores = _review(client, links)["rubric"]["scores"]
    assert scores["communication"]["level"] == 1 and scores["root_cause"]["note"] == "n"


def test_paste_and_time_away_show_on_the_timeline(
    client: TestClient, make_session: MakeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    links = make_session()
    token = _bearer(links["candidate_token"])
    assert (
        client.post(
            "/api/events", json={"kind": "paste", "field": "fix", "chars": 812}, headers=token
        ).status_code
        == 204
    )
    later = sessions._utcnow() + dt.timedelta(seconds=400)  # time away must have passed
    monkeypatch.setattr(sessions, "_utcnow", lambda: later)
    assert (
        client.post("/api/events", json={"kind": "away", "seconds": 340}, headers=token).status_code
        == 204
    )
    assert client.post("/api/events", json={"kind": "sql"}, headers=token).status_code == 422
    summaries = [i["summary"] for i in _review(client, links)["timeline"]]
    assert summaries == ["pasted 812 characters into fix", "left the workspace tab for 340 s"]


def test_the_exports_hold_the_timeline_and_the_answer_key(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    _sql(client, links["candidate_token"], next(iter(FINDINGS)))
    who = _bearer(links["interviewer_token"])
    html = client.get(f"/api/sessions/{links['session_id']}/export.html", headers=who)
    assert html.status_code == 200 and "attachment" in html.headers["content-disposition"]
    assert 'id="timeline"' in html.text and "raw-nulls" in html.text
    assert not re.search(r"<script|https?://", html.text)  # self-contained
    markdown = client.get(f"/api/sessions/{links['session_id']}/export.md", headers=who).text
    assert "## Timeline" in markdown and "raw-nulls" in markdown
    assert json.dumps(links["session_id"])[1:-1] in markdown


def test_sandbox_review_exports_a_stopped_stacks_session(paths: WorldPaths, tmp_path) -> None:
    from typer.testing import CliRunner

    from sandbox.cli import app

    answer_key = json.loads(paths.answer_key.read_text())
    store = SessionStore(paths.interviewer, answer_key)
    session = store.create("grace")
    store.record(
        session.id,
        dt.datetime(2026, 4, 13, 1),
        "sql",
        {
            "sql": "SELECT fill_value FROM feature_store.imputation_policy",
            "rows": 1,
            "tables": ["feature_store.imputation_policy"],
            "columns": ["feature_store.imputation_policy.fill_value"],
        },
        [(None, "212.5")],
    )
    store.close()
    out = tmp_path / "review.md"
    result = CliRunner().invoke(
        app, ["review", session.id, "--world", str(paths.root), "--export", str(out)]
    )
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "grace" in text and "policy-change" in text and "## Answer key" in text
    missing = CliRunner().invoke(
        app, ["review", "nope", "--world", str(paths.root), "--export", str(out)]
    )
    assert missing.exit_code != 0 and "no session nope" in missing.output
    wrong = CliRunner().invoke(
        app, ["review", session.id, "--world", str(paths.root), "--export", "x.pdf"]
    )
    assert wrong.exit_code != 0 and ".html or .md" in wrong.output


def _cli_review(paths: WorldPaths, session_id: str, out: Path) -> str:
    """`sandbox review` in a process of its own, as an interviewer runs it beside the stack."""
    done = subprocess.run(
        [SANDBOX, "review", session_id, "--world", str(paths.root), "--export", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out.read_text()


def test_sandbox_review_exports_a_session_while_its_gateway_writes(
    client: TestClient, paths: WorldPaths, make_session: MakeSession, tmp_path: Path
) -> None:
    links = make_session()
    token, who = links["candidate_token"], _bearer(links["interviewer_token"])
    for sql in FINDINGS:
        _sql(client, token, sql)
    saved = client.put("/api/diagnosis", json=DIAGNOSIS, headers=_bearer(token))
    assert saved.status_code == 200, saved.text
    scored = client.put(
        f"/api/sessions/{links['session_id']}/rubric",
        json={"dimension": "fix", "level": 3, "note": "restores the fill value"},
        headers=who,
    )
    assert scored.status_code == 200, scored.text

    # The gateway holds the sessions open; the command reads them from another process.
    text = _cli_review(paths, links["session_id"], tmp_path / "review.md")
    served = client.get(f"/api/sessions/{links['session_id']}/export.md", headers=who).text
    assert text == served
    history = client.get(f"/api/sessions/{links['session_id']}/history", headers=who).json()
    timeline = text.split("## Timeline", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in timeline.splitlines() if line.startswith("| ") and ":" in line]
    assert len(rows) == len(history) == len(FINDINGS) + 1  # the queries and the diagnosis
    for evidence_id in FINDINGS.values():
        assert evidence_id in timeline
    assert "restores the fill value" in text and "state: active" in text

    # The gateway goes on recording, and the next export has what it recorded since.
    _sql(client, token, "SELECT 42 AS answer")
    again = _cli_review(paths, links["session_id"], tmp_path / "review.html")
    assert "SELECT 42 AS answer" in again
    now = client.get(f"/api/sessions/{links['session_id']}/history", headers=who).json()
    assert now[:-1] == history and now[-1]["detail"]["sql"] == "SELECT 42 AS answer"


# A query and the evidence of the default world it shows, or none when it shows nothing of it.
EVIDENCE_CASES = [
    ("SELECT fill_value FROM feature_store.imputation_policy", {"policy-change"}),
    ("SELECT * FROM feature_store.imputation_policy", {"policy-change"}),
    ("SELECT COLUMNS('fill_.*') FROM feature_store.imputation_policy", {"policy-change"}),
    ("SUMMARIZE feature_store.imputation_policy", {"policy-change"}),
    ("DESCRIBE feature_store.imputation_policy", set()),
    ("SELECT * EXCLUDE (fill_value) FROM feature_store.imputation_policy", set()),
    ("SELECT * FROM feature_store.imputation_policy LIMIT 0", set()),
    # Rows dated before the evidence's window show nothing of it.
    (
        "SELECT feature_date, nulls_imputed FROM ops.feature_job_runs "
        "WHERE feature_date < DATE '2026-01-01'",
        set(),
    ),
    (
        "SELECT feature_date, nulls_imputed FROM ops.feature_job_runs "
        "WHERE feature_date > DATE '2026-04-01'",
        {"job-imputations"},
    ),
    ("SELECT 'feature_null_ratio' AS x FROM telemetry.metrics LIMIT 0", set()),
    ("SELECT 'nulls_imputed' AS x", set()),
    (
        "SELECT ts, attrs FROM telemetry.logs WHERE attrs LIKE '%nulls_imputed%' "
        "AND ts > TIMESTAMP '2026-04-01'",
        {"job-log"},
    ),
]


@pytest.mark.parametrize(("sql", "expected"), EVIDENCE_CASES, ids=range(len(EVIDENCE_CASES)))
def test_evidence_is_marked_only_when_it_was_shown(
    client: TestClient, make_session: MakeSession, sql: str, expected: set[str]
) -> None:
    links = make_session()
    _sql(client, links["candidate_token"], sql)
    [event] = [e for e in _review(client, links)["timeline"] if e["kind"] == "sql"]
    assert set(event["evidence"]) == expected
