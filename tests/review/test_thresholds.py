"""A new decision threshold is judged by its value: it helps a fault a threshold mitigates only
when the list it flags comes back to the retention team's plan, harms whatever was planted when
the list moves further from it, and changes nothing when it flags the same share; the scores are
read from the world's own batch."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pytest

from sandbox.actions.catalog import SET_THRESHOLD
from sandbox.actions.deployment import Registry
from sandbox.layout import WorldPaths
from sandbox.pipeline.train import FLAGGED_SHARE
from sandbox.review import thresholds
from sandbox.review.actions import review
from sandbox.testing import Worlds

KEY = {
    "faults": [{"fault_id": "stale-decision-threshold", "actions": {SET_THRESHOLD: "mitigates"}}],
    "decoys": [],
}
LIVE = dt.datetime(2026, 4, 18, 10)
# Scores spread evenly over [0, 1): a threshold t flags a share 1 - t. The batch of the 17th ran
# at 06:00 and decided at 0.95, flagging 5%: half the plan.
BATCH_DAY = dt.date(2026, 4, 17)
REFERENCE = thresholds.ThresholdReference(
    ran_at={BATCH_DAY: dt.datetime(2026, 4, 17, 6)},
    quantiles={BATCH_DAY: (np.arange(thresholds.QUANTILES) + 0.5) / thresholds.QUANTILES},
    thresholds={BATCH_DAY: 0.95},
)


def _threshold(seq: int, value: float, minutes: float = 0) -> dict:
    return {
        "seq": seq,
        "kind": "action",
        "offset_s": 60.0 * seq,
        "sim_ts": (LIVE + dt.timedelta(minutes=minutes)).isoformat(),
        "detail": {"action": SET_THRESHOLD, "params": {"threshold": value}, "status": "applied"},
    }


def _verdicts(*events: dict, key: dict = KEY) -> list[tuple[str | None, str | None]]:
    listed = review(list(events), key, thresholds=lambda: REFERENCE)["list"]
    return [(a["verdict"], a.get("share_moved")) for a in listed]


@pytest.mark.parametrize(
    ("value", "verdict", "moved"),
    [
        (0.90, "mitigates", "helps"),  # flags 10%: the plan
        (0.915, "mitigates", "helps"),  # 8.5%: on plan
        (0.93, "no effect", "little"),  # 7%: closer, not halfway
        (0.98, "harmful", "harms"),  # 2%: the list shrinks further
        (0.70, "harmful", "harms"),  # 30%: three times the team's capacity
        (0.9501, "no effect", "unchanged"),
    ],
)
def test_a_threshold_is_judged_by_the_share_it_flags(
    value: float, verdict: str, moved: str
) -> None:
    assert _verdicts(_threshold(1, value)) == [(verdict, moved)]


def test_a_second_threshold_is_judged_from_the_one_the_session_set() -> None:
    assert _verdicts(_threshold(1, 0.90), _threshold(2, 0.95, minutes=30)) == [
        ("mitigates", "helps"),
        ("harmful", "harms"),
    ]


def test_a_list_moved_off_plan_harms_where_the_threshold_was_beside_the_point() -> None:
    """Where a threshold was declared to change nothing, one that flags the same share still
    changes nothing, and one that moves the list off plan harms the retention team: harmful
    overall, while the fault it does nothing to keeps its own verdict (and its recovery chart
    no harm mark)."""
    beside = {"faults": [{"fault_id": "embedding-index-mismatch", "actions": {}}], "decoys": []}
    assert _verdicts(_threshold(1, 0.9501), key=beside) == [("no effect", "unchanged")]
    assert _verdicts(_threshold(1, 0.5), key=beside) == [("harmful", "harms")]
    [listed] = review([_threshold(1, 0.5)], beside, thresholds=lambda: REFERENCE)["list"]
    assert listed["verdicts"] == [
        {"kind": "fault", "id": "embedding-index-mismatch", "verdict": "no effect"}
    ]
    no_fault = {"faults": [], "decoys": []}
    assert _verdicts(_threshold(1, 0.5), key=no_fault) == [("harmful", "harms")]


def test_a_threshold_set_before_the_days_batch_ran_is_judged_on_the_day_before() -> None:
    """At 05:00 on the 17th the day's batch has not run: the last one is the 16th's, and with
    none before it the threshold is not judged, and the note says why."""
    early = {**_threshold(1, 0.90), "sim_ts": dt.datetime(2026, 4, 17, 5).isoformat()}
    [unjudged] = review([early], KEY, thresholds=lambda: REFERENCE)["list"]
    assert unjudged["verdict"] == "mitigates" and "share_moved" not in unjudged
    assert unjudged["verdict_note"].endswith("no batch had run by then")


def test_a_list_brought_to_plan_still_harms_where_the_decoy_says_so() -> None:
    """Genuine churn swells the list: a threshold that brings it back to plan hides customers
    who are really leaving."""
    decoy = {
        "faults": [],
        "decoys": [{"decoy_id": "competitor-launch", "actions": {SET_THRESHOLD: "harmful"}}],
    }
    assert _verdicts(_threshold(1, 0.90), key=decoy) == [("harmful", "helps")]


def test_without_a_reference_the_declared_verdict_stands_and_says_so() -> None:
    [unread] = review([_threshold(1, 0.98)], KEY, thresholds=lambda: None)["list"]
    assert unread["verdict"] == "mitigates" and "share_moved" not in unread
    assert unread["verdict_note"].startswith("not checked against the planned share")


def test_the_note_gives_the_shares() -> None:
    [listed] = review([_threshold(1, 0.90)], KEY, thresholds=lambda: REFERENCE)["list"]
    assert listed["verdict_note"] == (
        "threshold 0.95 → 0.9: flags 10.0% of the last batch instead of 5.0%, "
        "near or at least halfway back to the planned 10%"
    )


def test_the_world_gives_the_batch_share_at_its_threshold(worlds: Worlds) -> None:
    """The threshold world's retrain changed the score scale under the old threshold: the last
    batch flagged about half the plan, and the reference reads the same share off its scores as
    the batch's decisions; the new version's own cut-off brings it back to plan."""
    built = worlds.get("threshold")
    reference = thresholds.reference(built.root)
    assert reference is not None
    last = max(reference.quantiles)
    at = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(10))
    before = reference.share(reference.threshold(at) or 0.0, at)
    assert before is not None and before < FLAGGED_SHARE * 0.6, before
    con = duckdb.connect(str(WorldPaths(built.root).duckdb), read_only=True)
    try:
        decided, own = con.execute(
            "SELECT avg(decision::INT), any_value(model_version) FROM serving.predictions "
            f"WHERE source = 'batch' AND request_ts::DATE = DATE '{last}'"
        ).fetchone()
    finally:
        con.close()
    assert abs(before - decided) < 0.002, (before, decided)
    tags = Registry.read(WorldPaths(built.root).mlflow).versions[own]["tags"]
    cut = float(tags["decision_threshold"])
    after = reference.share(cut, at)
    assert after is not None and thresholds.judge_share(after, before) == "helps", (after, before)
