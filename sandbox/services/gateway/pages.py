"""The candidate's workspace in the browser: one page per tool, drawn by the browser from the JSON
APIs (`workspace.py`, the SQL API, the proxied services). Every page view is recorded.

Templates and static files live in `web/`; charts use the plotly.js that ships inside the installed
`plotly` package, served with its version in the file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly
from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from sandbox.review.store import HistoryFull, Session
from sandbox.services.gateway.auth import Auth, caller, sign_in
from sandbox.services.gateway.state import Gateway

WEB = Path(__file__).parent / "web"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
PLOTLY_URL = f"/static/vendor/plotly-{plotly.__version__}.min.js"
# Paths whose errors are for programs (JSON), not people.
API_PREFIXES = ("/api/", "/services/", "/-/", "/static/")


@dataclass(frozen=True)
class Page:
    name: str
    title: str
    path: str


NAV = (
    Page("brief", "Brief", "/brief"),
    Page("dashboards", "Dashboards", "/dashboards"),
    Page("sql", "SQL console", "/sql"),
    Page("logs", "Logs", "/logs"),
    Page("models", "Models", "/models"),
    Page("retrieval", "Retrieval", "/retrieval"),
    Page("model-server", "Model server", "/model-server"),
    Page("changelog", "Changelog", "/changelog"),
    Page("ops", "Ops console", "/ops"),
    Page("diagnosis", "Diagnosis", "/diagnosis"),
)

templates = Environment(
    loader=PackageLoader("sandbox.services.gateway", "web/templates"),
    autoescape=select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def install(app: FastAPI) -> None:
    """Add the pages, the static files and human-readable error pages to the gateway."""

    @app.get(PLOTLY_URL, include_in_schema=False)
    def plotly_js() -> FileResponse:
        # The version is in the URL: a browser may keep it for good.
        return FileResponse(
            PLOTLY_JS,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=31536000, immutable"},
        )

    app.mount(
        "/static", StaticFiles(directory=WEB / "static"), name="static"
    )  # after: it matches all

    @app.exception_handler(StarletteHTTPException)
    async def errors(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith(API_PREFIXES) or "text/html" not in request.headers.get(
            "accept", ""
        ):
            return await http_exception_handler(request, exc)
        html = templates.get_template("error.html.j2").render(
            status=exc.status_code, message=exc.detail, nav=(), world=_world_name(request)
        )
        return HTMLResponse(html, status_code=exc.status_code)

    @app.exception_handler(HistoryFull)
    async def history_full(request: Request, exc: HistoryFull) -> Response:
        # Every route records what it did: a history with no room refuses the request.
        return await errors(request, StarletteHTTPException(exc.status_code, exc.detail))

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> Response:
        if request.query_params.get("token"):
            return sign_in(request)
        try:
            who = caller(request)
        except HTTPException:
            html = templates.get_template("welcome.html.j2").render(
                nav=(), world=_world_name(request)
            )
            return HTMLResponse(html)
        return RedirectResponse("/brief" if who.is_candidate else "/interviewer", status_code=303)

    @app.get("/brief", response_class=HTMLResponse)
    def brief(request: Request, who: Auth) -> HTMLResponse:
        gw = _gateway(request)
        text = gw.ctx.scenario.brief.text.strip()
        paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
        session = gw.sessions.get(who.session_id) if who.is_candidate and who.session_id else None
        return _page(
            request,
            who,
            "brief",
            title=gw.ctx.scenario.brief.title,
            paragraphs=paragraphs,
            policy=policy_words(session) if session else None,
        )

    @app.get("/dashboards", include_in_schema=False)
    def dashboards_home(request: Request) -> RedirectResponse:
        first = next(iter(_gateway(request).boards()))
        return RedirectResponse(f"/dashboards/{first}", status_code=303)

    @app.get("/dashboards/{board_id}", response_class=HTMLResponse)
    def dashboard(board_id: str, request: Request, who: Auth) -> HTMLResponse:
        boards = _gateway(request).boards()
        board = boards.get(board_id)
        if board is None:
            raise HTTPException(404, f"no dashboard {board_id}")
        return _page(
            request,
            who,
            "dashboards",
            board=board,
            boards=list(boards.values()),
            detail={"dashboard": board.id},
        )

    for page in NAV[2:]:
        app.add_api_route(page.path, _simple_page(page.name), response_class=HTMLResponse)


def _simple_page(name: str):
    def view(request: Request, who: Auth) -> HTMLResponse:
        return _page(request, who, name)

    view.__name__ = f"page_{name.replace('-', '_')}"
    return view


def policy_words(session: Session) -> list[str]:
    """The session's policy as the candidate reads it on the brief."""
    words = [
        "You may use outside help: an assistant, your own scripts, your notes. Your interviewer "
        "sees how the work was done (what came from these pages and what did not) and may ask "
        "you about it."
        if session.assistance == "allowed"
        else "Work on your own: no assistant, no outside help. Your interviewer sees how the work "
        "was done (what came from these pages, what was pasted) and may ask you about it."
    ]
    if session.workspace_only:
        words.append(
            "Use these pages in your browser: the tools answer the workspace's own pages only, "
            "not scripts or other clients."
        )
    else:
        words.append(
            "You may call the tools from a script too, with your session's token as a Bearer "
            "token; those requests are marked as coming from outside the workspace."
        )
    return words


def _page(
    request: Request, who: Any, name: str, detail: dict[str, Any] | None = None, **context: Any
) -> HTMLResponse:
    gw = _gateway(request)
    gw.record(who, "page", {"page": name, "path": request.url.path, **(detail or {})})
    # Only a browser signed in by the cookie gets a page token: a Bearer client that fetches a
    # page does not thereby make its other requests the workspace's.
    page_token = None
    if who.is_candidate and who.client == "workspace":
        _, page_token = gw.page_tokens.mint(who.session_id)
    html = templates.get_template(f"{name}.html.j2").render(
        page_token=page_token,
        nav=NAV,
        active=name,
        world=_world_name(request),
        role=who.role,
        plotly_url=PLOTLY_URL,
        prometheus="prometheus" in gw.addresses,
        settings=gw.settings,
        **context,
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


INTERVIEWER_NAV = (
    Page("sessions", "Sessions", "/interviewer"),
    Page("builder", "Scenario builder", "/interviewer/builder"),
    Page("worlds", "Worlds", "/interviewer/worlds"),
)


def interviewer_page(request: Request, name: str, **context: Any) -> HTMLResponse:
    """An interviewer page (not recorded: the history is the candidate's)."""
    html = templates.get_template(f"interviewer-{name}.html.j2").render(
        nav=INTERVIEWER_NAV,
        active=name if name in ("builder", "worlds") else "sessions",
        world=_world_name(request),
        interviewer=True,
        plotly_url=PLOTLY_URL,
        **context,
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def _world_name(request: Request) -> str:
    return _gateway(request).ctx.scenario.world.name.capitalize()
