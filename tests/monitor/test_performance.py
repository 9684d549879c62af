"""Daily model quality, computed for every group at once, agrees with sklearn's definitions on
every group: ties, one-class days, days with nobody flagged, and segments."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from sandbox.monitor.performance import SEGMENTS, daily_performance

DAYS = 6


def _scored(seed: int) -> pl.DataFrame:
    g = np.random.default_rng(seed)
    n = 4_000
    day = g.integers(0, DAYS, n)
    score = np.round(g.beta(2, 5, n), 2)  # two decimals: many ties
    churned = (g.random(n) < score).astype(np.int64)
    churned[day == 1] = 0  # a day with no churn at all
    decision = score >= 0.45
    decision[day == 2] = False  # a day with nobody flagged
    start = dt.date(2026, 3, 1)
    return pl.DataFrame(
        {
            "score_date": [start + dt.timedelta(days=int(d)) for d in day],
            "score": score,
            "decision": decision,
            "churned": churned,
            "label_available_at": [
                dt.datetime(2026, 4, 1) + dt.timedelta(hours=int(h)) for h in g.integers(0, 99, n)
            ],
            "device": g.choice(["ios", "android", "web"], n),
            "plan": g.choice(["basic", "premium"], n),
            "region": g.choice(["eu", "us", "apac", "latam"], n),
            "app_version": g.choice(["5.1.0", "5.2.0", "none"], n),
        }
    )


def _expected(part: pl.DataFrame) -> dict[str, float | None]:
    y = part["churned"].to_numpy()
    score = part["score"].to_numpy()
    decision = part["decision"].to_numpy()
    both = 0 < y.sum() < len(y)
    return {
        "auc": roc_auc_score(y, score) if both else None,
        "pr_auc": average_precision_score(y, score) if both else None,
        "brier": brier_score_loss(y, score),
        "precision": float(y[decision].mean()) if decision.any() else None,
        "recall": float(decision[y == 1].mean()) if y.any() else None,
        "churn_rate": float(y.mean()),
        "flagged_rate": float(decision.mean()),
        "scored": len(y),
        "churned": int(y.sum()),
    }


@pytest.mark.parametrize("seed", [1, 2])
def test_every_group_matches_sklearn(seed: int) -> None:
    scored = _scored(seed)
    got = daily_performance(scored)
    assert got.height == DAYS * (1 + sum(scored[s].n_unique() for s in SEGMENTS))
    assert got.select("score_date", "segment", "segment_value").is_unique().all()
    assert got.sort("score_date", "segment", "segment_value").equals(got)
    checked = 0
    for row in got.iter_rows(named=True):
        part = scored.filter(pl.col("score_date") == row["score_date"])
        if row["segment"] != "all":
            part = part.filter(pl.col(row["segment"]) == row["segment_value"])
        for name, want in _expected(part).items():
            if want is None:
                assert row[name] is None, (row, name)
            else:
                assert row[name] == pytest.approx(want, abs=1e-5), (row, name)
        assert row["label_available_at"] == part["label_available_at"].max()
        checked += 1
    assert checked == got.height
    day_without_churn = got.filter(
        (pl.col("score_date") == dt.date(2026, 3, 2)) & (pl.col("segment") == "all")
    )
    assert day_without_churn["auc"].to_list() == [None]
