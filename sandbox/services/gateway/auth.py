"""Who is asking: the stack's operator, or a session's candidate or interviewer.

A session link carries its token once (`?token=`); from then on an http-only cookie does. Scripts
send `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel

COOKIE = "sandbox_token"


class Caller(BaseModel):
    role: str  # candidate | interviewer | admin
    session_id: str | None = None

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
    return Caller(role=role, session_id=session.id)


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
