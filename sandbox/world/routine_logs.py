"""The ordinary info lines of the stack's components that the simulation does not log as it runs:
online-store loads, drift reports, the feature server, the streaming feature job, the ingest jobs,
the label job, alert evaluation and the retrieval service's requests.

Every line is derived from the tables the component acted on, after the build wrote them, so the
logs agree with the data: a component the changelog names has its everyday lines, whatever else
happened to it. The materialization, drift and feature-server lines are the ones the scheduled
jobs and the model server write live (they format with the functions here), so history and live
look alike.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import duckdb
import polars as pl

from sandbox.clock import Calendar
from sandbox.logs import LOG_SCHEMA
from sandbox.product import HOURLY_TRAFFIC

# The log `service` of each component, as the changelog names it where it does.
MATERIALIZATION = "materialization"
DRIFT_MONITOR = "drift-monitor"
FEATURE_SERVER = "feature-server"
ONLINE_STORE = "online-store"
FEATURE_STREAM = "feature-stream"
BILLING_INGEST = "billing-ingest"
PLAYBACK_INGEST = "playback-ingest"
LABELS = "labels"
MONITORING = "monitoring"
RETRIEVAL = "retrieval"
SERVICES = (
    MATERIALIZATION,
    DRIFT_MONITOR,
    FEATURE_SERVER,
    ONLINE_STORE,
    FEATURE_STREAM,
    BILLING_INGEST,
    PLAYBACK_INGEST,
    LABELS,
    MONITORING,
    RETRIEVAL,
)
DRIFT_DELAY = dt.timedelta(minutes=30)  # a day's report runs after the end of the day
ONLINE_SWAP_DELAY = dt.timedelta(minutes=2)  # the store swaps a load in after the job finishes
LABEL_JOB_HOUR = 2
ALERT_EVALUATION = dt.timedelta(minutes=15)  # past midnight: the daily rule summary


def materialization_message(rows: int, newest: str | None) -> str:
    return f"online store loaded: {rows} rows, newest event_timestamp {newest}"


def drift_message(report_date: str, n_drifted: int, n_features: int, n_rows: int) -> str:
    return (
        f"drift report for {report_date}: {n_drifted} of {n_features} features drifted over "
        f"{n_rows} rows"
    )


def routine_logs(con: duckdb.DuckDBPyConnection, calendar: Calendar) -> pl.DataFrame:
    """Every component's ordinary lines over the world in `con`, LOG_SCHEMA columns."""
    parts: list[Callable[[duckdb.DuckDBPyConnection, Calendar], pl.DataFrame]] = [
        _materialization,
        _drift,
        _feature_server,
        _online_store,
        _feature_stream,
        _billing_ingest,
        _playback_ingest,
        _labels,
        _monitoring,
        _retrieval,
    ]
    return pl.concat([part(con, calendar) for part in parts]).select(list(LOG_SCHEMA))


