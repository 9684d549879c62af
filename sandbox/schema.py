"""The data model: every table of a built world the candidate sees, declared once.

A table is declared with its columns (name, DuckDB type, description), a one-line description,
how the candidate's views reveal its rows as simulated time passes, the column that identifies a
row, and whether the running stack adds rows to it (and which service). Everything else is derived
from the declaration:

- the warehouse creates each table from it (`Table.create_sql`, `Table.comment_sql`), so a
  world's column order and types do not depend on the rows written first;
- the gateway's clock-filtered views apply its reveal rule, live rows and masked columns;
- the SQL console's schema browser shows its descriptions (written into the world as comments);
- the spool checks every live row against its columns and types (`sandbox.services.spool`);
- the row builders (batch and online predictions, log lines, drift rows, metric points) take
  their columns and types from it (`names`, `polars_schema`).

A planted fault may add columns to a table (a release trained with a new feature): it declares
them itself (`Planted.adds_columns`), and the world it is planted in extends the declared tables
with them, after the declared columns (`with_added`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import polars as pl

# DuckDB types the world uses, and the Polars type a frame of each holds.
POLARS_TYPES: dict[str, pl.DataType] = {
    "BIGINT": pl.Int64(),
    "INTEGER": pl.Int32(),
    "TINYINT": pl.Int8(),
    "DOUBLE": pl.Float64(),
    "VARCHAR": pl.Utf8(),
    "BOOLEAN": pl.Boolean(),
    "TIMESTAMP": pl.Datetime("us"),
    "DATE": pl.Date(),
    "BIGINT[]": pl.List(pl.Int64),
    "DOUBLE[]": pl.List(pl.Float64),
}
TIME_TYPES = ("TIMESTAMP", "DATE")


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # a DuckDB type, one of POLARS_TYPES
    description: str = ""  # shown in the schema browser; empty: none
    # A column naming a moment later than the row's own (a ticket resolved after it was opened):
    # "hidden" shows NULL until that moment has passed, "capped" shows it as no later than now.
    later: Literal["hidden", "capped"] | None = None

    def __post_init__(self) -> None:
        if self.type not in POLARS_TYPES:
            raise ValueError(f"column {self.name}: unknown type {self.type!r}")


@dataclass(frozen=True)
class Reveal:
    """When the candidate's view shows a row: once `column` (a TIMESTAMP or DATE of the row) is at
    or before the simulated now, or, if `exists` is given, once that SQL expression over the row
    is. A DATE column counts as reached from the start of its day. `column` None: the table is
    shown whole (reference data, and what was settled before live time). `newest`: of the rows
    revealed, only those with the newest `column` (a store each load replaces whole)."""

    column: str | None
    exists: str | None = None
    newest: bool = False


WHOLE = Reveal(None)

# The live services of a running stack, by the name they spool under (`sandbox.services`).
MODEL_SERVER = "model-server"
RETRIEVAL = "retrieval"
SCHEDULER = "scheduler"  # the scheduled jobs: materialization and the drift monitor
GATEWAY = "gateway"
EVERY_SERVICE = "*"  # every process of the stack writes log lines
SERVED_ALIAS = "champion"  # the registry alias the model servers follow
# SQL: the first daily batch the live model server runs itself (after a change applied from the
# ops console); the world's batch rows and lines stand before it. Set per query with the clock.
WORLD_BATCH_UNTIL = "getvariable('world_batch_until')"
# The services whose metric series (and alerts) the gateway computes from their live rows; of the
# world's series and alerts, those of the other services are still shown after live start.
LIVE_SERIES_SERVICES = (MODEL_SERVER, RETRIEVAL)
NOT_LIVE_SERIES = f"service NOT IN ({', '.join(repr(s) for s in LIVE_SERIES_SERVICES)})"


@dataclass(frozen=True)
class Live:
    """Rows a running stack adds while simulated time passes the end of the built world.

    From live start, the live rows take the place of the world's own: the world simulated the
    live days too, but only rows that `kept` selects (SQL over a row) are still shown from it
    after live start. `services` spool the live rows; with `spooled` false the gateway computes
    them instead (from other live rows). `client` describes the column the candidate's view adds
    to say whose call a row came from, for tables a candidate session's own calls add rows to."""

    services: tuple[str, ...]
    kept: str | None = None
    spooled: bool = True
    client: str | None = None
    # Of a table the gateway computes (`spooled` false): services that spool rows of it all the
    # same, shown beside the computed ones (the scheduler's restored metric points).
    spooled_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    name: str  # schema.table
    description: str
    columns: tuple[Column, ...]
    reveal: Reveal
    id: str | None = None  # the column naming a row; live rows without one are numbered
    live: Live | None = None

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: a column is declared twice")
        for column in (self.reveal.column, self.id):
            if column is not None and column not in names:
                raise ValueError(f"{self.name}: no column {column!r}")
        if self.reveal.column and self.column(self.reveal.column).type not in TIME_TYPES:
            raise ValueError(f"{self.name}: rows are revealed by a TIMESTAMP or DATE column")

    @property
    def schema(self) -> str:
        return self.name.split(".")[0]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    def polars_schema(self) -> dict[str, pl.DataType]:
        return {c.name: POLARS_TYPES[c.type] for c in self.columns}

    def create_sql(self, name: str | None = None, extra: Iterable[Column] = ()) -> str:
        """The table's DDL, as `name` (default: its own), with `extra` columns after its own."""
        columns = ", ".join(f'"{c.name}" {c.type}' for c in (*self.columns, *extra))
        return f"CREATE TABLE {name or self.name} ({columns})"

    def comment_sql(self) -> list[str]:
        """The descriptions the schema browser shows, as COMMENT statements."""
        statements = [f"COMMENT ON TABLE {self.name} IS $${self.description}$$"]
        statements += [
            f'COMMENT ON COLUMN {self.name}."{c.name}" IS $${c.description}$$'
            for c in self.columns
            if c.description
        ]
        return statements


