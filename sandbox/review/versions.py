"""When each churn-model version first served, read off a built world's model-server logs (its
`model_loaded` lines): what a pin or a move of champion is judged by. A version that served
before a fault began is one the fault never touched; one first served after it, or never, is not
a way back from it."""

from __future__ import annotations

import datetime as dt

import duckdb

from sandbox.review.world_reads import read_once
from sandbox.schema import MODEL_SERVER

FirstServed = dict[str, dt.datetime]


def _read(con: duckdb.DuckDBPyConnection) -> FirstServed:
    rows = con.execute(
        "SELECT json_extract_string(attrs, '$.model_version') AS version, min(ts) "
        "FROM telemetry.logs WHERE service = $service AND event = 'model_loaded' "
        "GROUP BY version",
        {"service": MODEL_SERVER},
    ).fetchall()
    return {str(version): ts for version, ts in rows if version is not None}


reference = read_once(_read)
