"""The reverse proxy behind `/services/{name}/...`: what a caller may reach of each service, and how
a request is passed on.

Each service is reached only through an allowlist of (method, path) pairs, and MLflow and
Prometheus only for reading. The path is judged as the client sent it (the ASGI `raw_path`): an
encoded `?`, `#`, `/`, `\\`, `;`, `.`, `%` or control character, and any dot segment, is refused,
so no path can mean one thing here and another upstream. The upstream URL is built from the parsed
segments and the original query string, never by joining strings. Every refusal is recorded in the
candidate's history with its reason: probing shows in the review.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote_plus, unquote_to_bytes, urlencode

import httpx
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from sandbox.actions import deployment
from sandbox.services import stack
from sandbox.services.common import SESSION_HEADER
from sandbox.services.gateway.auth import Auth, Caller
from sandbox.services.gateway.on_demand import NotStarted
from sandbox.services.gateway.provenance import PAGE_HEADER
from sandbox.services.gateway.state import Gateway

router = APIRouter()

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
RECORDED_BODY_MAX = 10_000
# Not passed through either way. A client's session header and forwarding headers would let it
# speak for another session or another address; the workspace page's token is the gateway's.
HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "host",
        "content-length",
        "authorization",
        "cookie",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        SESSION_HEADER,
        PAGE_HEADER,
    }
)
# What a path may hold as sent: unreserved characters, escapes, and the sub-delimiters no server
# here reads specially (`;` is a path parameter to some).
RAW_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/%]*")
ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# Bytes a path may not carry encoded: each would mean something else once decoded upstream.
ENCODED_REFUSED = {ord(c): c for c in "?#/\\;%."} | {b: f"\\x{b:02x}" for b in [*range(32), 127]}
# Codings the gateway can undo for a client that does not accept them: those httpx decodes without
# extra packages, and the only ones it asks upstream for.
DECODABLE = frozenset({"gzip", "deflate"})


class Refused(Exception):
    """A proxied request the gateway will not pass on: its status, the reason the history keeps,
    and the message the caller reads. A quiet one is not recorded."""

    def __init__(self, status: int, reason: str, message: str, quiet: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.quiet = quiet


@dataclass(frozen=True)
class Rule:
    """Methods allowed on a path pattern: `*` is one segment, a final `**` one or more."""

    methods: frozenset[str]
    pattern: tuple[str, ...]

    def matches(self, method: str, segments: tuple[str, ...]) -> bool:
        return method in self.methods and self.covers(segments)

    def covers(self, segments: tuple[str, ...]) -> bool:
        pattern = self.pattern
        if pattern[-1] == "**":
            pattern = pattern[:-1]
            if len(segments) <= len(pattern):
                return False
            segments = segments[: len(pattern)]
        return len(pattern) == len(segments) and all(
            p == s or (p == "*" and s) for p, s in zip(pattern, segments, strict=True)
        )


def rules(methods: str, paths: tuple[str, ...], prefixes: tuple[str, ...] = ("",)) -> list[Rule]:
    """`methods` (space-separated) on each path under each prefix."""
    allowed = frozenset(methods.split())
    return [
        Rule(allowed, tuple("/".join(p for p in (prefix, path) if p).split("/")))
        for prefix in prefixes
        for path in paths
    ]


@dataclass(frozen=True)
class Service:
    name: str  # as in /services/NAME/ (stack.PROXIED)
    upstream_prefix: str  # where the service serves what /services/NAME/ reaches
    allowed: tuple[Rule, ...]
    hint: str  # what the service takes, for a refused caller
    # The refusal reason of anything but a read, for a service that is read-only here.
    write_reason: str | None = None
    # What a UI asks for on its own and is refused without a record: it says nothing of the
    # candidate, and would read as probing in the review.
    quiet: tuple[Rule, ...] = ()

    def check(self, method: str, segments: tuple[str, ...]) -> None:
        """Returns if the request is allowed; raises Refused otherwise."""
        if any(r.matches(method, segments) for r in self.allowed):
            return
        if any(r.matches(method, segments) for r in self.quiet):
            raise Refused(404, "not served", f"{self.name} does not serve this here", quiet=True)
        if self.write_reason and method != "GET":
            raise Refused(405, self.write_reason, self.hint)
        if any(r.covers(segments) for r in self.allowed):
            raise Refused(405, "method not allowed", f"not with {method}: {self.hint}")
        raise Refused(404, "not served", f"{self.name} does not serve this here: {self.hint}")


MLFLOW_V2 = ("api/2.0/mlflow", "ajax-api/2.0/mlflow")
MLFLOW_V3 = ("api/3.0/mlflow", "ajax-api/3.0/mlflow")
# The reads of the MLflow UI (3.x: experiments, runs, logged models, the registry, its empty
# traces tab) and of the workspace's Models page. MLflow searches some of them with POST.
MLFLOW = Service(
    "mlflow",
    "/services/mlflow",  # the UI's static prefix (topology.MLFLOW_PREFIX): its links carry it
    (
        *rules(
            "GET",
            (
                "",
                "health",
                "version",
                "static-files/**",
                "get-artifact",
                "model-versions/get-artifact",
                "api/2.0/mlflow-artifacts/artifacts/**",
                "ajax-api/2.0/mlflow-artifacts/artifacts/**",
                "ajax-api/2.0/mlflow/get-trace-artifact",
                "ajax-api/3.0/mlflow/get-trace-artifact",
            ),
        ),
        *rules(
            "GET",
            (
                "experiments/get",
                "experiments/get-by-name",
                "experiments/search",
                "runs/get",
                "metrics/get-history",
                "metrics/get-history-bulk",
                "metrics/get-history-bulk-interval",
                "artifacts/list",
                "registered-models/get",
                "registered-models/search",
                "registered-models/get-latest-versions",
                "registered-models/alias",
                "model-versions/get",
                "model-versions/search",
                "model-versions/get-download-uri",
                "logged-models/*",
                "logged-models/*/artifacts/directories",
                "logged-models/*/artifacts/files",
            ),
            MLFLOW_V2,
        ),
        *rules(
            "POST",
            (
                "runs/search",
                "experiments/search",
                "experiments/search-datasets",
                "logged-models/search",
                "registered-models/get-latest-versions",
            ),
            MLFLOW_V2,
        ),
        *rules("GET", ("server-info", "traces/get"), MLFLOW_V3),
        *rules(
            "POST",
            ("traces/search", "traces/metrics", "traces/batchGetInfos", "datasets/search"),
            MLFLOW_V3,
        ),
        # The UI's run pages query with GraphQL; MLflow's schema has no mutation but searches.
        *rules("POST", ("graphql",)),
    ),
    "the model registry is read-only here: only its reads and searches pass",
    write_reason="registry write",
    quiet=(
        *rules("GET", ("users/current", "gateway-proxy"), MLFLOW_V2),
        *rules("GET", ("assistant/config", "assistant/providers"), MLFLOW_V3),
        *rules("GET POST", ("ui-telemetry",), MLFLOW_V3),
    ),
)
PROMETHEUS_READS = (
    "query",
    "query_range",
    "query_exemplars",
    "series",
    "labels",
    "format_query",
)
PROMETHEUS = Service(
    "prometheus",
    "",
    (
        *rules(
            "GET",
            (
                "",
                "graph",
                "-/ready",
                "-/healthy",
                "classic",
                "classic/**",
                "api/v1/label/*/values",
                "api/v1/metadata",
                "api/v1/targets",
                "api/v1/targets/metadata",
                "api/v1/scrape_pools",
                "api/v1/rules",
                "api/v1/alerts",
                "api/v1/alertmanagers",
                "api/v1/status/*",
            ),
        ),
        *rules("GET POST", PROMETHEUS_READS, ("api/v1",)),
    ),
    "Prometheus is read-only here: only its query API passes",
    write_reason="prometheus write",
)
MODEL = Service(
    "model",
    "",
    (
        *rules("POST", ("predict", "predict/batch")),
        *rules("GET", ("metadata", "metrics", "health")),
    ),
    "the model server takes POST /predict and /predict/batch, GET /metadata and /metrics",
)
RETRIEVAL = Service(
    "retrieval",
    "",
    (
        *rules("POST", ("search", "feedback")),
        *rules("GET", ("metadata", "metrics", "health")),
    ),
    "the retrieval service takes POST /search and /feedback, GET /metadata and /metrics",
)
SERVICES = {s.name: s for s in (MLFLOW, PROMETHEUS, MODEL, RETRIEVAL)}
# The services whose rows belong to the calling session: they are told whose call it is.
SESSION_AWARE = frozenset({"model", "retrieval"})


def path_segments(raw: bytes) -> tuple[str, ...]:
    """The decoded segments of a path as sent (what follows `/services/NAME/`); raises Refused
    for anything that could be read two ways."""
    text = raw.decode("latin-1")
    if not RAW_PATH.fullmatch(text):
        bad = next(c for c in text if not RAW_PATH.fullmatch(c))
        raise Refused(400, "bad character", f"refused: the path holds {bad!r}")
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise Refused(400, "encoded path", "refused: the path holds a '%' that encodes nothing")
    for code in ESCAPE.findall(text):
        byte = int(code, 16)
        if byte in ENCODED_REFUSED:
            shown = ENCODED_REFUSED[byte]
            raise Refused(400, "encoded path", f"refused: the path encodes {shown!r} (%{code})")
    try:
        segments = tuple(unquote_to_bytes(s).decode() for s in text.split("/"))
    except UnicodeDecodeError:
        raise Refused(
            400, "encoded path", "refused: the path encodes bytes that are not UTF-8"
        ) from None
    if any(s in (".", "..") for s in segments):
        raise Refused(400, "dot segment", "refused: the path holds a '.' or '..' segment")
    if "" in segments[:-1]:
        raise Refused(400, "empty segment", "refused: the path holds an empty segment ('//')")
    return segments


def query_without_token(raw: bytes) -> bytes:
    """The query string as sent, less the session link's `token` (the gateway's, not theirs)."""
    kept = [
        pair
        for pair in raw.split(b"&")
        if pair and unquote_plus(pair.split(b"=", 1)[0].decode("latin-1")) != "token"
    ]
    return b"&".join(kept)


def accepts(accept_encoding: str | None, coding: str) -> bool:
    """Whether a client's Accept-Encoding takes `coding` (RFC 9110: q=0 refuses, `*` stands for
    any coding not named)."""
    weights: dict[str, float] = {}
    for item in (accept_encoding or "").split(","):
        name, _, params = item.partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name.strip():
            weights[name.strip().lower()] = q
    weight = weights.get(coding.lower(), weights.get("*", 0.0))
    return weight > 0


def upstream_url(
    address: stack.ServiceAddress, service: Service, segments: tuple[str, ...], query: bytes
) -> httpx.URL:
    """Built from parts: httpx encodes the path itself, so no segment can reach into the query,
    the fragment or the segment next to it."""
    path = f"{service.upstream_prefix}/{'/'.join(segments)}"
    try:
        return httpx.URL(address.url).copy_with(path=path, **({"query": query} if query else {}))
    except (httpx.InvalidURL, UnicodeDecodeError):
        raise Refused(400, "bad query", "refused: the query string is not a valid one") from None


def _raw_path(request: Request) -> bytes:
    """The path as sent. A server that gives no raw path gets the decoded one checked instead,
    where a decoded `?` or `#` is refused as a bad character."""
    return request.scope.get("raw_path") or request.scope["path"].encode()


def _resolve(
    gw: Gateway, name: str, method: str, request: Request
) -> tuple[tuple[str, ...], httpx.URL]:
    """The path's segments and where they go upstream; raises Refused."""
    service = SERVICES.get(name)
    if service is None:
        raise Refused(404, "unknown service", f"no service {name}; try {', '.join(SERVICES)}")
    prefix = f"/services/{name}/".encode()
    raw = _raw_path(request)
    if not raw.startswith(prefix):
        raise Refused(400, "encoded path", "refused: the service name is encoded")
    segments = path_segments(raw[len(prefix) :])
    service.check(method, segments)
    address = gw.addresses.get(stack.PROXIED[name])
    if address is None:
        raise Refused(404, "not running", f"{name} is not running in this stack")
    query = query_without_token(request.scope.get("query_string", b""))
    return segments, upstream_url(address, service, segments, query)


