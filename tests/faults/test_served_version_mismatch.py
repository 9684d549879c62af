"""The served-version mismatch: the ablation release, and how its checks read logs and predictions."""

from __future__ import annotations

import re

import duckdb
import polars as pl
import pytest
from pydantic import ValidationError

from sandbox import scenario
from sandbox.difficulty import Tier
from sandbox.faults.base import HookContext
from sandbox.faults.served_version_mismatch import (
    FEATURE_GROUPS,
    Params,
    ServedVersionMismatch,
    _challengers_loaded,
)
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.pipeline.release import INITIAL_RELEASE, Rollout

CAL = scenario.load(None).world.calendar()
TELLTALE = re.compile(
    r"\bfault|inject|planted|answer|sabotag|\bbug\b|mismatch|served-version", re.IGNORECASE
)


def fault(**params: object) -> ServedVersionMismatch:
    return ServedVersionMismatch(Params(**params))


@pytest.mark.parametrize(
    "params",
    [
        {"onset_day": 1},
        {"onset_day": 43},
        {"ramp_days": 2},
        {"dropped_groups": []},
        {"dropped_groups": ["watch_time", "watch_time"]},
        {"dropped_groups": ["watch_time", "viewing", "support", "billing", "playback"]},
        {"dropped_groups": ["demographics"]},
        {"dropped_groups": ["support", "billing"]},
        {"surprise": 1},
    ],
)
def test_invalid_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Params(**params)


def test_the_ablation_must_drop_the_watch_time_group() -> None:
    with pytest.raises(ValidationError, match="must include watch_time"):
        Params(dropped_groups=["viewing"])


def test_feature_groups_cover_every_model_feature_once() -> None:
    grouped = [f for group in FEATURE_GROUPS.values() for f in group]
    assert sorted(grouped) == sorted(MODEL_FEATURES)


