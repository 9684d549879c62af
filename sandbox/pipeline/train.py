"""Stage 4: the churn model — a point-in-time-correct training set, a scikit-learn model,
holdout metrics, and its registration in MLflow as `churn-model@champion`."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from sandbox import rng
from sandbox.clock import Calendar
from sandbox.faults.base import FaultSet, HookContext
from sandbox.pipeline import registry, registry_stamp, store
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.pipeline.label import churn_labels

# scikit-learn is imported where a model is fitted: the fault catalog imports this module's
# constants, and most processes that load the catalog never train.
if TYPE_CHECKING:
    from sklearn.ensemble import HistGradientBoostingClassifier

SCORE_HOUR = 6.0  # the daily batch scores at 06:00; training rows use the same moment
HOLDOUT_DATES = 2
# Holdout rows each repeat of the permutation importance scores: at the default scale the whole
# holdout made it the build's largest single cost. On the default world a sample this size finds
# the same four leading features, each within about a hundredth of its whole-holdout importance.
IMPORTANCE_ROWS = 20_000
FLAGGED_SHARE = 0.10  # the retention team can handle about a tenth of the base per day


class TooFewCustomers(ValueError):
    pass


@dataclass
class TrainedModel:
    model: HistGradientBoostingClassifier
    threshold: float
    metrics: dict[str, float]
    importances: dict[str, float]
    dataset_digest: str
    rows: int
    params: dict[str, object]
    features: list[str]


def training_spine(active: pl.DataFrame, calendar: Calendar, score_days: list[int]) -> pl.DataFrame:
    """(customer_id, score_date, score_ts) for every customer active on each score day.

    `active` has customer_id, signup_day and cancel_day (a large number if none)."""
    frames = [
        active.filter((pl.col("signup_day") <= d) & (pl.col("cancel_day") >= d)).select(
            "customer_id",
            pl.lit(calendar.date(d)).alias("score_date"),
            pl.lit(calendar.at(d, SCORE_HOUR)).cast(pl.Datetime("us")).alias("score_ts"),
        )
        for d in score_days
    ]
    return pl.concat(frames)


def build_training_set(
    spine: pl.DataFrame,
    cancellations: pl.DataFrame,
    calendar: Calendar,
    horizon_days: int,
    faults: FaultSet,
    ctx: HookContext,
) -> pl.DataFrame:
    """Features as known at each score time, with the label (`ctx.day`: the release's first
    serving day)."""
    features = store.point_in_time_join(ctx.data, spine)
    labels = churn_labels(spine, cancellations, calendar, horizon_days)
    dataset = features.join(
        labels.select("customer_id", "score_date", "churned", "label_available_at"),
        on=["customer_id", "score_date"],
        how="left",
    )
    return faults.apply("train.dataset", dataset, ctx)


def holdout_start(dataset: pl.DataFrame) -> object:
    dates = dataset["score_date"].unique().sort()
    return dates[-HOLDOUT_DATES]


def digest(frame: pl.DataFrame) -> str:
    return hashlib.sha256(frame.write_csv().encode()).hexdigest()[:16]


def fit(
    dataset: pl.DataFrame,
    seed: int,
    features: list[str] = MODEL_FEATURES,
    positive_weight: float = 1.0,
) -> TrainedModel:
    """Train on the older score dates; the latest HOLDOUT_DATES are the (time-based) holdout."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    holdout_from = holdout_start(dataset)
    train = dataset.filter(pl.col("score_date") < holdout_from)
    holdout = dataset.filter(pl.col("score_date") >= holdout_from)
    params: dict[str, object] = {
        "algorithm": "HistGradientBoostingClassifier",
        "max_iter": 150,
        "learning_rate": 0.08,
        "max_leaf_nodes": 31,
        "min_samples_leaf": 80,
        "l2_regularization": 1.0,
    }
    if positive_weight != 1.0:
        params["positive_class_weight"] = positive_weight
    model = HistGradientBoostingClassifier(
        max_iter=150,
        learning_rate=0.08,
        max_leaf_nodes=31,
        min_samples_leaf=80,
        l2_regularization=1.0,
        early_stopping=False,
        random_state=seed,
        class_weight=None if positive_weight == 1.0 else {0: 1.0, 1: positive_weight},
    )
    x_train = train.select(features).to_numpy()
    y_train = train["churned"].to_numpy()
    for name, part in (("training", train), ("holdout", holdout)):
        if part["churned"].n_unique() < 2:
            raise TooFewCustomers(
                f"the {name} window holds {part.height} rows and no churn of both kinds; "
                "the world is too small to train a churn model (use a larger --scale)"
            )
    model.fit(x_train, y_train)
    x_hold = holdout.select(features).to_numpy()
    y_hold = holdout["churned"].to_numpy()
    scores = model.predict_proba(x_hold)[:, 1]
    # Four significant digits, not decimals: a badly calibrated model can score everyone below 1e-4.
    threshold = float(f"{np.quantile(scores, 1 - FLAGGED_SHARE):.4g}")
    flagged = scores >= threshold
    metrics = {
        "holdout_auc": roc_auc_score(y_hold, scores),
        "holdout_pr_auc": average_precision_score(y_hold, scores),
        "holdout_brier": brier_score_loss(y_hold, scores),
        "holdout_positive_rate": float(y_hold.mean()),
        "holdout_precision_at_threshold": float(y_hold[flagged].mean()) if flagged.any() else 0.0,
        "holdout_recall_at_threshold": float(flagged[y_hold == 1].mean()),
        "train_rows": float(len(y_train)),
        "holdout_rows": float(len(y_hold)),
    }
    # One sample for the unshuffled score and every shuffled one: scikit-learn's `max_samples`
    # would score the baseline on the whole holdout and the shuffles on samples, offsetting
    # every importance by the difference.
    sample = np.arange(len(y_hold))
    if sample.size > IMPORTANCE_ROWS:
        sample = np.sort(
            rng.stream(seed, "importance-sample").choice(sample, IMPORTANCE_ROWS, replace=False)
        )
    importance = permutation_importance(
        model,
        x_hold[sample],
        y_hold[sample],
        scoring="roc_auc",
        n_repeats=3,
        random_state=seed,
        n_jobs=1,
    )
    importances = {
        name: round(float(v), 5)
        for name, v in zip(features, importance.importances_mean, strict=True)
    }
    params.update(
        {
            "features": ",".join(features),
            "decision_threshold": threshold,
            "holdout_from": str(holdout_from),
        }
    )
    return TrainedModel(
        model=model,
        threshold=threshold,
        metrics={k: round(float(v), 5) for k, v in metrics.items()},
        importances=importances,
        dataset_digest=digest(dataset),
        rows=dataset.height,
        params=params,
        features=list(features),
    )