def _lines(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """A few lines built one by one (a handful a day), attrs as the live services write them."""
    return pl.DataFrame(
        [{**r, "attrs": json.dumps(r["attrs"], sort_keys=True, default=str)} for r in rows],
        schema=LOG_SCHEMA,
    )


def _materialization(con: duckdb.DuckDBPyConnection, _: Calendar) -> pl.DataFrame:
    runs = con.sql(
        "SELECT materialized_at, rows, max_event_timestamp FROM ops.materialization_runs "
        "WHERE status = 'success' ORDER BY materialized_at"
    ).fetchall()
    lines = []
    for at, rows, newest in runs:
        stamp = newest.isoformat() if newest is not None else None
        lines.append(
            {
                "ts": at,
                "service": MATERIALIZATION,
                "level": "info",
                "event": "materialization_finished",
                "message": materialization_message(int(rows), stamp),
                "attrs": {"rows": int(rows), "max_event_timestamp": stamp},
            }
        )
    return _lines(lines)


def _drift(con: duckdb.DuckDBPyConnection, _: Calendar) -> pl.DataFrame:
    reports = con.sql(
        """
        SELECT d.report_date, d.n_rows, d.n_features, d.n_drifted, d.share_drifted,
               d.dataset_drift,
               coalesce(list(f.feature ORDER BY f.feature) FILTER (WHERE f.drifted), []) AS drifted
        FROM monitoring.drift_daily d
        LEFT JOIN monitoring.drift_feature_daily f USING (report_date)
        GROUP BY ALL
        ORDER BY d.report_date
        """
    ).fetchall()
    lines = []
    for day, n_rows, n_features, n_drifted, share, dataset_drift, drifted in reports:
        report_date = day.isoformat()
        lines.append(
            {
                "ts": dt.datetime.combine(day + dt.timedelta(days=1), dt.time()) + DRIFT_DELAY,
                "service": DRIFT_MONITOR,
                "level": "warning" if dataset_drift else "info",
                "event": "drift_report_finished",
                "message": drift_message(report_date, n_drifted, n_features, n_rows),
                "attrs": {
                    "report_date": report_date,
                    "n_rows": n_rows,
                    "n_drifted": n_drifted,
                    "share_drifted": share,
                    "dataset_drift": dataset_drift,
                    "drifted_features": drifted,
                },
            }
        )
    return _lines(lines)


def _frame(con: duckdb.DuckDBPyConnection, sql: str, **params: Any) -> pl.DataFrame:
    """Lines selected in SQL: ts, service, level, event, message, attrs."""
    return con.sql(sql, params=params or None).pl().cast(LOG_SCHEMA)  # type: ignore[arg-type]


def online_lookup_path(customer_id: int | None) -> str:
    """The feature server's path for one customer's online row (its collection without one)."""
    base = "/online/customer_features"
    return base if customer_id is None else f"{base}/{customer_id}"


def _feature_server(con: duckdb.DuckDBPyConnection, _: Calendar) -> pl.DataFrame:
    # Each online prediction read its customer's row from the feature server first.
    return _frame(
        con,
        f"""
        SELECT request_ts AS ts, '{FEATURE_SERVER}' AS service, 'info' AS level,
               'lookup' AS event,
               format('GET {online_lookup_path(None)}/{{}} 200', customer_id) AS message,
               format('{{{{"customer_id": {{}}, "status": 200}}}}', customer_id) AS attrs
        FROM serving.predictions
        WHERE source = 'online'
        """,
    )


def _online_store(con: duckdb.DuckDBPyConnection, _: Calendar) -> pl.DataFrame:
    return _frame(
        con,
        f"""
        SELECT materialized_at + to_seconds({ONLINE_SWAP_DELAY.total_seconds()}) AS ts,
               '{ONLINE_STORE}' AS service, 'info' AS level, 'load_swapped_in' AS event,
               format('new load swapped in: {{}} customer keys', rows) AS message,
               format('{{{{"keys": {{}}, "load": "{{}}"}}}}', rows,
                      strftime(materialized_at, '%Y-%m-%dT%H:%M:%S')) AS attrs
        FROM ops.materialization_runs
        WHERE status = 'success'
        """,
    )


def _feature_stream(con: duckdb.DuckDBPyConnection, _: Calendar) -> pl.DataFrame:
    # Playback events stream in through the day in the shape of the traffic.
    return _frame(
        con,
        f"""
        WITH days AS (
          SELECT activity_date, sum(sessions) AS sessions
          FROM raw.viewing_activity GROUP BY 1
        ),
        share AS (
          SELECT hour, $shares[hour + 1] AS share FROM (SELECT unnest(range(24)) AS hour)
        )
        SELECT activity_date + to_hours(h.hour + 1) AS ts, '{FEATURE_STREAM}' AS service,
               'info' AS level, 'checkpoint' AS event,
               format('checkpoint committed: {{}} playback events in the last hour',
                      round(d.sessions * h.share)::BIGINT) AS message,
               format('{{{{"events": {{}}, "lag_s": {{}}}}}}', round(d.sessions * h.share)::BIGINT,
                      1 + (hash(d.activity_date, h.hour) % 4)) AS attrs
        FROM days d CROSS JOIN share h
        """,
        shares=(HOURLY_TRAFFIC / HOURLY_TRAFFIC.sum()).tolist(),
    )


def _billing_ingest(con: duckdb.DuckDBPyConnection, _: Calendar) -> pl.DataFrame:
    return _frame(
        con,
        f"""
        SELECT date_trunc('hour', ingested_at) + INTERVAL 1 HOUR AS ts,
               '{BILLING_INGEST}' AS service, 'info' AS level, 'batch_written' AS event,
               format('wrote {{}} payment events to raw.billing_events', count(*)) AS message,
               format('{{{{"events": {{}}}}}}', count(*)) AS attrs
        FROM raw.billing_events
        GROUP BY 1
        """,
    )


def _playback_ingest(con: duckdb.DuckDBPyConnection, _: Calendar) -> pl.DataFrame:
    return _frame(
        con,
        f"""
        SELECT max(ingested_at) AS ts, '{PLAYBACK_INGEST}' AS service, 'info' AS level,
               'load_finished' AS event,
               format('loaded {{}} viewing-activity rows for {{}}', count(*), activity_date)
                 AS message,
               format('{{{{"activity_date": "{{}}", "rows": {{}}}}}}', activity_date, count(*))
                 AS attrs
        FROM raw.viewing_activity
        GROUP BY activity_date
        """,
    )


def _labels(con: duckdb.DuckDBPyConnection, _: Calendar) -> pl.DataFrame:
    return _frame(
        con,
        f"""
        SELECT label_available_at::DATE + to_hours({LABEL_JOB_HOUR}) AS ts, '{LABELS}' AS service,
               'info' AS level, 'labels_joined' AS event,
               format('joined {{}} churn labels ({{}} positive)', count(*), sum(churned)::BIGINT)
                 AS message,
               format('{{{{"labels": {{}}, "positive": {{}}}}}}', count(*), sum(churned)::BIGINT)
                 AS attrs
        FROM labels.churn_labels
        GROUP BY label_available_at::DATE
        """,
    )


def _monitoring(con: duckdb.DuckDBPyConnection, calendar: Calendar) -> pl.DataFrame:
    return _frame(
        con,
        f"""
        WITH days AS (
          SELECT unnest(range($first, $last, INTERVAL 1 DAY)) + $delay AS ts
        ),
        rules AS (SELECT count(*) AS n FROM monitoring.alert_rules)
        SELECT d.ts, '{MONITORING}' AS service, 'info' AS level, 'rules_evaluated' AS event,
               format('evaluated {{}} alert rules, {{}} firing', r.n, count(a.alert)) AS message,
               format('{{{{"firing": {{}}, "rules": {{}}}}}}', count(a.alert), r.n) AS attrs
        FROM days d CROSS JOIN rules r
        LEFT JOIN monitoring.alerts a ON a.started_at <= d.ts AND a.last_breach_at >= d.ts
        GROUP BY d.ts, r.n
        """,
        first=calendar.midnight(calendar.first_day),
        last=calendar.midnight(calendar.last_visible_day + 1),
        delay=ALERT_EVALUATION,
    )


def _retrieval(con: duckdb.DuckDBPyConnection, _: Calendar) -> pl.DataFrame:
    # As the live service logs each request.
    attrs = (
        '{{"encoder_version": {}, "index_version": "{}", "k": {}, "request_id": {}, '
        '"status": 200, "ticket_id": {}}}'
    )
    return _frame(
        con,
        f"""
        SELECT request_ts AS ts, '{RETRIEVAL}' AS service, 'info' AS level, 'request' AS event,
               format('POST /search 200 {{}}ms', round(latency_ms, 1)) AS message,
               format('{attrs}', encoder_version, index_version, len(top_k_ids), request_id,
                      ticket_id) AS attrs
        FROM retrieval.search_log
        """,
    )
