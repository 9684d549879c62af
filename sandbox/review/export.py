"""The review as a file to keep: self-contained HTML (no scripts, no external assets) or Markdown."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

_env = Environment(
    loader=PackageLoader("sandbox.review", "templates"),
    autoescape=select_autoescape(["html.j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def clock(seconds: float | None) -> str:
    """Seconds since the session started as H:MM:SS (or M:SS)."""
    if seconds is None:
        return "—"
    total = max(0, round(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


_env.filters["clock"] = clock


def to_html(review: dict[str, Any]) -> str:
    return _env.get_template("review.html.j2").render(r=review)


def to_markdown(review: dict[str, Any]) -> str:
    return _env.get_template("review.md.j2").render(r=review)
