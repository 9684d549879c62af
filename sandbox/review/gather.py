"""What a review is made of, read from the sessions store: the session, its recorded history, its
diagnosis versions and rubric scores, with the answer key and the world it ran on. The gateway's
routes and `sandbox review` both gather it here; the store may be read while a stack writes it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from sandbox.layout import WorldPaths, read_manifest
from sandbox.review import fills, report, thresholds, versions
from sandbox.review.store import Session, SessionStore, StoreUnavailable, exists
from sandbox.schema import TABLES


class NoReview(LookupError):
    """There is nothing to review: no sessions were recorded, not this one, or the sessions
    cannot be read now."""


def describe(store: SessionStore, session: Session) -> dict[str, Any]:
    started = store.started_at(session.id)
    return {
        "id": session.id,
        "candidate": session.candidate,
        "state": store.state(session),
        "created_at": session.created_at.isoformat(timespec="seconds") + "Z",
        "started_at": started.isoformat(timespec="seconds") + "Z" if started else None,
        "time_limit_min": session.time_limit_min,
        # What the candidate was told: outside help allowed or not, the workspace's pages only.
        "policy": session.policy,
        "actions": session.actions,
    }


def gather_review(
    store: SessionStore, answer_key: dict[str, Any], session: Session, world: Path
) -> dict[str, Any]:
    """The review of `session` from what the store recorded, read as of one moment."""
    with store.snapshot():
        diagnoses = [
            {
                "version": d.version,
                "ts": d.ts.isoformat(),
                "fields": d.fields,
                "submitted": d.submitted,
            }
            for d in store.diagnoses(session.id)
        ]
        history = store.history(session.id)
        scores = store.scores(session.id)
    return report.build(
        describe(store, session),
        history,
        diagnoses,
        answer_key,
        scores,
        read_manifest(world),
        candidate_schema(answer_key),
        functools.partial(fills.reference, world),
        functools.partial(thresholds.reference, world),
        functools.partial(versions.reference, world),
    )


def candidate_schema(answer_key: dict[str, Any]) -> dict[str, list[str]]:
    """The names a diagnosis may claim: every candidate table's columns as the data model
    declares them, with the columns the answer key points at (a planted fault may add one). The
    same whether the gateway serves the review or `sandbox review` reads it beside or after the
    stack; the review adds the names the events read."""
    found = {name: list(table.names) for name, table in TABLES.items()}
    planted = [*answer_key.get("faults", []), *answer_key.get("decoys", [])]
    for e in (e for p in planted if isinstance(p, dict) for e in p.get("evidence", [])):
        if e.get("kind") == "table_column":
            table, _, column = str(e["ref"]).rpartition(".")
            if column not in found.setdefault(table, []):
                found[table].append(column)
    return found


def review_of(world: Path, session_id: str) -> dict[str, Any]:
    """The review of a session of the world at `world`, whether or not a stack is running on it;
    NoReview when there is no such session."""
    paths = WorldPaths(world)
    if not exists(paths.interviewer):
        raise NoReview("no sessions were recorded for this world")
    answer_key = json.loads(paths.answer_key.read_text())
    try:
        store = SessionStore(paths.interviewer, answer_key)
    except StoreUnavailable as exc:
        raise NoReview(str(exc)) from None
    try:
        session = store.get(session_id)
        if session is None:
            raise NoReview(f"no session {session_id}")
        return gather_review(store, answer_key, session, paths.root)
    finally:
        store.close()
