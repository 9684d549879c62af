"""The review as a file to keep: self-contained HTML (no scripts, no external assets) or Markdown.

Text from the session (the candidate's name, diagnosis, queries and searches, the interviewer's
notes) goes into the Markdown as plain text: HTML is escaped and so is every character Markdown
would read as markup, so a forwarded report shows what was written, never headings, list items,
quotes, tables, links or emphasis of its author's making.
"""

from __future__ import annotations

import re
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from sandbox.review import recovery, signals

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


# Markup wherever it stands: HTML's three (as entities, which Markdown decodes to text) and the
# punctuation of emphasis, code, links, tables, strikethrough, headings and math.
_INLINE = {"&": "&amp;", "<": "&lt;", ">": "&gt;"} | {c: "\\" + c for c in "\\`*[]|~#$@"}
_INLINE_CHARS = re.compile("[" + re.escape("".join(_INLINE)) + "]")
_UNDERSCORES = re.compile(r"_+")
# Bare links GitHub would make: "https://…", "www.…".
_SCHEME = re.compile(r":(?=//)")
_WWW = re.compile(r"(?i)\b(www)\.")
# Markup only at the start of a line: list items, setext underlines, ordered lists.
_LINE_START = re.compile(r"^(\s*)(?:([-+=])|(\d{1,9})([.)]))")
_LINE_BREAK = re.compile(r"\r\n|[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]")


def md_inline(text: Any) -> str:
    """Session text as Markdown that reads as that text, on one line (a table cell, a heading)."""
    return _escape(" ".join(_LINE_BREAK.split(str(text))))


def md_block(text: Any) -> str:
    """Session text as Markdown that reads as that text, its lines kept (hard breaks)."""
    return "  \n".join(_escape_line(line) for line in _LINE_BREAK.split(str(text)))


def _escape_line(line: str) -> str:
    match = _LINE_START.match(line)
    if match is None:
        return _escape(line)
    indent, marker, number, delimiter = match.groups()
    head = f"{indent}\\{marker}" if marker else f"{indent}{number}\\{delimiter}"
    return head + _escape(line[match.end() :])


def _escape(text: str) -> str:
    text = _INLINE_CHARS.sub(lambda m: _INLINE[m.group()], text)
    text = _UNDERSCORES.sub(_underscores, text)
    text = _SCHEME.sub("\\:", text)
    return _WWW.sub(r"\1\\.", text)


def _underscores(run: re.Match[str]) -> str:
    """Underscores between two letters or digits cannot mark emphasis: snake_case stays as it
    is. Any others are escaped."""
    text, start, end = run.string, run.start(), run.end()
    if start > 0 and end < len(text) and text[start - 1].isalnum() and text[end].isalnum():
        return run.group()
    return "\\_" * (end - start)


# How each kind of walk-through probe is labelled.
PROBE_LABELS = {
    "decisive_query": "query",
    "ruled_out": "ruled out",
    "unbacked_claim": "unbacked claim",
    "answer_key": "answer key",
    "generic": "closing",
}

# What an event is called where a claim is traced to it ("seen in query #12").
EVENT_LABELS = {"sql": "query", "log_search": "log search", "customer_examples": "customer list"}

_env.globals["probe_kinds"] = PROBE_LABELS
_env.globals["event_kinds"] = EVENT_LABELS
_env.filters["clock"] = clock
_env.filters["md"] = md_inline
_env.filters["md_block"] = md_block
_env.globals["signals_by_event"] = signals.by_event
_env.globals["sparkline"] = recovery.sparkline


def to_html(review: dict[str, Any]) -> str:
    return _env.get_template("review.html.j2").render(r=review)


def to_markdown(review: dict[str, Any]) -> str:
    return _env.get_template("review.md.j2").render(r=review)
