"""Service metric time series, derived from the logs of what the services did.

One long table, `telemetry.metrics` (ts, service, metric, label, value), in Prometheus spirit:
5-minute series for request traffic, hourly for retrieval quality, daily for model outputs,
feature health and business KPIs.
"""

from __future__ import annotations

import duckdb
import polars as pl

from sandbox import schema

METRIC_TABLE = "telemetry.metrics"


def _bucketed_requests(
    con: duckdb.DuckDBPyConnection, table: str = "serving.predictions"
) -> pl.DataFrame:
    return (
        con.sql(
            f"""
        WITH b AS (
            SELECT time_bucket(INTERVAL 5 MINUTE, request_ts) AS ts,
                   count(*) / 300.0 AS requests_per_second,
                   avg(CASE WHEN status = 'error' THEN 1.0 ELSE 0.0 END) AS error_ratio,
                   quantile_cont(latency_ms, 0.5) AS latency_p50_ms,
                   quantile_cont(latency_ms, 0.95) AS latency_p95_ms,
                   quantile_cont(latency_ms, 0.99) AS latency_p99_ms
            FROM {table} WHERE source = 'online' GROUP BY 1
        )
        UNPIVOT b ON requests_per_second, error_ratio, latency_p50_ms, latency_p95_ms,
                     latency_p99_ms
        INTO NAME metric VALUE value
        """
        )
        .pl()
        .with_columns(pl.lit("model-server").alias("service"), pl.lit("").alias("label"))
    )


def _model_outputs(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    return (
        con.sql(
            """
        WITH d AS (
            SELECT date_trunc('day', request_ts) AS ts,
                   quantile_cont(score, 0.5) AS score_p50,
                   quantile_cont(score, 0.9) AS score_p90,
                   quantile_cont(score, 0.99) AS score_p99,
                   avg(CASE WHEN decision THEN 1.0 ELSE 0.0 END) AS positive_rate
            FROM serving.predictions WHERE source = 'batch' GROUP BY 1
        )
        UNPIVOT d ON score_p50, score_p90, score_p99, positive_rate
        INTO NAME metric VALUE value
        """
        )
        .pl()
        .with_columns(pl.lit("batch-scoring").alias("service"), pl.lit("").alias("label"))
    )


def _retrieval(con: duckdb.DuckDBPyConnection, table: str = "retrieval.search_log") -> pl.DataFrame:
    return (
        con.sql(
            f"""
        WITH h AS (
            SELECT time_bucket(INTERVAL 1 HOUR, request_ts) AS ts,
                   count(*) / 3600.0 AS requests_per_second,
                   avg(top1_score) AS top1_similarity,
                   avg(CASE WHEN clicked_article_id IS NOT NULL THEN 1.0 ELSE 0.0 END)
                       AS click_through_rate,
                   quantile_cont(latency_ms, 0.95) AS latency_p95_ms
            FROM {table} GROUP BY 1
        )
        UNPIVOT h ON requests_per_second, top1_similarity, click_through_rate, latency_p95_ms
        INTO NAME metric VALUE value
        """
        )
        .pl()
        .with_columns(pl.lit("retrieval").alias("service"), pl.lit("").alias("label"))
    )


def _business(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    return (
        con.sql(
            """
        WITH days AS (
            SELECT DISTINCT date_trunc('day', request_ts) AS ts, count(*) AS active
            FROM serving.predictions WHERE source = 'batch' GROUP BY 1
        ), cancels AS (
            SELECT date_trunc('day', event_ts) AS ts, count(*) AS n
            FROM raw.subscription_events WHERE event_type = 'cancel' GROUP BY 1
        ), offers AS (
            SELECT date_trunc('day', offered_at) AS ts, count(*) AS n
            FROM crm.retention_offers GROUP BY 1
        ), k AS (
            SELECT d.ts, d.active::DOUBLE AS active_subscribers,
                   coalesce(c.n, 0)::DOUBLE AS cancellations,
                   coalesce(c.n, 0) / d.active::DOUBLE AS daily_churn_rate,
                   coalesce(o.n, 0)::DOUBLE AS retention_offers_sent
            FROM days d LEFT JOIN cancels c USING (ts) LEFT JOIN offers o USING (ts)
        )
        UNPIVOT k ON active_subscribers, cancellations, daily_churn_rate, retention_offers_sent
        INTO NAME metric VALUE value
        """
        )
        .pl()
        .with_columns(pl.lit("business").alias("service"), pl.lit("").alias("label"))
    )


SERIES_SCHEMA = schema.polars_schema(METRIC_TABLE)
# The services that keep running live; their series are computed from live traffic instead.
LIVE_SERIES_SERVICES = schema.LIVE_SERIES_SERVICES


def live_service_series(
    con: duckdb.DuckDBPyConnection, predictions: str, searches: str
) -> pl.DataFrame:
    """The request and retrieval series of LIVE_SERIES_SERVICES, from tables of live traffic."""
    return _finish([_bucketed_requests(con, predictions), _retrieval(con, searches)])


def _finish(frames: list[pl.DataFrame]) -> pl.DataFrame:
    return (
        pl.concat([f.select(list(SERIES_SCHEMA)).cast(SERIES_SCHEMA) for f in frames])
        .with_columns(pl.col("value").round(6))
        .sort("ts", "service", "metric", "label")
    )


def build_series(con: duckdb.DuckDBPyConnection, feature_health: pl.DataFrame) -> pl.DataFrame:
    """All metric series; `feature_health` comes from the feature job (ts, metric, label, value)."""
    return _finish(
        [
            _bucketed_requests(con),
            _model_outputs(con),
            _retrieval(con),
            _business(con),
            feature_health.with_columns(pl.lit("feature-job").alias("service")),
        ]
    )
