"""What the console's forkserver loads once, before it forks any worker (`pool`).

A worker forked from the server inherits everything here: the worker's code, the fault and decoy
catalogs (the planted faults act on live metrics), the scenario's validation model built from
them, and pyarrow (spooled rows reach DuckDB through Arrow). Without it every new worker would
load or build them again while it opens its store, which is most of that store's cost; a pool
growing on a dashboard's burst, on a machine many stacks share, pays it each time.
"""

from __future__ import annotations

import pyarrow  # noqa: F401

from sandbox import scenario
from sandbox.services.console import worker  # noqa: F401

scenario.scenario_model()
