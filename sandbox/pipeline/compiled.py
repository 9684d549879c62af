"""The serving form of the registry's models: plain arrays that score and encode with NumPy.

A build logs each model twice over in one registry entry: the scikit-learn estimator (skops), as
training left it, and beside it (`extra_files/serving.npz`) the arrays its predictions are made
of, as production teams compile gradient-boosted trees for their servers. The live services load
only the compiled form: importing scikit-learn and skops costs each serving process about 3 CPU-s
and 170 MB, and a stack runs two of them.

The compiled forms reproduce the estimators' arithmetic step for step (the trees' leaf values
added in the same order, the same logistic and TF-IDF formulas), and the tests hold each to its
estimator on a built world's rows: the scores agree to the last bit where NumPy's `exp` is the C
library's, as SciPy's is, and within a few units in the last place where NumPy uses its own.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

FILE = "serving.npz"
TREES = "hist-gradient-boosting"
TFIDF_SVD = "tfidf-svd"


class NotCompilable(ValueError):
    """The estimator uses something the compiled form does not reproduce."""


@dataclass(frozen=True)
class CompiledTrees:
    """A binary `HistGradientBoostingClassifier`'s trees, every tree's nodes in one set of
    arrays (children are absolute node numbers) and `roots` the first node of each tree."""

    baseline: float
    roots: np.ndarray  # int64, one per tree, in the order the trees were grown
    feature: np.ndarray  # int64
    threshold: np.ndarray  # float64: a value <= threshold goes left
    missing_left: np.ndarray  # bool: where a missing value goes
    left: np.ndarray  # int64; a leaf's children are itself
    right: np.ndarray  # int64
    is_leaf: np.ndarray  # bool
    value: np.ndarray  # float64, a leaf's contribution to the raw score
    n_features_in_: int

    @functools.cached_property
    def _child(self) -> np.ndarray:
        """Both children of every node in one array: `_child[2 * node + goes_left]`."""
        return np.column_stack([self.right, self.left]).ravel()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Columns: not churned, churned; as the estimator's `predict_proba`."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"expected rows of {self.n_features_in_} features, got shape {x.shape}"
            )
        rows, trees = x.shape[0], self.roots.size
        values = x.ravel()
        # Every (row, tree) walks down together, one level per pass; a walk that reached its leaf
        # leaves the pass, so the work is the paths' length, not the deepest tree's times all.
        node = np.tile(self.roots, rows)
        row_start = np.repeat(np.arange(rows) * x.shape[1], trees)
        child = self._child
        walking = np.flatnonzero(~self.is_leaf[node])
        while walking.size:
            at = node[walking]
            seen = values[row_start[walking] + self.feature[at]]
            goes_left = (seen <= self.threshold[at]) | (np.isnan(seen) & self.missing_left[at])
            node[walking] = reached = child[2 * at + goes_left]
            walking = walking[~self.is_leaf[reached]]
        leaves = self.value[node].reshape(rows, trees)
        # Added tree by tree, as the estimator adds them: a floating-point sum in another order
        # would differ in the last digits.
        raw = np.zeros(rows) + self.baseline
        for tree in range(trees):
            raw += leaves[:, tree]
        churn = 1 / (1 + np.exp(-raw))
        return np.column_stack([1 - churn, churn])


@dataclass(frozen=True)
class CompiledTextEncoder:
    """TF-IDF (words and word pairs, sublinear counts, L2 norm) then an SVD projection and an L2
    norm: the ticket encoder's pipeline as arrays."""

    vocabulary: dict[str, int]
    idf: np.ndarray  # float64, one per term
    components: np.ndarray  # float64, (dimension, terms)
    ngram_max: int
    token_pattern: str

    def transform(self, texts: list[str]) -> np.ndarray:
        weights = np.zeros((len(texts), self.idf.size))
        for row, text in enumerate(texts):
            for term, count in self._counts(text).items():
                weights[row, term] = (1 + np.log(count)) * self.idf[term]
        weights = _unit_rows(weights)
        return _unit_rows(weights @ self.components.T)

    def _counts(self, text: str) -> Counter[int]:
        words = re.findall(self.token_pattern, text.lower())
        grams = [
            " ".join(words[i : i + n])
            for n in range(1, self.ngram_max + 1)
            for i in range(len(words) - n + 1)
        ]
        return Counter(self.vocabulary[g] for g in grams if g in self.vocabulary)