def test_the_ablation_is_registered_as_challenger_and_served() -> None:
    f = fault(onset_day=12, dropped_groups=["watch_time", "playback"])
    releases = f.handle("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL))
    assert [r.day for r in releases] == [1, 12]
    ablation = releases[1]
    assert ablation.alias == "challenger"
    # The servers load it with the threshold its own run chose.
    rollout = Rollout("2", trained_threshold=0.03, current_threshold=0.05, threshold=0.03)
    assert f.handle("serve.rollout", rollout, HookContext(1, 12, CAL)) == rollout
    assert ablation.features == tuple(
        x
        for x in MODEL_FEATURES
        if x
        not in {
            "avg_daily_minutes_7d",
            "avg_daily_minutes_28d",
            "minutes_per_session_28d",
            "playback_errors_7d",
        }
    )
    assert releases[0] == INITIAL_RELEASE  # the champion is untouched
    assert f.handle("serve.traffic", 1.0, HookContext(1, 20, CAL)) == 1.0


def test_registry_and_changelog_text_reads_like_ordinary_work() -> None:
    f = fault(onset_day=12, dropped_groups=["watch_time", "billing"])
    release = f.handle("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL))[1]
    texts = [release.run_name, release.note, *release.tags, *release.tags.values()]
    for entry in f.changelog(CAL):
        texts += [entry["title"], entry["body"]]
    assert not [t for t in texts if TELLTALE.search(t)]
    titles = {e.ref for e in f.answer_key(CAL).evidence if e.kind == "changelog"}
    assert titles <= {e["title"] for e in f.changelog(CAL)}


def test_the_logs_tell_which_loaded_version_was_a_challenger() -> None:
    logs = pl.DataFrame(
        {
            "event": ["model_registered", "model_loaded", "model_registered", "model_loaded"],
            "message": [
                "churn-model version 1 registered and aliased champion",
                "loaded churn-model version 1",
                "churn-model version 2 registered and aliased challenger",
                "loaded churn-model version 2",
            ],
            "attrs": [
                "{}",
                '{"model_version": "1", "threshold": 0.049}',
                "{}",
                '{"model_version": "2", "threshold": 0.052}',
            ],
        }
    )
    assert _challengers_loaded(logs["event"], logs["message"], logs["attrs"]) == {"2"}
    healthy = logs.head(2)
    assert not _challengers_loaded(healthy["event"], healthy["message"], healthy["attrs"])
    step = next(s for s in fault().investigation(CAL) if s.evidence == "model-loaded")
    assert step.found(logs) and not step.found(healthy)


def _world(challenger_serves: bool) -> duckdb.DuckDBPyConnection:
    """A tiny warehouse: 20 days of batch scores, offers and the training job's log lines."""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA serving; CREATE SCHEMA crm; CREATE SCHEMA telemetry")
    con.execute("CREATE SCHEMA labels")
    new = "2" if challenger_serves else "1"
    con.execute(
        f"""
        CREATE TABLE serving.predictions AS
        SELECT TIMESTAMP '2026-03-02 06:00' + to_days(d) AS request_ts, 'batch' AS source,
               CASE WHEN d >= 9 THEN '{new}' ELSE '1' END AS model_version,
               0.05::DOUBLE AS threshold, (c % 10 = 0) AS decision, 0.01 * (c % 10) AS score,
               c AS customer_id
        FROM range(20) t(d), range(100) u(c)
        """
    )
    con.execute(
        """
        CREATE TABLE crm.retention_offers AS
        SELECT request_ts + INTERVAL 3 HOUR AS offered_at, model_version
        FROM serving.predictions WHERE decision
        """
    )
    con.execute(
        "CREATE TABLE labels.churn_labels (customer_id INT, score_date DATE, churned INT, "
        "label_available_at TIMESTAMP)"
    )
    messages = ["churn-model version 1 registered and aliased champion"]
    if challenger_serves:
        messages.append("churn-model version 2 registered and aliased challenger")
    con.execute(
        "CREATE TABLE telemetry.logs AS SELECT TIMESTAMP '2026-03-01' AS ts, "
        "'model_registered' AS event, unnest(?) AS message",
        [messages],
    )
    return con


def test_the_core_check_needs_a_served_challenger() -> None:
    f = fault(onset_day=10)
    broken = f.verify(_world(challenger_serves=True), CAL)
    healthy = f.verify(_world(challenger_serves=False), CAL)
    assert broken[0].passed, broken[0]
    assert not healthy[0].passed, healthy[0]
    assert [c.outcome for c in broken] == ["passed", "passed", "not measurable"], broken


def _trail(f: ServedVersionMismatch) -> list[str]:
    """The run names, tags and changelog text this fault writes."""
    texts = []
    for release in f.handle("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL)):
        texts += [release.run_name, *release.tags, *release.tags.values()]
    return texts + [text for e in f.changelog(CAL) for text in (e["title"], e["body"])]


def test_guided_keeps_the_ablation_run_name_tags_and_changelog() -> None:
    f = ServedVersionMismatch(Params(), "guided")
    texts = _trail(f)
    assert "churn-gbm-ablation-no-watch-time" in texts and "ablation" in texts
    assert "model-server: model source switched to registry lookup" in texts


@pytest.mark.parametrize("tier", ["standard", "hard"])
def test_the_trail_carries_no_tell_of_its_tier(tier: Tier) -> None:
    f = ServedVersionMismatch(Params(), tier)
    text = " ".join(_trail(f)).lower()
    assert not [tell for tell in f.tells(tier) if tell.lower() in text]
    titles = {e.ref for e in f.answer_key(CAL).evidence if e.kind == "changelog"}
    assert titles <= {e["title"] for e in f.changelog(CAL)}


def test_hard_registers_an_earlier_challenger_that_never_serves() -> None:
    f = ServedVersionMismatch(Params(onset_day=15), "hard")
    releases = f.handle("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL))
    assert [(r.day, r.alias, r.run_name) for r in releases] == [
        (1, "champion", ""),
        (5, "challenger", ""),
        (15, "challenger", ""),
    ]
    rollout = Rollout("2", trained_threshold=0.03, current_threshold=0.05, threshold=0.03)
    assert not f.handle("serve.rollout", rollout, HookContext(1, 5, CAL)).deploy
    assert f.handle("serve.rollout", rollout, HookContext(1, 15, CAL)).deploy
    standard = ServedVersionMismatch(Params(onset_day=15), "standard")
    assert len(standard.handle("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL))) == 2
    assert standard.handle("serve.rollout", rollout, HookContext(1, 5, CAL)).deploy
