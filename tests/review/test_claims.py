"""The claims of the final diagnosis traced to the events that showed them."""

from __future__ import annotations

from typing import Any

from sandbox.review import claims
from tests.review.histories import build, diagnosis, event, sql

VA = "raw.viewing_activity"


def _claims(review: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["value"]: c for c in review["claims"]}


HISTORY = [
    event(1, 10, "page", page="brief"),
    sql(
        2,
        38,
        f"SELECT activity_date, avg((minutes_watched IS NULL)::INT) FROM {VA} GROUP BY 1",
        [f"{VA}.activity_date", f"{VA}.minutes_watched"],
        ["2026-03-14", "0.5951"],
        ["nulls"],
    ),
    event(3, 60, "diagnosis", version=1, submitted=False),
]


def test_a_number_seen_is_traced_to_its_event_and_one_never_seen_is_unbacked() -> None:
    text = (
        "minutes_watched has a 0.595 NULL share since 2026-03-14 in raw.viewing_activity. "
        "SDK 7.2 caused it."
    )
    found = _claims(build(HISTORY, [diagnosis(300, root_cause=text)]))
    assert found["0.595"]["kind"] == "number"
    assert [b["seq"] for b in found["0.595"]["backed_by"]] == [2]
    assert found["0.595"]["backed_by"][0]["offset_s"] == 38
    assert found["0.595"]["text"].startswith("minutes_watched has a 0.595")
    assert [b["seq"] for b in found["2026-03-14"]["backed_by"]] == [2]
    assert [b["seq"] for b in found["minutes_watched"]["backed_by"]] == [2]
    assert found["raw.viewing_activity"]["kind"] == "table"
    assert found["7.2"]["backed_by"] == [] and found["7.2"]["text"] == "SDK 7.2 caused it."


def test_names_come_from_the_schema_and_are_backed_by_what_read_them() -> None:
    text = "The feature avg_daily_minutes_7d is inflated; customers.region is fine; see region."
    found = _claims(build(HISTORY, [diagnosis(300, evidence=text)]))
    assert found["avg_daily_minutes_7d"]["kind"] == "feature"
    assert found["avg_daily_minutes_7d"]["backed_by"] == []
    assert found["customers.region"]["kind"] == "column"
    assert found["customers.region"]["field"] == "evidence"
    assert "region" not in found  # a plain word reads as prose unless written with its table


def test_without_the_world_schema_the_names_the_events_read_stand_in() -> None:
    schema = claims.with_history({}, HISTORY)
    assert schema == {VA: ["activity_date", "minutes_watched"]}
    given = {VA: ["app_version"], "raw.customers": ["region"]}
    assert claims.with_history(given, HISTORY) == {
        VA: ["activity_date", "app_version", "minutes_watched"],
        "raw.customers": ["region"],
    }
    timeline = [{**i, "offset_s": 0.0, "summary": "s"} for i in HISTORY]
    [claim] = claims.claims({"root_cause": "minutes_watched went NULL"}, timeline, schema)
    assert claim["kind"] == "column" and claim["backed_count"] == 1


def test_an_empty_diagnosis_claims_nothing() -> None:
    assert build(HISTORY)["claims"] == []


def test_the_review_traces_claims_without_carrying_every_value_each_event_showed() -> None:
    """The review page polls the review: what each event showed backs the claims, but stays out
    of the timeline it returns."""
    review = build(HISTORY, [diagnosis(300, root_cause="0.595 NULL share")])
    assert [b["seq"] for b in _claims(review)["0.595"]["backed_by"]] == [2]
    assert [item["seq"] for item in review["timeline"]] == [1, 2, 3]
    assert not any("seen" in item for item in review["timeline"])