# -- the churn model's features ----------------------------------------------------------------


@dataclass(frozen=True)
class Feature:
    description: str
    source: str  # the raw table or column it is computed from


FEATURES: dict[str, Feature] = {
    "tenure_days": Feature("Days since signup.", "raw.customers.signup_date"),
    "monthly_price": Feature("Current plan price (USD).", "raw.customers.monthly_price"),
    "sessions_7d": Feature("Viewing sessions in the last 7 days.", "raw.viewing_activity.sessions"),
    "sessions_28d": Feature(
        "Viewing sessions in the last 28 days.", "raw.viewing_activity.sessions"
    ),
    "sessions_trend": Feature(
        "Daily sessions, last 7 days over last 28 days.", "raw.viewing_activity.sessions"
    ),
    "days_since_last_session": Feature(
        "Days since the last viewing session (28 = none in 28 days).", "raw.viewing_activity"
    ),
    "avg_daily_minutes_7d": Feature(
        "Average minutes watched per day, last 7 days.", "raw.viewing_activity.minutes_watched"
    ),
    "avg_daily_minutes_28d": Feature(
        "Average minutes watched per day, last 28 days.", "raw.viewing_activity.minutes_watched"
    ),
    "minutes_per_session_28d": Feature(
        "Average minutes per viewing session, last 28 days.",
        "raw.viewing_activity.minutes_watched",
    ),
    "playback_errors_7d": Feature(
        "Playback errors in the last 7 days.", "raw.viewing_activity.playback_errors"
    ),
    "payment_failures_30d": Feature(
        "Failed payment attempts in the last 30 days.", "raw.billing_events.status"
    ),
    "tickets_30d": Feature("Support tickets opened in the last 30 days.", "raw.support_tickets"),
    "unresolved_tickets_30d": Feature(
        "Tickets from the last 30 days still unresolved.", "raw.support_tickets.resolved_at"
    ),
}
FEATURE_COLUMNS = tuple(Column(name, "DOUBLE", f.description) for name, f in FEATURES.items())


