"""The rubric the interviewer scores: behaviourally anchored levels per dimension. The summary is
the lowest level among the must-have dimensions — a strong write-up does not make up for a root
cause that was never found."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LEVELS = {1: "no signal", 2: "weak", 3: "solid", 4: "strong"}


@dataclass(frozen=True)
class Dimension:
    id: str
    title: str
    must_have: bool
    anchors: dict[int, str]


DIMENSIONS = (
    Dimension(
        "problem_framing",
        "Problem framing",
        False,
        {
            1: "Starts querying without restating the symptom or what 'worse' means.",
            2: "Restates the symptom but does not separate model, data and business effects.",
            3: "Frames the symptom (which metric, since when, for whom) before digging in.",
            4: "Frames it sharply and lists competing hypotheses with what would tell them apart.",
        },
    ),
    Dimension(
        "investigation",
        "Investigation discipline",
        True,
        {
            1: "Random browsing; conclusions do not follow from what was looked at.",
            2: "Some hypothesis-driven queries, but long unfocused stretches or confirmation bias.",
            3: "Hypothesis, query, conclusion; narrows down from the symptom to the stage at fault.",
            4: "Efficient and falsifying: rules alternatives out with data, notices decoys.",
        },
    ),
    Dimension(
        "root_cause",
        "Root cause",
        True,
        {
            1: "Root cause not found, or a wrong one asserted with confidence.",
            2: "Finds a symptom of the fault (e.g. the metric moving) but not its cause.",
            3: "Names the cause and the affected component, with supporting evidence.",
            4: "Names the cause, the propagation chain and the onset, and quantifies the impact.",
        },
    ),
    Dimension(
        "fix",
        "Fix and what to ship first",
        True,
        {
            1: "No fix, or one that would not address the cause (e.g. 'just retrain').",
            2: "A plausible fix without a first step or a way to check it worked.",
            3: "A correct fix, a safe first step, and how to verify it.",
            4: "Also weighs risk and rollout, and what to do for the customers already affected.",
        },
    ),
    Dimension(
        "prevention",
        "Prevention and monitoring",
        False,
        {
            1: "Nothing about preventing a repeat.",
            2: "Generic 'add more monitoring'.",
            3: "A specific check or alert that would have caught this fault early.",
            4: "Specific checks plus a process change (contracts, tests, reviews) with owners.",
        },
    ),
    Dimension(
        "communication",
        "Communication",
        False,
        {
            1: "Hard to follow; claims without evidence.",
            2: "Understandable but unstructured, or certainty not stated.",
            3: "Clear, evidence-backed, states how sure they are.",
            4: "Crisp enough to send to stakeholders as written; separates fact from inference.",
        },
    ),
)
BY_ID = {d.id: d for d in DIMENSIONS}


def summary(scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The overall level: the minimum over must-have dimensions, once all of them are scored."""
    must = [d for d in DIMENSIONS if d.must_have]
    missing = [d.id for d in must if (scores.get(d.id) or {}).get("level") is None]
    if missing:
        return {"level": None, "label": "not scored yet", "missing": missing}
    level = min(int(scores[d.id]["level"]) for d in must)
    weakest = [d.id for d in must if int(scores[d.id]["level"]) == level]
    return {"level": level, "label": LEVELS[level], "missing": [], "limited_by": weakest}


def as_json() -> list[dict[str, Any]]:
    return [
        {
            "id": d.id,
            "title": d.title,
            "must_have": d.must_have,
            "anchors": {str(k): v for k, v in d.anchors.items()},
        }
        for d in DIMENSIONS
    ]
