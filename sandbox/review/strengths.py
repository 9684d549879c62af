"""How strongly the candidate reached each piece of answer-key evidence: seeing it, asking of it,
or citing it.

- shown: an event put it in front of them (the tag the store gave the event when it was
  recorded: a panel, page, log search, changelog, report, or a query's rows).
- queried: their own SQL asked a question of it, inside its window: for a table column, the
  statement filters, groups or joins on that column (`sql_conditions`); for a metric, it filters
  `telemetry.metrics` with a literal naming the metric (equal to it, or a LIKE pattern or a part
  of at least three characters that matches it); for a log pattern, it filters `telemetry.logs`
  and returned a matching line; for a changelog entry, it filters `ops.changelog` and returned
  the entry or compared with a literal naming it. Inside the window means the query returned
  rows and the dates among them (the event's `seen`) include one in the window, or none are
  dates.
- cited: a sentence of the diagnosis names it (its column, metric or changelog entry, or a
  line its log pattern matches: `names_evidence`) next to a number or date the candidate saw
  (`cited.matches`) in an event that showed or queried it.

Computed from the recorded history when the review is built, so older sessions get it too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sandbox.review import cited, sql_conditions
from sandbox.review.cited import SeenIndex
from sandbox.review.evidence import window

STRENGTHS = ("shown", "queried", "cited")
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\s*\n+\s*")
MIN_PART = 3  # the shortest literal taken to name a metric or changelog entry by a part of it


def shown(e: dict[str, Any], item: dict[str, Any]) -> bool:
    return e["id"] in item.get("evidence", [])


def queried(e: dict[str, Any], item: dict[str, Any], seen: SeenIndex) -> bool:
    """Whether this event is the candidate's own query asking a question of `e` in its window."""
    detail = item["detail"]
    if item["kind"] != "sql" or detail.get("error") or not detail.get("rows"):
        return False
    asked = conditions_of(item)
    ref = str(e["ref"])
    if e["kind"] == "table_column":
        asks = ref.lower() in asked.columns
    elif e["kind"] == "metric":
        name = ref.split("{")[0]
        asks = "telemetry.metrics" in asked.tables and any(names(c, name) for c in asked.constants)
    elif e["kind"] == "log_pattern":
        asks = _filters_table(asked, "telemetry.logs") and shown(e, item)
    elif e["kind"] == "changelog":
        asks = _filters_table(asked, "ops.changelog") and (
            shown(e, item) or any(names(c, ref) for c in asked.constants)
        )
    else:
        asks = False
    return asks and dated_in_window(e, item, seen)


def looked_at(e: dict[str, Any], item: dict[str, Any], seen: SeenIndex) -> bool:
    """Whether the event showed or queried `e`, for evidence the store does not tag when it
    records (a decoy's): judged from what the event kept, its tables, columns, SQL and the values
    it showed, since the lines themselves are not kept."""
    if shown(e, item) or queried(e, item, seen):
        return True
    detail = item["detail"]
    if detail.get("error"):
        return False
    ref = str(e["ref"])
    if e["kind"] == "changelog":
        showed = item["kind"] == "changelog" and bool(detail.get("entries"))
    elif item["kind"] not in ("sql", "panel") or not detail.get("rows"):
        showed = False
    elif e["kind"] == "table_column":
        columns = set(detail.get("columns", []))
        showed = ref in columns or f"{ref.rpartition('.')[0]}.*" in columns
    elif e["kind"] == "metric":
        name = ref.split("{")[0].lower()
        sql = str(detail.get("sql", "")).lower()
        showed = "telemetry.metrics" in detail.get("tables", []) and name in sql
    else:
        showed = False
    return showed and dated_in_window(e, item, seen)


def conditions_of(item: dict[str, Any]) -> sql_conditions.Conditions:
    detail = item["detail"]
    return sql_conditions.conditions(str(detail.get("sql", "")), detail.get("columns", []))


def dated_in_window(e: dict[str, Any], item: dict[str, Any], seen: SeenIndex) -> bool:
    """Whether the dates the event showed include one in `e`'s window, or none are dates."""
    start, end = window(e)
    return seen(item).dated_between(start.isoformat(), end.isoformat())


