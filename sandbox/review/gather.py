"""What a review is made of, read from the sessions store: the session, its recorded history, its
diagnosis versions and rubric scores, with the answer key and the world it ran on. The gateway's
routes and `sandbox review` both gather it here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandbox.review import report
from sandbox.review.store import Session, SessionStore
from sandbox.world.layout import read_manifest


def describe(store: SessionStore, session: Session) -> dict[str, Any]:
    started = store.started_at(session.id)
    return {
        "id": session.id,
        "candidate": session.candidate,
        "state": store.state(session),
        "created_at": session.created_at.isoformat(timespec="seconds") + "Z",
        "started_at": started.isoformat(timespec="seconds") + "Z" if started else None,
        "time_limit_min": session.time_limit_min,
    }


def gather_review(
    store: SessionStore, answer_key: dict[str, Any], session: Session, world: Path
) -> dict[str, Any]:
    """The review of `session` from what the store recorded."""
    diagnoses = [
        {"version": d.version, "ts": d.ts.isoformat(), "fields": d.fields, "submitted": d.submitted}
        for d in store.diagnoses(session.id)
    ]
    return report.build(
        describe(store, session),
        store.history(session.id),
        diagnoses,
        answer_key,
        store.scores(session.id),
        read_manifest(world),
    )