# The registry's answers that name aliases: an alias moved from the ops console shows in them.
REGISTRY_READS = frozenset(
    {
        ("registered-models", "get"),
        ("registered-models", "search"),
        ("registered-models", "get-latest-versions"),
        ("registered-models", "alias"),
        ("model-versions", "get"),
        ("model-versions", "search"),
    }
)


async def _moved_aliases(gw: Gateway, name: str, segments: tuple[str, ...]) -> dict[str, str]:
    """The churn model's aliases moved from the ops console and in effect now, for a registry
    read (else none). The world's `mlflow.db` is never written: the registry is read-only to the
    candidate (the proxy passes only reads), and the stack's changes live in its overrides file,
    so they are laid over the registry's answers here, where every reader of the registry
    through the gateway (the Models page, the MLflow UI, a script) sees the same."""
    if name != "mlflow" or len(segments) != 5 or segments[:3] not in MLFLOW_REGISTRY:
        return {}
    if segments[3:] not in REGISTRY_READS or not gw.overrides.entries():
        return {}
    return await run_in_threadpool(gw.moved_aliases, gw.ctx.now())


MLFLOW_REGISTRY = frozenset({("api", "2.0", "mlflow"), ("ajax-api", "2.0", "mlflow")})


def _alias_target(url: httpx.URL, segments: tuple[str, ...], moved: dict[str, str]) -> httpx.URL:
    """`registered-models/alias` for a moved alias asks for the version it names now."""
    query = parse_qs(url.query.decode())
    name, alias = query.get("name", [""])[0], query.get("alias", [""])[0]
    if name != deployment.MODEL or alias not in moved:
        return url
    path = "/".join([*url.path.split("/")[:-2], "model-versions", "get"])
    return url.copy_with(
        path=path, query=urlencode({"name": name, "version": moved[alias]}).encode()
    )


