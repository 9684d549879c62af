"""What the candidate's SQL sees: every world table as a view that reveals rows by simulated time,
with the rows of the live services swapped for what they really did.

The built world already holds the live days (the simulation ran them) and labels that mature after
them. A row is shown once it *exists* at the simulated now — when it was ingested, written, loaded
or became known — never earlier. For the processes that run live (the model server, the retrieval
service, the scheduled materialization and drift jobs), the world's own rows stop at the start of
live time and the rows those processes write while the stack runs take over.

Views read `getvariable('sim_now')` and `getvariable('live_start')`, which the gateway sets on the
connection before every query.

A live row is production's, or one candidate session's own: the live services mark the rows a
session's calls produce with its `session_id`. A view shows production's live rows and those of the
session asking (`getvariable('session_id')`, set with the clock), never another session's, and says
whose call a row came from in an ordinary-looking `client` column; the session id itself is never
shown. The operator and an interviewer previewing a workspace query without a session
(`Gateway.query`): they see production's rows only, the same for every session, and the
interviewer reads a candidate's own calls in the recorded history instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.schema import METRIC_COMPLETE

NOW = "getvariable('sim_now')"
LIVE_START = "getvariable('live_start')"
SESSION = "getvariable('session_id')"
# Of a live table's rows, those the asking session may see.
VISIBLE = f"(session_id IS NULL OR session_id = {SESSION})"

# The tables a session's calls to the live services add rows to, and the column their views add to
# say whose call a row came from: production's callers and jobs, or this workspace.
CLIENT = "client"
CLIENT_TABLES = ("serving.predictions", "retrieval.search_log", "telemetry.logs")
PRODUCTION_CLIENT = "production"
WORKSPACE_CLIENT = "workspace"
# The schema browser's descriptions of those columns: not in the built world, described here.
VIEW_COLUMNS: dict[str, dict[str, str]] = {
    "serving.predictions": {
        "client": "Who requested the prediction: production (the daily batch job and the "
        "production API callers) or workspace (requests sent from this workspace).",
    },
    "retrieval.search_log": {
        "client": "Who sent the search: production (the support desk) or workspace (searches "
        "sent from this workspace).",
    },
    "telemetry.logs": {
        "client": "workspace for lines about requests sent from this workspace; production "
        "otherwise.",
    },
}


# Services whose log lines come from the live processes once live time starts.
LIVE_LOG_SERVICES = "'model-server', 'retrieval', 'materialization', 'drift-monitor'"


@dataclass(frozen=True)
class Reveal:
    when: str  # SQL: the row exists by now
    live: bool = False  # live processes add rows (table `live.<schema>__<table>`)


# Shown whole: reference data and what was settled before live time (policies, training sets).
WHOLE = {
    "retrieval.help_articles",
    "monitoring.alert_rules",
    "monitoring.drift_reference",
    "training.churn_training_set",  # every release is trained within production
    "feature_store.imputation_policy",
    "feature_store.customer_features_online",  # the store as production left it
}

REVEAL: dict[str, Reveal] = {
    "raw.customers": Reveal(f"signup_date <= {NOW}::DATE"),
    "raw.viewing_activity": Reveal(f"ingested_at <= {NOW}"),
    "raw.billing_events": Reveal(f"ingested_at <= {NOW}"),
    "raw.support_tickets": Reveal(f"ingested_at <= {NOW}"),
    "raw.subscription_events": Reveal(f"ingested_at <= {NOW}"),
    "feature_store.customer_features": Reveal(f"created_timestamp <= {NOW}"),
    "labels.churn_labels": Reveal(f"label_available_at <= {NOW}"),
    "crm.retention_offers": Reveal(f"offered_at <= {NOW}"),
    "serving.predictions": Reveal(
        f"request_ts <= {NOW} AND (source = 'batch' OR request_ts < {LIVE_START})", live=True
    ),
    "retrieval.search_log": Reveal(f"request_ts < {LIVE_START}", live=True),
    "monitoring.model_performance_daily": Reveal(f"label_available_at <= {NOW}"),
    "monitoring.alerts": Reveal(f"started_at <= {NOW}"),
    "monitoring.drift_daily": Reveal(f"report_date < {LIVE_START}::DATE", live=True),
    "monitoring.drift_feature_daily": Reveal(f"report_date < {LIVE_START}::DATE", live=True),
    "ops.changelog": Reveal(f"ts <= {NOW}"),
    "ops.feature_job_runs": Reveal(f"finished_at <= {NOW}"),
    "ops.materialization_runs": Reveal(f"materialized_at < {LIVE_START}", live=True),
    "telemetry.logs": Reveal(
        f"ts <= {NOW} AND (ts < {LIVE_START} OR service NOT IN ({LIVE_LOG_SERVICES}))",
        live=True,
    ),
    "telemetry.metrics": Reveal(
        f"{METRIC_COMPLETE} <= {NOW} AND (ts < {LIVE_START} OR service NOT IN ('model-server', "
        "'retrieval'))",
        live=True,
    ),
}

# Columns that describe a later moment than the row's own (a ticket resolved after now).
MASKED: dict[str, dict[str, str]] = {
    "raw.support_tickets": {"resolved_at": f"CASE WHEN resolved_at <= {NOW} THEN resolved_at END"},
    "monitoring.alerts": {"last_breach_at": f"least(last_breach_at, {NOW})"},
}


def live_table(table: str) -> str:
    schema, name = table.split(".")
    return f"live.{schema}__{name}"


def production_table(table: str) -> str:
    """The view of `table`'s live rows that production made, none of any session's own."""
    schema, name = table.split(".")
    return f"live.production__{schema}__{name}"


def view_columns(table: str, columns: list[str]) -> list[str]:
    """The columns of the candidate-facing view of `table`, whose world table has `columns`."""
    return [*columns, CLIENT] if table in CLIENT_TABLES else list(columns)


def added_columns() -> list[tuple[str, str, str, str]]:
    """What the views add to the world's tables, for the schema browser: (table, column, type,
    description)."""
    return [(table, CLIENT, "VARCHAR", VIEW_COLUMNS[table][CLIENT]) for table in CLIENT_TABLES]


def view_sql(table: str, world: str, columns: list[str]) -> str:
    """The candidate-facing view of `table` from the world attached as catalog `world`."""
    reveal = REVEAL.get(table)
    masked = MASKED.get(table, {})
    select = ", ".join(f"{masked[c]} AS {c}" if c in masked else c for c in columns)
    world_select = live_select = select
    if table in CLIENT_TABLES:
        world_select += f", '{PRODUCTION_CLIENT}' AS {CLIENT}"
        live_select += (
            f", CASE WHEN session_id IS NULL THEN '{PRODUCTION_CLIENT}' "
            f"ELSE '{WORKSPACE_CLIENT}' END AS {CLIENT}"
        )
    body = f"SELECT {world_select} FROM {world}.{table}"
    if reveal is None:
        return body
    body += f" WHERE {reveal.when}"
    if reveal.live:
        body += f" UNION ALL BY NAME SELECT {live_select} FROM {live_table(table)} WHERE "
        body += METRIC_COMPLETE if table == "telemetry.metrics" else _time_column(table)
        body += f" <= {NOW} AND {VISIBLE}"
    return body


def _time_column(table: str) -> str:
    return {
        "serving.predictions": "request_ts",
        "retrieval.search_log": "request_ts",
        "monitoring.drift_daily": "report_date",
        "monitoring.drift_feature_daily": "report_date",
        "ops.materialization_runs": "materialized_at",
        "telemetry.logs": "ts",
        "telemetry.metrics": "ts",
    }[table]
