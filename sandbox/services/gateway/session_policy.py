"""Which sessions may share a stack. Actions from the ops console change the live stack every
session reads, so a session with actions on is its stack's only session."""

from __future__ import annotations

from collections.abc import Callable

from sandbox.review.store import ENDED, Session


def conflict(
    existing: list[Session], actions: bool, state: Callable[[Session], str] | None = None
) -> str | None:
    """Why a new session (with `actions` on or off) may not join a stack holding `existing`
    sessions (`state`: each one's, such as "revoked"), or None."""
    acting = [s for s in existing if s.actions]
    if acting:
        over = state(acting[0]) if state is not None else None
        if over in ENDED:
            return (
                f"session {acting[0].id} on this stack had actions on ({over} since): what it "
                "changed stays in the live stack, and a new session here would see it: start "
                "another stack for a new session (sandbox up)"
            )
        return (
            f"session {acting[0].id} on this stack has actions on, and what it changes every "
            "session here would see: start another stack for a new session (sandbox up)"
        )
    if actions and existing:
        return (
            f"this stack already has {len(existing)} session(s); a session with actions on must "
            "be the only one on its stack: start another stack for it (sandbox up)"
        )
    return None