def _columns(*specs: str | Column | tuple[Column, ...]) -> tuple[Column, ...]:
    """Columns from "name TYPE" shorthands, Columns and runs of Columns."""
    out: list[Column] = []
    for spec in specs:
        if isinstance(spec, str):
            name, type_ = spec.split(" ", 1)
            out.append(Column(name, type_))
        elif isinstance(spec, Column):
            out.append(spec)
        else:
            out.extend(spec)
    return tuple(out)


# A metric point is stamped with the start of its bucket; it exists once the bucket is over.
METRIC_COMPLETE = (
    "CASE service WHEN 'model-server' THEN ts + INTERVAL 5 MINUTE "
    "WHEN 'retrieval' THEN ts + INTERVAL 1 HOUR WHEN 'feature-job' THEN ts "
    "ELSE ts + INTERVAL 1 DAY END"
)

# -- the tables, in the order the schema browser lists their schemas ----------------------------

_DECLARED = (
    Table(
        "raw.customers",
        "Subscribers from the CRM, one row per customer.",
        _columns(
            "customer_id BIGINT",
            Column("signup_date", "DATE", "Date the subscription started."),
            "plan VARCHAR",
            Column("monthly_price", "DOUBLE", "Current plan price in USD."),
            "region VARCHAR",
            Column("device", "VARCHAR", "Primary device."),
            Column("channel", "VARCHAR", "Acquisition channel."),
            "payment_method VARCHAR",
        ),
        Reveal("signup_date"),
        id="customer_id",
    ),
    Table(
        "raw.viewing_activity",
        "Daily viewing per customer from app telemetry (days with sessions).",
        _columns(
            "customer_id BIGINT",
            "activity_date DATE",
            "sessions BIGINT",
            Column(
                "minutes_watched", "DOUBLE", "Minutes watched that day, as reported by the player."
            ),
            Column("playback_errors", "BIGINT", "Playback errors reported that day."),
            "app_version VARCHAR",
            "device VARCHAR",
            Column("ingested_at", "TIMESTAMP", "When the row landed in the warehouse."),
        ),
        Reveal("ingested_at"),
    ),
    Table(
        "raw.billing_events",
        "Payment attempts from the payment provider.",
        _columns(
            "event_id BIGINT",
            "customer_id BIGINT",
            "event_ts TIMESTAMP",
            "amount DOUBLE",
            "currency VARCHAR",
            "status VARCHAR",
            Column("attempt", "BIGINT", "1 for the monthly charge, 2+ for automatic retries."),
            "payment_method VARCHAR",
            "ingested_at TIMESTAMP",
        ),
        Reveal("ingested_at"),
        id="event_id",
    ),
    Table(
        "raw.support_tickets",
        "Support tickets with the customer's text.",
        _columns(
            "ticket_id BIGINT",
            "customer_id BIGINT",
            "created_at TIMESTAMP",
            "channel VARCHAR",
            "topic VARCHAR",
            "body VARCHAR",
            Column(
                "resolved_at",
                "TIMESTAMP",
                "When the ticket was resolved; NULL if it never was.",
                later="hidden",
            ),
            "ingested_at TIMESTAMP",
        ),
        Reveal("ingested_at"),
        id="ticket_id",
    ),
    Table(
        "raw.subscription_events",
        "Signups and cancellations.",
        _columns(
            "customer_id BIGINT",
            "event_type VARCHAR",
            "event_ts TIMESTAMP",
            Column("reason", "VARCHAR", "For cancellations: voluntary or payment_failed."),
            "ingested_at TIMESTAMP",
        ),
        Reveal("ingested_at"),
    ),
    Table(
        "feature_store.customer_features",
        "Offline store: daily feature rows per customer.",
        _columns(
            "customer_id BIGINT",
            Column("event_timestamp", "TIMESTAMP", "End of the data window the row describes."),
            Column("created_timestamp", "TIMESTAMP", "When the feature job wrote the row."),
            FEATURE_COLUMNS,
        ),
        Reveal("created_timestamp"),
    ),
    Table(
        "feature_store.customer_features_online",
        "Online store: latest row per customer, as of the newest load.",
        _columns(
            "customer_id BIGINT",
            "event_timestamp TIMESTAMP",
            "created_timestamp TIMESTAMP",
            FEATURE_COLUMNS,
            Column(
                "materialized_at", "TIMESTAMP", "When the row was loaded into the online store."
            ),
        ),
        Reveal("materialized_at", newest=True),
        id="customer_id",
    ),
    Table(
        "feature_store.imputation_policy",
        "How the feature job fills missing values.",
        _columns(
            "feature VARCHAR",
            "strategy VARCHAR",
            "fill_value DOUBLE",
            Column(
                "effective_from",
                "TIMESTAMP",
                "First feature timestamp the fill value applies to.",
            ),
        ),
        WHOLE,  # a policy settled before live time
    ),
    Table(
        "training.churn_training_set",
        "The churn model's training set (point-in-time features).",
        _columns(
            "customer_id BIGINT",
            "score_date DATE",
            "score_ts TIMESTAMP",
            "feature_event_ts TIMESTAMP",
            FEATURE_COLUMNS,
            Column("churned", "TINYINT", "Label: cancelled within 14 days of score_date."),
            "label_available_at TIMESTAMP",
            "model_version VARCHAR",
            Column("split", "VARCHAR", "train or holdout."),
        ),
        WHOLE,  # every release is trained within production
    ),
    Table(
        "serving.predictions",
        "Every prediction: features as served, score, decision, latency.",
        _columns(
            "prediction_id BIGINT",
            "request_ts TIMESTAMP",
            Column("source", "VARCHAR", "batch (06:00 daily scoring) or online (API request)."),
            "customer_id BIGINT",
            "model_name VARCHAR",
            "model_version VARCHAR",
            FEATURE_COLUMNS,
            "score DOUBLE",
            "threshold DOUBLE",
            Column("decision", "BOOLEAN", "Flagged for a retention offer."),
            "latency_ms DOUBLE",
            "status VARCHAR",
        ),
        Reveal("request_ts"),
        id="prediction_id",
        # The daily batch scoring is no live service: its rows keep coming from the world, until
        # the first batch after a change from the ops console, which the model server runs.
        live=Live(
            (MODEL_SERVER,),
            kept=f"source = 'batch' AND request_ts < {WORLD_BATCH_UNTIL}",
            client="Who requested the prediction: production (the daily batch job and the "
            "production API callers) or workspace (requests sent from this workspace).",
        ),
    ),
    Table(
        "crm.retention_offers",
        "Retention offers sent to flagged customers.",
        _columns(
            "customer_id BIGINT", "offered_at TIMESTAMP", "offer VARCHAR", "model_version VARCHAR"
        ),
        Reveal("offered_at"),
    ),
    Table(
        "finance.weekly_plan",
        "Finance's weekly plan for production, made before it started: the subscriber base on "
        "its pre-history trend, revenue per subscriber at its pre-history average, and the "
        "pre-history churn rate less the retention offers' planned saving.",
        _columns(
            Column(
                "week_start", "DATE", "First day of the plan week; weeks run from production day 1."
            ),
            Column(
                "active_subscribers", "BIGINT", "Planned active subscribers at the week's start."
            ),
            Column("cancellations", "BIGINT", "Planned cancellations in the week."),
            Column(
                "weekly_churn_rate",
                "DOUBLE",
                "Planned cancellations per active subscriber per week.",
            ),
            Column(
                "retention_saving",
                "DOUBLE",
                "Share of pre-history's churn rate the retention offers were planned to save.",
            ),
            Column("revenue", "DOUBLE", "Planned revenue from successful charges, USD."),
            Column("planned_at", "TIMESTAMP", "When the plan was signed off."),
        ),
        WHOLE,  # the plan was made before production
        id="week_start",
    ),
    Table(
        "labels.churn_labels",
        "Delayed churn labels per scored customer and day.",
        _columns(
            "customer_id BIGINT",
            "score_date DATE",
            "churned TINYINT",
            "churn_date DATE",
            "horizon_days INTEGER",
            Column("label_available_at", "TIMESTAMP", "When the label became known."),
        ),
        Reveal("label_available_at"),
    ),
    Table(
        "retrieval.help_articles",
        "Help-center articles the retrieval service indexes.",
        _columns("article_id BIGINT", "topic VARCHAR", "title VARCHAR", "body VARCHAR"),
        WHOLE,
        id="article_id",
    ),
    Table(
        "retrieval.search_log",
        "Article suggestions for each ticket, and the agent's click.",
        _columns(
            "request_id BIGINT",
            "ticket_id BIGINT",
            "request_ts TIMESTAMP",
            "query_text VARCHAR",
            "top_k_ids BIGINT[]",
            "top_k_scores DOUBLE[]",
            Column("top1_score", "DOUBLE", "Similarity of the best suggestion."),
            "encoder_version BIGINT",
            "index_version VARCHAR",
            "latency_ms DOUBLE",
            "clicked_article_id BIGINT",
            Column(
                "click_rank", "BIGINT", "Rank of the suggestion the agent clicked; NULL if none."
            ),
        ),
        Reveal("request_ts"),
        id="request_id",
        live=Live(
            (RETRIEVAL,),
            client="Who sent the search: production (the support desk) or workspace (searches "
            "sent from this workspace).",
        ),
    ),
    Table(
        "monitoring.model_performance_daily",
        "Model quality per score date, once labels arrive.",
        _columns(
            "score_date DATE",
            "segment VARCHAR",
            "segment_value VARCHAR",
            "scored BIGINT",
            "churned BIGINT",
            "churn_rate DOUBLE",
            "flagged_rate DOUBLE",
            "auc DOUBLE",
            "pr_auc DOUBLE",
            "brier DOUBLE",
            "precision DOUBLE",
            "recall DOUBLE",
            "label_available_at TIMESTAMP",
        ),
        Reveal("label_available_at"),
    ),
    Table(
        "monitoring.drift_feature_daily",
        "Per-feature drift vs the training reference, per day.",
        _columns(
            "report_date DATE",
            "feature VARCHAR",
            "stattest VARCHAR",
            "drift_score DOUBLE",
            "threshold DOUBLE",
            "drifted BOOLEAN",
            "reference_mean DOUBLE",
            "current_mean DOUBLE",
            "current_null_share DOUBLE",
        ),
        Reveal("report_date"),
        live=Live((SCHEDULER,)),
    ),
    Table(
        "monitoring.drift_daily",
        "Dataset-level drift per day.",
        _columns(
            "report_date DATE",
            "n_rows BIGINT",
            "n_features BIGINT",
            "n_drifted BIGINT",
            "share_drifted DOUBLE",
            "dataset_drift BOOLEAN",
        ),
        Reveal("report_date"),
        live=Live((SCHEDULER,)),
    ),
    Table(
        "monitoring.drift_reference",
        "The training reference the drift reports compare against.",
        FEATURE_COLUMNS,
        WHOLE,
    ),
    Table(
        "monitoring.alerts",
        "Alerts that fired.",
        _columns(
            "alert VARCHAR",
            "severity VARCHAR",
            "service VARCHAR",
            "label VARCHAR",
            "started_at TIMESTAMP",
            Column("last_breach_at", "TIMESTAMP", later="capped"),
            "peak_value DOUBLE",
            "summary VARCHAR",
        ),
        Reveal("started_at"),
        # The alerts of the live services' series, as the rules fire on their live rows.
        live=Live((GATEWAY,), kept=NOT_LIVE_SERIES, spooled=False),
    ),
    Table(
        "monitoring.alert_rules",
        "The alert rules in force.",
        _columns(
            "name VARCHAR",
            "service VARCHAR",
            "metric VARCHAR",
            "above DOUBLE",
            "below DOUBLE",
            "for_points BIGINT",
            "severity VARCHAR",
            "summary VARCHAR",
        ),
        WHOLE,
    ),
    Table(
        "telemetry.metrics",
        "Service metric time series (ts, service, metric, label, value).",
        _columns(
            "ts TIMESTAMP", "service VARCHAR", "metric VARCHAR", "label VARCHAR", "value DOUBLE"
        ),
        Reveal("ts", exists=METRIC_COMPLETE),
        # The live services' request and retrieval series, from their live rows; and the points
        # the scheduler restores from the request logs (`restore-metric-series`).
        live=Live((GATEWAY,), kept=NOT_LIVE_SERIES, spooled=False, spooled_by=(SCHEDULER,)),
    ),
    Table(
        "telemetry.logs",
        "Structured logs from every job and service.",
        _columns(
            "ts TIMESTAMP",
            "service VARCHAR",
            "level VARCHAR",
            "event VARCHAR",
            "message VARCHAR",
            "attrs VARCHAR",
        ),
        Reveal("ts"),
        live=Live(
            (EVERY_SERVICE,),
            # The lines of the processes that run live come from them once live time starts.
            kept="service NOT IN ('model-server', 'feature-server', 'retrieval', 'materialization', "
            f"'drift-monitor') AND NOT (service = 'batch-scoring' AND ts >= {WORLD_BATCH_UNTIL})",
            client="workspace for lines about requests sent from this workspace; production "
            "otherwise.",
        ),
    ),
    Table(
        "ops.feature_job_runs",
        "One row per daily feature-job run.",
        _columns(
            "run_id VARCHAR",
            "job VARCHAR",
            "feature_date DATE",
            "started_at TIMESTAMP",
            "finished_at TIMESTAMP",
            "duration_s DOUBLE",
            "rows_in BIGINT",
            "rows_out BIGINT",
            Column("nulls_seen", "BIGINT", "Missing values found before imputation."),
            Column("nulls_imputed", "BIGINT", "Missing values filled by the imputation policy."),
            "status VARCHAR",
        ),
        Reveal("finished_at"),
        id="run_id",
    ),
    Table(
        "ops.materialization_runs",
        "Loads of the online store.",
        _columns(
            "materialized_at TIMESTAMP",
            "rows BIGINT",
            "max_event_timestamp TIMESTAMP",
            "status VARCHAR",
        ),
        Reveal("materialized_at"),
        live=Live((SCHEDULER,)),
    ),
    Table(
        "ops.changelog",
        "Deploys, config changes, upstream notices, incidents, on-call notes.",
        _columns(
            "entry_id BIGINT",
            "ts TIMESTAMP",
            "kind VARCHAR",
            "service VARCHAR",
            "title VARCHAR",
            "body VARCHAR",
            "author VARCHAR",
        ),
        Reveal("ts"),
        id="entry_id",
        # The world's entries stay; the gateway adds the changes applied from the ops console.
        live=Live((GATEWAY,), kept="TRUE"),
    ),
)
TABLES: dict[str, Table] = {t.name: t for t in _DECLARED}
# The schemas the candidate's queries may name, in the order the tables are declared.
SCHEMAS: tuple[str, ...] = tuple(dict.fromkeys(t.schema for t in _DECLARED))

