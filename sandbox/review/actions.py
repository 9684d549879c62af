"""The candidate's ops-console actions in the review, each judged by what the planted faults and
decoys declare it does to them (the answer key's `actions`, with the parameter values a verdict
needs in `acts_when`), and how soon the first one that helped was applied."""

from __future__ import annotations

from typing import Any

HELPS = ("fixes", "mitigates")
NO_EFFECT = "no effect"


def _verdict(key: dict[str, Any], action: str, params: dict[str, Any]) -> str:
    """What `action` with `params` does to one planted fault or decoy: its declared verdict,
    unless the verdict holds only for other values of a parameter (`acts_when`)."""
    declared = str(key.get("actions", {}).get(action, NO_EFFECT))
    needs = key.get("acts_when", {}).get(action, {})
    if any(params.get(name) not in values for name, values in needs.items()):
        return NO_EFFECT
    return declared


def verdict_of(
    action: str, answer_key: dict[str, Any], params: dict[str, Any] | None = None
) -> tuple[str, list[dict[str, str]]]:
    """The overall verdict of applying `action` with `params` in this world, and the verdict per
    planted fault or decoy. One that names no verdict for it is not affected. A harm anywhere
    counts first: the interviewer needs to see it even when the action also helped elsewhere."""
    planted = [
        *(("fault", k.get("fault_id"), k) for k in answer_key.get("faults", [])),
        *(("decoy", k.get("decoy_id"), k) for k in answer_key.get("decoys", [])),
    ]
    each = [
        {"kind": kind, "id": str(pid), "verdict": _verdict(key, action, params or {})}
        for kind, pid, key in planted
        if isinstance(key, dict)
    ]
    verdicts = {e["verdict"] for e in each}
    for overall in ("harmful", "fixes", "mitigates"):
        if overall in verdicts:
            return overall, each
    return NO_EFFECT, each


def review(timeline: list[dict[str, Any]], answer_key: dict[str, Any]) -> dict[str, Any]:
    """Every `action` event as the review shows it (`list`: id, at, params, status, verdict...),
    with the time from the session's start to the first applied action that helps. Only an
    applied action has a verdict; a refused or unavailable one changed nothing."""
    listed = []
    for item in timeline:
        if item["kind"] != "action":
            continue
        d = item["detail"]
        applied = d.get("status") == "applied"
        verdict, each = (
            verdict_of(str(d.get("action")), answer_key, d.get("params", {}))
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
            }
        )
    helped = [a for a in listed if a["verdict"] in HELPS]
    return {
        "list": listed,
        "applied": sum(a["status"] == "applied" for a in listed),
        "time_to_first_mitigation_s": helped[0]["offset_s"] if helped else None,
        "first_mitigation_effective_at": helped[0]["effective_at"] if helped else None,
    }
