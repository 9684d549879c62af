"""Which sessions may share a stack. Actions from the ops console change the live stack every
session reads, so a session with actions on is its stack's only session."""

from __future__ import annotations

from sandbox.review.store import Session


def conflict(existing: list[Session], actions: bool) -> str | None:
    """Why a new session (with `actions` on or off) may not join a stack holding `existing`
    sessions, or None."""
    acting = [s.id for s in existing if s.actions]
    if acting:
        return (
            f"session {acting[0]} on this stack has actions on, and what it changes every "
            "session here would see: start another stack for a new session (sandbox up)"
        )
    if actions and existing:
        return (
            f"this stack already has {len(existing)} session(s); a session with actions on must "
            "be the only one on its stack: start another stack for it (sandbox up)"
        )
    return None
