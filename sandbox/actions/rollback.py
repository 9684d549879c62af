"""The configuration a service runs once rollbacks of it from the ops console are in effect, for a
service whose deploy history is only the rollouts of its code or configuration that the planted
story declares (`Planted.rollouts`): the feature server. The model server keeps a richer history
(model versions too, `deployment`); the retrieval service's is its encoder versions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sandbox.actions.catalog import rolls_back
from sandbox.actions.deployment import FIRST_CONFIG
from sandbox.actions.overrides import Applied


def rollbacks(service: str, entries: Iterable[Applied], now: dt.datetime) -> list[dt.datetime]:
    """When the rollbacks of `service` in effect at `now` took effect, oldest first."""
    return sorted(
        e.effective_at
        for e in entries
        if rolls_back(e.action, e.params, service) and e.effective_at <= now
    )


def config_as_of(
    service: str, rollouts: Iterable[dt.datetime], entries: Iterable[Applied], now: dt.datetime
) -> dt.datetime | None:
    """`HookContext.config_as_of` for `service` at `now`: None while no rollback of it is in
    effect (it runs what the world left); else the configuration it went back to, each rollback
    one rollout further back (those rolled out by the first rollback), the first one staying.
    With nothing planted rolled out, the configuration gone back to is the first: it loads as
    the world did, but the rollback still happens, so whether it changes anything does not tell
    of a rollout the changelog keeps quiet about."""
    backs = rollbacks(service, entries, now)
    if not backs:
        return None
    history = [FIRST_CONFIG, *sorted(r for r in rollouts if r <= backs[0])]
    return history[max(0, len(history) - 1 - len(backs))]
