"""A day's drift report as HTML: rendered from the world's rows on first view, then cached.

The build keeps the drift numbers as rows (fast, queryable); the full Evidently page is ~4.5 MB and
seconds to render, so it is made only for the days someone actually opens.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import duckdb

from sandbox.layout import WorldPaths
from sandbox.monitor.drift import render_report_html
from sandbox.pipeline.features import MODEL_FEATURES


class NoReport(LookupError):
    pass


def report_path(root: Path, day: dt.date) -> Path:
    return WorldPaths(Path(root)).reports / f"drift-{day:%Y-%m-%d}.html"


def drift_report(root: Path, day: dt.date) -> Path:
    """The HTML drift report for `day`, rendering it if it is not cached yet."""
    path = report_path(root, day)
    if path.is_file():
        return path
    paths = WorldPaths(Path(root))
    con = duckdb.connect(str(paths.duckdb), read_only=True)
    try:
        known = con.execute(
            "SELECT count(*) FROM monitoring.drift_daily WHERE report_date = ?", [day]
        ).fetchall()[0][0]
        if not known:
            raise NoReport(f"no drift report for {day}")
        columns = ", ".join(MODEL_FEATURES)
        reference = con.sql(f"SELECT {columns} FROM monitoring.drift_reference").pl()
        current = con.sql(
            f"SELECT {columns} FROM serving.predictions "
            "WHERE source = 'batch' AND request_ts::DATE = $day",
            params={"day": day},
        ).pl()
    finally:
        con.close()
    html = render_report_html(
        reference, current, MODEL_FEATURES, f"Feature drift vs training reference — {day:%Y-%m-%d}"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(html)
    partial.replace(path)  # atomic: a concurrent viewer never sees half a page
    return path


def main() -> None:
    """`python -m sandbox.monitor.reports WORLD_DIR YYYY-MM-DD`: render one day's report (the
    gateway runs this in a child process to keep Evidently out of its own memory)."""
    import sys

    drift_report(Path(sys.argv[1]), dt.date.fromisoformat(sys.argv[2]))


if __name__ == "__main__":
    main()
