"""Where a candidate's request came from, decided by the gateway: the workspace's own pages in a
browser, or any other client (a script, a terminal, an assistant). And whether it was in flight
together with another of the session's requests. Both ride along on every recorded event; the
review shows them as signals, never verdicts.

A workspace page rendered for a browser signed in by the session cookie embeds a page token: the
page instance's id, bound to the session and signed with a key only the gateway holds. The pages'
shared fetch wrapper (`web/static/app.js`) sends it back in `PAGE_HEADER`. The user agent says
nothing here: any client can name any browser.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from starlette.types import ASGIApp, Receive, Scope, Send

PAGE_HEADER = "x-sandbox-page"
USER_AGENT_MAX = 200
Client = Literal["workspace", "api"]
# The proxied third-party UIs the workspace links to. Their own pages and scripts cannot be taught
# to send the page header, so a browser signed in by the cookie counts as the workspace there.
EMBEDDED_UIS = ("/services/mlflow/", "/services/prometheus/")
# The SQL console page sends one statement at a time (`web/static/sql.js`).
SQL_RUN = ("POST", "/api/sql")


class PageTokens:
    """Page tokens: `session.page.signature`, signed with a key derived from `secret` (the stack's
    operator token, so a restarted gateway still knows the pages it served)."""

    def __init__(self, secret: str) -> None:
        self._key = hmac.new(secret.encode(), b"workspace page tokens", hashlib.sha256).digest()

    def _sign(self, session_id: str, page_id: str) -> str:
        mac = hmac.new(self._key, f"{session_id}.{page_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def mint(self, session_id: str) -> tuple[str, str]:
        """A new page instance of the session: its id and its token."""
        page_id = secrets.token_hex(8)
        return page_id, f"{session_id}.{page_id}.{self._sign(session_id, page_id)}"

    def page_of(self, token: str | None, session_id: str) -> str | None:
        """The page instance id a token names, if it is a valid one of this session."""
        if not token or len(token) > 200:
            return None
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != session_id:
            return None
        if not hmac.compare_digest(parts[2], self._sign(session_id, parts[1])):
            return None
        return parts[1]


@dataclass(frozen=True)
class Provenance:
    client: Client
    page_id: str | None
    user_agent: str


def provenance(
    tokens: PageTokens,
    session_id: str,
    *,
    method: str,
    path: str,
    headers: Any,
    by_cookie: bool,
) -> Provenance:
    """Where a request of the session came from.

    The workspace: a request carrying a valid page token of the session; or, for a browser signed
    in by the session cookie (never a Bearer or `?token=` request), what its pages make it ask for
    without the fetch wrapper: the page loads themselves and reports opened from a page (a GET
    for a document: `Accept: text/html`), and the requests of the proxied MLflow and Prometheus
    UIs (EMBEDDED_UIS). The cookie is SameSite=Lax: other sites' pages cannot make the browser
    send it along with their requests. Static files and plotly need no sign-in and are not
    recorded. Anything else is "api".

    A client that copies the browser's cookie and headers passes for it: no server-side rule
    tells the two apart. What it sends next (SQL that was never typed) still shows."""
    user_agent = str(headers.get("user-agent", ""))[:USER_AGENT_MAX]
    page_id = tokens.page_of(headers.get(PAGE_HEADER), session_id)
    if page_id is not None:
        return Provenance("workspace", page_id, user_agent)
    if by_cookie:
        document = method == "GET" and "text/html" in headers.get("accept", "")
        if document or path.startswith(EMBEDDED_UIS):
            return Provenance("workspace", None, user_agent)
    return Provenance("api", None, user_agent)


@dataclass
class Flight:
    """One request of a session, from when the gateway got it until its answer was sent."""

    started: float
    session_id: str | None = None
    client: Client = "api"
    page_id: str | None = None
    sql_run: bool = False
    ended: float | None = None


def overlap_counts(a: Flight, b: Flight) -> bool:
    """Whether two requests in flight at once count as overlapping.

    A person's browser sends several requests at once all the time: a dashboard loads its panels
    together, every page polls the clock, a page still drawing is left for the next, two tabs
    may be open. None of that counts: two workspace requests never overlap each other. Except two
    SQL runs of one page instance: the SQL console sends one statement at a time, so a second one
    while the first runs did not come from the page.

    A request from outside the workspace overlapping any other request of its session counts: a
    script sending its queries concurrently always shows."""
    if a.client == "workspace" and b.client == "workspace":
        return a.sql_run and b.sql_run and a.page_id is not None and a.page_id == b.page_id
    return True


class Flights:
    """The requests of every session in flight now, and those that ended lately: enough to tell,
    when a request's event is recorded, whether another of its session's requests was in flight
    at the same time."""

    # An ended request is kept this long: the longest request the gateway serves (a drift
    # report's first render) is shorter.
    KEPT_S = 300.0
    # And at most this many per session: a flood of requests is overlapping whichever are kept.
    KEPT_MAX = 500

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._flights: dict[int, Flight] = {}
        self._by_session: dict[str, list[int]] = {}

    def begin(self) -> int:
        with self._lock:
            flight_id = next(self._ids)
            self._flights[flight_id] = Flight(time.monotonic())
        return flight_id

    def identify(
        self, flight_id: int, session_id: str, where: Provenance, method: str, path: str
    ) -> None:
        """Name the session and origin of a request in flight (once it is authenticated)."""
        with self._lock:
            flight = self._flights.get(flight_id)
            if flight is None or flight.session_id is not None:
                return
            flight.session_id = session_id
            flight.client = where.client
            flight.page_id = where.page_id
            flight.sql_run = (method, path) == SQL_RUN
            self._by_session.setdefault(session_id, []).append(flight_id)

    def end(self, flight_id: int) -> None:
        with self._lock:
            flight = self._flights.get(flight_id)
            if flight is None:
                return
            flight.ended = time.monotonic()
            if flight.session_id is None:  # never authenticated as a candidate: nothing to keep
                del self._flights[flight_id]
                return
            self._prune(flight.session_id, flight.ended)

    def _prune(self, session_id: str, now: float) -> None:
        ids = self._by_session[session_id]
        kept = [
            i for i in ids if (ended := self._flights[i].ended) is None or now - ended < self.KEPT_S
        ][-self.KEPT_MAX :]
        for gone in set(ids) - set(kept):
            del self._flights[gone]
        self._by_session[session_id] = kept

    def overlapped(self, flight_id: int) -> bool:
        """Whether another request of the same session was in flight at some moment between this
        one's start and now, and the two count as overlapping (`overlap_counts`). Of two
        overlapping requests, the one recorded later always sees the other."""
        with self._lock:
            flight = self._flights.get(flight_id)
            if flight is None or flight.session_id is None:
                return False
            for other_id in self._by_session.get(flight.session_id, []):
                other = self._flights[other_id]
                if other_id == flight_id:
                    continue
                ended_after_we_began = other.ended is None or other.ended > flight.started
                if ended_after_we_began and overlap_counts(flight, other):
                    return True
        return False


class FlightMiddleware:
    """Times every request from its arrival until its answer is sent (a streamed answer
    included); the route's authentication names the session (`Flights.identify`)."""

    STATE_KEY = "flight"

    def __init__(self, app: ASGIApp, flights: Flights) -> None:
        self.app = app
        self.flights = flights

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        flight_id = self.flights.begin()
        scope.setdefault("state", {})[self.STATE_KEY] = flight_id
        try:
            await self.app(scope, receive, send)
        finally:
            self.flights.end(flight_id)
