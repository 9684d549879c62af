"""Whose call a live service is answering: a candidate session's, or production's.

The gateway names the session on every call it proxies (`SESSION_HEADER`); the traffic replay
sends none, so its calls are production's. A session's call is its own: every row and log line it
produces carries the session (`session_id`), and the gateway shows such rows to that session only
and keeps them out of the shared metric series. The services' own Prometheus series count
production's calls only, for the same reason: no session's calls may move what another sees.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox.services.common import SESSION_HEADER

# Session ids are short tokens; anything else is not from the gateway and never reaches a row.
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HEADER = SESSION_HEADER.encode()
_STATE_KEY = "session_id"


class BadSession(ValueError):
    """A session header the gateway would never send."""


def parse(scope: Scope) -> str | None:
    """The session a request's header names; None without one. Raises BadSession."""
    values = [value for name, value in scope.get("headers", ()) if name.lower() == _HEADER]
    if not values:
        return None
    if len(values) > 1:
        raise BadSession(f"{SESSION_HEADER}: one value only")
    value = values[0].decode("latin-1")
    if not SESSION_ID.fullmatch(value):
        raise BadSession(f"{SESSION_HEADER}: 1 to 64 letters, digits, '-' or '_'")
    return value


def session_of(scope: Scope) -> str | None:
    """The session whose call this is (as `SessionCalls` found it); None for production."""
    return scope.get("state", {}).get(_STATE_KEY)


class SessionCalls:
    """Pure ASGI middleware: reads the session header once, refusing a bad one with 400, and
    leaves the session where handlers and inner middleware find it (`session_of`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                session = parse(scope)
            except BadSession as err:
                await JSONResponse({"detail": str(err)}, status_code=400)(scope, receive, send)
                return
            scope.setdefault("state", {})[_STATE_KEY] = session
        await self.app(scope, receive, send)


def marked(record: dict[str, Any], session_id: str | None) -> dict[str, Any]:
    """A spool record, carrying the session when a session's call produced it."""
    return record if session_id is None else {**record, "session_id": session_id}
