"""The candidate's ops-console actions in the review, each judged by what the planted faults and
decoys declare it does to them (the answer key's `actions`, with the parameter values a verdict
needs in `acts_when`), and how soon the first one that helped was applied.

A new fill value is judged by its value too (`fills.judge`): it helps a fault that declares the
fill helps only when it brings the fill near the feature's training-time mean or at least halfway
back to it, and harms when it moves it further away."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sandbox.actions.catalog import SET_FILL
from sandbox.review.fills import FillReference, judge

HELPS = ("fixes", "mitigates")
NO_EFFECT = "no effect"
HARMFUL = "harmful"


def _verdict(key: dict[str, Any], action: str, params: dict[str, Any]) -> str:
    """What `action` with `params` does to one planted fault or decoy: its declared verdict,
    unless the verdict holds only for other values of a parameter (`acts_when`)."""
    declared = str(key.get("actions", {}).get(action, NO_EFFECT))
    needs = key.get("acts_when", {}).get(action, {})
    if any(params.get(name) not in values for name, values in needs.items()):
        return NO_EFFECT
    return declared


def verdict_of(
    action: str,
    answer_key: dict[str, Any],
    params: dict[str, Any] | None = None,
    fill_moved: str | None = None,
) -> tuple[str, list[dict[str, str]]]:
    """The overall verdict of applying `action` with `params` in this world, and the verdict per
    planted fault or decoy. One that names no verdict for it is not affected. A harm anywhere
    counts first: the interviewer needs to see it even when the action also helped elsewhere.

    `fill_moved` (`fills.judge`: helps, harms, little or unchanged) is how a new fill value moved
    the fill against the training-time mean; a fault the fill helps is helped only when it helps."""
    planted = [
        *(("fault", k.get("fault_id"), k) for k in answer_key.get("faults", [])),
        *(("decoy", k.get("decoy_id"), k) for k in answer_key.get("decoys", [])),
    ]
    each = []
    for kind, pid, key in planted:
        if not isinstance(key, dict):
            continue
        verdict = _verdict(key, action, params or {})
        if verdict in HELPS and fill_moved is not None and fill_moved != "helps":
            verdict = HARMFUL if fill_moved == "harms" else NO_EFFECT  # little or unchanged
        each.append({"kind": kind, "id": str(pid), "verdict": verdict})
    verdicts = {e["verdict"] for e in each}
    for overall in ("harmful", "fixes", "mitigates"):
        if overall in verdicts:
            return overall, each
    return NO_EFFECT, each


def review(
    timeline: list[dict[str, Any]],
    answer_key: dict[str, Any],
    fills: Callable[[], FillReference | None] | None = None,
) -> dict[str, Any]:
    """Every `action` event as the review shows it (`list`: id, at, params, status, verdict...),
    with the time from the session's start to the first applied action that helps. Only an
    applied action has a verdict; a refused or unavailable one changed nothing. With `fills`
    (reads the world's, when a new fill value was applied), a new fill value is judged by its
    value as well."""
    listed = []
    set_fills: dict[str, float] = {}  # feature -> the fill this session set last
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
        verdict, each = (
            verdict_of(str(d.get("action")), answer_key, params, moved) if applied else (None, [])
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
                **({"fill_moved": moved} if moved else {}),
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
    at = dt.datetime.fromisoformat(str(sim_ts).replace("Z", "+00:00"))
    if at.tzinfo is not None:
        at = at.astimezone(dt.UTC).replace(tzinfo=None)
    mean = fills.training_mean(feature, at)
    before = set_fills.get(feature, fills.policy_fill(feature, at))
    if mean is None or before is None:
        return None, unjudged
    moved = judge(float(value), before, mean)
    if moved == "unchanged":
        return moved, f"fill {before:g} unchanged (the training-time mean is {mean:.4g})"
    how = {
        "helps": "near or at least halfway back to",
        "little": "less than halfway back to",
        "harms": "further from",
    }[moved]
    return moved, f"fill {before:g} → {float(value):g}: {how} the training-time mean {mean:.4g}"
