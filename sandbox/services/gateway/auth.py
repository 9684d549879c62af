"""Who is asking: the stack's operator, or a session's candidate or interviewer; and, for a
candidate, where the request came from (`provenance`).

A session link carries its token once (`?token=`); from then on an http-only cookie does. Scripts
send `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel

from sandbox.review.store import Session
from sandbox.services.gateway.provenance import Client, FlightMiddleware, provenance

COOKIE = "sandbox_token"


class Caller(BaseModel):
    role: str  # candidate | interviewer | admin
    session_id: str | None = None
    # A candidate's request: the workspace's pages or another client, the page instance that
    # sent it, the user agent it named, and its place among the session's requests in flight.
    client: Client | None = None
    page_id: str | None = None
    user_agent: str = ""
    flight: int | None = None

    @property
    def is_candidate(self) -> bool:
        return self.role == "candidate" and self.session_id is not None


SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def caller(request: Request) -> Caller:
    """The caller of this request (401 without a known token)."""
    token = _token(request)
    if token and request.method not in SAFE_METHODS and _from_cookie(request):
        _same_origin(request)
    if token and token == request.app.state.admin_token:
        return Caller(role="admin")
    found = request.app.state.sessions.by_token(token) if token else None
    if found is None:
        raise HTTPException(401, "sign in with your session link (or a Bearer token)")
    session, role = found
    if role == "candidate":
        state = request.app.state.sessions.state(session)
        if state == "revoked":
            raise HTTPException(401, "this session has ended")
        if state == "expired":
            raise HTTPException(
                403, "this session's time is up; everything you did until then is saved"
            )
        return _candidate(request, session)
    return Caller(role=role, session_id=session.id)


def _candidate(request: Request, session: Session) -> Caller:
    """A candidate's request with its provenance; refused (403, and recorded) when the session's
    policy admits the workspace's own pages only and it came from elsewhere."""
    gw = request.app.state.gateway
    where = provenance(
        gw.page_tokens,
        session.id,
        method=request.method,
        path=request.url.path,
        headers=request.headers,
        by_cookie=_from_cookie(request),
    )
    flight = request.scope.get("state", {}).get(FlightMiddleware.STATE_KEY)
    if flight is not None:
        gw.flights.identify(flight, session.id, where, request.method, request.url.path)
    who = Caller(
        role="candidate",
        session_id=session.id,
        client=where.client,
        page_id=where.page_id,
        user_agent=where.user_agent,
        flight=flight,
    )
    if session.workspace_only and where.client != "workspace":
        gw.refused(who, request.method, request.url.path, "workspace only")
        raise HTTPException(403, WORKSPACE_ONLY)
    return who


WORKSPACE_ONLY = (
    "this session's policy is workspace only: its tools answer the workspace's own pages in "
    "your browser, not scripts or other clients; open your session link in a browser"
)


def candidate(who: Annotated[Caller, Depends(caller)]) -> Caller:
    """Only a session's candidate (their own workspace: diagnosis, own history)."""
    if not who.is_candidate:
        raise HTTPException(403, "this is the candidate's own workspace")
    return who


Auth = Annotated[Caller, Depends(caller)]
CandidateAuth = Annotated[Caller, Depends(candidate)]


def _from_cookie(request: Request) -> bool:
    return not request.headers.get("authorization") and COOKIE in request.cookies


def _same_origin(request: Request) -> None:
    """A browser sends the cookie with requests other sites make it send; it also says where
    they come from. A change asked for by another origin is refused."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return  # not a browser's cross-site request: browsers name the origin of those
    source = urlsplit(origin)
    if (source.scheme, source.netloc) != (request.url.scheme, request.url.netloc):
        raise HTTPException(403, "cross-site request refused")


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE) or request.query_params.get("token")


def sign_in(request: Request) -> Response:
    """Trade the link's token for a cookie and drop it from the address bar."""
    token = request.query_params["token"]
    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
    target = (
        request.url.replace_query_params(**dict(rest)) if rest else request.url.replace(query="")
    )
    response = RedirectResponse(str(target), status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="lax")
    return response
