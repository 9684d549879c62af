"""Every component of the stack the changelog can name logs its ordinary work, planted or not (a
component without a line of its own would point at itself), and those lines agree with the
tables the component acted on."""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import pytest

from sandbox import scenario
from sandbox.decoys import registry as decoy_registry
from sandbox.faults import registry as fault_registry
from sandbox.pipeline.ops import ROUTINE
from sandbox.world import routine_logs

# Changelog services that are not a process of the stack: teams, vendors and upstream systems
# (their changes arrive as notices), and the model, which the training job and the model server
# name in their lines.
OUTSIDE_THE_STACK = {
    "all",
    "billing",
    "cdn",
    "market",
    "marketing",
    "mobile-apps",
    "playback-analytics",
    "support",
}


def _changelog_services() -> set[str]:
    """The services of the routine changelog and of every registered fault's and decoy's
    entries, with their default parameters."""
    calendar = scenario.load(None).world.calendar()
    services = {entry[3] for entry in ROUTINE}
    planted = [
        *(cls(cls.Params()) for cls in fault_registry.catalog().values()),
        *(cls(cls.Params()) for cls in decoy_registry.catalog().values()),
    ]
    for one in planted:
        services |= {entry["service"] for entry in one.changelog(calendar)}
    return services


def test_the_changelog_names_components_the_routine_logs_cover() -> None:
    named = _changelog_services() - OUTSIDE_THE_STACK
    assert {"feature-server", "online-store", "billing-ingest", "monitoring"} <= named
    assert set(routine_logs.SERVICES) & named, "the routine lines are for named components"


@pytest.mark.world  # its world fixture is picked by name, so collection cannot see it
@pytest.mark.parametrize("db", ["faulty_db", "control_db"])
def test_every_component_the_changelog_names_logs_its_ordinary_work(
    db: str, request: pytest.FixtureRequest
) -> None:
    con: duckdb.DuckDBPyConnection = request.getfixturevalue(db)
    lines = dict(
        con.execute(
            "SELECT service, count(*) FROM telemetry.logs WHERE level = 'info' GROUP BY 1"
        ).fetchall()
    )
    for service in sorted(_changelog_services() - OUTSIDE_THE_STACK):
        mentioned = con.execute(
            "SELECT count(*) FROM telemetry.logs WHERE message ILIKE ?", [f"%{service}%"]
        ).fetchone()
        assert lines.get(service, 0) > 0 or (mentioned and mentioned[0] > 0), (
            f"{service}: no ordinary log lines"
        )
    for service in routine_logs.SERVICES:
        assert lines.get(service, 0) > 0, f"{service}: no lines"


def test_routine_lines_agree_with_the_tables(faulty_db: duckdb.DuckDBPyConnection) -> None:
    con = faulty_db
    loads = con.execute(
        "SELECT materialized_at, rows FROM ops.materialization_runs WHERE status = 'success' "
        "ORDER BY 1"
    ).fetchall()
    logged = con.execute(
        "SELECT ts, attrs FROM telemetry.logs WHERE service = ? ORDER BY ts",
        [routine_logs.MATERIALIZATION],
    ).fetchall()
    assert [(ts, json.loads(a)["rows"]) for ts, a in logged] == [(t, r) for t, r in loads]

    reports = con.execute(
        "SELECT report_date, n_drifted FROM monitoring.drift_daily ORDER BY 1"
    ).fetchall()
    drift = con.execute(
        "SELECT ts, attrs FROM telemetry.logs WHERE service = ? ORDER BY ts",
        [routine_logs.DRIFT_MONITOR],
    ).fetchall()
    assert [(ts.date() - dt.timedelta(days=1), json.loads(a)["n_drifted"]) for ts, a in drift] == [
        (d, n) for d, n in reports
    ]

    online, lookups = con.execute(
        """
        SELECT (SELECT count(*) FROM serving.predictions WHERE source = 'online'),
               (SELECT count(*) FROM telemetry.logs WHERE service = ? AND event = 'lookup')
        """,
        [routine_logs.FEATURE_SERVER],
    ).fetchone() or (None, None)
    assert online and lookups == online, "each online prediction read its row first"

    searches, requests = con.execute(
        """
        SELECT (SELECT count(*) FROM retrieval.search_log),
               (SELECT count(*) FROM telemetry.logs WHERE service = ?)
        """,
        [routine_logs.RETRIEVAL],
    ).fetchone() or (None, None)
    assert searches and requests == searches
