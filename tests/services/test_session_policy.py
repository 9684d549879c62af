"""A session's policy through the gateway in-process: how the operator sets it (and what is
refused), what the candidate reads on the brief, a workspace-only session refusing other clients
while its pages work, and the provenance and composition every event records."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from sandbox.layout import WorldPaths
from sandbox.services import stack
from sandbox.services.gateway.auth import COOKIE
from sandbox.services.gateway.provenance import PAGE_HEADER
from tests.services.conftest import MakeSession

PAGE = {"accept": "text/html,application/xhtml+xml", "user-agent": "Mozilla/5.0 Chrome/120"}
QUERY = "SELECT count(*) FROM serving.predictions"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _history(client: TestClient, links: dict[str, str]) -> list[dict]:
    reply = client.get(
        f"/api/sessions/{links['session_id']}/history",
        headers=_bearer(links["interviewer_token"]),
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.fixture
def signed_in(client: TestClient) -> Iterator[TestClient]:
    """The client as a browser: its requests carry a session's cookie (set by the test)."""
    yield client
    client.cookies.clear()


def _page_token(html: str) -> str | None:
    found = re.search(r'<meta name="sandbox-page" content="([^"]+)">', html)
    return found.group(1) if found else None


def test_the_operator_sets_the_policy_and_bad_values_are_refused(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    admin = _bearer(stack.admin_token(paths))
    for bad, field in (
        ({"assistance": "sometimes"}, "assistance"),
        ({"assistance": None}, "assistance"),
        ({"workspace_only": "maybe"}, "workspace_only"),
        ({"workspace_only": 1}, "workspace_only"),
    ):
        reply = client.post("/api/sessions", json={"candidate": "x", **bad}, headers=admin)
        assert reply.status_code == 422, bad
        [error] = reply.json()["detail"]
        assert error["loc"] == ["body", field]
    assert client.get("/api/sessions", headers=admin).json() == []  # nothing was made
    made = make_session("ada", assistance="not-allowed", workspace_only=True)
    assert made["policy"] == {"assistance": "not-allowed", "workspace_only": True}
    assert make_session("bo")["policy"] == {"assistance": "allowed", "workspace_only": False}
    listed = {
        s["candidate"]: s["policy"] for s in client.get("/api/sessions", headers=admin).json()
    }
    assert listed == {
        "ada": {"assistance": "not-allowed", "workspace_only": True},
        "bo": {"assistance": "allowed", "workspace_only": False},
    }


def test_the_brief_states_the_policy_in_plain_words(
    signed_in: TestClient, make_session: MakeSession
) -> None:
    strict = make_session("ada", assistance="not-allowed", workspace_only=True)
    signed_in.cookies.set(COOKIE, strict["candidate_token"])
    brief = html.unescape(signed_in.get("/brief", headers=PAGE).text)
    assert "Work on your own: no assistant" in brief
    assert "the tools answer the workspace's own pages only" in brief
    relaxed = make_session("bo")
    signed_in.cookies.set(COOKIE, relaxed["candidate_token"])
    brief = html.unescape(signed_in.get("/brief", headers=PAGE).text)
    assert "You may use outside help" in brief and "Bearer token" in brief


def test_a_workspace_only_session_refuses_other_clients_and_its_pages_work(
    signed_in: TestClient, make_session: MakeSession
) -> None:
    links = make_session("ada", workspace_only=True)
    script = _bearer(links["candidate_token"])
    for method, path in (("GET", "/api/clock"), ("GET", "/sql"), ("GET", "/api/schema")):
        reply = signed_in.request(method, path, headers=script)
        assert reply.status_code == 403, path
        assert "this session's policy is workspace only" in reply.json()["detail"]
    refused = signed_in.post("/api/sql", json={"sql": QUERY}, headers=script)
    assert refused.status_code == 403
    # The browser: its page loads, and the page's own requests carry the page's token.
    signed_in.cookies.set(COOKIE, links["candidate_token"])
    page = signed_in.get("/sql", headers=PAGE)
    assert page.status_code == 200
    token = _page_token(page.text)
    assert token is not None
    own = {PAGE_HEADER: token}
    assert signed_in.get("/api/clock", headers=own).status_code == 200
    ran = signed_in.post("/api/sql", json={"sql": QUERY}, headers=own)
    assert ran.status_code == 200, ran.text
    # The same browser without the page's token (its console, a bookmarklet) is refused.
    assert signed_in.get("/api/schema").status_code == 403
    # Nor does another session's page token pass.
    other = make_session("bo", workspace_only=True)
    signed_in.cookies.set(COOKIE, other["candidate_token"])
    assert signed_in.get("/api/clock", headers=own).status_code == 403
    events = _history(signed_in, links)
    refusals = [e for e in events if e["kind"] == "refused"]
    assert [e["detail"]["path"] for e in refusals] == [
        "/api/clock",
        "/sql",
        "/api/schema",
        "/api/sql",
        "/api/schema",
    ]
    assert {e["detail"]["refused"] for e in refusals} == {"workspace only"}
    assert {e["detail"]["client"] for e in refusals} == {"api"}
    [run] = [e for e in events if e["kind"] == "sql"]
    assert run["detail"]["client"] == "workspace"


def test_a_page_fetched_with_a_bearer_token_gets_no_page_token(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    page = client.get("/sql", headers=_bearer(links["candidate_token"]) | PAGE)
    assert page.status_code == 200 and _page_token(page.text) is None
    [event] = _history(client, links)
    assert event["detail"]["client"] == "api"
    assert event["detail"]["user_agent"] == PAGE["user-agent"]


def test_a_runs_composition_is_checked_and_recorded(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    who = _bearer(links["candidate_token"])
    for bad in (
        {"typed": -1},
        {"typed": 10**9},
        {"compose_ms": 10**12},
        {"typed": "many"},
        {"keystrokes": 3},
    ):
        reply = client.post("/api/sql", json={"sql": QUERY, "composition": bad}, headers=who)
        assert reply.status_code == 422, bad
    assert _history(client, links) == []  # a refused body records nothing
    composed = {"typed": 38, "pasted": 0, "inserted": 2, "kept": 0, "compose_ms": 5_100}
    assert (
        client.post(
            "/api/sql", json={"sql": QUERY, "composition": composed}, headers=who
        ).status_code
        == 200
    )
    assert client.post("/api/sql", json={"sql": QUERY}, headers=who).status_code == 200
    first, second = _history(client, links)
    assert first["detail"]["composition"] == composed
    assert "composition" not in second["detail"]


def test_a_saves_composition_is_recorded_per_field_and_is_not_part_of_the_diagnosis(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    who = _bearer(links["candidate_token"])
    bad = {"root_cause": "x", "composition": {"summary": {"typed": 1}}}
    assert client.put("/api/diagnosis", json=bad, headers=who).status_code == 422
    typed = {"typed": 12, "pasted": 0, "inserted": 0, "kept": 0, "compose_ms": 2_000}
    body = {"root_cause": "a typed note", "composition": {"root_cause": typed}}
    saved = client.put("/api/diagnosis", json=body, headers=who)
    assert saved.status_code == 200, saved.text
    assert "composition" not in saved.json()["fields"]
    assert client.get("/api/diagnosis", headers=who).json()["fields"]["root_cause"] == (
        "a typed note"
    )
    [event] = _history(client, links)
    assert event["detail"]["composition"] == {"root_cause": typed}
    assert "composition" not in event["detail"]["fields"]
