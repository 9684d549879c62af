"""The fault and decoy catalog as plain data, documented from the code: what `sandbox faults`
prints, what the README's table holds, and what the interviewer's scenario builder offers."""

from __future__ import annotations

import inspect
from typing import Any


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
    rows = ["| id | stage | difficulty | the candidate observes |", "| --- | --- | --- | --- |"]
    for e in faults():
        stages = ", ".join(e["stages"])
        rows.append(
            f"| `{e['id']}`: {e['title']} | {stages} | {e['difficulty']} | {e['observation']} |"
        )
    return "\n".join(rows)


def describe_params(cls: type) -> list[dict]:
    schema = cls.Params.model_json_schema()
    params = []
    for name, prop in schema["properties"].items():
        if "enum" in prop:
            rng = " | ".join(map(str, prop["enum"]))
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
        "difficulty": cls.difficulty,
        "observation": cls.observation,
        "min_customers": cls.min_customers,
        "doc": _paragraphs(inspect.getdoc(inspect.getmodule(cls)) or ""),
        "parameters": params,
    }


def _paragraphs(text: str) -> str:
    """Docstring paragraphs as flowing text, so the terminal can wrap them."""
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))
