"""One-line descriptions of every table and column of a built world the candidate sees (the schema
browser shows them; the columns the running stack's views add are described with those views)."""

from __future__ import annotations

from sandbox.pipeline.features import Feature
from sandbox.world.warehouse import Warehouse

TABLES: dict[str, tuple[str, dict[str, str]]] = {
    "raw.customers": (
        "Subscribers from the CRM, one row per customer.",
        {
            "signup_date": "Date the subscription started.",
            "monthly_price": "Current plan price in USD.",
            "channel": "Acquisition channel.",
            "device": "Primary device.",
        },
    ),
    "raw.viewing_activity": (
        "Daily viewing per customer from app telemetry (days with sessions).",
        {
            "minutes_watched": "Minutes watched that day, as reported by the player.",
            "playback_errors": "Playback errors reported that day.",
            "ingested_at": "When the row landed in the warehouse.",
        },
    ),
    "raw.billing_events": (
        "Payment attempts from the payment provider.",
        {
            "attempt": "1 for the monthly charge, 2+ for automatic retries.",
        },
    ),
    "raw.support_tickets": (
        "Support tickets with the customer's text.",
        {
            "resolved_at": "When the ticket was resolved; NULL if it never was.",
        },
    ),
    "raw.subscription_events": (
        "Signups and cancellations.",
        {
            "reason": "For cancellations: voluntary or payment_failed.",
        },
    ),
    "feature_store.customer_features": (
        "Offline store: daily feature rows per customer.",
        {
            "event_timestamp": "End of the data window the row describes.",
            "created_timestamp": "When the feature job wrote the row.",
        },
    ),
    "feature_store.customer_features_online": (
        "Online store: latest row per customer.",
        {
            "materialized_at": "When the row was loaded into the online store.",
        },
    ),
    "feature_store.imputation_policy": (
        "How the feature job fills missing values.",
        {
            "effective_from": "First feature timestamp the fill value applies to.",
        },
    ),
    "ops.feature_job_runs": (
        "One row per daily feature-job run.",
        {
            "nulls_seen": "Missing values found before imputation.",
            "nulls_imputed": "Missing values filled by the imputation policy.",
        },
    ),
    "ops.materialization_runs": ("Loads of the online store.", {}),
    "ops.changelog": ("Deploys, config changes, upstream notices, incidents, on-call notes.", {}),
    "training.churn_training_set": (
        "The churn model's training set (point-in-time features).",
        {
            "churned": "Label: cancelled within 14 days of score_date.",
            "split": "train or holdout.",
        },
    ),
    "serving.predictions": (
        "Every prediction: features as served, score, decision, latency.",
        {
            "source": "batch (06:00 daily scoring) or online (API request).",
            "decision": "Flagged for a retention offer.",
        },
    ),
    "crm.retention_offers": ("Retention offers sent to flagged customers.", {}),
    "labels.churn_labels": (
        "Delayed churn labels per scored customer and day.",
        {
            "label_available_at": "When the label became known.",
        },
    ),
    "retrieval.help_articles": ("Help-center articles the retrieval service indexes.", {}),
    "retrieval.search_log": (
        "Article suggestions for each ticket, and the agent's click.",
        {
            "top1_score": "Similarity of the best suggestion.",
            "click_rank": "Rank of the suggestion the agent clicked; NULL if none.",
        },
    ),
    "monitoring.model_performance_daily": ("Model quality per score date, once labels arrive.", {}),
    "monitoring.drift_feature_daily": ("Per-feature drift vs the training reference, per day.", {}),
    "monitoring.drift_daily": ("Dataset-level drift per day.", {}),
    "monitoring.drift_reference": ("The training reference the drift reports compare against.", {}),
    "monitoring.alerts": ("Alerts that fired.", {}),
    "monitoring.alert_rules": ("The alert rules in force.", {}),
    "telemetry.metrics": ("Service metric time series (ts, service, metric, label, value).", {}),
    "telemetry.logs": ("Structured logs from every job and service.", {}),
}


def apply(warehouse: Warehouse, features: dict[str, Feature]) -> None:
    warehouse.flush()  # tables appended last exist only once flushed
    existing = {
        r[0]
        for r in warehouse.con.execute(
            "SELECT schema_name || '.' || table_name FROM duckdb_tables()"
        ).fetchall()
    }
    for table, (text, columns) in TABLES.items():
        if table in existing:
            warehouse.comment(table, text, columns)
    for table in (
        "feature_store.customer_features",
        "feature_store.customer_features_online",
        "serving.predictions",
        "training.churn_training_set",
    ):
        if table in existing:
            warehouse.comment(
                table, TABLES[table][0], {name: f.description for name, f in features.items()}
            )
