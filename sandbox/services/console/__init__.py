"""The SQL console the gateway serves: the candidate's read-only queries (`query`), run in worker
processes (`pool`, `worker`) over the built world and the live services' telemetry
(`telemetry`), behind views that reveal rows by simulated time (`views`)."""
