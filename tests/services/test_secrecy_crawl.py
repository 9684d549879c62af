"""Everything a candidate can reach over HTTP names no fault: every page, API answer, static
asset, error message and header the gateway gives a candidate token (or no token), crawled from
the gateway's own route table so a new route is crawled too."""

from __future__ import annotations

import datetime as dt
import functools
import re

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount

from sandbox.faults import registry
from sandbox.services import dashboards
from sandbox.services.gateway import pages
from tests.services.conftest import MakeSession
from tests.world.test_secrecy import TELLTALE

# Words the candidate's own tools use in their ordinary sense.
ALLOWED = re.compile(r"preventDefault", re.IGNORECASE)
# Third-party code (plotly.js, the scripts inside Evidently's report) says "inject" and "bug" in
# its own sense; it is checked for the catalog's names only.
SCRIPT = re.compile(r"<script\b.*?</script>", re.IGNORECASE | re.DOTALL)
NAMES = re.compile(
    "|".join(
        re.escape(i)
        for i in [*registry.catalog(), *(c.__name__ for c in registry.catalog().values())]
    ),
    re.IGNORECASE,
)


def _values(client: TestClient, who: dict[str, str]) -> dict[str, list[str]]:
    """Values for path parameters: real ones, and wrong ones for the error messages."""
    board = next(iter(dashboards.catalog().values()))
    day = client.post(
        "/api/sql",
        json={"sql": "SELECT max(report_date) FROM monitoring.drift_daily"},
        headers=who,
    ).json()["rows"][0][0]
    return {
        "board_id": [board.id, "nope"],
        "panel_id": [board.panels[0].id, "nope"],
        "day": [str(dt.date.fromisoformat(day)), "2001-01-01", "not-a-day"],
        "session_id": ["nope"],
        "build_id": ["nope"],
        "fmt": ["html", "md", "pdf"],
        "name": ["review.js", "../app.py"],
    }


def routes(container: object) -> list[object]:
    """Every route of an app or router, through the routers it includes."""
    found = []
    for route in getattr(container, "routes", []):
        included = getattr(route, "original_router", None)
        found += routes(included) if included is not None else [route]
    return found


def _paths(client: TestClient, values: dict[str, list[str]]) -> list[str]:
    paths = []
    for route in routes(client.app):
        if isinstance(route, Mount):
            paths += [f"{route.path}/{p.name}" for p in (pages.WEB / "static").iterdir()]
            continue
        if not isinstance(route, APIRoute) or "GET" not in route.methods:
            continue
        if route.path.startswith("/services/"):
            continue  # the proxied services are crawled by the stack's own tests
        expanded = [route.path]
        for name in re.findall(r"{(\w+)(?::\w+)?}", route.path):
            expanded = [re.sub(rf"{{{name}(:\w+)?}}", v, p) for p in expanded for v in values[name]]
        paths += expanded
    return sorted(set(paths))


# The same page comes back for each of the three ways of asking; the vendor scripts are megabytes.
@functools.cache
def _hits(text: str, third_party: bool = False) -> list[str]:
    if third_party:
        return sorted({m.group(0) for m in NAMES.finditer(text)}) + _hits(SCRIPT.sub("", text))
    return sorted({m.group(0) for m in TELLTALE.finditer(ALLOWED.sub("", text))})


def test_no_route_a_candidate_can_reach_names_a_fault(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    candidate = {"Authorization": f"Bearer {links['candidate_token']}", "accept": "text/html"}
    values = _values(client, candidate)
    paths = _paths(client, values)
    assert len(paths) > 40
    crawled = 0
    for path in paths:
        for headers in (candidate, {"accept": "text/html"}, {}):
            reply = client.get(path, headers=headers, follow_redirects=False)
            body = reply.text
            if path.startswith("/static/vendor/"):
                body = f"<script>{body}</script>"  # a library file is all third-party code
            headers_text = "\n".join(f"{k}: {v}" for k, v in reply.headers.items())
            third_party = path.startswith(("/reports/", "/static/vendor/"))
            hits = _hits(body, third_party) + _hits(headers_text)
            assert not hits, f"{path} ({reply.status_code}): {hits}"
            crawled += 1
    # The routes behind the interviewer's token refused the candidate without saying more.
    refused = client.get("/api/sessions/nope/answer-key", headers=candidate)
    assert refused.status_code == 403 and not _hits(refused.text)
    assert crawled == 3 * len(paths)


def test_refusals_and_validation_errors_name_no_fault(
    client: TestClient, make_session: MakeSession
) -> None:
    links = make_session()
    who = {"Authorization": f"Bearer {links['candidate_token']}"}
    for method, path, body in [
        ("POST", "/api/sql", {"sql": "SELECT * FROM interviewer.secrets"}),
        ("POST", "/api/sql", {"nope": 1}),
        ("PUT", "/api/diagnosis", {"root_cause": 5}),
        ("POST", "/api/events", {"kind": "typing"}),
        ("POST", "/api/sessions", {"candidate": "x"}),
        ("PUT", "/api/sessions/nope/rubric", {"dimension": "root_cause", "level": 3}),
        ("POST", "/api/builder/validate", {"toml": "[world]"}),
        ("POST", "/api/actions", {"action": "set-decision-threshold", "params": {}}),
        ("POST", "/api/sessions/nope/clock/forward", {"hours": 1}),
    ]:
        reply = client.request(method, path, json=body, headers=who)
        assert reply.status_code in (400, 403, 422), (path, reply.status_code)
        echoed = json_text(body)
        assert not _hits(reply.text.replace(echoed, "")), (path, reply.text[:300])


def json_text(body: dict) -> str:
    import json

    return json.dumps(body)[1:-1]
