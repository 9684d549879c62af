"""Getting a world ready for the containers of `compose/` (`sandbox compose-init DIR`): what the
supervisor does before it starts processes, for services that compose starts instead — the world
built if it is missing, the address book naming the other containers, the shared clock, the
metric history for Prometheus to backfill and the Grafana dashboards."""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

from sandbox.layout import WorldPaths, world_difficulty
from sandbox.scenario import world_spec
from sandbox.services import dashboards, grafana, stack
from sandbox.services import prometheus as promstack
from sandbox.services.deploy.processes import GATEWAY, READY_FILE, processes
from sandbox.services.settings import Settings
from sandbox.services.simclock import SimClock
from sandbox.services.supervisor import HEARTBEAT_FILE

# Container name -> (port, health path), as the containers run them.
SERVICES = {p.name: (p.port, p.health) for p in processes() if p.name != GATEWAY}
GATEWAY_PORT = next(p.port for p in processes() if p.name == GATEWAY)


def prepare(world: Path, speed: float, settings: Settings) -> WorldPaths:
    """Write the run state the containers share; the world must be built."""
    paths = WorldPaths(world)
    run = paths.run
    run.mkdir(parents=True, exist_ok=True)
    (run / READY_FILE).unlink(missing_ok=True)
    addresses = {
        name: stack.ServiceAddress(f"http://{name}:{port}", health)
        for name, (port, health) in SERVICES.items()
    }
    stack.write_addresses(run, f"http://gateway:{GATEWAY_PORT}", addresses)
    stack.admin_token(paths)
    calendar = world_spec(paths.scenario).calendar()
    resume = None
    with contextlib.suppress(OSError, ValueError):
        resume = dt.datetime.fromisoformat((run / HEARTBEAT_FILE).read_text().strip())
    clock = SimClock.starting(calendar, speed, resume_at=resume)
    clock.save(run)
    history = run / "prometheus" / promstack.HISTORY_FILE
    if not history.exists():
        shift = dt.datetime.now(dt.UTC).replace(tzinfo=None) - clock.now()
        promstack.write_history(
            paths, calendar.midnight(calendar.last_production_day + 1), shift, history
        )
    boards = dashboards.for_tier(dashboards.catalog(settings.dashboards), world_difficulty(world))
    grafana.export(run / "grafana", boards)
    (run / READY_FILE).touch()  # last: what waits for the world starts once this exists
    return paths
