"""The immature-labels retrain: which score dates it trains on, what each tier logs and tags, and
that every training run in the registry states its training set truly."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3

import pytest
from pydantic import ValidationError

from sandbox import scenario
from sandbox.faults.base import HookContext
from sandbox.faults.retrain_immature_labels import Params, RetrainImmatureLabels
from sandbox.pipeline.release import INITIAL_RELEASE, LABEL_GAP_DAYS, Release
from sandbox.testing import Worlds, connect
from sandbox.world.build import BuildSummary

CAL = scenario.load(None).world.calendar()


@pytest.mark.parametrize("params", [{"newest_label_age_days": 8}, {"ramp_days": 1}])
def test_invalid_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Params(**params)


def test_the_retrain_uses_score_dates_whose_labels_are_not_in() -> None:
    fault = RetrainImmatureLabels(Params(onset_day=20, newest_label_age_days=1))
    releases = fault.handle("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL))
    assert [r.day for r in releases] == [1, 20]
    days = releases[1].training_days()
    assert max(days) == 18  # trained on day 19: one day old
    assert all(20 - 1 - d < 14 for d in days)  # no label has had its 14 days
    assert all(19 - d >= 14 for d in releases[0].training_days())  # the healthy window


def _releases(tier: str, onset: int = 20) -> list[Release]:
    fault = RetrainImmatureLabels(Params(onset_day=onset), tier)  # type: ignore[arg-type]
    return fault.handle("train.releases", [INITIAL_RELEASE], HookContext(1, 0, CAL))


def test_only_guided_tags_the_window() -> None:
    tags = {tier: _releases(tier)[-1].tags for tier in ("guided", "standard", "hard")}
    assert tags == {"guided": {"window": "recent"}, "standard": {}, "hard": {}}


@pytest.mark.parametrize("tier", ["guided", "standard"])
def test_below_hard_the_retrain_is_the_only_new_release(tier: str) -> None:
    assert [r.day for r in _releases(tier)] == [1, 20]


def test_hard_adds_a_scheduled_retrain_on_matured_labels_the_week_before() -> None:
    releases = _releases("hard")
    assert [r.day for r in releases] == [1, 13, 20]
    routine = releases[1]
    assert routine.alias == "champion" and not routine.tags and not routine.run_name
    newest = max(routine.training_days())
    assert routine.day - 1 - newest == LABEL_GAP_DAYS  # its labels had matured
    assert routine.training_days() == Release(day=13).training_days()


def test_hard_has_no_scheduled_retrain_before_day_two() -> None:
    assert [r.day for r in _releases("hard", onset=8)] == [1, 8]


def test_each_tier_logs_what_it_shows() -> None:
    entries = {
        tier: RetrainImmatureLabels(Params(onset_day=20), tier).changelog(CAL)  # type: ignore[arg-type]
        for tier in ("guided", "standard", "hard")
    }
    text = {t: " ".join(e["title"] + " " + e["body"] for e in es) for t, es in entries.items()}
    assert "most recent days" in text["guided"]
    assert not {"window", "freshest", "recent"} & set(text["standard"].lower().split())
    # Hard logs the scheduled retrain only, on the day it was trained, with its true window.
    assert [(e["day"], e["title"]) for e in entries["hard"]] == [
        (12, "churn-model: scheduled retrain promoted to champion")
    ]
    assert f"newest {LABEL_GAP_DAYS} days before training" in entries["hard"][0]["body"]
    for tier, shown in text.items():
        tells = RetrainImmatureLabels(Params(), tier).tells(tier)  # type: ignore[arg-type]
        assert not [t for t in tells if t.lower() in shown.lower()], tier


def test_hard_evidence_names_no_changelog_entry() -> None:
    kinds = {
        tier: {
            e.kind
            for e in RetrainImmatureLabels(Params(), tier).key(CAL).evidence  # type: ignore[arg-type]
        }
        for tier in ("guided", "standard", "hard")
    }
    assert "changelog" in kinds["guided"] and "changelog" in kinds["standard"]
    assert "changelog" not in kinds["hard"]


def _registry(built: BuildSummary, sql: str) -> list[tuple]:
    path = built.root / "candidate" / "mlflow" / "mlflow.db"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


@pytest.mark.parametrize(
    "world", ["immature-labels-guided", "immature-labels", "immature-labels-hard"]
)
def test_every_training_run_states_its_training_set(worlds: Worlds, world: str) -> None:
    built = worlds.get(world)
    tags: dict[str, dict[str, str]] = {}
    for version, key, value in _registry(
        built,
        "SELECT v.version, t.key, t.value FROM model_versions v "
        "JOIN tags t ON t.run_uuid = v.run_id WHERE v.name = 'churn-model'",
    ):
        tags.setdefault(str(version), {})[key] = value
    ended = dict(
        _registry(
            built,
            "SELECT v.version, r.end_time FROM model_versions v "
            "JOIN runs r ON r.run_uuid = v.run_id WHERE v.name = 'churn-model'",
        )
    )
    con = connect(built)
    try:
        sets = con.execute(
            "SELECT model_version, min(score_date), max(score_date), count(*), "
            "list(DISTINCT date_diff('day', score_date, label_available_at)) "
            "FROM training.churn_training_set GROUP BY 1 ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    assert len(sets) == len(tags) == (3 if world.endswith("-hard") else 2)
    for version, first, last, rows, horizons in sets:
        run = tags[version]
        assert (run["data_window_start"], run["data_window_end"]) == (str(first), str(last))
        assert run["dataset_rows"] == str(rows)
        assert horizons == [CAL.label_horizon_days]
        assert run["label"] == f"cancelled within {horizons[0]} days of score date"
        # The run finished on its training date, in simulated time.
        finished = dt.datetime.fromtimestamp(ended[int(version)] / 1000, dt.UTC)
        assert str(finished.date()) == run["training_date"]


def test_the_scheduled_retrain_entry_matches_its_training_set(worlds: Worlds) -> None:
    built = worlds.get("immature-labels-hard")
    con = connect(built)
    try:
        [(ts, body)] = con.execute(
            "SELECT ts, body FROM ops.changelog WHERE title = ?",
            ["churn-model: scheduled retrain promoted to champion"],
        ).fetchall()
        first_served = dict(
            con.execute(
                "SELECT model_version, min(request_ts)::DATE FROM serving.predictions "
                "WHERE source = 'batch' GROUP BY 1"
            ).fetchall()
        )
        version = next(v for v, d in first_served.items() if d == ts.date() + dt.timedelta(1))
        dates, span, newest = con.execute(
            "SELECT count(DISTINCT score_date), date_diff('day', min(score_date), "
            "max(score_date)), max(score_date) FROM training.churn_training_set "
            "WHERE model_version = ?",
            [version],
        ).fetchall()[0]
    finally:
        con.close()
    match = re.search(r"(\d+) score dates over (\d+) weeks, newest (\d+) days before", body)
    assert match, body
    assert dates == int(match[1]) and round(span / 7) == int(match[2])
    assert (ts.date() - newest).days == int(match[3])
