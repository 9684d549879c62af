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
    _kept_previous_threshold,
    _ranking_held,
    _same_threshold_loaded,
    _stale,
)
from sandbox.pipeline.release import INITIAL_RELEASE, Release, Rollout
from sandbox.testing import tables_read

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


def _tiered(tier: str, **params: object) -> StaleDecisionThreshold:
    return StaleDecisionThreshold(Params(**params), tier)  # type: ignore[arg-type]


def _trail(f: StaleDecisionThreshold) -> str:
    """The fault's changelog entries and its release's run name and tags, as one text."""
    release = f.handle("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL))[-1]
    entries = [v for e in f.changelog(CAL) for v in (e["title"], e["body"])]
    return " ".join([*entries, release.run_name, *release.tags, *release.tags.values()])


@pytest.mark.parametrize("weight", [0.6, 1.8])
def test_only_guided_names_the_class_weight_and_the_server_config(weight: float) -> None:
    trails = {t: _trail(_tiered(t, positive_weight=weight)) for t in ("guided", "standard", "hard")}
    assert "class weight" in trails["guided"] and "no server config" in trails["guided"]
    for tier in ("standard", "hard"):
        tells = _tiered(tier, positive_weight=weight).tells(tier)  # type: ignore[arg-type]
        assert not [t for t in tells if t.lower() in trails[tier].lower()], tier
        assert "weight" not in trails[tier].lower() and "threshold" not in trails[tier].lower()
    # Standard still logs the retrain, in vague words; hard does not log it at all.
    assert "training settings updated" in trails["standard"]


def test_hard_adds_a_routine_retrain_that_ships_its_own_threshold() -> None:
    f = _tiered("hard", onset_day=18)
    releases = f.handle("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL))
    assert [r.day for r in releases] == [1, 11, 18]
    routine = releases[1]
    assert routine.alias == "champion" and not routine.tags and not routine.run_name
    # Only the onset release is trained with the class weight and keeps the old threshold.
    assert f.handle("train.class_weight", 1.0, HookContext(1, 11, CAL)) == 1.0
    rollout = Rollout("2", trained_threshold=0.048, current_threshold=0.05, threshold=0.048)
    assert f.handle("serve.rollout", rollout, HookContext(1, 11, CAL)) == rollout
    # The changelog logs the routine retrain the day before it serves, and nothing else.
    entries = f.changelog(CAL)
    assert [(e["day"], e["service"]) for e in entries] == [(10, "churn-model")]
    assert not [e for e in f.answer_key(CAL).evidence if e.kind == "changelog"]
    assert "routine retrain" in f.answer_key(CAL).root_cause


def test_hard_keeps_a_release_another_change_puts_on_the_routine_day() -> None:
    f = _tiered("hard", onset_day=18)
    other = Release(day=11, alias="challenger", run_name="someone-elses")
    releases = f.handle("train.releases", [INITIAL_RELEASE, other], HookContext(1, 0, CAL))
    assert [r.day for r in releases] == [1, 11, 18] and releases[1] == other


@pytest.mark.parametrize("onset", [2, 8])
def test_an_early_onset_at_hard_has_no_room_for_a_routine_retrain(onset: int) -> None:
    f = _tiered("hard", onset_day=onset)
    releases = f.handle("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL))
    assert [r.day for r in releases] == [1, onset]
    assert f.changelog(CAL) == []


def test_the_hard_investigation_reads_no_changelog_and_joins_two_tables() -> None:
    f = _tiered("hard")
    steps = f.investigation(CAL)
    assert len(steps) >= 4
    assert not any("ops.changelog" in s.sql for s in steps)
    joined = [tables_read(s.sql) for s in steps if len(tables_read(s.sql)) >= 2]
    assert {"serving.predictions", "labels.churn_labels"} in joined
    assert {"serving.predictions", "telemetry.logs"} in joined
    assert {e.kind for e in f.key(CAL).evidence} == {"table_column", "metric", "log_pattern"}


def test_hard_predicates() -> None:
    ranked = pl.DataFrame(
        {
            "model_version": ["1", "2", "3"],
            "flagged_share": [0.1, 0.1, 0.05],
            "top_decile_churn_rate": [0.21, 0.22, 0.2],
        }
    )
    assert _ranking_held(ranked)
    # A version that ranks worse, or a list of the usual length, is not this.
    assert not _ranking_held(
        ranked.with_columns(pl.Series("top_decile_churn_rate", [0.21, 0.2, 0.1]))
    )
    assert not _ranking_held(ranked.with_columns(pl.Series("flagged_share", [0.1, 0.1, 0.095])))
    assert not _ranking_held(ranked.head(1))
    loaded = pl.DataFrame(
        {
            "model_version": ["1", "2", "3"],
            "loaded_threshold": [0.05, 0.048, 0.048],
            "score_p90": [0.05, 0.048, 0.03],
        }
    )
    assert _kept_previous_threshold(loaded)
    shipped = loaded.with_columns(pl.Series("loaded_threshold", [0.05, 0.048, 0.03]))
    assert not _kept_previous_threshold(shipped)
    fits = loaded.with_columns(pl.Series("score_p90", [0.05, 0.048, 0.047]))
    assert not _kept_previous_threshold(fits)
    assert not _kept_previous_threshold(loaded.head(1))


def test_verify_compares_with_the_threshold_of_the_day_before_onset() -> None:
    """An earlier release served with its own threshold: the new one kept that one."""
    con = _world(new_share=0.04, new_version=True)
    con.execute(
        """
        UPDATE serving.predictions SET model_version = '0', threshold = 0.06
        WHERE request_ts < TIMESTAMP '2026-03-02' + INTERVAL 4 DAY
        """
    )
    con.execute("UPDATE serving.predictions SET decision = score >= threshold")
    checks = _tiered("hard", onset_day=10, positive_weight=0.6).verify(con, CAL)
    assert checks[1].passed, checks[1]
    # A new version that got a threshold of its own is not served with the previous one.
    con.execute("UPDATE serving.predictions SET threshold = 0.02 WHERE model_version = '2'")
    assert not _tiered("hard", onset_day=10).verify(con, CAL)[1].passed