async def _overlaid(reply: httpx.Response, moved: dict[str, str]) -> Response:
    """The registry's JSON answer with the moved aliases."""
    try:
        await reply.aread()
    finally:
        await reply.aclose()
    try:
        body = json.loads(reply.content)
    except ValueError:
        return Response(
            reply.content, reply.status_code, media_type=reply.headers.get("content-type")
        )
    return JSONResponse(deployment.overlay_reply(body, moved), status_code=reply.status_code)


async def proxy(name: str, path: str, request: Request, who: Auth) -> Response:
    """`path` is FastAPI's decoded view, kept for the API description; the raw one is judged."""
    gw: Gateway = request.app.state.gateway
    method = request.method
    body = await request.body()
    try:
        segments, url = _resolve(gw, name, method, request)
    except Refused as refused:
        if not refused.quiet:
            # As sent, so that the review sees the trick that was tried.
            sent = _raw_path(request).decode("latin-1").removeprefix(f"/services/{name}/")
            detail = _detail(name, method, sent, refused.status, body)
            detail["refused"] = refused.reason
            await run_in_threadpool(gw.record, who, "service", detail)
        raise HTTPException(refused.status, refused.message) from None
    client: httpx.AsyncClient = request.app.state.http
    address = gw.addresses[stack.PROXIED[name]]
    if address.on_demand:
        try:
            await gw.on_demand.ensure(stack.PROXIED[name], address, client)
        except NotStarted as exc:
            detail = _detail(name, method, "/".join(segments), 503, b"")
            await run_in_threadpool(gw.record, who, "service", detail)
            raise HTTPException(503, f"{exc}; try again in a minute") from None
    headers = _headers(request, name, who)
    moved = await _moved_aliases(gw, name, segments)
    if moved and segments[3:] == ("registered-models", "alias"):
        url = _alias_target(url, segments, moved)
    try:
        reply = await client.send(
            client.build_request(method, url, headers=headers, content=body), stream=True
        )
    except httpx.HTTPError:
        detail = _detail(name, method, "/".join(segments), 502, b"")
        await run_in_threadpool(gw.record, who, "service", detail)
        raise HTTPException(
            502, f"the {name} service is not answering; it may be restarting"
        ) from None
    # The MLflow UI's own pages and assets are not the candidate's doing; its API calls are.
    if name != "mlflow" or method != "GET" or segments[0] in ("api", "ajax-api"):
        detail = _detail(name, method, "/".join(segments), reply.status_code, body)
        try:
            await run_in_threadpool(gw.record, who, "service", detail)
        except Exception:  # a full history refuses the answer: the upstream reply is let go
            await reply.aclose()
            raise
    if moved and reply.status_code == 200:
        return await _overlaid(reply, moved)
    return _streamed(reply, request.headers.get("accept-encoding"))