def _filters_table(asked: sql_conditions.Conditions, table: str) -> bool:
    return any(c.rpartition(".")[0] == table for c in asked.filtered)


def names(literal: str, name: str) -> bool:
    """Whether a literal of a condition names `name`: equal to it, a LIKE pattern matching it, or
    a part of it (as `contains` or a regular expression would be written)."""
    literal, name = literal.lower(), name.lower()
    if "%" in literal or "_" in literal:
        pattern = "".join(
            ".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in literal
        )
        if re.fullmatch(pattern, name, re.DOTALL):
            return True
    core = literal.strip("%^$")
    return core == name or (len(core) >= MIN_PART and core in name)


def term(e: dict[str, Any]) -> str | None:
    """The word a diagnosis would use for `e`: its column, metric or changelog title; None for
    a log pattern, which is matched as a pattern."""
    if e["kind"] == "table_column":
        return str(e["ref"]).rsplit(".", 1)[-1]
    if e["kind"] in ("metric", "changelog"):
        return str(e["ref"]).split("{")[0]
    return None


def normal(text: str) -> str:
    """Lowercase words separated by single spaces, padded: `" term " in normal(text)` finds a
    whole-word mention whatever the punctuation."""
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()) + " "


def names_evidence(e: dict[str, Any], sentence: str) -> bool:
    """Whether the sentence speaks of `e`: its column or metric as a word, a line its log
    pattern matches, or a changelog entry by its title or by half or more of the title's words
    of three letters or more (nobody copies "player SDK 7.2 staged rollout" whole)."""
    word = term(e)
    if word is None:
        try:
            return re.search(str(e["ref"]), sentence) is not None
        except re.error:
            return False
    written = normal(sentence)
    if normal(word) in written:
        return True
    if e["kind"] != "changelog":
        return False
    words = {w for w in normal(word).split() if len(w) >= MIN_PART and not w.isdigit()}
    return bool(words) and 2 * sum(f" {w} " in written for w in words) >= len(words)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def of_evidence(
    e: dict[str, Any],
    timeline: list[dict[str, Any]],
    diagnosis: Iterable[str],
    tagged: bool,
    seen: SeenIndex,
) -> dict[str, Any]:
    """`strength` (the strongest reached, or None) and, per strength, the first event that
    reached it (`seq`, `offset_s`; for cited also the value written and the sentence).
    `tagged`: the store tagged events with this evidence when it recorded them (a fault's); if
    not (a decoy's), what was shown is judged from what the events kept."""
    asked = [i for i in timeline if queried(e, i, seen)]
    if tagged:
        showing = [i for i in timeline if shown(e, i)]
    else:
        showing = [i for i in timeline if looked_at(e, i, seen)]
    touching = sorted({i["seq"]: i for i in showing + asked}.values(), key=lambda i: i["seq"])
    found: dict[str, Any] = {
        "shown": _at(showing[0] if showing else None),
        "queried": _at(asked[0] if asked else None),
        "cited": _citation(e, touching, diagnosis, seen),
    }
    strongest = next((s for s in reversed(STRENGTHS) if found[s]), None)
    return {"strength": strongest, "strengths": found}


def _citation(
    e: dict[str, Any], touching: list[dict[str, Any]], diagnosis: Iterable[str], seen: SeenIndex
) -> dict[str, Any] | None:
    best: dict[str, Any] | None = None
    for sentence in (s for text in diagnosis for s in sentences(text)):
        if not names_evidence(e, sentence):
            continue
        for value in cited.values_in(sentence):
            item = next((i for i in touching if seen(i).has(value)), None)
            if item is not None and (best is None or item["seq"] < best["seq"]):
                best = {
                    "seq": item["seq"],
                    "offset_s": item["offset_s"],
                    "value": value.text,
                    "sentence": sentence,
                }
    return best


def _at(item: dict[str, Any] | None) -> dict[str, Any] | None:
    return {"seq": item["seq"], "offset_s": item["offset_s"]} if item else None
