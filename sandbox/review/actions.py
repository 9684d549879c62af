"""The candidate's ops-console actions in the review, each judged by what the planted faults and
decoys declare it does to them (the answer key's `actions`, with the parameter values a verdict
needs in `acts_when`), and how soon the first one that helped was applied.

A new fill value or decision threshold is judged by its value too: a fill against the feature's
training-time mean (`fills`), a threshold against the share of the batch the retention team plans
to flag (`thresholds`). It helps a fault that declares it helps only when it brings its quantity
on target or at least halfway back; it harms whatever was planted when it moves it further away;
it changes nothing when it leaves it where it was. A pinned version, or the version champion is
moved to, helps a fault that declares it helps only when it served before the fault began
(`versions`): the version the fault shipped, or one that never served, is no way back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sandbox.actions.catalog import MOVE_ALIAS, PIN_VERSION, SET_FILL, SET_THRESHOLD
from sandbox.pipeline.train import FLAGGED_SHARE
from sandbox.review import recovery
from sandbox.review.fills import FillReference, judge
from sandbox.review.thresholds import ThresholdReference, judge_share
from sandbox.review.times import naive_utc
from sandbox.review.versions import FirstServed
from sandbox.schema import SERVED_ALIAS

HELPS = ("fixes", "mitigates")
NO_EFFECT = "no effect"
HARMFUL = "harmful"


def _verdict(
    key: dict[str, Any],
    action: str,
    params: dict[str, Any],
    served: FirstServed | None = None,
) -> str:
    """What `action` with `params` does to one planted fault or decoy: its declared verdict,
    unless the verdict holds only for other values of a parameter (`acts_when`), or it helps by
    the version it deploys and that version did not serve before the fault began (`served`,
    when each version first served; None: not checked)."""
    declared = str(key.get("actions", {}).get(action, NO_EFFECT))
    needs = key.get("acts_when", {}).get(action, {})
    if any(params.get(name) not in values for name, values in needs.items()):
        return NO_EFFECT
    if declared in HELPS and served is not None and _deploys_a_version(action, params):
        began = recovery.onset(key)
        first = served.get(str(params.get("version")))
        if began is not None and (first is None or first >= began):
            return NO_EFFECT
    return declared


def _deploys_a_version(action: str, params: dict[str, Any]) -> bool:
    """A pin, or a move of the alias the servers follow: what the servers serve is a version."""
    return action == PIN_VERSION or (action == MOVE_ALIAS and params.get("alias") == SERVED_ALIAS)


def _judged(declared: str, moved: str | None) -> str:
    """A declared verdict, given how the action's value moved its quantity against its target
    (None when the action has no value to judge, or the world could not tell)."""
    if moved == "unchanged":
        return NO_EFFECT
    if moved == "harms":  # what it does to a fault it does nothing to stays nothing
        return NO_EFFECT if declared == NO_EFFECT else HARMFUL
    if declared in HELPS and moved not in (None, "helps"):
        return NO_EFFECT  # closer, but not enough
    return declared


def verdict_of(
    action: str,
    answer_key: dict[str, Any],
    params: dict[str, Any] | None = None,
    moved: str | None = None,
    served: FirstServed | None = None,
) -> tuple[str, list[dict[str, str]]]:
    """The overall verdict of applying `action` with `params` in this world, and the verdict per
    planted fault or decoy. One that names no verdict for it is not affected. A harm anywhere
    counts first: the interviewer needs to see it even when the action also helped elsewhere.

    `moved` (`fills.judge`: helps, harms, little or unchanged) is how a new fill value or
    threshold moved its quantity against its target: a fault it helps is helped only when it
    helps, and a move away from the target makes the action harmful overall, with or without a
    planted fault it touches."""
    planted = [
        *(("fault", k.get("fault_id"), k) for k in answer_key.get("faults", [])),
        *(("decoy", k.get("decoy_id"), k) for k in answer_key.get("decoys", [])),
    ]
    each = []
    for kind, pid, key in planted:
        if not isinstance(key, dict):
            continue
        verdict = _judged(_verdict(key, action, params or {}, served), moved)
        each.append({"kind": kind, "id": str(pid), "verdict": verdict})
    verdicts = {e["verdict"] for e in each} | ({HARMFUL} if moved == "harms" else set())
    for overall in ("harmful", "fixes", "mitigates"):
        if overall in verdicts:
            return overall, each
    return NO_EFFECT, each


def review(
    timeline: list[dict[str, Any]],
    answer_key: dict[str, Any],
    fills: Callable[[], FillReference | None] | None = None,
    thresholds: Callable[[], ThresholdReference | None] | None = None,
    versions: Callable[[], FirstServed | None] | None = None,
) -> dict[str, Any]:
    """Every `action` event as the review shows it (`list`: id, at, params, status, verdict...),
    with the time from the session's start to the first applied action that helps. Only an
    applied action has a verdict; a refused or unavailable one changed nothing. With `fills`,
    `thresholds` and `versions` (each reads the world's, only when such an action was applied),
    a new fill value or threshold is judged by its value as well, and a pin or a move of
    champion by its version."""
    listed = []
    set_fills: dict[str, float] = {}  # feature -> the fill this session set last
    set_threshold: list[float] = []  # the threshold this session set last
    for item in timeline:
        if item["kind"] != "action":
            continue
        d = item["detail"]
        applied = d.get("status") == "applied"
        params = d.get("params", {})
        moved, note = None, None
        if applied and d.get("action") == SET_FILL and fills is not None:
            moved, note = _fill_moved(fills(), set_fills, item.get("sim_ts"), params)
            set_fills[str(params.get("feature"))] = float(params.get("fill_value", 0.0))
        if applied and d.get("action") == SET_THRESHOLD and thresholds is not None:
            moved, note = _share_moved(thresholds(), set_threshold, item.get("sim_ts"), params)
            set_threshold[:] = [float(params.get("threshold", 0.0))]
        value_moved = (
            {"share_moved" if d.get("action") == SET_THRESHOLD else "fill_moved": moved}
            if moved
            else {}
        )
        served = (
            versions()
            if applied and versions is not None and _deploys_a_version(str(d.get("action")), params)
            else None
        )
        verdict, each = (
            verdict_of(str(d.get("action")), answer_key, params, moved, served)
            if applied
            else (None, [])
        )
        listed.append(
            {
                "seq": item["seq"],
                "id": d.get("action"),
                "at": item.get("sim_ts"),
                "offset_s": item["offset_s"],
                "params": d.get("params", {}),
                "status": d.get("status"),
                "effective_at": d.get("effective_at"),
                "verdict": verdict,
                "verdicts": each,
                **value_moved,
                **({"verdict_note": note} if note else {}),
            }
        )
    helped = [a for a in listed if a["verdict"] in HELPS]
    return {
        "list": listed,
        "applied": sum(a["status"] == "applied" for a in listed),
        "time_to_first_mitigation_s": helped[0]["offset_s"] if helped else None,
        "first_mitigation_effective_at": helped[0]["effective_at"] if helped else None,
    }


# How a value moved against its target, in the review's words.
MOVED_WORDS = {
    "helps": "near or at least halfway back to",
    "little": "less than halfway back to",
    "harms": "further from",
}


def _share_moved(
    reference: ThresholdReference | None,
    set_threshold: list[float],
    sim_ts: str | None,
    params: dict[str, Any],
) -> tuple[str | None, str]:
    """How a new threshold moved the share of the last batch it flags against the plan, from
    the threshold this session set last, else the batch's, with that in words; no judgement
    (None) when the world cannot tell, and the words say so. The shares are the world's batch
    scores': a version pinned or retrained in the session since scores differently, and a
    rollback's threshold is not followed."""
    value = params.get("threshold")
    unjudged = "not checked against the planned share: the world's tables could not be read"
    if reference is None or sim_ts is None or not isinstance(value, int | float):
        return None, unjudged
    at = naive_utc(sim_ts)
    before_threshold = set_threshold[-1] if set_threshold else reference.threshold(at)
    after = reference.share(float(value), at)
    if before_threshold is None or after is None:
        return None, "not checked against the planned share: no batch had run by then"
    before = reference.share(before_threshold, at)
    assert before is not None  # the same batch day as `after`
    moved = judge_share(after, before)
    plan = f"the planned {FLAGGED_SHARE:.0%}"
    if moved == "unchanged":
        return moved, f"threshold {before_threshold:g}: flags {before:.1%} as before ({plan})"
    how = MOVED_WORDS[moved]
    return moved, (
        f"threshold {before_threshold:g} → {float(value):g}: flags {after:.1%} of the last batch "
        f"instead of {before:.1%}, {how} {plan}"
    )


def _fill_moved(
    fills: FillReference | None,
    set_fills: dict[str, float],
    sim_ts: str | None,
    params: dict[str, Any],
) -> tuple[str | None, str]:
    """How a new fill value moved the feature's fill against its training-time mean (`judge`),
    from the fill this session set last, else the feature job's, with that in words; no
    judgement (None) when the world cannot tell, and the words say so."""
    feature, value = str(params.get("feature")), params.get("fill_value")
    unjudged = "not checked against the training-time mean: the world's tables could not be read"
    if fills is None or sim_ts is None or not isinstance(value, int | float):
        return None, unjudged
    at = naive_utc(sim_ts)
    mean = fills.training_mean(feature, at)
    before = set_fills.get(feature, fills.policy_fill(feature, at))
    if mean is None or before is None:
        return None, unjudged
    moved = judge(float(value), before, mean)
    if moved == "unchanged":
        return moved, f"fill {before:g} unchanged (the training-time mean is {mean:.4g})"
    how = MOVED_WORDS[moved]
    return moved, f"fill {before:g} → {float(value):g}: {how} the training-time mean {mean:.4g}"
