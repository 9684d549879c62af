"""The review built from recorded events: dead ends, idle gaps, the diagnosis against the key,
and histories that are empty or oddly stamped."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sandbox.review import export, report

KEY = {
    "faults": [
        {
            "fault_id": "f",
            "title": "A planted fault",
            "root_cause": "why",
            "evidence": [
                {
                    "id": "col",
                    "kind": "table_column",
                    "ref": "raw.t.minutes_watched",
                    "description": "d",
                    "window_start": "2026-03-01",
                    "window_end": "2026-04-01",
                }
            ],
            "probes": ["What next?"],
        }
    ]
}
START = dt.datetime(2026, 11, 30, 9)
SESSION = {"id": "s", "candidate": "ada", "state": "active", "started_at": START.isoformat() + "Z"}


def _event(seq: int, seconds: float, kind: str, evidence: list[str] | None = None, **detail: Any):
    ts = START + dt.timedelta(seconds=seconds)
    return {
        "seq": seq,
        "ts": ts.isoformat(),
        "kind": kind,
        "detail": detail,
        "evidence": evidence or [],
    }


def _build(history: list[dict[str, Any]], diagnoses: list[dict[str, Any]] | None = None):
    return report.build(SESSION, history, diagnoses or [], KEY, {}, {"name": "w", "seed": 1})


def test_one_dashboard_load_is_one_look_but_six_stray_queries_are_a_dead_end() -> None:
    panels = [
        _event(i, i, "panel", dashboard="d", panel=f"p{i}", start="a", end="b") for i in range(9)
    ]
    assert _build(panels)["dead_ends"] == []
    queries = [
        _event(i, 60 * i, "sql", sql=f"SELECT {i}", rows=1, tables=["raw.x"]) for i in range(6)
    ]
    found = _build([*queries, _event(9, 400, "sql", ["col"], sql="SELECT minutes_watched")])
    [dead_end] = found["dead_ends"]
    assert (
        dead_end["events"] == 6 and dead_end["seconds"] == 300 and dead_end["tables"] == ["raw.x"]
    )
    assert found["faults"][0]["time_to_first_evidence_s"] == 400


def test_idle_gaps_are_compressed_and_offsets_count_from_the_start() -> None:
    timeline = _build([_event(1, 10, "page", page="brief"), _event(2, 1000, "page", page="sql")])[
        "timeline"
    ]
    assert [i["offset_s"] for i in timeline] == [10, 1000]
    assert [i["idle_before_s"] for i in timeline] == [0, 990]


def test_an_empty_session_and_odd_timestamps_still_make_a_review() -> None:
    empty = _build([])
    assert empty["timeline"] == [] and empty["faults"][0]["time_to_first_evidence_s"] is None
    assert empty["faults"][0]["named_in_diagnosis"] == "no"
    offset = _event(1, 30, "diagnosis", version=1, submitted=False)
    offset["ts"] = (START + dt.timedelta(seconds=30)).isoformat() + "+00:00"
    bare = {"seq": 2, "ts": offset["ts"], "kind": "panel", "detail": {}, "evidence": []}
    review = _build([offset, bare])
    assert [i["offset_s"] for i in review["timeline"]] == [30, 30]
    assert review["timeline"][1]["summary"].startswith("panel")


def test_the_diagnosis_versions_carry_their_changes_and_the_key_terms() -> None:
    versions = [
        {
            "version": 1,
            "ts": START.isoformat(),
            "fields": {"root_cause": "nulls"},
            "submitted": False,
        },
        {
            "version": 2,
            "ts": (START + dt.timedelta(minutes=5)).isoformat(),
            "fields": {"root_cause": "nulls in minutes_watched"},
            "submitted": True,
        },
    ]
    review = _build([], versions)
    changes = review["diagnosis"]["versions"][1]["changes"]["root_cause"]
    assert changes == ["-nulls", "+nulls in minutes_watched"]
    assert review["faults"][0]["diagnosis_mentions"] == ["minutes_watched"]
    assert review["faults"][0]["named_in_diagnosis"] == "partly"
    texts = [p["text"] for p in review["probes"]]
    assert texts[0] == "What next?" and len(set(texts)) == len(texts)


def test_the_review_and_its_exports_carry_the_difficulty() -> None:
    hard_key = {"faults": [{**KEY["faults"][0], "difficulty": "hard"}]}
    world = {"name": "w", "seed": 1, "difficulty": "hard"}
    review = report.build(SESSION, [], [], hard_key, {}, world)
    assert review["world"]["difficulty"] == review["faults"][0]["difficulty"] == "hard"
    assert "(hard, seed 1" in export.to_markdown(review)
    assert "| A planted fault | hard |" in export.to_markdown(review)
    assert "<td>A planted fault</td><td>hard</td>" in export.to_html(review)
    # A world built before the tiers showed every trail.
    assert _build([])["world"]["difficulty"] == _build([])["faults"][0]["difficulty"] == "guided"
