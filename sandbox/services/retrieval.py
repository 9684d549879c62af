"""The live retrieval service: help-center articles suggested for a support ticket's text.

It serves what production serves: the ticket encoder behind the registry's `production` alias and
the FAISS index of help articles, with the index's build metadata. Like the simulated service, it
encodes queries with the encoder it is configured with and searches whatever index it was given.

Every search is written to the telemetry spool (the `retrieval.search_log` columns) before it is
answered; an agent's click on a suggestion arrives later through `POST /feedback`.

A rebuild of the index applied from the ops console (`rebuild-index`) is carried out here: every
help-center article is re-embedded with the encoder serving when it was requested, the new index
is kept in the run directory, and searches use it from the change's effective time (simulated);
its progress is in the service's logs, each line at its simulated time. A rollback of the service
(`rollback-deploy` with service `retrieval`) takes it back to the ticket encoder it ran before
the current one, from the change's effective time; the index stays as it is.

    python -m sandbox.services.retrieval --world DIR --port P
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import faiss
import polars as pl
from fastapi import FastAPI, HTTPException, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.actions import progress, rollback
from sandbox.actions.catalog import REBUILD_INDEX
from sandbox.actions.overrides import Applied, Overrides
from sandbox.faults.base import HookContext
from sandbox.layout import IncompleteWorld, read_manifest
from sandbox.pipeline import registry, retrieve
from sandbox.pipeline.compiled import CompiledTextEncoder
from sandbox.services import caller, limits
from sandbox.services.common import (
    HEALTH_PATH,
    ServiceContext,
    serve,
    service_args,
    settings_or_exit,
    watching,
)
from sandbox.services.settings import Settings

# The name the world's metrics, alerts and changelog use for this service.
SERVICE = "retrieval"
ENCODER_ALIAS = "production"
ENCODER_URI = f"models:/{registry.TICKET_ENCODER}@{ENCODER_ALIAS}"
MAX_TEXT = 5000
MAX_K = 20
# Clicks arrive within minutes of a search; older requests are forgotten first.
RECENT_REQUESTS = 10_000
LOGGED_PATHS = ("/search", "/feedback")
REBUILDS_DIR = "index-rebuilds"  # under the run directory: one index per applied rebuild


class SearchRequest(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT, description="The ticket's text.")
    k: int = Field(retrieve.TOP_K, ge=1, le=MAX_K, description="How many articles to suggest.")
    ticket_id: int | None = Field(
        None, ge=0, lt=2**63, description="The ticket the search is for, if any."
    )


class FeedbackRequest(BaseModel):
    request_id: int = Field(ge=0, lt=2**63, description="The search the suggestion came from.")
    article_id: int = Field(ge=0, lt=2**63, description="The suggested article the agent clicked.")


@dataclass(frozen=True)
class LoadedEncoder:
    encoder: retrieve.Encoder
    registry_version: str | None  # the registry's model version holding this encoder


def _registry_encoders(mlflow_dir: Path) -> tuple[retrieve.Encoder, str, dict[int, str]]:
    """The encoder behind the production alias, its registry version, and the registry version
    of every encoder version registered."""
    model = registry.load_serving(mlflow_dir, ENCODER_URI, CompiledTextEncoder)
    by_encoder: dict[int, str] = {}
    for mv in registry.model_versions(mlflow_dir, registry.TICKET_ENCODER):
        if "encoder_version" in mv["tags"]:
            by_encoder.setdefault(int(mv["tags"]["encoder_version"]), mv["version"])
    current = registry.model_version(mlflow_dir, ENCODER_URI)
    version = current["tags"].get("encoder_version")
    if version is None:  # older registrations kept it only as a run parameter
        version = registry.run_param(mlflow_dir, current["run_id"], "encoder_version")
    return retrieve.Encoder(int(version), model), current["version"], by_encoder


def _articles(duckdb_path: Path) -> pl.DataFrame:
    """The help-center articles as the warehouse holds them (what a rebuild re-embeds)."""
    con = duckdb.connect(str(duckdb_path), read_only=True)
    try:
        rows = con.execute(
            "SELECT article_id, title, body FROM retrieval.help_articles ORDER BY article_id"
        ).fetchall()
    finally:
        con.close()
    return pl.DataFrame(
        rows,
        schema={"article_id": pl.Int64, "title": pl.Utf8, "body": pl.Utf8},
        orient="row",
    )


@dataclass(frozen=True)
class Rebuild:
    """An index rebuilt from the ops console, searched from `effective_at` (simulated) on."""

    change_id: str
    effective_at: dt.datetime
    index: retrieve.ArticleIndex


def names_encoder(meta: dict[str, object]) -> bool:
    """Whether the team's index ids name the encoder that built them (`...-e1`), as the loaded
    index's does: a rebuild is named the way the builds before it were."""
    return str(meta.get("index_version", "")).endswith(f"-e{meta.get('encoder_version')}")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.loaded = Gauge(
            "retrieval_loaded_info",
            "The encoder and index the service searches with (value 1).",
            ["encoder_version", "index_version"],
            registry=r,
        )
        self.searches = Counter(
            "retrieval_searches",
            "Searches answered.",
            ["encoder_version", "index_version"],
            registry=r,
        )
        self.latency = Histogram(
            "retrieval_search_latency_seconds",
            "Time to encode the query and search the index.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.top1 = Histogram(
            "retrieval_top1_score",
            "Similarity of the best suggestion.",
            buckets=tuple(round(0.1 * i, 1) for i in range(1, 11)),
            registry=r,
        )
        self.clicks = Counter(
            "retrieval_clicks", "Suggestions clicked by agents.", ["rank"], registry=r
        )
        self.errors = Counter(
            "retrieval_errors",
            "Requests answered with an error status.",
            ["path", "status"],
            registry=r,
        )


