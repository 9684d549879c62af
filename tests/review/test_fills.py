"""A new fill value is judged by its value: it helps the fault a fill mitigates only when it
brings the fill at least halfway back to the feature's training-time mean, and harms when it
moves it further away; the reference is read from the world's own tables."""

from __future__ import annotations

import datetime as dt

import pytest

from sandbox.actions.catalog import SET_FILL
from sandbox.review import fills
from sandbox.review.actions import review
from sandbox.world.build import BuildSummary

FEATURE = "avg_daily_minutes_7d"
KEY = {
    "faults": [
        {
            "fault_id": "feature-nulls-wrong-mean",
            "actions": {SET_FILL: "mitigates"},
            "acts_when": {SET_FILL: {"feature": [FEATURE]}},
        }
    ]
}
LIVE = dt.datetime(2026, 4, 14, 10)
REFERENCE = fills.FillReference(
    training_means={FEATURE: {"1": 52.0}},
    served={dt.date(2026, 4, 14): "1"},
    policy={FEATURE: [(dt.datetime(2026, 1, 6), 52.0), (dt.datetime(2026, 3, 17), 130.0)]},
)


def _fill(seq: int, value: float, minutes: float = 0) -> dict:
    return {
        "seq": seq,
        "kind": "action",
        "offset_s": 60.0 * seq,
        "sim_ts": (LIVE + dt.timedelta(minutes=minutes)).isoformat(),
        "detail": {
            "action": SET_FILL,
            "params": {"feature": FEATURE, "fill_value": value},
            "status": "applied",
        },
    }


def _verdicts(*events: dict) -> list[tuple[str | None, str | None]]:
    listed = review(list(events), KEY, lambda: REFERENCE)["list"]
    return [(a["verdict"], a.get("fill_moved")) for a in listed]


@pytest.mark.parametrize(
    ("value", "verdict", "moved"),
    [
        (52.0, "mitigates", "helps"),  # the training-time mean
        (80.0, "mitigates", "helps"),  # more than halfway back from 130
        (100.0, "no effect", "little"),  # closer, but not halfway
        (200.0, "harmful", "harms"),  # further from the mean than the broken fill
        (0.0, "no effect", "little"),  # below the mean: nearer than 130, not halfway
    ],
)
def test_a_fill_is_judged_by_how_far_it_moves_toward_the_training_mean(
    value: float, verdict: str, moved: str
) -> None:
    assert _verdicts(_fill(1, value)) == [(verdict, moved)]


def test_a_second_fill_is_judged_from_the_one_the_session_set() -> None:
    """From 52, a second fill of 100 moves away from the mean: harm, though 100 is nearer the mean
    than the broken 130 the feature job had."""
    assert _verdicts(_fill(1, 52.0), _fill(2, 100.0, minutes=30)) == [
        ("mitigates", "helps"),
        ("harmful", "harms"),
    ]


def test_without_a_reference_the_declared_verdict_stands_and_says_so() -> None:
    listed = review([_fill(1, 200.0)], KEY)["list"]
    assert listed[0]["verdict"] == "mitigates" and "fill_moved" not in listed[0]
    [unread] = review([_fill(1, 200.0)], KEY, lambda: None)["list"]
    assert unread["verdict"] == "mitigates" and "fill_moved" not in unread
    assert unread["verdict_note"].startswith("not checked against the training-time mean")


def test_the_reference_is_read_only_when_a_fill_was_applied() -> None:
    asked: list[bool] = []

    def reference() -> fills.FillReference:
        asked.append(True)
        return REFERENCE

    other = {
        **_fill(1, 52.0),
        "detail": {"action": "rebuild-index", "params": {}, "status": "applied"},
    }
    review([other], KEY, reference)
    assert asked == []
    review([other, _fill(2, 52.0)], KEY, reference)
    assert asked == [True]


def test_the_world_gives_each_features_training_mean_and_the_fill_in_effect(
    faulty_world: BuildSummary,
) -> None:
    """In the default world the broken fill is far above the training-time mean, and the fill
    before onset was the training-time mean, give or take a rounding."""
    reference = fills.reference(faulty_world.root)
    assert reference is not None
    manifest_live = dt.datetime.fromisoformat(faulty_world.manifest["calendar"]["production_end"])
    at = manifest_live + dt.timedelta(days=2, hours=10)
    for feature in ("avg_daily_minutes_7d", "avg_daily_minutes_28d", "minutes_per_session_28d"):
        mean = reference.training_mean(feature, at)
        first = reference.policy[feature][0][1]
        now = reference.policy_fill(feature, at)
        assert mean is not None and now is not None
        assert abs(first - mean) < 0.05 * mean, (feature, first, mean)
        assert now > 2 * mean, (feature, now, mean)
        assert fills.judge(mean, now, mean) == "helps"
        assert fills.judge(now * 1.5, now, mean) == "harms"


def test_a_fill_set_again_to_its_value_changes_nothing() -> None:
    listed = review([_fill(1, 52.0), _fill(2, 52.0, minutes=30)], KEY, lambda: REFERENCE)["list"]
    assert [(a["verdict"], a["fill_moved"]) for a in listed] == [
        ("mitigates", "helps"),
        ("no effect", "unchanged"),
    ]
    assert listed[1]["verdict_note"] == "fill 52 unchanged (the training-time mean is 52)"
    assert listed[0]["verdict_note"] == (
        "fill 130 → 52: near or at least halfway back to the training-time mean 52"
    )


def test_a_fill_near_the_mean_is_on_target_and_a_tiny_move_changes_nothing() -> None:
    """The policy's own fill before the fault differs from the training-time mean by a little:
    restoring it helps, and nudging the broken fill by a hair is no change, not a harm."""
    assert _verdicts(_fill(1, 53.5)) == [("mitigates", "helps")]  # within 5% of 52
    assert _verdicts(_fill(1, 130.1)) == [("no effect", "unchanged")]
    assert _verdicts(_fill(1, 52.0), _fill(2, 53.0, minutes=30)) == [
        ("mitigates", "helps"),
        ("no effect", "little"),  # on target before and after
    ]
