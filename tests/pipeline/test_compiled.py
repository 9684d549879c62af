"""The serving form of the registry's models: every registered version has one, it scores and
encodes as the estimator it was compiled from, and it refuses what it cannot reproduce."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

from sandbox.pipeline import compiled, registry, retrieve
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.product import corpus
from sandbox.world.build import BuildSummary


def _mlflow(world: BuildSummary) -> Path:
    return world.root / "candidate" / "mlflow"


def _served_rows(db: duckdb.DuckDBPyConnection) -> np.ndarray:
    """Rows as the world served them, and the same rows with a fifth of their values missing."""
    rows = (
        db.sql(
            f"SELECT {', '.join(MODEL_FEATURES)} FROM serving.predictions "
            "USING SAMPLE 3000 ROWS (reservoir, 3)"
        )
        .pl()
        .to_numpy()
        .astype(np.float64)
    )
    holed = rows.copy()
    holed[np.random.default_rng(3).random(holed.shape) < 0.2] = np.nan
    return np.concatenate([rows, holed])


def test_every_registered_churn_model_scores_exactly_as_its_estimator(
    faulty_world: BuildSummary, faulty_db: duckdb.DuckDBPyConnection
) -> None:
    x = _served_rows(faulty_db)
    checked = 0
    for version in registry.model_versions(_mlflow(faulty_world), registry.CHURN_MODEL):
        uri = f"models:/{registry.CHURN_MODEL}/{version['version']}"
        served = registry.load_serving(_mlflow(faulty_world), uri, compiled.CompiledTrees)
        estimator = registry.load_model(_mlflow(faulty_world), uri)
        assert served.n_features_in_ == estimator.n_features_in_
        if estimator.n_features_in_ != x.shape[1]:
            continue  # a version trained on other inputs; the same arithmetic either way
        # Bit for bit where NumPy's exp is the C library's (as here); NumPy's own may differ by
        # a unit in the last place.
        np.testing.assert_array_max_ulp(served.predict_proba(x), estimator.predict_proba(x), 4)
        checked += 1
    assert checked >= 1
    with pytest.raises(ValueError, match="13 features"):
        served.predict_proba(np.zeros((2, 3)))


def test_the_served_encoder_finds_what_its_pipeline_finds(faulty_world: BuildSummary) -> None:
    uri = "models:/ticket-encoder@production"
    served = registry.load_serving(_mlflow(faulty_world), uri, compiled.CompiledTextEncoder)
    pipeline = registry.load_model(_mlflow(faulty_world), uri)
    articles = corpus.help_articles()
    keys = np.array(["playback/buffering", "billing/card_declined", "account/password_reset"] * 4)
    devices = np.repeat(np.array(["android", "ios", "web", "smart_tv"]), 3)
    texts = [
        *(articles["title"] + ". " + articles["body"]).to_list(),
        *corpus.ticket_texts(np.random.default_rng(5), keys, devices).to_list(),
        "",
        "zzz qqq",  # no known term: a zero vector, as the pipeline gives
        "CARD declined, card DECLINED!",
    ]
    np.testing.assert_allclose(served.transform(texts), pipeline.transform(texts), atol=1e-12)
    index = retrieve.load_index(faulty_world.root / "candidate" / "indexes")
    found, _ = index.search(retrieve.Encoder(1, served).encode(texts))
    expected, _ = index.search(retrieve.Encoder(1, pipeline).encode(texts))
    assert np.array_equal(found, expected)


def test_a_serving_form_is_refused_where_it_would_differ(tmp_path: Path) -> None:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    g = np.random.default_rng(1)
    x, y = g.integers(0, 4, (400, 2)).astype(float), g.integers(0, 2, 400)
    with pytest.raises(compiled.NotCompilable, match="LogisticRegression"):
        compiled.compile_estimator(LogisticRegression().fit(x, y))
    categorical = HistGradientBoostingClassifier(max_iter=3, categorical_features=[0]).fit(x, y)
    # Its inputs are encoded before the trees see them, and its splits are on categories.
    with pytest.raises(compiled.NotCompilable, match="encodes its inputs"):
        compiled.compile_estimator(categorical)
    texts = [f"ticket {i} about card {i % 7} and app {i % 5}" for i in range(50)]
    plain_counts = Pipeline(
        [
            ("tfidf", TfidfVectorizer(sublinear_tf=False)),
            ("svd", TruncatedSVD(4, random_state=0)),
            ("norm", Normalizer()),
        ]
    ).fit(texts)
    with pytest.raises(compiled.NotCompilable, match="sublinear_tf"):
        compiled.compile_estimator(plain_counts)

    trees = compiled.compile_trees(HistGradientBoostingClassifier(max_iter=3).fit(x, y))
    path = tmp_path / compiled.FILE
    compiled.save(trees, path)
    with pytest.raises(ValueError, match="not a CompiledTextEncoder"):
        compiled.load(path, compiled.CompiledTextEncoder)
    again = compiled.load(path, compiled.CompiledTrees)
    assert np.array_equal(again.predict_proba(x), trees.predict_proba(x))


def test_a_world_without_serving_forms_is_named_for_a_rebuild(
    faulty_world: BuildSummary, tmp_path: Path
) -> None:
    copy = tmp_path / "mlflow"
    shutil.copytree(_mlflow(faulty_world), copy)
    for form in copy.rglob(compiled.FILE):
        form.unlink()
    with pytest.raises(LookupError, match="older version; rebuild it"):
        registry.load_serving(copy, "models:/churn-model@champion", compiled.CompiledTrees)