# Live rows of no world table: an agent's click on a suggestion, spooled apart from the search
# (it comes later) and folded into `retrieval.search_log` by the gateway.
SEARCH_CLICKS = Table(
    "retrieval.search_clicks",
    "An agent's click on a search's suggestion.",
    _columns(
        "request_id BIGINT",
        "clicked_article_id BIGINT",
        "click_rank BIGINT",
        "clicked_at TIMESTAMP",
    ),
    Reveal("clicked_at"),
    live=Live((RETRIEVAL,)),
)
LIVE_ONLY: dict[str, Table] = {SEARCH_CLICKS.name: SEARCH_CLICKS}
# What a live row may carry besides its table's columns: the candidate session whose own call
# produced it (absent or NULL: production's). The gateway's live tables keep it; views hide it.
SESSION = Column("session_id", "VARCHAR")


# The interviewer's truth file: what the simulation knew and production never logged. The catalog's
# checks and the traffic replay read it; the candidate's console never attaches it.
TRUTH: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "sim.customers",
            "Each customer's latent traits, drawn once when the customer is made.",
            _columns(
                "customer_id BIGINT",
                "latent_engagement DOUBLE",
                "latent_satisfaction DOUBLE",
                "latent_frailty DOUBLE",
                "latent_telemetry_opt_out BOOLEAN",
            ),
            WHOLE,
            id="customer_id",
        ),
        Table(
            "sim.daily_state",
            "Each active customer's engagement and satisfaction at the end of a simulated day.",
            _columns(
                "customer_id BIGINT",
                "engagement DOUBLE",
                "engagement_trend DOUBLE",
                "satisfaction DOUBLE",
                "day INTEGER",
            ),
            WHOLE,
        ),
        Table(
            "sim.cancellations",
            "Why each customer who left did, and the hazard that made them.",
            _columns("customer_id BIGINT", "day INTEGER", "reason VARCHAR", "latent_hazard DOUBLE"),
            WHOLE,
        ),
        Table(
            "sim.tickets",
            "The problem behind each support ticket.",
            _columns("ticket_id BIGINT", "problem_key VARCHAR"),
            WHOLE,
            id="ticket_id",
        ),
        Table(
            "sim.article_coverage",
            "The problem and device each help article answers.",
            _columns("article_id BIGINT", "problem VARCHAR", "device VARCHAR"),
            WHOLE,
            id="article_id",
        ),
    )
}