class RetrievalService:
    """The loaded encoder and index, the recent requests (for clicks), and the telemetry."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        # The seed the world was built with: a build may override the scenario file's seed.
        try:
            self.seed = int(read_manifest(ctx.world)["seed"])
        except IncompleteWorld:
            self.seed = ctx.scenario.world.seed
        base, base_registry_version, self._registry_versions = _registry_encoders(ctx.paths.mlflow)
        self._registry_versions[base.version] = base_registry_version
        self.base = base
        self.original = retrieve.load_index(ctx.paths.indexes)
        self.index = self.original
        self.index_version = str(self.index.meta["index_version"])
        self.articles = _articles(ctx.paths.duckdb)
        self.titles = dict(
            zip(
                self.articles["article_id"].to_list(), self.articles["title"].to_list(), strict=True
            )
        )
        self.metrics = Metrics()
        self._lock = threading.Lock()
        # Rebuilds applied from the ops console, in the order they take effect.
        self.overrides = Overrides(ctx.paths.run)
        self._rebuilds: list[Rebuild] = []
        self._rebuild_lock = threading.Lock()
        # request_id -> (the session that searched, or None for production; articles shown)
        self._recent: OrderedDict[int, tuple[str | None, list[int]]] = OrderedDict()
        self._deployed: list[int] | None = None  # encoder versions in deploy order, read once
        self._loaded: dict[int, retrieve.Encoder] = {}  # earlier versions a rollback serves
        # The day and the rollbacks in effect the loaded encoder was chosen for.
        self._serving: tuple[int, tuple[dt.datetime, ...]] | None = None
        self._current: LoadedEncoder | None = None
        # Every rebuild applied before a restart, and the index in effect now.
        self.refresh_rebuilds()
        self.index_at(self.ctx.now())
        self.ctx.log(
            "info",
            "index_loaded",
            f"loaded article index {self.index_version} ({self.index.index.ntotal} articles)",
            index_version=self.index_version,
            doc_count=int(self.index.index.ntotal),
        )
        self.current()  # load today's encoder before the first request

    def encoder_on(self, day: int) -> retrieve.Encoder:
        """The encoder the world deployed on `day` (simulated), before any rollback."""
        hook = HookContext(self.seed, day, self.ctx.calendar)
        return self.ctx.fault_set.apply("retrieve.query_encoder", self.base, hook)

    def _rollbacks(self, now: dt.datetime) -> tuple[dt.datetime, ...]:
        """When the rollbacks of this service in effect at `now` took effect, oldest first."""
        return tuple(rollback.rollbacks(SERVICE, self.overrides.entries(), now))

    def encoder_at(self, now: dt.datetime) -> retrieve.Encoder:
        """The encoder production runs at `now` (simulated): the world's of the day until a
        rollback takes effect. Each rollback goes back one encoder deployment (the first one
        stays), and a rolled-back service stays on it: the world's later rollouts do not reach
        it."""
        rollbacks = self._rollbacks(now)
        live = self.encoder_on(self.ctx.calendar.day_of(rollbacks[0] if rollbacks else now))
        if not rollbacks:
            return live
        deployed = self._deployed_versions()
        if not deployed or deployed[-1] != live.version:
            deployed = [*deployed, live.version]
        kept = deployed[max(0, len(deployed) - 1 - len(rollbacks))]
        return live if kept == live.version else self._registered_encoder(kept)

    def _deployed_versions(self) -> list[int]:
        """The encoder versions production searched with, in the order they were deployed (the
        world's search log: what the deploy system ran, whatever the registry says now)."""
        if self._deployed is None:
            with duckdb.connect(str(self.ctx.paths.duckdb), read_only=True) as con:
                rows = con.execute(
                    "SELECT encoder_version FROM retrieval.search_log "
                    "GROUP BY encoder_version ORDER BY min(request_ts)"
                ).fetchall()
            self._deployed = [int(version) for (version,) in rows]
        return self._deployed

    def _registered_encoder(self, version: int) -> retrieve.Encoder:
        """An earlier encoder version, loaded from the registry as the service loads its own."""
        if version not in self._loaded:
            uri = f"models:/{registry.TICKET_ENCODER}/{self._registry_versions[version]}"
            model = registry.load_serving(self.ctx.paths.mlflow, uri, CompiledTextEncoder)
            self._loaded[version] = retrieve.Encoder(version, model)
        return self._loaded[version]

    def current(self) -> LoadedEncoder:
        """The encoder serving now (simulated): what production runs today, as rolled back."""
        now = self.ctx.now()
        key = (self.ctx.calendar.day_of(now), self._rollbacks(now))
        with self._lock:
            if key != self._serving or self._current is None:
                encoder = self.encoder_at(now)
                previous = self._current
                self._current = LoadedEncoder(encoder, self._registry_versions.get(encoder.version))
                self._serving = key
                if previous is None or previous.encoder.version != encoder.version:
                    self._announce(self._current)
            return self._current

    def _announce(self, loaded: LoadedEncoder) -> None:
        version = loaded.encoder.version
        self._show_loaded(loaded)
        self.ctx.log(
            "info",
            "encoder_loaded",
            f"loaded {registry.TICKET_ENCODER} version {version} ({ENCODER_URI})",
            encoder_version=version,
            registry_version=loaded.registry_version,
            index_version=self.index_version,
        )

    def _show_loaded(self, loaded: LoadedEncoder) -> None:
        self.metrics.loaded.clear()
        self.metrics.loaded.labels(str(loaded.encoder.version), self.index_version).set(1)

    # -- rebuilds applied from the ops console ---------------------------------------------------
    def refresh_rebuilds(self) -> None:
        """Carry out every applied rebuild not yet done: re-embed the articles, keep the index in
        the run directory and write its progress lines (stamped in simulated time). A rebuild
        already kept (before a restart) is loaded again, and logged only once."""
        done = {r.change_id for r in self._rebuilds}
        if not any(
            e.action == REBUILD_INDEX and e.id not in done for e in self.overrides.entries()
        ):
            return
        with self._rebuild_lock:
            done = {r.change_id for r in self._rebuilds}
            todo = [
                e
                for e in self.overrides.entries()
                if e.action == REBUILD_INDEX and e.id not in done
            ]
            built = [self._rebuild(applied) for applied in todo]
            # Replaced whole: a search reading the list meanwhile sees the old one or the new.
            self._rebuilds = sorted([*self._rebuilds, *built], key=lambda r: r.effective_at)

    def _rebuild(self, applied: Applied) -> Rebuild:
        kept = self.ctx.paths.run / REBUILDS_DIR / applied.id
        if kept.is_dir():
            return Rebuild(applied.id, applied.effective_at, retrieve.load_index(kept))
        encoder = self.encoder_at(applied.requested_at)
        built_on = applied.effective_at.date()
        index = retrieve.rebuilt(
            retrieve.build_index(encoder, self.articles, built_on),
            built_on,
            names_encoder(self.original.meta),
        )
        version = str(index.meta["index_version"])
        for line in progress.index_rebuild(
            applied.id,
            applied.requested_at,
            applied.effective_at,
            int(index.index.ntotal),
            registry.TICKET_ENCODER,
            encoder.version,
            version,
        ):
            self.ctx.log_at(line.ts, SERVICE, "info", line.event, line.message, **line.attrs)
        # Whole or not at all: a restart finds either the finished index or none.
        partial = kept.with_name(kept.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        index.save(partial)
        partial.replace(kept)
        return Rebuild(applied.id, applied.effective_at, index)

    def index_at(self, now: dt.datetime) -> retrieve.ArticleIndex:
        """The index searched at `now`: the latest rebuild in effect, or the one the world left."""
        index = self.original
        for rebuild in self._rebuilds:
            if rebuild.effective_at <= now:
                index = rebuild.index
        if index is not self.index:
            with self._lock:
                self.index = index
                self.index_version = str(index.meta["index_version"])
                if self._current is not None:
                    self._show_loaded(self._current)
        return index

    def look(self) -> None:
        """Carry out newly applied rebuilds and rollbacks (the running app's watcher calls it)."""
        try:
            self.refresh_rebuilds()
            self.index_at(self.ctx.now())
            self.current()  # a rollback in effect loads its encoder without waiting for a search
        except Exception as exc:  # a bad rebuild must not stop the service answering
            self.ctx.log("error", "index_rebuild_failed", f"index rebuild failed: {exc}")

    def search(self, req: SearchRequest, session_id: str | None = None) -> dict[str, Any]:
        """Suggest articles; a session's search is spooled as its own and counted nowhere else."""
        started = time.perf_counter()
        # FAISS's OpenMP thread count is per calling thread and starts at the core count in
        # request threads; on a busy host one query then waits ~20 ms at an OpenMP barrier.
        faiss.omp_set_num_threads(1)
        encoder = self.current().encoder
        self.refresh_rebuilds()
        index = self.index_at(self.ctx.now())
        index_version = str(index.meta["index_version"])
        ids, scores = index.search(encoder.encode([req.text]), req.k)
        found = [(int(i), round(float(s), 4)) for i, s in zip(ids[0], scores[0], strict=True)]
        found = [(i, s) for i, s in found if i >= 0]
        elapsed = time.perf_counter() - started
        request_id = secrets.randbits(63) or 1
        request_ts = self.ctx.now().isoformat()
        top1 = found[0][1] if found else None
        # Telemetry first: whatever a client has seen acknowledged is on disk.
        self.ctx.spool("retrieval.search_log").write(
            caller.marked(
                {
                    "request_id": request_id,
                    "ticket_id": req.ticket_id,
                    "request_ts": request_ts,
                    "query_text": req.text,
                    "top_k_ids": [i for i, _ in found],
                    "top_k_scores": [s for _, s in found],
                    "top1_score": top1,
                    "encoder_version": encoder.version,
                    "index_version": index_version,
                    "latency_ms": round(elapsed * 1000, 2),
                    "clicked_article_id": None,
                    "click_rank": None,
                },
                session_id,
            )
        )
        with self._lock:
            self._recent[request_id] = (session_id, [i for i, _ in found])
            while len(self._recent) > RECENT_REQUESTS:
                self._recent.popitem(last=False)
        if session_id is None:
            self.metrics.searches.labels(str(encoder.version), index_version).inc()
            self.metrics.latency.observe(elapsed)
            if top1 is not None:
                self.metrics.top1.observe(top1)
        return {
            "request_id": request_id,
            "results": [
                {"article_id": i, "title": self.titles.get(i, ""), "score": s, "rank": rank}
                for rank, (i, s) in enumerate(found, start=1)
            ],
            "encoder_version": encoder.version,
            "index_version": index_version,
            "request_ts": request_ts,
        }

    def click(self, req: FeedbackRequest, session_id: str | None = None) -> dict[str, Any]:
        """An agent's click on a suggestion. A click belongs to the search's caller: a session
        cannot click on production's searches (nor production on a session's), so no session
        moves the click-through everyone sees."""
        with self._lock:
            searcher, shown = self._recent.get(req.request_id, (None, None))
        if shown is None or searcher != session_id:
            raise HTTPException(404, f"no recent search with request_id {req.request_id}")
        if req.article_id not in shown:
            raise HTTPException(
                404, f"article {req.article_id} was not suggested by search {req.request_id}"
            )
        rank = shown.index(req.article_id) + 1
        clicked_at = self.ctx.now().isoformat()
        self.ctx.spool("retrieval.search_clicks").write(
            caller.marked(
                {
                    "request_id": req.request_id,
                    "clicked_article_id": req.article_id,
                    "click_rank": rank,
                    "clicked_at": clicked_at,
                },
                session_id,
            )
        )
        if session_id is None:
            self.metrics.clicks.labels(str(rank)).inc()
        return {
            "request_id": req.request_id,
            "article_id": req.article_id,
            "click_rank": rank,
            "clicked_at": clicked_at,
        }

    def metadata(self) -> dict[str, Any]:
        loaded = self.current()
        index = self.index_at(self.ctx.now())
        return {
            "service": SERVICE,
            "encoder_name": registry.TICKET_ENCODER,
            "encoder_version": loaded.encoder.version,
            "encoder_uri": ENCODER_URI,
            "encoder_registry_version": loaded.registry_version,
            "index_version": str(index.meta["index_version"]),
            "index_metadata": index.meta,
            "article_count": int(index.index.ntotal),
            "dimension": int(index.index.d),
        }


class RequestLog:
    """One log line per search or click (and an error count of production's calls), written as
    the response starts; a session's call writes its line as its own.

    Plain ASGI rather than `@app.middleware("http")`, which costs a task and a stream per request.
    Endpoints leave their attributes in `request.state.log_attrs`.
    """

    def __init__(self, app: ASGIApp, service: RetrievalService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in LOGGED_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        logged = False

        def log(status: int) -> None:
            nonlocal logged
            logged = True
            path = scope["path"]
            session = caller.session_of(scope)
            if status >= 400 and session is None:
                self.service.metrics.errors.labels(path, str(status)).inc()
            ms = (time.perf_counter() - started) * 1000
            self.service.ctx.log(
                "info" if status < 400 else "warning" if status < 500 else "error",
                "request",
                f"{scope['method']} {path} {status} {ms:.1f}ms",
                session_id=session,
                status=status,
                **state.get("log_attrs", {}),
            )

        async def logging_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not logged:
                log(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        except Exception:
            if not logged:
                log(500)
            raise


def create_app(world: Path, settings: Settings | None = None) -> FastAPI:
    """The retrieval service over a built world; loads encoder and index before returning."""
    ctx = ServiceContext(Path(world), SERVICE)
    service = RetrievalService(ctx)

    lifespan = watching(service.look, "index-rebuilds")

    app = FastAPI(title="Retrieval service", version="1", lifespan=lifespan)
    # Innermost: the middleware added below sees its refusals.
    limits.install(app, settings or Settings())
    app.state.service = service

    app.add_middleware(RequestLog, service=service)
    app.add_middleware(caller.SessionCalls)  # outermost: the others read the session it finds

    @app.post("/search")
    def search(body: SearchRequest, request: Request) -> dict[str, Any]:
        answer = service.search(body, caller.session_of(request.scope))
        request.state.log_attrs = {
            "request_id": answer["request_id"],
            "ticket_id": body.ticket_id,
            "k": body.k,
            "encoder_version": answer["encoder_version"],
            "index_version": answer["index_version"],
        }
        return answer

    @app.post("/feedback")
    def feedback(body: FeedbackRequest, request: Request) -> dict[str, Any]:
        request.state.log_attrs = {"request_id": body.request_id, "article_id": body.article_id}
        return service.click(body, caller.session_of(request.scope))

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        return service.metadata()

    @app.get(HEALTH_PATH)
    def health() -> dict[str, Any]:
        return {"status": "ok", "service": SERVICE, "now": ctx.now().isoformat()}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def main() -> None:
    args = service_args("The live retrieval service (help-article suggestions for tickets).")
    # One query at a time over a few hundred articles: BLAS threads only cost on a shared host.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    settings = settings_or_exit()
    serve(create_app(args.world, settings), args.host, args.port, settings, args.fd)


if __name__ == "__main__":
    main()
