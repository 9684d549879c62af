"""The stale decision threshold: the retrain release and the checks on the flagged share."""

from __future__ import annotations

import re

import duckdb
import polars as pl
import pytest
from pydantic import ValidationError

from sandbox import scenario
from sandbox.faults.base import HookContext
from sandbox.faults.stale_decision_threshold import (
    Params,
    StaleDecisionThreshold,
    _same_threshold_loaded,
    _stale,
)
from sandbox.pipeline.release import INITIAL_RELEASE, Rollout

CAL = scenario.load(None).world.calendar()
TELLTALE = re.compile(r"\bfault|inject|planted|answer|sabotag|\bbug\b|stale", re.IGNORECASE)


def fault(**params: object) -> StaleDecisionThreshold:
    return StaleDecisionThreshold(Params(**params))


@pytest.mark.parametrize(
    "params",
    [
        {"onset_day": 1},
        {"ramp_days": 3},
        {"positive_weight": 1.0},
        {"positive_weight": 0.8},
        {"positive_weight": 1.3},
        {"positive_weight": 0.5},
        {"positive_weight": 2.5},
        {"surprise": 1},
    ],
)
def test_invalid_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Params(**params)


def test_a_weight_near_one_is_refused_with_a_reason() -> None:
    with pytest.raises(ValidationError, match="still flags about 10%"):
        Params(positive_weight=1.1)


@pytest.mark.parametrize("weight", [0.6, 1.8])
def test_the_retrain_is_promoted_and_keeps_the_old_threshold(weight: float) -> None:
    f = fault(onset_day=18, positive_weight=weight)
    releases = f.handle("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL))
    assert [r.day for r in releases] == [1, 18]
    retrain = releases[1]
    assert retrain.alias == "champion"
    # Churners get the class weight in that release's training only.
    assert f.handle("train.class_weight", 1.0, HookContext(1, 18, CAL)) == weight
    assert f.handle("train.class_weight", 1.0, HookContext(1, 17, CAL)) == 1.0
    # The servers switch to it but keep their threshold; later releases ship their own.
    rollout = Rollout("2", trained_threshold=0.03, current_threshold=0.05, threshold=0.03)
    kept = f.handle("serve.rollout", rollout, HookContext(1, 18, CAL))
    assert kept.deploy and kept.threshold == 0.05
    assert f.handle("serve.rollout", rollout, HookContext(1, 25, CAL)) == rollout
    assert not retrain.score_days  # the standard matured-label window
    texts = [retrain.run_name, retrain.note, *retrain.tags, *retrain.tags.values()]
    texts += [v for e in f.changelog(CAL) for v in (e["title"], e["body"])]
    assert not [t for t in texts if TELLTALE.search(t)]
    titles = {e.ref for e in f.answer_key(CAL).evidence if e.kind == "changelog"}
    assert titles == {e["title"] for e in f.changelog(CAL)}


def test_investigation_predicates() -> None:
    versions = pl.DataFrame(
        {
            "model_version": ["1", "2"],
            "min_threshold": [0.049, 0.049],
            "max_threshold": [0.049, 0.049],
            "score_p90": [0.049, 0.026],
        }
    )
    assert _stale(versions)
    assert not _stale(versions.head(1))
    assert not _stale(versions.with_columns(pl.Series("max_threshold", [0.049, 0.026])))
    loads = pl.DataFrame(
        {
            "event": ["model_registered", "model_loaded", "model_registered", "model_loaded"],
            "attrs": [
                "{}",
                '{"model_version": "1", "threshold": 0.049}',
                "{}",
                '{"model_version": "2", "threshold": 0.049}',
            ],
        }
    )
    assert _same_threshold_loaded(loads)
    assert not _same_threshold_loaded(loads.head(2))


def _world(new_share: float, new_version: bool) -> duckdb.DuckDBPyConnection:
    """20 days of batch scores for 1000 customers (skewed, like churn scores); from day 10 a share
    `new_share` of them scores above the threshold."""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA serving; CREATE SCHEMA crm")
    version = "2" if new_version else "1"
    con.execute(
        f"""
        CREATE TABLE serving.predictions AS
        SELECT TIMESTAMP '2026-03-02 06:00' + to_days(d) AS request_ts, 'batch' AS source,
               CASE WHEN d >= 9 THEN '{version}' ELSE '1' END AS model_version,
               0.05::DOUBLE AS threshold,
               0.05 * pow(CASE WHEN d >= 9 THEN c / (1000 * (1 - {new_share}))
                               ELSE c / 900 END, 6) AS score,
               c AS customer_id
        FROM range(20) t(d), range(1000) u(c)
        """
    )
    con.execute("ALTER TABLE serving.predictions ADD COLUMN decision BOOLEAN")
    con.execute("UPDATE serving.predictions SET decision = score >= threshold")
    con.execute(
        """
        CREATE TABLE crm.retention_offers AS
        SELECT request_ts + INTERVAL 3 HOUR AS offered_at, model_version
        FROM serving.predictions WHERE decision AND customer_id % 3 = 0
        """
    )
    return con


def test_verify_sees_the_shift_and_not_a_steady_list() -> None:
    f = fault(onset_day=10, positive_weight=0.6)
    broken = f.verify(_world(new_share=0.04, new_version=True), CAL)
    assert all(c.passed for c in broken), broken
    steady = f.verify(_world(new_share=0.10, new_version=False), CAL)
    assert not any(c.passed for c in steady), steady
    # Up-weighting expects more flagged, not fewer.
    wrong_way = fault(onset_day=10, positive_weight=2.0).verify(
        _world(new_share=0.04, new_version=True), CAL
    )
    assert not wrong_way[0].passed


def test_the_answer_key_quotes_the_level_the_weight_leads_to() -> None:
    key = fault(positive_weight=0.6).answer_key(CAL)
    assert "roughly 5%" in key.root_cause and "fewer" in key.root_cause
    assert "roughly 21%" in fault(positive_weight=2.0).answer_key(CAL).root_cause
