"""One HTTP client for the whole test process. Each new httpx client loads the CA bundle (tens of
milliseconds of CPU, for loopback calls that never use TLS), and the suite's polling loops would
otherwise pay that on every poll: it added up to over a minute of a run's CPU."""

from __future__ import annotations

import httpx

# Loopback only: no proxy from the environment applies.
HTTP = httpx.Client(timeout=5.0, trust_env=False)
