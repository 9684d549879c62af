"""The gateway: the one door to the stack. Auth, the SQL API, the reverse proxy to the services
and the MLflow UI, the health of the whole stack, and the history of everything a candidate does.

Run as `python -m sandbox.services.gateway --world DIR --port P` (`__main__`); it reads the other
services' addresses from `DIR/run/stack.json`, written by the supervisor, and its settings from
the environment (`sandbox.services.settings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from sandbox.review.store import SessionStore
from sandbox.services import limits, stack
from sandbox.services.common import ServiceContext, serve, service_args, settings_or_exit
from sandbox.services.console.pool import ConsoleBusy, ConsolePool
from sandbox.services.console.query import QueryRefused
from sandbox.services.fleet import worlds
from sandbox.services.fleet.builds import BuildQueue
from sandbox.services.fleet.stacks import Fleet
from sandbox.services.gateway import (
    actions,
    builder,
    fleet,
    interviewer,
    pages,
    proxy,
    workspace,
)
from sandbox.services.gateway.auth import Auth
from sandbox.services.gateway.composition import Composition
from sandbox.services.gateway.provenance import FlightMiddleware, PageTokens
from sandbox.services.gateway.state import Gateway, server_timing, shown_rows
from sandbox.services.settings import Settings

HEALTH_TIMEOUT_S = 2.0


class SqlRequest(BaseModel):
    sql: str = Field(min_length=1, max_length=100_000)
    # How the text reached the SQL console's editor; a client that is not the console sends none.
    composition: Composition | None = None


def create_app(
    world: Path,
    services: dict[str, stack.ServiceAddress] | None = None,
    settings: Settings | None = None,
) -> FastAPI:
    """The gateway over a built world. `services` are the other services' addresses (read from
    the run state when None); `settings` are the stack's (their defaults when None)."""
    settings = settings or Settings()
    ctx = ServiceContext(world, "gateway")
    answer_key = json.loads(ctx.paths.answer_key.read_text())
    pool = ConsolePool(world, settings)
    sessions = SessionStore(
        ctx.paths.interviewer,
        answer_key,
        max_events=settings.history_max_events,
        max_bytes=settings.history_max_bytes,
        token_lifetime=settings.token_lifetime,
    )
    admin_token = stack.admin_token(ctx.paths)
    addresses = services if services is not None else stack.read_addresses(ctx.paths.run)
    # Kept in the run directory: the builder's page and the started stacks survive a restart.
    builds = BuildQueue(
        settings.builds_at_once,
        settings.builds_kept,
        state_dir=ctx.paths.run / "builds",
        worlds_root=worlds.worlds_root(settings, world),
    )
    stacks = Fleet(ctx.paths.run / "fleet")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0))
        await pool.start()
        yield
        await run_in_threadpool(builds.close)
        await run_in_threadpool(stacks.close)
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
    limits.install(app, settings)
    app.state.console = pool
    app.state.sessions = sessions
    app.state.admin_token = admin_token
    app.state.builds = builds
    app.state.fleet = stacks
    app.state.gateway = gw = Gateway(
        ctx, pool, sessions, addresses, answer_key, settings, PageTokens(admin_token)
    )
    app.add_middleware(FlightMiddleware, flights=gw.flights)
    record = gw.record
    app.include_router(workspace.router)
    app.include_router(interviewer.router)
    app.include_router(builder.router)
    app.include_router(fleet.router)
    app.include_router(actions.router)
    pages.install(app)

    @app.get("/-/health")
    async def health(request: Request) -> JSONResponse:
        client: httpx.AsyncClient = request.app.state.http

        async def probe(name: str, address: stack.ServiceAddress) -> str:
            # Not asked for yet: its port is held for it, and a probe would wait out its timeout.
            if address.on_demand and gw.on_demand.unanswered(name) == "idle":
                return "idle"
            try:
                r = await client.get(address.url + address.health, timeout=HEALTH_TIMEOUT_S)
                return "ok" if r.status_code == 200 else f"http {r.status_code}"
            except httpx.HTTPError as exc:
                idle = address.on_demand and gw.on_demand.unanswered(name)
                return idle or f"unreachable ({type(exc).__name__})"

        names = list(addresses)
        results = await asyncio.gather(*(probe(n, addresses[n]) for n in names))
        console_status = pool.status()
        status = {
            "gateway": "ok",
            "console": "saturated" if console_status["saturated"] else "ok",
            **dict(zip(names, results, strict=True)),
        }
        # A service not yet asked for is as it should be; one asked for and not up is not.
        healthy = all(v in ("ok", "idle") for v in status.values())
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
        if body.composition is not None:
            detail["composition"] = body.composition.detail()
        try:
            result = await gw.query(who, body.sql)
        except ConsoleBusy as exc:
            detail["error"] = str(exc)
            await run_in_threadpool(record, who, "sql", detail)
            return JSONResponse({"error": str(exc)}, status_code=429)
        except QueryRefused as exc:
            detail["error"] = str(exc).splitlines()[0]
            if exc.reach:
                detail["refused"] = exc.reach
            await run_in_threadpool(record, who, "sql", detail)
            return JSONResponse({"error": str(exc)}, status_code=400)
        detail.update(
            rows=len(result.rows),
            elapsed_ms=result.elapsed_ms,
            tables=result.tables,
            columns=result.columns_read,
        )
        recording = time.perf_counter()
        await run_in_threadpool(record, who, "sql", detail, shown_rows(result))
        return JSONResponse(
            {
                "columns": result.columns,
                "rows": result.rows,
                "truncated": result.truncated,
                "elapsed_ms": result.elapsed_ms,
            },
            headers=server_timing(result, (time.perf_counter() - recording) * 1000),
        )

    app.include_router(proxy.router)
    return app


def main() -> None:
    args = service_args("The gateway of the running stack.")
    settings = settings_or_exit()
    serve(create_app(args.world, settings=settings), args.host, args.port, settings, args.fd)