def table(name: str) -> Table:
    try:
        return TABLES[name] if name in TABLES else LIVE_ONLY[name]
    except KeyError:
        raise KeyError(f"no declared table {name!r}") from None


def names(name: str) -> list[str]:
    """The declared columns of table `name`, in order."""
    return table(name).names


def polars_schema(name: str) -> dict[str, pl.DataType]:
    """The declared columns of table `name` with the Polars type a frame of it holds."""
    return table(name).polars_schema()


# The tables whose live rows services spool (`sandbox.services.spool`), in declaration order.
SPOOLED: dict[str, Table] = {
    t.name: t for t in (*_DECLARED, SEARCH_CLICKS) if t.live is not None and t.live.spooled
}
# Every table any service spools rows of, with the services that may: those of a spooled table,
# and those that add rows to a table the gateway computes (`Live.spooled_by`).
SPOOL_WRITERS: dict[str, tuple[str, ...]] = {
    t.name: t.live.services if t.live.spooled else t.live.spooled_by
    for t in (*_DECLARED, SEARCH_CLICKS)
    if t.live is not None and (t.live.spooled or t.live.spooled_by)
}


def with_added(added: Mapping[str, Iterable[Column]]) -> dict[str, Table]:
    """The declared tables, each extended by the columns `added` to it (after its own)."""
    unknown = set(added) - set(TABLES)
    if unknown:
        raise KeyError(f"columns added to undeclared tables: {', '.join(sorted(unknown))}")
    out = dict(TABLES)
    for name, columns in added.items():
        columns = tuple(columns)
        if columns:
            out[name] = replace(out[name], columns=(*out[name].columns, *columns))
    return out
