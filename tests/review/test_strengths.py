"""Evidence reached by strength: shown by what the candidate opened, queried by their own SQL's
conditions inside the evidence's window, cited by the diagnosis with a number they saw."""

from __future__ import annotations

from typing import Any

from sandbox.review import strengths
from sandbox.review.cited import SeenIndex
from tests.review.histories import build, diagnosis, event, sql

VA = "raw.viewing_activity"
COLUMNS = [f"{VA}.activity_date", f"{VA}.minutes_watched"]
IN_MARCH = ["2026-03-10", "0.4012", "2026-03-17", "0.4388"]
IN_JANUARY = ["2026-01-10", "0.0012", "2026-01-17", "0.0009"]


def _evidence(review: dict[str, Any], evidence_id: str) -> dict[str, Any]:
    [fault] = review["faults"]
    return next(e for e in fault["evidence"] if e["id"] == evidence_id)


def test_selecting_the_column_shows_it_but_does_not_query_it() -> None:
    only_select = sql(
        1, 30, f"SELECT activity_date, minutes_watched FROM {VA}", COLUMNS, IN_MARCH, ["nulls"]
    )
    nulls = _evidence(build([only_select]), "nulls")
    assert nulls["strength"] == "shown"
    assert nulls["strengths"]["shown"] == {"seq": 1, "offset_s": 30}
    assert nulls["strengths"]["queried"] is None and nulls["first_seq"] == 1


def test_filtering_grouping_or_joining_on_it_inside_the_window_queries_it() -> None:
    statements = [
        f"SELECT activity_date, count(*) FROM {VA} WHERE minutes_watched IS NULL GROUP BY 1",
        f"SELECT minutes_watched IS NULL AS missing, count(*) FROM {VA} GROUP BY missing, "
        "minutes_watched",
        f"SELECT count(*) FROM {VA} a JOIN {VA} b ON a.minutes_watched = b.minutes_watched",
    ]
    for statement in statements:
        review = build([sql(4, 75, statement, COLUMNS, IN_MARCH, ["nulls"])])
        nulls = _evidence(review, "nulls")
        assert nulls["strength"] == "queried", statement
        assert nulls["strengths"]["queried"] == {"seq": 4, "offset_s": 75}
        assert review["faults"][0]["time_to_first_s"]["queried"] == 75


def test_the_same_filter_over_rows_outside_the_window_does_not() -> None:
    statement = f"SELECT activity_date, count(*) FROM {VA} WHERE minutes_watched IS NULL GROUP BY 1"
    outside = build([sql(1, 30, statement, COLUMNS, IN_JANUARY)])
    assert _evidence(outside, "nulls")["strength"] is None
    assert outside["faults"][0]["time_to_first_s"] == {
        "shown": None,
        "queried": None,
        "cited": None,
    }
    # An aggregate with no dates among its values is taken to cover what it selected.
    undated = build([sql(1, 30, statement.replace("activity_date, ", ""), COLUMNS, ["412"])])
    assert _evidence(undated, "nulls")["strength"] == "queried"


def test_a_metric_is_queried_by_filtering_the_metrics_on_its_name() -> None:
    columns = ["telemetry.metrics.ts", "telemetry.metrics.name", "telemetry.metrics.value"]
    by_name = "SELECT ts, value FROM telemetry.metrics WHERE name = 'latency_p99_ms'"
    by_pattern = "SELECT ts, value FROM telemetry.metrics WHERE name LIKE 'latency%'"
    unfiltered = "SELECT ts, name, value FROM telemetry.metrics"
    other = "SELECT ts, value FROM telemetry.metrics WHERE name = 'requests_per_second'"
    for statement, strength in [
        (by_name, "queried"),
        (by_pattern, "queried"),
        (unfiltered, None),
        (other, None),
    ]:
        review = build([sql(1, 30, statement, columns, ["2026-03-12", "812.5"])])
        assert _evidence(review, "latency")["strength"] == strength, statement


def test_a_diagnosis_naming_the_evidence_with_a_number_seen_where_it_was_shown_cites_it() -> None:
    shown = sql(
        2, 40, f"SELECT activity_date, minutes_watched FROM {VA}", COLUMNS, IN_MARCH, ["nulls"]
    )
    unrelated = sql(3, 50, "SELECT count(*) FROM raw.customers", ["raw.customers.*"], ["0.55"])
    history = [shown, unrelated]

    def nulls_when(text: str) -> dict[str, Any]:
        return _evidence(build(history, [diagnosis(300, root_cause=text)]), "nulls")

    cited = nulls_when("The NULL share of minutes_watched reached 40% in mid-March.")
    assert cited["strength"] == "cited"
    assert cited["strengths"]["cited"]["seq"] == 2 and cited["strengths"]["cited"]["value"] == "40%"
    # A wrong number, a number seen only where the evidence was not, or the number without
    # the evidence's name in its sentence is not a citation.
    assert nulls_when("The NULL share of minutes_watched reached 47%.")["strength"] == "shown"
    assert nulls_when("The NULL share of minutes_watched reached 0.55.")["strength"] == "shown"
    assert nulls_when("minutes_watched is broken. The share is 0.40.")["strength"] == "shown"


def test_a_decoy_records_the_events_that_looked_at_it() -> None:
    columns = [f"{VA}.app_version", f"{VA}.activity_date"]
    looked = sql(5, 90, f"SELECT app_version, count(*) FROM {VA} GROUP BY 1", columns, IN_MARCH)
    [decoy] = build([event(1, 10, "page", page="brief"), looked])["decoys"]
    assert decoy["looked_at"] == [5] and decoy["first_offset_s"] == 90
    [untouched] = build([event(1, 10, "page", page="brief")])["decoys"]
    assert untouched["looked_at"] == [] and untouched["first_offset_s"] is None


def test_a_changelog_entry_is_cited_by_most_of_its_title_and_a_date_shown_with_it() -> None:
    entry = {
        "id": "sdk",
        "kind": "changelog",
        "ref": "player SDK 7.2 staged rollout",
        "description": "the upstream change",
        "window_start": "2026-03-15",
        "window_end": "2026-04-17",
    }
    page = event(3, 60, "changelog", ["sdk"], ["2026-03-15", "2026-03-02"], entries=6)
    timeline = [{**page, "offset_s": 60.0}]

    def strength(text: str) -> str | None:
        return strengths.of_evidence(entry, timeline, [text], True, SeenIndex())["strength"]

    assert strength("The SDK rollout of 2026-03-15 stopped the telemetry.") == "cited"
    assert strength("The SDK rollout of 2026-03-16 stopped the telemetry.") == "shown"
    assert strength("A rollout on 2026-03-15 stopped the telemetry.") == "shown"
