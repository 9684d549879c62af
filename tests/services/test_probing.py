"""The interviewer sees probing: a candidate's refused reaches for the interviewer's data, the
operator's tools and the system catalog are in the review as a signal with their events, next
to the paste and away signals, and an honest mistake is not among them."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.services.conftest import MakeSession


def test_refused_reaches_are_a_probing_signal_with_their_events(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session("mallory")
    me = {"Authorization": f"Bearer {links['candidate_token']}"}
    sid = links["session_id"]
    assert client.get(f"/api/sessions/{sid}/answer-key", headers=me).status_code == 403
    assert client.get(f"/api/sessions/{sid}/review", headers=me).status_code == 403
    assert client.get("/api/catalog", headers=me).status_code == 403
    sql = client.post("/api/sql", json={"sql": "SELECT * FROM duckdb_settings()"}, headers=me)
    assert sql.status_code == 400
    typo = client.post("/api/sql", json={"sql": "SELEC 1"}, headers=me)
    assert typo.status_code == 400
    client.post("/api/events", json={"kind": "paste", "field": "fix", "chars": 120}, headers=me)

    interviewer = {"Authorization": f"Bearer {links['interviewer_token']}"}
    review = client.get(f"/api/sessions/{sid}/review", headers=interviewer).json()
    by_kind = {s["kind"]: s for s in review["signals"]}
    probing = by_kind["probing"]
    seqs = {item["seq"]: item for item in review["timeline"]}
    reached = [seqs[n] for n in probing["events"]]
    assert len(reached) == 4, [r["summary"] for r in reached]
    assert {r["detail"]["refused"] for r in reached} == {
        "interviewer data",
        "operator tools",
        "table function",
    }
    assert all("SELEC 1" not in r["summary"] for r in reached), "a typo is not probing"
    assert "interviewer data" in probing["summary"]
    assert by_kind["paste"]["events"] and "120" in by_kind["paste"]["summary"]
