"""The candidate's workspace in-process: pages behind the token, the tools' JSON APIs, and every
action landing in the session's history (without its evidence tags reaching the candidate)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest
from fastapi.testclient import TestClient

from sandbox.faults import registry
from sandbox.layout import WorldPaths
from sandbox.services import dashboards, stack
from sandbox.services.gateway import pages
from tests.services.conftest import MakeSession

HTML = {"accept": "text/html"}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _history(client: TestClient, links: dict[str, str]) -> list[dict]:
    reply = client.get(
        f"/api/sessions/{links['session_id']}/history", headers=_bearer(links["interviewer_token"])
    )
    assert reply.status_code == 200
    return reply.json()


def test_every_page_needs_a_token_and_says_how_to_sign_in(client: TestClient) -> None:
    for page in pages.NAV:
        reply = client.get(page.path, headers=HTML, follow_redirects=True)
        assert reply.status_code == 401, page.path
        assert "session link" in reply.text and "<nav>" not in reply.text
    assert client.get("/api/schema").json()["detail"].startswith("sign in")
    assert client.get("/", headers=HTML).status_code == 200  # a welcome, not an error


def test_pages_render_with_navigation_and_are_recorded_in_order(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    client.get(f"/?token={links['candidate_token']}")  # the link's cookie signs in
    for page in pages.NAV:
        reply = client.get(page.path, headers=HTML)
        assert reply.status_code == 200, page.path
        assert all(f'href="{p.path}"' in reply.text for p in pages.NAV)
        assert 'class="active"' in reply.text
    visited = [e["detail"]["page"] for e in _history(client, links) if e["kind"] == "page"]
    assert visited == ["brief"] + [p.name for p in pages.NAV]  # "/" redirects to the brief


def test_the_brief_is_the_scenarios_and_names_no_fault(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    links = make_session()
    text = client.get("/brief", headers=_bearer(links["candidate_token"])).text
    assert "flagging the wrong customers" in text  # the default scenario's title
    for fault_id, cls in registry.catalog().items():
        assert fault_id not in text and cls.__module__.rsplit(".", 1)[-1] not in text
    assert not re.search(r"\b(fault|inject|planted|answer key)", text, re.IGNORECASE)


def test_static_files_and_plotly_are_served(client: TestClient) -> None:
    assert client.get("/static/app.js").status_code == 200
    plotly = client.get(pages.PLOTLY_URL)
    assert plotly.status_code == 200 and "plotly" in plotly.text[:2000].lower()
    assert client.get("/static/../pages.py").status_code == 404


def test_the_schema_browser_describes_every_table(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    tables = {
        t["table"]: t
        for t in client.get("/api/schema", headers=_bearer(links["candidate_token"])).json()
    }
    assert "serving.predictions" in tables and "telemetry.logs" in tables
    assert all(t["description"] for t in tables.values())
    columns = {c["name"]: c for c in tables["raw.viewing_activity"]["columns"]}
    assert columns["ingested_at"]["type"] == "TIMESTAMP" and columns["ingested_at"]["description"]


def test_log_search_filters_pages_and_tails(client: TestClient, make_session: MakeSession) -> None:
    links = make_session()
    who = _bearer(links["candidate_token"])
    everything = client.get("/api/logs", headers=who).json()
    assert everything["total"] > 200 and len(everything["lines"]) == 100
    stamps = [line["ts"] for line in everything["lines"]]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    assert max(stamps) <= everything["end"]  # nothing after the simulated now

    second = client.get(
        "/api/logs", params={"offset": 100, "end": everything["end"]}, headers=who
    ).json()
    assert second["lines"][0]["ts"] <= stamps[-1]
    assert second["total"] == everything["total"]
    past = client.get(
        "/api/logs", params={"offset": everything["total"], "end": everything["end"]}, headers=who
    ).json()
    assert past["lines"] == [] and past["total"] == everything["total"]  # counted all the same

    jobs = client.get(
        "/api/logs", params={"service": "feature-job", "q": "FINISHED"}, headers=who
    ).json()
    assert jobs["total"] > 0
    assert all(
        line["service"] == "feature-job" and "finished" in line["message"].lower()
        for line in jobs["lines"]
    )
    newest = everything["lines"][0]["ts"]
    assert client.get("/api/logs", params={"after": newest}, headers=who).json()["lines"] == []
    assert client.get("/api/logs", params={"level": "loud"}, headers=who).status_code == 422

    searches = [e["detail"] for e in _history(client, links) if e["kind"] == "log_search"]
    assert len(searches) == 4  # neither the tail poll nor the refused search is a search
    assert searches[3]["service"] == "feature-job" and searches[3]["q"] == "FINISHED"


def test_a_panel_runs_for_the_picked_range_and_is_recorded(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    who = _bearer(links["candidate_token"])
    board = next(iter(dashboards.catalog().values()))
    panel = board.panels[0]
    start = dt.datetime.fromisoformat(client.get("/api/clock", headers=who).json()["now"])
    start -= dt.timedelta(days=7)
    reply = client.get(
        f"/api/dashboards/{board.id}/panels/{panel.id}",
        params={"start": start.isoformat()},
        headers=who,
    )
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["start"] == start.isoformat() and data["columns"]
    [event] = [e for e in _history(client, links) if e["kind"] == "panel"]
    assert event["detail"]["dashboard"] == board.id and event["detail"]["panel"] == panel.id
    assert event["detail"]["start"] == start.isoformat() and event["detail"]["tables"]
    missing = client.get(f"/api/dashboards/{board.id}/panels/nope", headers=who)
    assert missing.status_code == 404


def test_a_weekly_panel_says_which_weeks_the_range_holds_in_part(
    client: TestClient, make_session: MakeSession
) -> None:
    who = _bearer(make_session()["candidate_token"])
    now = dt.datetime.fromisoformat(client.get("/api/clock", headers=who).json()["now"])
    start = now - dt.timedelta(days=20)
    reply = client.get(
        "/api/dashboards/model-quality/panels/weekly-auc",
        params={"start": start.isoformat(), "segment": "app_version"},
        headers=who,
    )
    assert reply.status_code == 200, reply.text
    data = reply.json()
    weeks = sorted({row[0] for row in data["rows"]})
    assert weeks and set(data["partial"]) <= set(weeks)
    # Twenty days from a time of day never hold three whole weeks: the first one is cut short.
    assert weeks[0] in data["partial"] and 0 < data["partial"][weeks[0]] < 7
    assert all(name.startswith("app version ") for name in {row[1] for row in data["rows"]})
    daily = client.get(
        "/api/dashboards/model-quality/panels/daily-auc",
        params={"start": start.isoformat()},
        headers=who,
    )
    assert daily.json()["partial"] == {}


def test_the_model_server_page_offers_ids_the_online_store_holds(
    client: TestClient, make_session: MakeSession, paths: WorldPaths
) -> None:
    links = make_session()
    who = _bearer(links["candidate_token"])
    ids = client.get("/api/customers/examples", headers=who).json()
    assert len(ids) == 6 and ids == sorted(set(ids))
    admin = _bearer(stack.admin_token(paths))
    history = client.get(f"/api/sessions/{links['session_id']}/history", headers=admin).json()
    assert [e["detail"]["ids"] for e in history if e["kind"] == "customer_examples"] == [ids]
    held = client.post(
        "/api/sql",
        json={
            "sql": "SELECT count(*) FROM feature_store.customer_features_online "
            f"WHERE customer_id IN ({', '.join(map(str, ids))})"
        },
        headers=who,
    ).json()
    assert held["rows"] == [[6]]
    # Spread over the store, not its first rows.
    assert (
        ids
        != client.post(
            "/api/sql",
            json={
                "sql": "SELECT customer_id FROM feature_store.customer_features_online "
                "ORDER BY 1 LIMIT 6"
            },
            headers=who,
        ).json()["rows"]
    )
    assert client.get("/api/customers/examples", params={"n": 99}, headers=who).status_code == 422
    page = client.get("/model-server", headers=who | HTML)
    assert 'id="customer-examples"' in page.text


def test_a_segment_filter_takes_only_its_options(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    who = _bearer(links["candidate_token"])
    board = next((b for b in dashboards.catalog().values() if b.variables), None)
    if board is None:
        pytest.fail("no dashboard has a segment filter")
    variable = board.variables[0]
    panel = next(p for p in board.panels if f"${variable.name}" in p.sql)
    url = f"/api/dashboards/{board.id}/panels/{panel.id}"
    chosen = client.get(url, params={variable.name: variable.options[0]}, headers=who)
    assert chosen.status_code == 200, chosen.text
    refused = client.get(url, params={variable.name: "'; DROP TABLE x; --"}, headers=who)
    assert refused.status_code == 422 and variable.name in str(refused.json()["detail"])


def test_the_diagnosis_keeps_versions_and_closes_on_submit(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    who = _bearer(links["candidate_token"])
    assert client.get("/api/diagnosis", headers=who).json()["version"] == 0
    first = client.put("/api/diagnosis", json={"root_cause": "nulls"}, headers=who).json()
    same = client.put("/api/diagnosis", json={"root_cause": "nulls"}, headers=who).json()
    assert first["version"] == same["version"] == 1  # an unchanged autosave is not a version
    second = client.put(
        "/api/diagnosis", json={"root_cause": "nulls filled with a wrong mean"}, headers=who
    ).json()
    assert second["version"] == 2
    done = client.post(
        "/api/diagnosis/submit", json={**second["fields"], "fix": "refit"}, headers=who
    ).json()
    assert done["submitted"] and done["version"] == 3
    late = client.put("/api/diagnosis", json={"root_cause": "other"}, headers=who)
    assert late.status_code == 409 and "submitted" in late.json()["detail"]
    assert client.get("/api/diagnosis", headers=who).json()["fields"]["fix"] == "refit"
    too_long = client.put("/api/diagnosis", json={"fix": "x" * 20_001}, headers=who)
    assert too_long.status_code == 422

    saves = [e["detail"] for e in _history(client, links) if e["kind"] == "diagnosis"]
    assert [(s["version"], s["submitted"]) for s in saves] == [(1, False), (2, False), (3, True)]
    interviewer = _bearer(links["interviewer_token"])
    assert client.put("/api/diagnosis", json={"fix": "x"}, headers=interviewer).status_code == 403


def test_own_history_is_the_candidates_alone_and_carries_no_evidence(
    client: TestClient, make_session: MakeSession
) -> None:
    ada, bob = make_session("ada"), make_session("bob")
    client.post(
        "/api/sql",
        json={"sql": "SELECT count(*) FROM ops.changelog"},
        headers=_bearer(ada["candidate_token"]),
    )
    client.get("/api/changelog", headers=_bearer(ada["candidate_token"]))
    mine = client.get("/api/my/history", headers=_bearer(ada["candidate_token"])).json()
    assert [e["detail"]["sql"] for e in mine] == ["SELECT count(*) FROM ops.changelog"]
    everything = client.get(
        "/api/my/history", params={"kind": ""}, headers=_bearer(ada["candidate_token"])
    ).json()
    assert [e["kind"] for e in everything] == ["sql", "changelog"]
    assert all("evidence" not in e for e in everything)
    # The interviewer's copy is tagged: the changelog holds evidence of the planted change.
    assert any(e["evidence"] for e in _history(client, ada))
    assert client.get("/api/my/history", headers=_bearer(bob["candidate_token"])).json() == []


def test_a_drift_report_exists_only_for_days_the_candidate_can_see(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    who = _bearer(links["candidate_token"])
    clock = client.get("/api/clock", headers=who).json()
    live = dt.date.fromisoformat(clock["live_start"][:10])
    assert (
        client.get(f"/reports/drift/{live + dt.timedelta(days=3)}", headers=who).status_code == 404
    )
    assert client.get("/reports/drift/not-a-date", headers=who).status_code == 422
    assert client.get("/reports/drift/..%2f..%2fmanifest.json", headers=who).status_code in (
        404,
        422,
    )


def test_a_days_drift_report_renders_on_first_view(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    who = _bearer(links["candidate_token"])
    day = client.post(
        "/api/sql",
        json={"sql": "SELECT max(report_date) FROM monitoring.drift_daily"},
        headers=who,
    ).json()["rows"][0][0]
    reply = client.get(f"/reports/drift/{day}", headers=who)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    assert "drift" in reply.text.lower() and len(reply.text) > 100_000
    [event] = [e for e in _history(client, links) if e["kind"] == "report"]
    assert event["detail"] == {
        "report": "drift",
        "day": day,
        "client": "api",
        "user_agent": "testclient",
        "overlapped": False,
    }


def test_a_query_is_recorded_with_the_tables_and_columns_it_read(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    sql = (
        "WITH daily AS (SELECT request_ts::DATE AS d, p.score AS s FROM serving.predictions p "
        "JOIN raw.customers c USING (customer_id) WHERE c.region IS NOT NULL) "
        "SELECT d, avg(s) FROM daily GROUP BY d"
    )
    reply = client.post("/api/sql", json={"sql": sql}, headers=_bearer(links["candidate_token"]))
    assert reply.status_code == 200, reply.text
    [event] = [e for e in _history(client, links) if e["kind"] == "sql"]
    assert event["detail"]["tables"] == ["raw.customers", "serving.predictions"]
    assert event["detail"]["columns"] == [
        "raw.customers.region",
        "serving.predictions.request_ts",
        "serving.predictions.score",
    ]
    assert event["detail"]["rows"] == len(reply.json()["rows"])
    assert event["detail"]["elapsed_ms"] == reply.json()["elapsed_ms"]


TELLTALE = re.compile(r"\b(faults?|inject\w*|planted|answer[ -]?key|evidence)\b", re.IGNORECASE)


def test_nothing_a_candidate_can_load_speaks_of_faults(
    client: TestClient, make_session: MakeSession
) -> None:
    """Pages, public scripts and styles, dashboards: no fault id, no telltale word. The
    interviewer's scripts are behind the interviewer's token."""
    links = make_session()
    who = {**HTML, **_bearer(links["candidate_token"])}
    bodies = {page.path: client.get(page.path, headers=who).text for page in pages.NAV}
    bodies["/api/dashboards"] = client.get("/api/dashboards", headers=who).text
    for path in sorted((pages.WEB / "static").iterdir()):
        reply = client.get(f"/static/{path.name}", headers=who)
        assert reply.status_code == 200
        bodies[f"/static/{path.name}"] = reply.text
    ids = set(registry.catalog())
    for where, body in bodies.items():
        words = {w.lower() for w in TELLTALE.findall(body)}
        # The diagnosis form asks for the candidate's own evidence: that word is theirs.
        if where in ("/diagnosis", "/static/diagnosis.js"):
            words.discard("evidence")
        assert not words, f"{where}: {words}"
        assert not [i for i in ids if i in body], where
    for asset in ("review.js", "builder.js", "sessions.js", "interviewer.css"):
        assert client.get(f"/interviewer/assets/{asset}", headers=who).status_code == 403
        assert client.get(f"/interviewer/assets/{asset}").status_code == 401
    interviewer = _bearer(links["interviewer_token"])
    assert client.get("/interviewer/assets/review.js", headers=interviewer).status_code == 200
    assert client.get("/interviewer/assets/..%2fapp.py", headers=interviewer).status_code == 404


def test_the_dashboards_served_are_those_of_the_worlds_difficulty(
    client: TestClient, make_session: MakeSession
) -> None:
    """The default world is standard: no panel only a mature team has, and nothing says which
    panels a tier leaves out."""
    who = _bearer(make_session()["candidate_token"])
    reply = client.get("/api/dashboards", headers=who)
    panels = {f"{b['id']}/{p['id']}" for b in reply.json() for p in b["panels"]}
    assert "feature-health/nulls-per-run" in panels
    assert "feature-health/null-ratio" not in panels and "shown_up_to" not in reply.text
    hidden = client.get("/api/dashboards/feature-health/panels/null-ratio", headers=who)
    assert hidden.status_code == 404


def test_log_text_matches_literally_and_offsets_are_understood(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    who = _bearer(links["candidate_token"])
    underscored = client.get("/api/logs", params={"q": "nulls_imputed"}, headers=who).json()
    assert underscored["total"] > 0
    wildcards = client.get("/api/logs", params={"q": "%_"}, headers=who).json()
    assert wildcards["total"] == 0
    end = underscored["end"]
    zoned = client.get("/api/logs", params={"after": end + "Z", "end": end + "+00:00"}, headers=who)
    assert zoned.status_code == 200 and zoned.json()["lines"] == []


def test_the_api_description_is_the_operators(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    links = make_session()
    assert client.get("/openapi.json").status_code == 404
    for token in (links["candidate_token"], links["interviewer_token"]):
        assert client.get("/api/openapi.json", headers=_bearer(token)).status_code == 403
    operator = _bearer((paths.interviewer / "operator-token").read_text().strip())
    assert "/api/sql" in client.get("/api/openapi.json", headers=operator).json()["paths"]


def test_a_change_another_site_asks_for_is_refused(
    client: TestClient, make_session: MakeSession
) -> None:
    """The session cookie rides along with cross-site requests; their Origin gives them away."""
    links = make_session()
    client.get(f"/?token={links['candidate_token']}")
    body = {"root_cause": "written by someone else"}
    evil = client.put("/api/diagnosis", json=body, headers={"origin": "http://127.0.0.1:9999"})
    assert evil.status_code == 403 and "cross-site" in evil.json()["detail"]
    referer = client.put("/api/diagnosis", json=body, headers={"referer": "http://evil.test/x"})
    assert referer.status_code == 403
    own = client.put("/api/diagnosis", json=body, headers={"origin": "http://testserver"})
    assert own.status_code == 200
    # A script with the token in a header is not a browser riding on a cookie.
    bearer = client.put(
        "/api/diagnosis",
        json={"root_cause": "from a script"},
        headers={**_bearer(links["candidate_token"]), "origin": "http://elsewhere"},
    )
    assert bearer.status_code == 200


def test_tokens_are_kept_hashed_and_expire(
    client: TestClient, paths: WorldPaths, make_session: MakeSession
) -> None:
    from sandbox.review.store import SESSIONS_FILE, TOKEN_LIFETIME

    links = make_session()
    store = client.app.state.sessions
    stored = store.get(links["session_id"])
    assert links["candidate_token"] not in (stored.candidate_token, stored.interviewer_token)
    assert stored.candidate_token.startswith("sha256:")
    for stored_file in paths.interviewer.glob(SESSIONS_FILE + "*"):  # the file and its WAL
        assert links["candidate_token"].encode() not in stored_file.read_bytes()
    assert client.get("/brief", headers=_bearer(links["candidate_token"])).status_code == 200
    old = store._tokens[next(k for k, v in store._tokens.items() if v[0].id == stored.id)]
    aged = dataclasses.replace(old[0], created_at=old[0].created_at - TOKEN_LIFETIME)
    for key, (session, role) in list(store._tokens.items()):
        if session.id == stored.id:
            store._tokens[key] = (aged, role)
    assert client.get("/brief", headers=_bearer(links["candidate_token"])).status_code == 401
