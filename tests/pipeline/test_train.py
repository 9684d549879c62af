"""The churn model in the world's registry: loadable by alias, and the model that served."""

from __future__ import annotations

import datetime as dt
import sqlite3

import duckdb
import numpy as np
import polars as pl
import pytest

from sandbox.pipeline import registry, train
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.world.build import BuildSummary


def test_champion_loads_and_reproduces_logged_scores(
    faulty_world: BuildSummary, faulty_db: duckdb.DuckDBPyConnection
) -> None:
    model = registry.load_model(
        faulty_world.root / "candidate" / "mlflow", "models:/churn-model@champion"
    )
    served = faulty_db.sql(
        f"SELECT {', '.join(MODEL_FEATURES)}, score FROM serving.predictions "
        "WHERE status = 'ok' USING SAMPLE 300 ROWS (reservoir, 1)"
    ).pl()
    scores = model.predict_proba(served.select(MODEL_FEATURES).to_numpy())[:, 1]
    np.testing.assert_allclose(scores, served["score"].to_numpy(), atol=1e-6)


def test_run_records_metrics_params_and_simulated_dates(faulty_world: BuildSummary) -> None:
    db = sqlite3.connect(faulty_world.root / "candidate" / "mlflow" / "mlflow.db")
    metrics = dict(db.execute("SELECT key, value FROM latest_metrics").fetchall())
    params = dict(db.execute("SELECT key, value FROM params").fetchall())
    tags = dict(db.execute("SELECT key, value FROM tags").fetchall())
    aliases = db.execute("SELECT name, alias, version FROM registered_model_aliases").fetchall()
    assert 0.6 < metrics["holdout_auc"] < 1.0 and 0 < metrics["holdout_brier"] < 0.1
    assert {"holdout_pr_auc", "importance_avg_daily_minutes_7d"} <= set(metrics)
    assert float(params["decision_threshold"]) > 0 and params["max_iter"] == "150"
    production_start = dt.date.fromisoformat(faulty_world.manifest["calendar"]["production_start"])
    assert tags["training_date"] == str(production_start - dt.timedelta(days=1))
    assert len(tags["dataset_digest"]) == 16
    assert ("churn-model", "champion", 1) in aliases
    assert ("ticket-encoder", "production", 1) in aliases


def test_feature_importances_favour_engagement_signals(faulty_world: BuildSummary) -> None:
    db = sqlite3.connect(faulty_world.root / "candidate" / "mlflow" / "mlflow.db")
    rows = db.execute(
        "SELECT key, value FROM latest_metrics WHERE key LIKE 'importance_%' ORDER BY value DESC"
    ).fetchall()
    assert len(rows) == len(MODEL_FEATURES)
    top = [k.removeprefix("importance_") for k, _ in rows[:4]]
    assert "monthly_price" not in top


def test_training_without_churners_is_a_clear_error() -> None:
    dataset = pl.DataFrame(
        {
            "score_date": [dt.date(2026, 1, d) for d in (1, 1, 8, 8, 15, 15)],
            "churned": [0] * 6,
            **{name: [1.0] * 6 for name in MODEL_FEATURES},
        }
    )
    with pytest.raises(train.TooFewCustomers, match="too small"):
        train.fit(dataset, seed=1)