def label_horizon_days(dataset: pl.DataFrame) -> int:
    """The label horizon the training set's rows carry: days from score date to availability."""
    days = (
        (pl.col("label_available_at") - pl.col("score_date").cast(pl.Datetime("us")))
        .dt.total_days()
        .unique()
    )
    horizons = dataset.select(days)["label_available_at"].to_list()
    if len(horizons) != 1:
        raise ValueError(f"the training set mixes label horizons: {sorted(horizons)}")
    return int(horizons[0])


def register(
    trained: TrainedModel,
    mlflow_dir: Path,
    dataset: pl.DataFrame,
    trained_at: dt.datetime,
    deployed_on: dt.date,
    alias: str | None = registry.CHAMPION,
    run_name: str = "",
    tags: dict[str, str] | None = None,
) -> str:
    """Log the run of the training job that finished at `trained_at` (simulated time) and
    register the model (with `alias`, if any); returns the model version."""
    mlflow = registry.connect(mlflow_dir, "churn-model-training")
    from mlflow.models import infer_signature

    trained_on = trained_at.date()
    x = dataset.select(trained.features).head(200).to_pandas()
    signature = infer_signature(x, trained.model.predict_proba(x.to_numpy())[:, 1])
    with registry.job_run(
        mlflow,
        mlflow_dir,
        run_name or f"churn-gbm-{trained_on:%Y%m%d}",
        registry_stamp.TRAINING_JOB,
        trained_at,
    ):
        mlflow.log_params(trained.params)
        mlflow.log_metrics(trained.metrics)
        mlflow.log_metrics({f"importance_{k}": v for k, v in trained.importances.items()})
        mlflow.set_tags(
            {
                "training_date": str(trained_on),
                "data_window_start": str(dataset["score_date"].min()),
                "data_window_end": str(dataset["score_date"].max()),
                "dataset_digest": trained.dataset_digest,
                "dataset_rows": str(trained.rows),
                "label": f"cancelled within {label_horizon_days(dataset)} days of score date",
                **(tags or {}),
            }
        )
        mlflow.log_dict(trained.importances, "feature_importances.json")
        with registry.quiet(), registry.serving_form(trained.model) as extra_files:
            info = mlflow.sklearn.log_model(
                trained.model,
                name="model",
                signature=signature,
                registered_model_name=registry.CHURN_MODEL,
                skops_trusted_types=registry.SKOPS_TRUSTED_TYPES,
                pip_requirements=registry.pip_requirements(),
                extra_files=extra_files,
            )
    version = str(info.registered_model_version)
    if alias is not None:
        registry.set_alias(
            mlflow,
            registry.CHURN_MODEL,
            alias,
            version,
            {"deployed_on": str(deployed_on), "decision_threshold": str(trained.threshold)},
        )
    return version
