"""How a text reached the workspace's editor, as its page measured it: the SQL console sends this
with a run, the diagnosis page with each save (per field). The review compares it with the text
(`sandbox.review.signals`); a client that sends none had its text made elsewhere.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# More than any editor here holds or any person types on one page (the pages cap what they send).
MAX_CHARS = 1_000_000
# A day: a page left open longer starts counting again (the pages cap what they send).
MAX_COMPOSE_MS = 86_400_000


class Composition(BaseModel):
    """Characters that reached the editor since the previous run or save (or since the page
    opened), by how they came."""

    model_config = ConfigDict(extra="forbid")

    typed: int = Field(0, ge=0, le=MAX_CHARS, description="by keystrokes")
    pasted: int = Field(0, ge=0, le=MAX_CHARS, description="pasted or dropped")
    inserted: int = Field(
        0, ge=0, le=MAX_CHARS, description="put there by the page: an example, a history entry"
    )
    kept: int = Field(
        0, ge=0, le=MAX_CHARS, description="in the editor when counting began: the last run's"
    )
    compose_ms: int = Field(
        0, ge=0, le=MAX_COMPOSE_MS, description="from the first keystroke or paste to the send"
    )

    def detail(self) -> dict[str, Any]:
        return self.model_dump()
