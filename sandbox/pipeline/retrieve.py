"""Stage 6: ticket retrieval — a versioned ticket encoder and a FAISS index of help-center articles.

The index's build metadata records which encoder version produced its vectors; the service encodes
queries with whatever encoder it is configured with. Nothing errors if the two disagree, which is
exactly why the metadata matters.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from sandbox import rng
from sandbox.product import corpus

# scikit-learn and FAISS are imported where an encoder is fitted or an index built, read or
# written: the fault catalog imports this module, and most processes that load the catalog (the
# gateway, its console workers, the jobs, the CLI) never touch an encoder or an index.
if TYPE_CHECKING:
    import faiss
    from sklearn.pipeline import Pipeline

    from sandbox.pipeline.compiled import CompiledTextEncoder

ENCODER_DIM = 64
TOP_K = 5
INDEX_FILE = "help_articles.faiss"
INDEX_META_FILE = "help_articles.json"


@dataclass(frozen=True)
class Encoder:
    version: int
    model: Pipeline | CompiledTextEncoder  # the fitted pipeline, or its serving form

    def encode(self, texts: list[str] | pl.Series) -> np.ndarray:
        return np.ascontiguousarray(self.model.transform(list(texts)), dtype=np.float32)


def fit_encoder(seed: int, version: int, extra_texts: int = 2000) -> Encoder:
    """TF-IDF + SVD, fitted on the articles and a sample of ticket-like text; deterministic."""
    articles = corpus.help_articles()
    g = rng.stream(seed, f"encoder-corpus-v{version}")
    problems = corpus.problems()
    pick = g.integers(0, problems.height, extra_texts)
    keys = (problems["topic"] + "/" + problems["problem"]).to_numpy()[pick]
    devices = np.asarray(list(corpus.PLATFORMS))[g.integers(0, len(corpus.PLATFORMS), extra_texts)]
    texts = [
        *(articles["title"] + ". " + articles["body"]).to_list(),
        *corpus.ticket_texts(g, keys, devices).to_list(),
    ]
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    pipeline = Pipeline(
        [
            ("tfidf", TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)),
            ("svd", TruncatedSVD(ENCODER_DIM, algorithm="arpack", random_state=seed + version)),
            ("norm", Normalizer()),
        ]
    )
    pipeline.fit(texts)
    return Encoder(version=version, model=pipeline)


@dataclass
class ArticleIndex:
    index: faiss.Index
    meta: dict[str, object]

    def search(self, vectors: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.index.search(vectors, k)
        return ids, scores

    def save(self, directory: Path) -> None:
        import faiss

        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        (directory / INDEX_META_FILE).write_text(json.dumps(self.meta, indent=2, sort_keys=True))


def index_version(built_on: dt.date, encoder_version: int, names_encoder: bool = True) -> str:
    """A build's id: its date, and the encoder version where the team's ids name it."""
    return f"articles-{built_on:%Y%m%d}" + (f"-e{encoder_version}" if names_encoder else "")


def build_index(encoder: Encoder, articles: pl.DataFrame, built_on: dt.date) -> ArticleIndex:
    import faiss

    vectors = encoder.encode(articles["title"] + ". " + articles["body"])
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, articles["article_id"].to_numpy().astype(np.int64))
    meta = {
        "index_version": index_version(built_on, encoder.version),
        "encoder_name": "ticket-encoder",
        "encoder_version": encoder.version,
        "dimension": int(vectors.shape[1]),
        "doc_count": int(index.ntotal),
        "metric": "inner_product",
        "built_on": str(built_on),
    }
    return ArticleIndex(index=index, meta=meta)


def rebuilt(index: ArticleIndex, built_on: dt.date, names_encoder: bool = True) -> ArticleIndex:
    """`index` as a build on `built_on` from the same encoder and articles leaves it: the same
    vectors (the encoder's output is deterministic), under that build's id and date."""
    version = int(index.meta["encoder_version"])  # type: ignore[call-overload]
    meta = {
        **index.meta,
        "index_version": index_version(built_on, version, names_encoder),
        "built_on": str(built_on),
    }
    return ArticleIndex(index=index.index, meta=meta)


def load_index(directory: Path) -> ArticleIndex:
    import faiss

    index = faiss.read_index(str(directory / INDEX_FILE))
    meta = json.loads((directory / INDEX_META_FILE).read_text())
    return ArticleIndex(index=index, meta=meta)
