"""Difficulty tiers: how much of a planted fault's trail a world shows.

- guided: the monitoring a mature team has, and an explicit trail (changelog, logs, registry)
  that names the changed component and its mechanism;
- standard: the same trail in vaguer words, and the panels and alerts only a mature team has
  are gone;
- hard: no trail pointing at the cause, benign changes of the same kind around it, and the
  plainest monitoring: the cause is found only by joining evidence from two sources.

A scenario sets one for its world; a fault entry may override it for its own trail. Panels and
alert rules say the hardest tier at which they are still shown.
"""

from __future__ import annotations

from typing import Literal, get_args

Tier = Literal["guided", "standard", "hard"]
TIERS: tuple[Tier, ...] = get_args(Tier)
DEFAULT: Tier = "standard"


def shown(hardest: Tier, tier: Tier) -> bool:
    """Whether something shown up to the tier `hardest` is shown in a world of `tier`."""
    return TIERS.index(tier) <= TIERS.index(hardest)


def at_least(tier: Tier, floor: Tier) -> bool:
    """Whether `tier` is `floor` or harder."""
    return TIERS.index(tier) >= TIERS.index(floor)
