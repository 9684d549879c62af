"""Questions for a 30-minute walk-through, drawn from the candidate's own trail, in the order an
interviewer would ask them: the queries that found the evidence (why that filter or join, what
would have changed their mind), the plausible changes they looked at and set aside (the answer
key's decoys, the changelog), every claim of the diagnosis nothing they ran showed (where they
saw it), then the answer key's own probes and the generic closing questions.

Each probe is `{kind, text, events}`: `events` are the `seq`s of the events it asks about.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sandbox.review import strengths
from sandbox.review.cited import SeenIndex

KINDS = ("decisive_query", "ruled_out", "unbacked_claim", "answer_key", "generic")
SQL_SHOWN = 100  # characters of a query quoted in its probe

Clock = Callable[[float | None], str]


def walk_through(
    timeline: Sequence[dict[str, Any]],
    faults: Sequence[dict[str, Any]],
    decoys: Sequence[dict[str, Any]],
    claims: Sequence[dict[str, Any]],
    closing: Sequence[tuple[str, str]],
    clock: Clock,
) -> list[dict[str, Any]]:
    """`faults` carry their evidence with `strengths` (`report`); `decoys` their looked-at
    events (`decoy_trail`); `closing` is (kind, text) of the answer key's and generic probes."""
    found = [
        *_decisive_queries(timeline, faults, clock),
        *_ruled_out(timeline, decoys, clock),
        *_unbacked(claims),
        *({"kind": kind, "text": text, "events": []} for kind, text in closing),
    ]
    texts: set[str] = set()
    unique = []
    for probe in found:
        if probe["text"] not in texts:
            texts.add(probe["text"])
            unique.append(probe)
    return unique


def _decisive_queries(
    timeline: Sequence[dict[str, Any]], faults: Sequence[dict[str, Any]], clock: Clock
) -> list[dict[str, Any]]:
    """The candidate's SQL events that first showed or first queried a piece of evidence."""
    firsts: set[int] = set()
    for fault in faults:
        for e in fault["evidence"]:
            for strength in ("shown", "queried"):
                at = e["strengths"][strength]
                if at is not None:
                    firsts.add(at["seq"])
    probes = []
    for item in timeline:
        if item["seq"] not in firsts or item["kind"] != "sql":
            continue
        asked = strengths.conditions_of(item)
        parts = [
            f"{verb} {', '.join(sorted(_short(c) for c in columns))}"
            for verb, columns in (
                ("filter on", asked.filtered),
                ("group by", asked.grouped),
                ("join on", asked.joined),
            )
            if columns
        ]
        sql = " ".join(str(item["detail"].get("sql", "")).split())
        quoted = sql if len(sql) <= SQL_SHOWN else sql[: SQL_SHOWN - 1] + "…"
        why = f"why {_join(parts)}" if parts else "what were you looking for in its rows"
        probes.append(
            {
                "kind": "decisive_query",
                "text": f"Query #{item['seq']} at {clock(item['offset_s'])} ({quoted}): {why}, "
                "and what result would have changed your mind?",
                "events": [item["seq"]],
            }
        )
    return probes


def decoy_trail(
    decoy: dict[str, Any], timeline: Sequence[dict[str, Any]], seen: SeenIndex
) -> list[dict[str, Any]]:
    """The events that showed or queried any of a decoy's evidence, oldest first."""
    return [
        item
        for item in timeline
        if any(strengths.looked_at(e, item, seen) for e in decoy.get("evidence", []))
    ]


def _ruled_out(
    timeline: Sequence[dict[str, Any]], decoys: Sequence[dict[str, Any]], clock: Clock
) -> list[dict[str, Any]]:
    probes = []
    for decoy in decoys:
        seqs = decoy.get("looked_at", [])
        if not seqs:
            continue
        first = next(i for i in timeline if i["seq"] == seqs[0])
        probes.append(
            {
                "kind": "ruled_out",
                "text": f"{decoy.get('title', decoy.get('decoy_id', 'A change'))}: you looked at "
                f"it from {clock(first['offset_s'])} ({_events(len(seqs))}). How did you rule it "
                "out as the cause?",
                "events": seqs,
            }
        )
    changelog = [i["seq"] for i in timeline if i["kind"] == "changelog"]
    if changelog:
        first = next(i for i in timeline if i["seq"] == changelog[0])
        probes.append(
            {
                "kind": "ruled_out",
                "text": f"You read the changelog at {clock(first['offset_s'])}: which of its "
                "changes did you set aside, and how?",
                "events": changelog,
            }
        )
    return probes


def _unbacked(claims: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "kind": "unbacked_claim",
            "text": f"You wrote “{c['text']}”: where did you see {c['value']}?",
            "events": [],
        }
        for c in claims
        if not c["backed_by"]
    ]


def _events(n: int) -> str:
    return f"{n} event" if n == 1 else f"{n} events"


def _short(column: str) -> str:
    """`schema.table.column` as `table.column`: enough to read in a question."""
    return column.split(".", 1)[-1] if column.count(".") >= 2 else column


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
