"""The names a review looks for in the diagnosis: the same wherever the review is read."""

from __future__ import annotations

from sandbox.review.gather import candidate_schema
from sandbox.schema import TABLES
from tests.review.histories import KEY


def test_the_declared_tables_and_the_columns_the_answer_key_points_at() -> None:
    added = {
        "id": "new",
        "kind": "table_column",
        "ref": "raw.viewing_activity.watch_seconds_v2",
        "description": "a column a planted fault adds",
        "window_start": "2026-03-01",
        "window_end": "2026-03-31",
    }
    key = {**KEY, "faults": [{**KEY["faults"][0], "evidence": [added]}]}
    names = candidate_schema(key)
    assert set(names) == set(TABLES)
    assert names["raw.viewing_activity"] == [
        *TABLES["raw.viewing_activity"].names,
        "watch_seconds_v2",
    ]
    assert candidate_schema({}) == {name: table.names for name, table in TABLES.items()}
