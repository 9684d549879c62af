"""The signal rules on hand-made timelines: what a person's work looks like in the recorded
events and what a script's does, and the typing thresholds at their edges."""

from __future__ import annotations

from typing import Any

from sandbox.review import export, report, signals
from sandbox.review.signals import (
    RATE_MIN_CHARS,
    TYPING_MAX_CPS,
    UNTYPED_MIN_CHARS,
    text_speed,
)

QUERY = "SELECT source, count(*) AS n FROM serving.predictions GROUP BY source ORDER BY 1"


def _event(seq: int, kind: str, client: str = "workspace", **detail: Any) -> dict[str, Any]:
    detail = {"client": client, "user_agent": "ua", "overlapped": False, **detail}
    return {"seq": seq, "kind": kind, "detail": detail, "evidence": []}


def _typed(chars: int, cps: float, **counts: int) -> dict[str, int]:
    """A composition of `chars` characters typed at `cps` characters a second."""
    fields = {"typed": chars, "pasted": 0, "inserted": 0, "kept": 0}
    return fields | counts | {"compose_ms": round(chars / cps * 1000)}


def _kinds(timeline: list[dict[str, Any]]) -> dict[str, list[int]]:
    return {s["kind"]: s["events"] for s in signals.signals(timeline)}


def test_a_person_typing_in_the_workspace_raises_no_signal() -> None:
    person = [
        _event(1, "page", page="sql"),
        _event(2, "sql", sql=QUERY, composition=_typed(len(QUERY), 8)),
        # the page put the example there; the person ran it unchanged
        _event(3, "sql", sql=QUERY, composition={"inserted": len(QUERY)}),
        _event(4, "panel", dashboard="d", panel="p"),
        _event(
            5,
            "diagnosis",
            version=1,
            submitted=False,
            fields={"root_cause": "x" * 90, "fix": ""},
            composition={"root_cause": _typed(90, 9)},
        ),
        # an edit that shortens a field needs no keystrokes to account for it
        _event(6, "diagnosis", version=2, submitted=True, fields={"root_cause": "x" * 50}),
    ]
    assert _kinds(person) == {}


def test_a_script_raises_each_signal_on_the_events_it_rests_on() -> None:
    script = [
        _event(1, "page", page="brief"),
        _event(2, "sql", "api", sql=QUERY, overlapped=True),
        _event(3, "sql", "api", sql=QUERY, overlapped=True),
        _event(4, "sql", "api", sql="SELECT 1"),
        _event(5, "diagnosis", "api", version=1, submitted=False, fields={"root_cause": "y" * 60}),
    ]
    found = _kinds(script)
    assert found["outside-workspace"] == [2, 3, 4, 5]
    assert found["overlapping-requests"] == [2, 3]
    # "SELECT 1" is too short to say anything about how it was written
    assert found["fast-composition"] == [2, 3, 5]
    [outside] = [s for s in signals.signals(script) if s["kind"] == "outside-workspace"]
    assert outside["summary"] == "4 of 5 requests came from outside the workspace pages"


def test_events_recorded_before_clients_were_told_apart_count_for_neither_side() -> None:
    old = {"seq": 1, "kind": "page", "detail": {"page": "sql"}, "evidence": []}
    found = signals.signals([old, _event(2, "changelog", "api")])
    [outside] = [s for s in found if s["kind"] == "outside-workspace"]
    assert outside["summary"] == "1 of 1 requests came from outside the workspace pages"


def test_typing_faster_than_a_person_can_is_fast_only_over_a_long_enough_stretch() -> None:
    fast = TYPING_MAX_CPS * 1.5
    assert text_speed(RATE_MIN_CHARS, _typed(RATE_MIN_CHARS, fast)) == (0, RATE_MIN_CHARS)
    assert text_speed(RATE_MIN_CHARS - 1, _typed(RATE_MIN_CHARS - 1, fast)) == (0, 0)
    # a fast typist, over the same stretch, is not
    assert text_speed(200, _typed(200, 10)) == (0, 0)
    assert text_speed(200, _typed(200, TYPING_MAX_CPS * 0.9)) == (0, 0)
    # typed with no time at all
    assert text_speed(200, {"typed": 200}) == (0, 200)


def test_text_that_did_not_come_through_the_keyboard_counts_from_its_threshold() -> None:
    assert text_speed(UNTYPED_MIN_CHARS, None) == (UNTYPED_MIN_CHARS, 0)
    assert text_speed(UNTYPED_MIN_CHARS - 1, None) == (0, 0)
    pasted = {"pasted": UNTYPED_MIN_CHARS, "compose_ms": 10}
    assert text_speed(UNTYPED_MIN_CHARS, pasted) == (UNTYPED_MIN_CHARS, 0)
    # a table name pasted into a query that was otherwise typed
    name = _typed(60, 8, pasted=20)
    assert text_speed(80, name) == (0, 0)
    # a composition that accounts for less than the text sent: the rest never was in the editor
    assert text_speed(300, _typed(100, 8)) == (200, 0)
    # what the last run left in the editor was accounted for then
    assert text_speed(300, _typed(100, 8, kept=200)) == (0, 0)


def test_a_diagnosis_field_is_judged_by_what_it_gained_since_its_previous_version() -> None:
    def save(seq: int, text: str, composition: Any = None) -> dict[str, Any]:
        extra = {"composition": composition} if composition is not None else {}
        fields = {"root_cause": text, "fix": "f" * 45}
        return _event(seq, "diagnosis", version=seq, submitted=False, fields=fields, **extra)

    first = save(1, "a" * 100, {"root_cause": _typed(100, 9), "fix": _typed(45, 9)})
    # 30 more characters typed, claimed "kept" text does not matter: growth is the server's own
    second = save(2, "a" * 130, {"root_cause": _typed(30, 9, kept=10_000)})
    # 100 more characters that no editor saw
    third = save(3, "a" * 230, {})
    assert _kinds([first, second]) == {}
    assert _kinds([first, second, third])["fast-composition"] == [3]


def test_a_review_and_both_exports_show_the_signals_next_to_their_events() -> None:
    history = [
        {**_event(1, "sql", "api", sql=QUERY, overlapped=True), "ts": "2026-11-30T09:00:01"},
        {**_event(2, "page", page="sql"), "ts": "2026-11-30T09:00:02"},
    ]
    session = {
        "id": "s",
        "candidate": "ada",
        "state": "active",
        "started_at": "2026-11-30T09:00:00Z",
        "policy": {"assistance": "not-allowed", "workspace_only": True},
    }
    review = report.build(session, history, [], {"faults": []}, {}, {"name": "w"})
    assert {s["kind"] for s in review["signals"]} == {
        "outside-workspace",
        "overlapping-requests",
        "fast-composition",
    }
    assert signals.by_event(review["signals"]) == {
        1: ["outside-workspace", "overlapping-requests", "fast-composition"]
    }
    markdown = export.to_markdown(review)
    assert "outside help **not allowed** · only the workspace's pages answered" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| 1 |"))
    assert "outside-workspace, overlapping-requests, fast-composition" in row
    assert "| api |" in row
    html = export.to_html(review)
    assert 'data-signal="fast-composition"' in html and 'href="#event-1"' in html
    assert 'id="event-1"' in html and '<span class="signal">overlapping-requests</span>' in html
    assert "outside help <b>not allowed</b>" in html
