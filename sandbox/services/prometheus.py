"""Prometheus beside the stack (`sandbox up --prometheus`, when Debian's `prometheus` is
installed): the world's metric history backfilled as TSDB blocks, shifted so that it ends when the
stack starts, and every service's `/metrics` scraped live.

History series are named `<service>_<metric>` (`model_server_latency_p95_ms`,
`business_daily_churn_rate`, `feature_job_feature_null_ratio{feature="..."}`), one sample per
point of `telemetry.metrics` that exists before live time; the live services' own series keep the
names prometheus-client gives them.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

import duckdb

from sandbox.layout import WorldPaths
from sandbox.schema import METRIC_COMPLETE

HISTORY_FILE = "history.om"
RETENTION = "400d"  # the history reaches back months before the stack starts
BLOCK_DURATION = "744h"  # a month per block: a few blocks for the history, not hundreds
# Simulated time runs 48x by default: 5 s of wall time is already four simulated minutes.
SCRAPE_INTERVAL = "5s"
NAME = re.compile(r"[^a-zA-Z0-9_]")


class PrometheusMissing(RuntimeError):
    pass


def binaries() -> tuple[str, str]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not prometheus or not promtool:
        raise PrometheusMissing(
            "--prometheus needs Debian's prometheus package (apt-get install prometheus)"
        )
    return prometheus, promtool


def series_name(service: str, metric: str) -> str:
    return NAME.sub("_", f"{service}_{metric}")


def write_history(
    paths: WorldPaths, live_start: dt.datetime, shift: dt.timedelta, out: Path
) -> int:
    """The world's metric points that exist before live time, as OpenMetrics text with their
    times moved by `shift`; returns how many samples were written."""
    con = duckdb.connect(str(paths.duckdb), read_only=True)
    try:
        complete = METRIC_COMPLETE  # the moment each point exists
        rows = con.execute(
            f"SELECT service, metric, label, epoch(ts + ?::INTERVAL), value "
            f"FROM telemetry.metrics WHERE {complete} <= ? AND value IS NOT NULL "
            "AND isfinite(value) ORDER BY service, metric, label, ts",
            [shift, live_start],
        ).fetchall()
    finally:
        con.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        family = None
        for service, metric, label, seconds, value in rows:
            name = series_name(service, metric)
            if name != family:
                f.write(f"# TYPE {name} gauge\n")
                family = name
            labels = f'{{feature="{label}"}}' if label else ""
            f.write(f"{name}{labels} {value!r} {seconds:.3f}\n")
        f.write("# EOF\n")
    return len(rows)


def backfill(history: Path, data: Path) -> None:
    """TSDB blocks from the OpenMetrics history, in Prometheus's data directory."""
    _, promtool = binaries()
    data.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            promtool,
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            f"--max-block-duration={BLOCK_DURATION}",
            "--quiet",
            str(history),
            str(data),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"promtool could not backfill the history: {done.stderr.strip()}")


def write_config(targets: dict[str, str], path: Path) -> None:
    """A scrape job per service: name -> host:port serving /metrics."""
    lines = ["global:", f"  scrape_interval: {SCRAPE_INTERVAL}", "scrape_configs:"]
    for name, address in sorted(targets.items()):
        lines += [
            f"  - job_name: {name}",
            "    static_configs:",
            f"      - targets: ['{address}']",
        ]
    path.write_text("\n".join(lines) + "\n")


def argv(config: Path, data: Path, host: str, port: int, external_url: str) -> list[str]:
    prometheus, _ = binaries()
    return [
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--storage.tsdb.retention.time={RETENTION}",
        f"--web.listen-address={host}:{port}",
        f"--web.external-url={external_url}",
        "--web.route-prefix=/",
        "--log.level=warn",
    ]
