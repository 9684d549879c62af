"""What the candidate's SQL sees: every world table as a view that reveals rows by simulated time,
with the rows of the live services swapped for what they really did.

The built world already holds the live days (the simulation ran them) and labels that mature after
them. A row is shown once it *exists* at the simulated now — when it was ingested, written, loaded
or became known — never earlier. For the processes that run live (the model server, the retrieval
service, the scheduled materialization and drift jobs), the world's own rows stop at the start of
live time and the rows those processes write while the stack runs take over.

How each table reveals its rows by time, which of its rows live processes replace and which of
its columns name a later moment are declared with the table (`sandbox.schema`); this module turns
the declaration into SQL. Views read `getvariable('sim_now')` and `getvariable('live_start')`,
which the gateway sets on the connection before every query.

A live row is production's, or one candidate session's own: the live services mark the rows a
session's calls produce with its `session_id`. A view shows production's live rows and those of the
session asking (`getvariable('session_id')`, set with the clock), never another session's, and says
whose call a row came from in an ordinary-looking `client` column; the session id itself is never
shown. The operator and an interviewer previewing a workspace query without a session
(`Gateway.query`): they see production's rows only, the same for every session, and the
interviewer reads a candidate's own calls in the recorded history instead.
"""

from __future__ import annotations

from sandbox import schema

NOW = "getvariable('sim_now')"
LIVE_START = "getvariable('live_start')"
SESSION = "getvariable('session_id')"
# Of a live table's rows, those the asking session may see.
VISIBLE = f"(session_id IS NULL OR session_id = {SESSION})"

# The column the views of tables a session's calls add rows to (`schema.Live.client`) add to say
# whose call a row came from: production's callers and jobs, or this workspace.
CLIENT = "client"
# The schema browser's descriptions of that column, by table.
CLIENT_DESCRIPTIONS = {
    name: t.live.client for name, t in schema.TABLES.items() if t.live and t.live.client
}
CLIENT_TABLES = tuple(CLIENT_DESCRIPTIONS)
PRODUCTION_CLIENT = "production"
WORKSPACE_CLIENT = "workspace"


def live_table(table: str) -> str:
    schema_name, name = table.split(".")
    return f"live.{schema_name}__{name}"


def production_table(table: str) -> str:
    """The view of `table`'s live rows that production made, none of any session's own."""
    schema_name, name = table.split(".")
    return f"live.production__{schema_name}__{name}"


def view_columns(table: str, columns: list[str]) -> list[str]:
    """The columns of the candidate-facing view of `table`, whose world table has `columns`."""
    return [*columns, CLIENT] if table in CLIENT_TABLES else list(columns)


def added_columns() -> list[tuple[str, str, str, str]]:
    """What the views add to the world's tables, for the schema browser: (table, column, type,
    description)."""
    return [(table, CLIENT, "VARCHAR", text) for table, text in CLIENT_DESCRIPTIONS.items()]


def exists(table: schema.Table) -> str:
    """SQL: a row of `table` exists by now (its reveal rule; a DATE counts from its start)."""
    reveal = table.reveal
    if reveal.exists is not None:
        return f"{reveal.exists} <= {NOW}"
    assert reveal.column is not None
    date = table.column(reveal.column).type == "DATE"
    return f"{reveal.column} <= {NOW}{'::DATE' if date else ''}"


def _before_live(table: schema.Table) -> str:
    column = table.reveal.column
    assert column is not None
    date = table.column(column).type == "DATE"
    return f"{column} < {LIVE_START}{'::DATE' if date else ''}"


def _shown(column: schema.Column) -> str:
    name = column.name
    if column.later == "hidden":  # NULL until the moment it names has passed
        return f"CASE WHEN {name} <= {NOW} THEN {name} END AS {name}"
    if column.later == "capped":  # no later than now
        return f"least({name}, {NOW}) AS {name}"
    return name


def view_sql(table: str, world: str, columns: list[str]) -> str:
    """The candidate-facing view of `table` from the world attached as catalog `world`, whose
    table has `columns` (the declared ones, and any a planted fault added after them)."""
    declared = schema.TABLES[table]
    later = {c.name: _shown(c) for c in declared.columns if c.later}
    select = ", ".join(later.get(c, c) for c in columns)
    world_select = live_select = select
    if table in CLIENT_TABLES:
        world_select += f", '{PRODUCTION_CLIENT}' AS {CLIENT}"
        live_select += (
            f", CASE WHEN session_id IS NULL THEN '{PRODUCTION_CLIENT}' "
            f"ELSE '{WORKSPACE_CLIENT}' END AS {CLIENT}"
        )
    body = f"SELECT {world_select} FROM {world}.{table}"
    if declared.reveal.column is None:
        return body
    body += f" WHERE {exists(declared)}"
    live = declared.live
    if live is not None:
        # From live start the world's rows give way to the live ones, but for those it keeps.
        kept = f" OR {live.kept}" if live.kept else ""
        body += f" AND ({_before_live(declared)}{kept})"
    if live is not None and live.spooled:
        body += f" UNION ALL BY NAME SELECT {live_select} FROM {live_table(table)} WHERE "
        body += f"{exists(declared)} AND {VISIBLE}"
    if declared.reveal.newest:
        newest = declared.reveal.column
        body = f"SELECT * FROM ({body}) QUALIFY {newest} = max({newest}) OVER ()"
    return body
