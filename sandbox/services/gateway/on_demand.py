"""Services the stack starts on their first use (the MLflow UI): the gateway asks the supervisor
for one when a request first needs it and holds that request until the service answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from sandbox.services import stack

START_TIMEOUT_S = 60.0
POLL_S = 0.25


class NotStarted(RuntimeError):
    """The service did not come up in time; the message says so to the caller."""


class OnDemand:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._up: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    def unanswered(self, name: str) -> str | None:
        """What an on-demand service that did not answer its health probe is: `idle` until it is
        first asked for, then `starting`; None once it was up (then it is down, as any service)."""
        if name in self._up:
            return None
        return "starting" if stack.start_requested(self.run_dir, name) else "idle"

    async def ensure(
        self, name: str, address: stack.ServiceAddress, client: httpx.AsyncClient
    ) -> None:
        """Return once `name` answers its health path, asking for it to start if need be."""
        if name in self._up:
            return
        async with self._locks.setdefault(name, asyncio.Lock()):
            if name in self._up:
                return
            stack.request_start(self.run_dir, name)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + START_TIMEOUT_S
            while loop.time() < deadline:
                try:
                    reply = await client.get(address.url + address.health, timeout=2.0)
                    if reply.status_code == 200:
                        self._up.add(name)
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(POLL_S)
            raise NotStarted(f"the {name} service did not start within {START_TIMEOUT_S:.0f} s")