def _detail(name: str, method: str, path: str, status: int, body: bytes) -> dict[str, Any]:
    detail: dict[str, Any] = {"service": name, "method": method, "path": path, "status": status}
    if body and len(body) < RECORDED_BODY_MAX:
        detail["body"] = body.decode(errors="replace")
    return detail


def _headers(request: Request, name: str, who: Caller) -> list[tuple[str, str]]:
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_HEADERS]
    if who.is_candidate and name in SESSION_AWARE:
        headers.append((SESSION_HEADER, str(who.session_id)))
    return headers


def _streamed(reply: httpx.Response, accept_encoding: str | None) -> Response:
    """The upstream's answer as it came, or decoded when it is in a coding the client did not
    ask for (httpx asks upstream for gzip whether the client can read it or not)."""
    headers = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_HEADERS}
    codings = [c.strip().lower() for c in reply.headers.get("content-encoding", "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    undo = [c for c in codings if not accepts(accept_encoding, c)]
    if undo and set(codings) <= DECODABLE:
        headers = {k: v for k, v in headers.items() if k.lower() != "content-encoding"}
        chunks = reply.aiter_bytes()
    else:
        chunks = reply.aiter_raw()
    return StreamingResponse(
        chunks,
        status_code=reply.status_code,
        headers=headers,
        background=BackgroundTask(reply.aclose),
    )


for _method in METHODS:  # one operation id each
    router.add_api_route(
        "/services/{name}/{path:path}",
        proxy,
        methods=[_method],
        operation_id=f"proxy_{_method.lower()}",
    )
