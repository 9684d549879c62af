"""The gateway: the one door to the stack. Auth, the SQL API, the reverse proxy to the services
and the MLflow UI, the health of the whole stack, and the history of everything a candidate does.

Run as `python -m sandbox.services.gateway --world DIR --port P`; it reads the other services'
addresses from `DIR/run/stack.json`, written by the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from sandbox.services import stack
from sandbox.services.common import ServiceContext
from sandbox.services.gateway import builder, interviewer, pages, workspace
from sandbox.services.gateway.auth import Auth
from sandbox.services.gateway.console import QueryRefused
from sandbox.services.gateway.console_pool import ConsoleBusy, ConsolePool
from sandbox.services.gateway.sessions import SessionStore
from sandbox.services.gateway.state import Gateway, shown_rows
from sandbox.services.gateway.telemetry import QUERY_TIME_LIMIT_S

HEALTH_TIMEOUT_S = 2.0
# The MLflow UI is for reading: it searches with POST, everything else that writes is refused.
MLFLOW_POST_ALLOWED = ("/search", "/get", "/list")
# Prometheus's UI runs its queries with POST; nothing else of it may be posted to.
PROMETHEUS_POST_ALLOWED = ("api/v1/query", "api/v1/query_range", "api/v1/series", "api/v1/labels")
# Not passed through the proxy either way. The body is streamed as it came (maybe compressed), so
# its content-encoding stays with it.
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "host",
    "content-length",
    "authorization",
    "cookie",
}


class SqlRequest(BaseModel):
    sql: str = Field(min_length=1, max_length=100_000)


def create_app(
    world: Path,
    services: dict[str, stack.ServiceAddress] | None = None,
    query_time_limit_s: float = QUERY_TIME_LIMIT_S,
) -> FastAPI:
    ctx = ServiceContext(world, "gateway")
    answer_key = json.loads(ctx.paths.answer_key.read_text())
    pool = ConsolePool(world, query_time_limit_s)
    sessions = SessionStore(ctx.paths.interviewer, answer_key)
    admin_token = stack.admin_token(ctx.paths)
    addresses = services if services is not None else stack.read_addresses(ctx.paths.run)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0))
        await pool.start()
        yield
        pool.close()
        await app.state.http.aclose()
        sessions.close()

    # The API description names the interviewer's routes: only the operator gets it.
    app = FastAPI(
        title="ML Incident Sandbox",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.console = pool
    app.state.sessions = sessions
    app.state.admin_token = admin_token
    app.state.gateway = gw = Gateway(ctx, pool, sessions, addresses, answer_key)
    record = gw.record
    app.include_router(workspace.router)
    app.include_router(interviewer.router)
    app.include_router(builder.router)
    pages.install(app)

    @app.get("/-/health")
    async def health(request: Request) -> JSONResponse:
        client: httpx.AsyncClient = request.app.state.http

        async def probe(address: stack.ServiceAddress) -> str:
            try:
                r = await client.get(address.url + address.health, timeout=HEALTH_TIMEOUT_S)
                return "ok" if r.status_code == 200 else f"http {r.status_code}"
            except httpx.HTTPError as exc:
                return f"unreachable ({type(exc).__name__})"

        names = list(addresses)
        results = await asyncio.gather(*(probe(addresses[n]) for n in names))
        console_status = pool.status()
        status = {
            "gateway": "ok",
            "console": "saturated" if console_status["saturated"] else "ok",
            **dict(zip(names, results, strict=True)),
        }
        healthy = all(v == "ok" for v in status.values())
        return JSONResponse(
            {
                "status": "ok" if healthy else "degraded",
                "services": status,
                "console": console_status,
                "sim_now": ctx.now().isoformat(),
            },
            status_code=200 if healthy else 503,
        )

    @app.post("/api/sql")
    async def sql(body: SqlRequest, who: Auth) -> JSONResponse:
        detail: dict[str, Any] = {"sql": body.sql}
        try:
            result = await gw.query(who, body.sql)
        except ConsoleBusy as exc:
            detail["error"] = str(exc)
            await run_in_threadpool(record, who, "sql", detail)
            return JSONResponse({"error": str(exc)}, status_code=429)
        except QueryRefused as exc:
            detail["error"] = str(exc).splitlines()[0]
            await run_in_threadpool(record, who, "sql", detail)
            return JSONResponse({"error": str(exc)}, status_code=400)
        detail.update(
            rows=len(result.rows),
            elapsed_ms=result.elapsed_ms,
            tables=result.tables,
            columns=result.columns_read,
        )
        await run_in_threadpool(record, who, "sql", detail, shown_rows(result))
        return JSONResponse(
            {
                "columns": result.columns,
                "rows": result.rows,
                "truncated": result.truncated,
                "elapsed_ms": result.elapsed_ms,
            }
        )

    async def proxy(name: str, path: str, request: Request, who: Auth) -> Response:
        if name == "mlflow" and request.method != "GET" and not path.endswith(MLFLOW_POST_ALLOWED):
            raise HTTPException(405, "the model registry is read-only here")
        if (
            name == "prometheus"
            and request.method != "GET"
            and not (request.method == "POST" and path in PROMETHEUS_POST_ALLOWED)
        ):
            raise HTTPException(405, "Prometheus is read-only here")
        address = addresses.get(stack.PROXIED.get(name, ""))
        if address is None:
            raise HTTPException(404, f"no service {name}; try {', '.join(stack.PROXIED)}")
        upstream = address.url + (f"/services/mlflow/{path}" if name == "mlflow" else f"/{path}")
        body = await request.body()
        client: httpx.AsyncClient = request.app.state.http
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        try:
            reply = await client.send(
                client.build_request(
                    request.method, upstream, params=params, headers=headers, content=body
                ),
                stream=True,
            )
        except httpx.HTTPError:
            await run_in_threadpool(
                record,
                who,
                "service",
                {"service": name, "method": request.method, "path": path, "status": 502},
            )
            raise HTTPException(
                502, f"the {name} service is not answering; it may be restarting"
            ) from None
        if name != "mlflow" or request.method != "GET" or "ajax-api" in path:
            detail: dict[str, Any] = {
                "service": name,
                "method": request.method,
                "path": path,
                "status": reply.status_code,
            }
            if body and len(body) < 10_000:
                detail["body"] = body.decode(errors="replace")
            await run_in_threadpool(record, who, "service", detail)
        kept = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_HEADERS}
        return _streamed(reply, kept)

    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):  # one operation id each
        app.add_api_route(
            "/services/{name}/{path:path}",
            proxy,
            methods=[method],
            operation_id=f"proxy_{method.lower()}",
        )
    return app


def _streamed(reply: httpx.Response, headers: dict[str, str]) -> Response:
    return StreamingResponse(
        reply.aiter_raw(),
        status_code=reply.status_code,
        headers=headers,
        background=BackgroundTask(reply.aclose),
    )


def main() -> None:
    from sandbox.services.common import serve, service_args

    args = service_args("The gateway of the running stack.")
    serve(create_app(args.world), args.host, args.port)


if __name__ == "__main__":
    main()