def _unit_rows(m: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", m, m))
    norms[norms == 0] = 1.0
    return m / norms[:, None]


Compiled = CompiledTrees | CompiledTextEncoder
C = TypeVar("C", CompiledTrees, CompiledTextEncoder)


def compile_estimator(estimator: Any) -> Compiled:
    """The serving form of a churn model or a ticket encoder; NotCompilable for anything else."""
    kind = type(estimator).__name__
    if kind == "HistGradientBoostingClassifier":
        return compile_trees(estimator)
    if kind == "Pipeline":
        return _compile_encoder(estimator)
    raise NotCompilable(f"no serving form for a {kind}")


def compile_trees(model: Any) -> CompiledTrees:
    if model.n_trees_per_iteration_ != 1 or type(model._loss).__name__ != "HalfBinomialLoss":
        raise NotCompilable("only binary log-loss classifiers have a serving form")
    if getattr(model, "_preprocessor", None) is not None:  # it would reorder the columns
        raise NotCompilable("a classifier that encodes its inputs has no serving form")
    trees = [predictor.nodes for (predictor,) in model._predictors]
    if any(nodes["is_categorical"].any() for nodes in trees):
        raise NotCompilable("categorical splits have no serving form")
    offsets = np.cumsum([0, *(len(nodes) for nodes in trees[:-1])])
    nodes = np.concatenate(trees)
    shift = np.repeat(offsets, [len(n) for n in trees])
    itself = np.arange(len(nodes))
    is_leaf = nodes["is_leaf"].astype(bool)
    return CompiledTrees(
        baseline=float(model._baseline_prediction.ravel()[0]),
        roots=offsets.astype(np.int64),
        feature=nodes["feature_idx"].astype(np.int64),
        threshold=nodes["num_threshold"].astype(np.float64),
        missing_left=nodes["missing_go_to_left"].astype(bool),
        left=np.where(is_leaf, itself, nodes["left"].astype(np.int64) + shift),
        right=np.where(is_leaf, itself, nodes["right"].astype(np.int64) + shift),
        is_leaf=is_leaf,
        value=nodes["value"].astype(np.float64),
        n_features_in_=int(model.n_features_in_),
    )


def _compile_encoder(pipeline: Any) -> CompiledTextEncoder:
    steps = {name: type(step).__name__ for name, step in pipeline.steps}
    if list(steps.values()) != ["TfidfVectorizer", "TruncatedSVD", "Normalizer"]:
        raise NotCompilable(f"no serving form for the pipeline {list(steps.values())}")
    tfidf, svd, norm = (step for _, step in pipeline.steps)
    expected = {
        "lowercase": True,
        "analyzer": "word",
        "sublinear_tf": True,
        "norm": "l2",
        "use_idf": True,
        "stop_words": None,
        "preprocessor": None,
        "tokenizer": None,
        "strip_accents": None,
        "binary": False,
        "dtype": np.float64,
    }
    differs = {k: getattr(tfidf, k) for k, v in expected.items() if getattr(tfidf, k) != v}
    if differs or tfidf.ngram_range[0] != 1 or norm.norm != "l2":
        raise NotCompilable(f"the encoder's settings have no serving form: {differs}")
    return CompiledTextEncoder(
        vocabulary={term: int(i) for term, i in tfidf.vocabulary_.items()},
        idf=np.asarray(tfidf.idf_, dtype=np.float64),
        components=np.asarray(svd.components_, dtype=np.float64),
        ngram_max=int(tfidf.ngram_range[1]),
        token_pattern=str(tfidf.token_pattern),
    )


def save(compiled: Compiled, path: Path) -> None:
    """Arrays only: loading it runs no code from the file."""
    if isinstance(compiled, CompiledTrees):
        arrays: dict[str, Any] = {
            "kind": np.array(TREES),
            "baseline": np.array(compiled.baseline),
            "n_features_in": np.array(compiled.n_features_in_),
            **{
                name: getattr(compiled, name)
                for name in ("roots", "feature", "threshold", "missing_left", "left", "right")
            },
            "is_leaf": compiled.is_leaf,
            "value": compiled.value,
        }
    else:
        terms = sorted(compiled.vocabulary, key=compiled.vocabulary.__getitem__)
        arrays = {
            "kind": np.array(TFIDF_SVD),
            "terms": np.array(terms, dtype=np.str_),
            "idf": compiled.idf,
            "components": compiled.components,
            "ngram_max": np.array(compiled.ngram_max),
            "token_pattern": np.array(compiled.token_pattern),
        }
    with path.open("wb") as out:
        np.savez(out, **arrays)


def load(path: Path, kind: type[C]) -> C:
    """The serving form in `path`, which must be of `kind`."""
    found = _load(path)
    if not isinstance(found, kind):
        raise ValueError(f"{path}: holds a {type(found).__name__}, not a {kind.__name__}")
    return found


def _load(path: Path) -> Compiled:
    with np.load(path, allow_pickle=False) as data:
        kind = str(data["kind"])
        if kind == TREES:
            return CompiledTrees(
                baseline=float(data["baseline"]),
                roots=data["roots"],
                feature=data["feature"],
                threshold=data["threshold"],
                missing_left=data["missing_left"],
                left=data["left"],
                right=data["right"],
                is_leaf=data["is_leaf"],
                value=data["value"],
                n_features_in_=int(data["n_features_in"]),
            )
        if kind == TFIDF_SVD:
            return CompiledTextEncoder(
                vocabulary={str(term): i for i, term in enumerate(data["terms"])},
                idf=data["idf"],
                components=data["components"],
                ngram_max=int(data["ngram_max"]),
                token_pattern=str(data["token_pattern"]),
            )
    raise ValueError(f"{path}: not a serving form this version reads ({kind})")
