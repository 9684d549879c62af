"""The fault and decoy catalog as plain data, documented from the code: what `sandbox faults`
prints, what the README's tables hold, and what the interviewer's scenario builder offers."""

from __future__ import annotations

import inspect
from typing import Any

from sandbox.difficulty import TIERS


def faults() -> list[dict[str, Any]]:
    from sandbox.faults import registry

    return [describe_fault(cls) for cls in registry.catalog().values()]


def decoys() -> list[dict[str, Any]]:
    from sandbox.decoys import registry as decoy_registry

    return [
        {
            "kind": cls.id,
            "title": cls.title,
            "hooks": list(cls.hook_points),
            "doc": _paragraphs(inspect.getdoc(inspect.getmodule(cls)) or ""),
            "parameters": describe_params(cls),
        }
        for cls in decoy_registry.catalog().values()
    ]


def fault_table_markdown() -> str:
    rows = ["| id | stage | rating | the candidate observes |", "| --- | --- | --- | --- |"]
    for e in faults():
        stages = ", ".join(e["stages"])
        rows.append(
            f"| `{e['id']}`: {e['title']} | {stages} | {e['rating']} | {e['observation']} |"
        )
    return "\n".join(rows)


def describe_params(cls: type) -> list[dict]:
    schema = cls.Params.model_json_schema()
    params = []
    for name, prop in schema["properties"].items():
        # An optional choice (`Tier | None`) is a choice that may be left unset.
        choice = next((p for p in prop.get("anyOf", []) if "enum" in p), prop)
        if "enum" in choice:
            rng = " | ".join(map(str, choice["enum"]))
        else:
            lo = prop.get("minimum", prop.get("exclusiveMinimum", ""))
            hi = prop.get("maximum", prop.get("exclusiveMaximum", ""))
            rng = f"{lo}..{hi}" if lo != "" or hi != "" else ""
        params.append(
            {
                "name": name,
                "default": prop.get("default"),
                "range": rng,
                "description": prop.get("description", ""),
                "type": prop.get("type"),
            }
        )
    return params


def describe_fault(cls: type) -> dict:
    params = describe_params(cls)
    hooks = list(cls.hook_points)
    return {
        "id": cls.id,
        "title": cls.title,
        "stages": list(dict.fromkeys(h.split(".")[0] for h in hooks)),
        "hooks": hooks,
        "rating": cls.rating,
        "observation": cls.observation,
        "min_customers": cls.min_customers,
        "tiers": describe_tiers(cls),
        "doc": _paragraphs(inspect.getdoc(inspect.getmodule(cls)) or ""),
        "parameters": params,
    }


def describe_tiers(cls: type) -> dict[str, dict[str, Any]] | None:
    """Per difficulty: the tells hidden in a world of that tier and the queries the reference
    investigation takes; None for a fault whose trail is the same at every tier."""
    from sandbox.faults.base import Fault
    from sandbox.scenario import builtin

    if cls.tells is Fault.tells:
        return None
    calendar = builtin("default").world.calendar()
    tiers = {}
    for tier in TIERS:
        fault = cls(cls.Params(), tier)
        tiers[tier] = {
            "hidden": list(fault.tells(tier)),
            "queries": len(fault.investigation(calendar)),
        }
    return tiers


def tier_table_markdown() -> str:
    """Per fault and difficulty, the queries its reference investigation takes (README)."""
    rows = [
        "| fault | " + " | ".join(TIERS) + " |",
        "| --- |" + " --- |" * len(TIERS),
    ]
    for e in faults():
        tiers = e["tiers"]
        cells = (
            [str(tiers[t]["queries"]) for t in TIERS]
            if tiers
            else ["same trail at every tier"] + [""] * (len(TIERS) - 1)
        )
        rows.append(f"| `{e['id']}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _paragraphs(text: str) -> str:
    """Docstring paragraphs as flowing text, so the terminal can wrap them."""
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))
