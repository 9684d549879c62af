"""What the final diagnosis claims, traced to the events that showed it.

A claim is a number or date (`cited.values_in`) or a name of the world's schema written in the
diagnosis: a table (`schema.table`, or its bare name when that has an underscore), a column or
feature (`table.column`, or its bare name when that has an underscore: plain words such as
"region" read as prose). A number or date is backed by the events whose shown values match it
(`cited.matches`); a name by the events that read that table or column (their tables and
columns, or their SQL naming it). A claim nothing backs is for the interviewer to ask about.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sandbox.review import cited
from sandbox.review.strengths import sentences

FEATURE_SCHEMA = "feature_store"
MAX_BACKING = 5  # events listed per claim; the count says how many there were
MAX_CLAIM_TEXT = 200
# Events that show nothing of the world: what the candidate wrote, left or was refused.
NOT_SHOWING = {"diagnosis", "paste", "away", "refused"}


def with_history(
    schema: Mapping[str, Sequence[str]], history: Sequence[dict[str, Any]]
) -> dict[str, list[str]]:
    """`schema` with the tables and columns the events read added: the schema as far as the
    candidate met it, which is all there is when the world's own catalog is not at hand."""
    found: dict[str, set[str]] = {table: set(columns) for table, columns in schema.items()}
    for item in history:
        for table in item["detail"].get("tables", []) or []:
            found.setdefault(str(table), set())
        for column in item["detail"].get("columns", []) or []:
            table, _, name = str(column).rpartition(".")
            if table and name != "*":
                found.setdefault(table, set()).add(name)
    return {table: sorted(columns) for table, columns in found.items()}


def claims(
    fields: Mapping[str, str],
    timeline: Sequence[dict[str, Any]],
    schema: Mapping[str, Sequence[str]],
    seen: cited.SeenIndex | None = None,
) -> list[dict[str, Any]]:
    """Each claim of the diagnosis `fields` once (its first sentence), in the order written:
    `kind` (number, date, table, column, feature), `value`, `field`, `text` (the sentence),
    `backed_by` (up to MAX_BACKING events: seq, offset_s, kind, summary) and `backed_count`.
    `schema` maps `schema.table` to its column names; `timeline` items carry `offset_s` and
    `summary`."""
    names = _names(schema)
    seen = cited.SeenIndex() if seen is None else seen
    showing = [i for i in timeline if i["kind"] not in NOT_SHOWING]
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for field, text in fields.items():
        for sentence in sentences(text or ""):
            for kind, value, backing in _claims_of(sentence, names, seen):
                if (kind, value.lower()) in found:
                    continue
                events = [i for i in showing if backing(i)]
                found[(kind, value.lower())] = {
                    "kind": kind,
                    "value": value,
                    "field": field,
                    "text": _clip(sentence),
                    "backed_by": [
                        {
                            "seq": i["seq"],
                            "offset_s": i["offset_s"],
                            "kind": i["kind"],
                            "summary": i["summary"],
                        }
                        for i in events[:MAX_BACKING]
                    ],
                    "backed_count": len(events),
                }
    return list(found.values())


Backing = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class _Name:
    kind: str  # table, column or feature
    fulls: tuple[str, ...]  # every schema.table[.column] it can stand for
    pattern: re.Pattern[str]


def _claims_of(
    sentence: str, names: list[_Name], seen: cited.SeenIndex
) -> list[tuple[str, str, Backing]]:
    """(kind, value as written, backing) of each claim in the sentence, ordered as written."""
    out: list[tuple[int, str, str, Backing]] = []
    for value in cited.values_in(sentence):
        out.append((value.start, value.kind, value.text, _shows(value, seen)))
    taken: list[tuple[int, int]] = []
    for name in names:
        for match in name.pattern.finditer(sentence):
            if any(s <= match.start() < e for s, e in taken):
                continue  # part of a longer name already claimed (schema.table.column)
            taken.append((match.start(), match.end()))
            out.append((match.start(), name.kind, match.group(), _reads(name)))
    return [(kind, value, backing) for _, kind, value, backing in sorted(out, key=lambda c: c[0])]


def _names(schema: Mapping[str, Sequence[str]]) -> list[_Name]:
    """Every name a diagnosis may use, longest first so that `schema.table.column` is claimed
    once, as a column; a bare name several tables share stands for each of them."""
    forms: dict[tuple[str, str], list[str]] = {}
    for table, columns in schema.items():
        bare_table = table.rpartition(".")[2]
        for written in [table] + ([bare_table] if "_" in bare_table else []):
            forms.setdefault(("table", written.lower()), []).append(table)
        kind = "feature" if table.startswith(FEATURE_SCHEMA + ".") else "column"
        for column in columns:
            full = f"{table}.{column}"
            for written in [full, f"{bare_table}.{column}"] + ([column] if "_" in column else []):
                forms.setdefault((kind, written.lower()), []).append(full)
    return [
        _Name(
            kind,
            tuple(dict.fromkeys(fulls)),
            re.compile(rf"(?<![\w.]){re.escape(written)}(?![\w]|\.\w)", re.IGNORECASE),
        )
        for (kind, written), fulls in sorted(forms.items(), key=lambda f: -len(f[0][1]))
    ]


def _shows(value: cited.Cited, seen: cited.SeenIndex) -> Backing:
    return lambda item: seen(item).has(value)


def _reads(name: _Name) -> Backing:
    """An event backs a name when it read it: a table among its tables; a column among its
    columns (or its table's `*`), or named in its SQL over its table."""
    if name.kind == "table":
        return lambda item: any(t in (item["detail"].get("tables") or []) for t in name.fulls)
    owners = [full.rpartition(".") for full in name.fulls]

    def reads(item: dict[str, Any]) -> bool:
        detail = item["detail"]
        columns = detail.get("columns") or []
        tables = detail.get("tables") or []
        sql = str(detail.get("sql", ""))
        for table, _, column in owners:
            if f"{table}.{column}" in columns or f"{table}.*" in columns:
                return True
            if table in tables and re.search(rf"(?<![\w]){re.escape(column)}(?![\w])", sql, re.I):
                return True
        return False

    return reads


def _clip(sentence: str) -> str:
    return sentence if len(sentence) <= MAX_CLAIM_TEXT else sentence[: MAX_CLAIM_TEXT - 1] + "…"
