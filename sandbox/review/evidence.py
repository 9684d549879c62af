"""Which answer-key evidence a recorded event touched.

An event touches evidence when the candidate actually had it in front of them, inside the
evidence's time window:
- a table column: a query or panel that returned rows read that column (or `*` of its table);
  when the rows are dated, one of them falls in the window;
- a metric: a query or panel over `telemetry.metrics` that returned rows named the metric in its
  SQL or its rows;
- a log pattern: a log search, or a query over `telemetry.logs`, returned a line matching the
  pattern, dated in the window;
- a changelog entry: the changelog page, or a query over `ops.changelog` that returned the entry.

Events carry what they showed as `Shown` lines: (ISO date or timestamp of the row, or None; text).
What a line showed is also kept as its values (`seen_values`): the numbers and dates a diagnosis
could cite, so the review can trace a claim to where the candidate saw it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

Shown = Sequence[tuple[str | None, str]]  # (table, column) pairs a page displayed
QUERY_KINDS = {"sql", "panel"}
# A date, or a number (sign, digits, decimals, exponent) that is not part of a word or a date.
_VALUE = re.compile(r"\d{4}-\d{2}-\d{2}|(?<![\w.-])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w-])")


def touched(
    evidence: list[dict[str, Any]], kind: str, detail: dict[str, Any], shown: Shown
) -> list[str]:
    """The ids of the evidence entries this event touched."""
    return [e["id"] for e in evidence if _touches(e, kind, detail, shown)]


def _touches(e: dict[str, Any], kind: str, detail: dict[str, Any], shown: Shown) -> bool:
    start, end = window(e)
    if not _overlaps(detail, start, end):
        return False
    ref = e["ref"]
    tables = set(detail.get("tables", []))
    text = str(detail.get("sql", "")).lower()
    if kind in QUERY_KINDS and not shown:
        return False  # nothing came back: nothing was seen
    if e["kind"] == "table_column":
        if kind not in QUERY_KINDS:
            return False
        table = ref.rpartition(".")[0]
        columns = set(detail.get("columns", []))
        dates = [_day(ts) for ts, _ in shown if ts]
        in_window = not dates or any(start <= d <= end for d in dates)
        return (ref in columns or f"{table}.*" in columns) and in_window
    if e["kind"] == "metric":
        name = ref.split("{")[0]
        return (
            kind in QUERY_KINDS
            and "telemetry.metrics" in tables
            and (name.lower() in text or any(name in line for _, line in shown))
        )
    if e["kind"] == "log_pattern":
        if kind in QUERY_KINDS and "telemetry.logs" not in tables:
            return False
        if kind not in QUERY_KINDS | {"log_search"}:
            return False
        pattern = re.compile(ref)
        return any(
            pattern.search(line) and (ts is None or start <= _day(ts) <= end) for ts, line in shown
        )
    if e["kind"] == "changelog":
        if kind == "changelog" or (kind in QUERY_KINDS and "ops.changelog" in tables):
            return any(ref in line for _, line in shown)
        return False
    return False


def window(e: dict[str, Any]) -> tuple[dt.date, dt.date]:
    return dt.date.fromisoformat(str(e["window_start"])), dt.date.fromisoformat(
        str(e["window_end"])
    )


def _overlaps(detail: dict[str, Any], start: dt.date, end: dt.date) -> bool:
    """A time-ranged view (a panel, a log search) must cover part of the window; a query is
    taken to cover whatever it selected."""
    if "start" not in detail or "end" not in detail:
        return True
    return _day(detail["start"]) <= end and _day(detail["end"]) >= start


def _day(iso: str) -> dt.date:
    return dt.date.fromisoformat(str(iso)[:10])


def seen_values(shown: Shown, limit: int) -> list[str]:
    """The distinct dates and numbers the lines showed, first seen first, at most `limit`."""
    found: dict[str, None] = {}
    for _, line in shown:
        for value in _VALUE.findall(line):
            found.setdefault(value, None)
            if len(found) >= limit:
                return list(found)
    return list(found)
