"""Retrieval: the index's build metadata, and the registered encoder finding the right articles."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl

from sandbox.pipeline import registry, retrieve
from sandbox.product import corpus
from sandbox.world.build import BuildSummary


def test_index_metadata_names_its_encoder(faulty_world: BuildSummary) -> None:
    index = retrieve.load_index(faulty_world.root / "candidate" / "indexes")
    assert index.meta["encoder_version"] == 1
    assert index.meta["doc_count"] == index.index.ntotal == corpus.help_articles().height
    assert index.meta["dimension"] == retrieve.ENCODER_DIM


def test_registered_encoder_retrieves_relevant_articles(faulty_world: BuildSummary) -> None:
    root = faulty_world.root / "candidate"
    pipeline = registry.load_model(root / "mlflow", "models:/ticket-encoder@production")
    index = retrieve.load_index(root / "indexes")
    articles = corpus.help_articles()
    keys = np.array(["playback/buffering", "billing/card_declined", "account/password_reset"] * 4)
    devices = np.repeat(np.array(["android", "ios", "web", "smart_tv"]), 3)
    texts = corpus.ticket_texts(np.random.default_rng(5), keys, devices)
    vectors = np.ascontiguousarray(pipeline.transform(texts.to_list()), dtype=np.float32)
    ids, scores = index.search(vectors)
    lookup = articles.with_columns((pl.col("topic") + "/" + pl.col("problem")).alias("key"))
    hits = 0
    for row, (key, device) in enumerate(zip(keys, devices, strict=True)):
        found = lookup.filter(pl.col("article_id").is_in(ids[row].tolist()))
        hits += found.filter((pl.col("key") == key) & (pl.col("device") == device)).height > 0
    assert hits >= 10  # of 12
    assert (scores[:, 0] > 0.2).all()


def test_search_log_agrees_with_the_index(
    faulty_world: BuildSummary, faulty_db: duckdb.DuckDBPyConnection
) -> None:
    meta = retrieve.load_index(faulty_world.root / "candidate" / "indexes").meta
    versions = faulty_db.sql(
        "SELECT DISTINCT encoder_version, index_version FROM retrieval.search_log"
    ).fetchall()
    assert versions == [(1, meta["index_version"])]
    ctr, k = faulty_db.execute(
        "SELECT avg((clicked_article_id IS NOT NULL)::INT), max(len(top_k_ids)) "
        "FROM retrieval.search_log"
    ).fetchall()[0]
    assert 0.4 < ctr < 0.98 and k == retrieve.TOP_K
    tickets, searches = faulty_db.execute(
        "SELECT (SELECT count(*) FROM raw.support_tickets), (SELECT count(*) FROM retrieval.search_log)"
    ).fetchall()[0]
    assert tickets == searches > 0
