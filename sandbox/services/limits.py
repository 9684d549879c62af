"""Request limits every service of the stack shares, enforced before any route or auth runs: a cap
on the body (declared or streamed), a deadline for it to arrive, JSON text that must be valid
Unicode, and the HTTP protocol settings `serve` starts uvicorn with.

A candidate reaches the gateway with nothing but a link; the model server and the retrieval service
get what the gateway forwards. None of them may hold more of a request than it could need, or
answer a malformed one with a server error.
"""

from __future__ import annotations

import asyncio
import json
import re
from email.message import Message as MimeHeader
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from sandbox.services.settings import Settings

# The sizes and deadlines are the stack's settings (`sandbox.services.settings`):
# - the body cap (`max_body_bytes`, 1 MiB): the largest legitimate bodies are far below it (SQL of
#   100,000 characters, a diagnosis of five 20,000-character fields, a scenario file of 200,000
#   characters, a batch of 1,000 full feature payloads, about 600 KB); anything bigger is refused
#   unread;
# - the body deadline (`body_timeout_s`, 60 s): a body of the largest size arrives in it at
#   17 KB/s; a client trickling one in more slowly holds a connection and its buffer for nothing;
# - the header block h11 buffers before it refuses the request (`max_header_bytes`, 16 KiB, its
#   own default said out loud): browsers send a few KB, cookies included;
# - the header deadline (`header_timeout_s`, 10 s): a connection must have sent a request's
#   headers this long after it opened or after its previous response; uvicorn itself has none;
# - requests in flight at once per process (`max_concurrent_requests`, 200): with the body cap,
#   what they can buffer stays bounded; far above what a stack serves (a candidate, an
#   interviewer, the replayed traffic).

# A UTF-16 surrogate written as a JSON escape, or encoded as UTF-8 (which `json.loads` accepts).
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}|\xed[\xa0-\xbf]")
NOT_UNICODE = (
    "the request holds text that is not valid Unicode (a lone UTF-16 surrogate such as \\ud800); "
    "send UTF-8 text"
)
NOT_UTF8 = "the request body is not valid UTF-8"


class RequestLimits:
    """Pure ASGI middleware: reads the whole body before the app does, within `max_body_bytes`
    and `body_timeout_s`, and hands it on only if its JSON text is valid Unicode. A declared
    length over the cap is refused before a byte is read; a chunked body is counted as it streams
    in."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _refuse(send, 400, "Content-Length is not a number", close=True)
                return
            if int(declared) > self.max_body_bytes:
                await _refuse(send, 413, self._too_large(), close=True)
                return
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await self._read(receive)
        except TimeoutError:
            late = f"the request body did not arrive within {self.body_timeout_s:g} s"
            await _refuse(send, 408, late, close=True)
            return
        except _TooLarge:
            await _refuse(send, 413, self._too_large(), close=True)
            return
        if body is None:
            return  # the client went away: there is no one to answer
        if body and _is_json(headers.get(b"content-type")):
            problem = _unicode_problem(body)
            if problem:
                await _refuse(send, 400, problem)
                return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> str:
        return f"the request body is larger than {self.max_body_bytes // 1024} KiB"


class _TooLarge(Exception):
    pass


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body once, then the client's own messages (a disconnect, for streamed responses)."""
    pending: Message | None = {"type": "http.request", "body": body, "more_body": False}

    async def replayed() -> Message:
        nonlocal pending
        if pending is not None:
            message, pending = pending, None
            return message
        return await receive()

    return replayed


def _is_json(content_type: bytes | None) -> bool:
    """As FastAPI decides: a body without a content type is read as JSON too."""
    if not content_type:
        return True
    header = MimeHeader()
    header["content-type"] = content_type.decode("latin-1")
    subtype = header.get_content_subtype()
    return header.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def _unicode_problem(body: bytes) -> str | None:
    """Why a JSON body's text is not valid Unicode, or None. Bodies that are not JSON at all are
    left to the route, which refuses them in its own words."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        # Strict UTF-8 refuses the surrogates `json.loads` would let through.
        return NOT_UNICODE if _SURROGATE.search(body) else NOT_UTF8
    if not _SURROGATE.search(body):
        return None  # the common case, without parsing twice
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return NOT_UNICODE  # a lone surrogate; pairs (escaped emoji) encode fine
    return None


async def _refuse(send: Send, status: int, message: str, close: bool = False) -> None:
    """A JSON error shaped like FastAPI's own. A body left unread cannot be skipped on a kept-alive
    connection, so those answers close it."""
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _unencodable(request: Request, exc: Exception) -> JSONResponse:
    # Whatever the middleware did not see (a query string, a path) and still reached a route.
    return JSONResponse({"detail": NOT_UNICODE}, status_code=400)


def install(app: FastAPI, settings: Settings) -> None:
    """The request limits on one of the stack's apps. Middleware added after this one wraps it,
    so it still sees (and counts) the refusals."""
    app.add_middleware(
        RequestLimits,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
    )
    app.add_exception_handler(UnicodeEncodeError, _unencodable)


class BoundedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's header block. h11 bounds the
    block's size (httptools, uvicorn's default when installed, buffers a header of any size);
    without a deadline a client sending its headers a byte at a time holds the connection for
    good. `bounded` makes the class with a given deadline."""

    header_timeout_s: float = Settings.model_fields["header_timeout_s"].default

    @classmethod
    def bounded(cls, header_timeout_s: float) -> type[BoundedH11]:
        """This protocol with headers due within `header_timeout_s` (uvicorn takes a class)."""
        return type(cls.__name__, (cls,), {"header_timeout_s": header_timeout_s})

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._expect_request()

    def on_response_complete(self) -> None:
        self._expect_request()  # before the base class starts a pipelined request
        super().on_response_complete()

    def _expect_request(self) -> None:
        self.loop.call_later(self.header_timeout_s, self._headers_due, self.cycle)

    def _headers_due(self, previous: Any) -> None:
        if self.cycle is previous and not self.transport.is_closing():
            self.transport.close()
