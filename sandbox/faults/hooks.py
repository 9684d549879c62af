"""The hook points stages expose to faults and decoys, each declared once with its value's type.

A handler takes the value flowing through its point and returns one of the same type:
`def on_billing(self, events: pl.DataFrame, ctx: HookContext) -> pl.DataFrame`. `ctx.day` is
the simulated day the value belongs to (for `train.*` and `serve.rollout`, the release's first
serving day; for `monitor.metrics`, the last visible day, since the series covers the whole
history). `ctx.data` reads the world's tables as written so far, so a handler never needs to
remember earlier days itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class HookPoint:
    name: str
    value: str  # the value's type as handlers annotate it (module prefixes aside)
    description: str


_POINTS = (
    HookPoint(
        "world.state",
        "WorldState",
        "the simulated customers' latent state at the start of a day (changes here are "
        "real-world changes, not pipeline ones; mutated in place and returned)",
    ),
    HookPoint(
        "ingest.activity",
        "pl.DataFrame",
        "one day's raw viewing-activity rows as they land in raw tables",
    ),
    HookPoint("ingest.billing", "pl.DataFrame", "one day's raw billing events"),
    HookPoint("ingest.tickets", "pl.DataFrame", "one day's raw support tickets"),
    HookPoint(
        "features.imputation",
        "dict[str, float]",
        "the feature job's fill values for that day (feature -> value)",
    ),
    HookPoint("features.rows", "pl.DataFrame", "one day's computed feature rows after imputation"),
    HookPoint(
        "materialize.online",
        "pl.DataFrame",
        "the rows written to the online store at a materialization",
    ),
    HookPoint(
        "train.releases",
        "list[Release]",
        "the churn-model releases of the world (pipeline.release.Release); the first is the "
        "champion trained at the end of pre-history",
    ),
    HookPoint(
        "train.dataset",
        "pl.DataFrame",
        "a release's point-in-time training set with its labels, before the split",
    ),
    HookPoint(
        "train.class_weight",
        "float",
        "the churners' class weight in a release's training (1.0 = unweighted)",
    ),
    HookPoint(
        "serve.rollout",
        "Rollout",
        "what the model servers do with a newly registered release (pipeline.release.Rollout): "
        "whether they switch to it and which decision threshold they use",
    ),
    HookPoint(
        "serve.traffic", "float", "a multiplier on the day's online request volume (1.0 = normal)"
    ),
    HookPoint(
        "serve.features",
        "pl.DataFrame",
        "the requests the model server scores (customer_id, request_ts, source, latency_ms, "
        "status and the model's features)",
    ),
    HookPoint(
        "serve.scores", "pl.DataFrame", "the scored requests with score, threshold and decision"
    ),
    HookPoint("retrieve.query_encoder", "Encoder", "the ticket encoder the retrieval service uses"),
    HookPoint(
        "retrieve.index",
        "ArticleIndex",
        "the help-article index the retrieval service searches that day (vectors and build "
        "metadata); the world's saved index, which the live service loads, is the live start's",
    ),
    HookPoint(
        "monitor.metrics",
        "pl.DataFrame",
        "every metric series before it is stored and alerted on",
    ),
    HookPoint(
        "monitor.drift_reference",
        "pl.DataFrame | None",
        "the reference a day's drift report compares against (None = the training set; or "
        "feature rows)",
    ),
)

HOOK_POINTS: dict[str, HookPoint] = {point.name: point for point in _POINTS}


def same_type(annotation: str, declared: str) -> bool:
    """Whether a handler's annotation names the declared type: `polars.DataFrame`,
    `pl.DataFrame` and `DataFrame` are one type here, as are `X | None` and `None | X`."""

    def parts(text: str) -> frozenset[str]:
        bare = re.sub(r"\b[A-Za-z_][\w]*\.", "", text.replace(" ", ""))
        bare = re.sub(r"^Optional\[(.*)\]$", r"\1|None", bare)
        return frozenset(bare.split("|"))

    return parts(annotation) == parts(declared)
