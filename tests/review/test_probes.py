"""Walk-through probes drawn from the candidate's own trail, in the order of a walk-through."""

from __future__ import annotations

from tests.review.histories import KEY, build, diagnosis, event, sql

VA = "raw.viewing_activity"
FILTER = f"SELECT activity_date, count(*) FROM {VA} WHERE minutes_watched IS NULL GROUP BY 1"
HISTORY = [
    event(1, 10, "page", page="brief"),
    sql(
        2,
        38,
        f"SELECT app_version, count(*) FROM {VA} GROUP BY 1",
        [f"{VA}.app_version"],
        ["2026-03-03", "812"],
    ),
    sql(
        3,
        75,
        FILTER,
        [f"{VA}.activity_date", f"{VA}.minutes_watched"],
        ["2026-03-14", "0.5951"],
        ["nulls"],
    ),
    event(4, 90, "changelog", seen=["2026-03-02"], entries=6, tables=["ops.changelog"]),
    sql(
        5, 120, FILTER, [f"{VA}.activity_date", f"{VA}.minutes_watched"], ["2026-03-14"], ["nulls"]
    ),
]


def test_probes_follow_the_trail_then_the_answer_key_then_the_closing_questions() -> None:
    text = "minutes_watched NULL share hit 0.595 in March. SDK 7.2 caused it."
    probes = build(HISTORY, [diagnosis(300, root_cause=text)])["probes"]
    kinds = [p["kind"] for p in probes]
    assert kinds == sorted(
        kinds, key=["decisive_query", "ruled_out", "unbacked_claim", "answer_key", "generic"].index
    )
    [decisive] = [p for p in probes if p["kind"] == "decisive_query"]
    assert decisive["events"] == [3]  # the first query that found it, not the repeat
    assert "filter on viewing_activity.minutes_watched" in decisive["text"]
    assert "changed your mind" in decisive["text"]
    ruled_out = {p["text"].split(":")[0]: p["events"] for p in probes if p["kind"] == "ruled_out"}
    assert ruled_out[KEY["decoys"][0]["title"]] == [2]
    assert ruled_out["You read the changelog at 1"] == [4]
    [unbacked] = [p for p in probes if p["kind"] == "unbacked_claim"]
    assert unbacked["text"] == "You wrote “SDK 7.2 caused it.”: where did you see 7.2?"
    assert unbacked["events"] == []
    assert not any("0.595" in p["text"] for p in probes)  # that one was seen in query 3
    closing = [p["text"] for p in probes if p["kind"] in ("answer_key", "generic")]
    assert closing[0] == KEY["faults"][0]["probes"][0]
    assert any("next experiment" in t for t in closing)


def test_a_session_with_no_trail_gets_only_the_closing_questions() -> None:
    probes = build([])["probes"]
    assert {p["kind"] for p in probes} == {"answer_key", "generic"}
    assert all(p["events"] == [] for p in probes)
