"""Hand-made histories and an answer key for the review's tests: events as the store returns
them, with the values each showed."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sandbox.review import report

START = dt.datetime(2026, 11, 30, 9)
SESSION = {"id": "s", "candidate": "ada", "state": "active", "started_at": START.isoformat() + "Z"}
FIELDS = ("root_cause", "evidence", "fix", "ship_first", "next_experiment")
MARCH = {"window_start": "2026-03-01", "window_end": "2026-03-31"}
COLUMN = {"id": "nulls", "kind": "table_column", "ref": "raw.viewing_activity.minutes_watched"}
METRIC = {"id": "latency", "kind": "metric", "ref": "latency_p99_ms"}
KEY: dict[str, Any] = {
    "faults": [
        {
            "fault_id": "f",
            "title": "Watch time goes missing",
            "root_cause": "minutes_watched arrives NULL",
            "evidence": [
                {**COLUMN, "description": "NULLs from March", **MARCH},
                {**METRIC, "description": "p99 latency rises", **MARCH},
            ],
            "acceptable_fixes": ["fix the column"],
            "probes": ["Why would a NULL share grow slowly?"],
        }
    ],
    "decoys": [
        {
            "decoy_id": "app-rollout",
            "title": "Android app 7.3 rollout",
            "what_happened": "a new app version rolled out",
            "why_harmless": "only the label changes",
            "evidence": [
                {
                    "id": "app-version",
                    "kind": "table_column",
                    "ref": "raw.viewing_activity.app_version",
                    "description": "the new version's share grows",
                    **MARCH,
                }
            ],
        }
    ],
}
SCHEMA = {
    "raw.viewing_activity": ["customer_id", "activity_date", "minutes_watched", "app_version"],
    "raw.customers": ["customer_id", "region"],
    "feature_store.customer_features": ["customer_id", "avg_daily_minutes_7d"],
    "telemetry.metrics": ["ts", "name", "value"],
}


def event(
    seq: int,
    seconds: float,
    kind: str,
    evidence: list[str] | None = None,
    seen: list[str] | None = None,
    **detail: Any,
) -> dict[str, Any]:
    return {
        "seq": seq,
        "ts": (START + dt.timedelta(seconds=seconds)).isoformat(),
        "kind": kind,
        "detail": detail,
        "evidence": evidence or [],
        "seen": seen or [],
    }


def sql(
    seq: int,
    seconds: float,
    text: str,
    columns: list[str],
    seen: list[str],
    evidence: list[str] | None = None,
) -> dict[str, Any]:
    """A console query that returned rows, as the SQL route records it."""
    tables = sorted({c.rpartition(".")[0] for c in columns})
    return event(
        seq, seconds, "sql", evidence, seen, sql=text, rows=3, tables=tables, columns=columns
    )


def diagnosis(seconds: float, **fields: str) -> dict[str, Any]:
    return {
        "version": 1,
        "ts": (START + dt.timedelta(seconds=seconds)).isoformat(),
        "fields": {f: fields.get(f, "") for f in FIELDS},
        "submitted": True,
    }


def build(
    history: list[dict[str, Any]], diagnoses: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return report.build(
        SESSION, history, diagnoses or [], KEY, {}, {"name": "w", "seed": 1}, SCHEMA
    )
