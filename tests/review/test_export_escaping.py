"""The exports of a session whose candidate writes markup: the Markdown shows their text as text,
with no HTML, headings, list items, quotes, tables, links or emphasis of their making, exactly as
the HTML export does."""

from __future__ import annotations

import datetime as dt
import html
import re
from collections import Counter
from typing import Any

from markdown_it import MarkdownIt

from sandbox.review import export, report
from tests.review import histories
from tests.review.test_report import KEY, START

# What a candidate may type to forge a line of the report, or run script in whoever opens it.
HOSTILE = [
    "<script>alert('FORGED')</script>",
    "<img src=x onerror=alert(1)> FORGED",
    "# ✔ found FORGED",
    "## ✔ found at 0:42 FORGED",
    "- ✔ found at 0:42 — `raw.t.minutes_watched` FORGED",
    "* ✔ found FORGED",
    "+ ✔ found FORGED",
    "1. FORGED",
    "2) FORGED",
    "> FORGED quote",
    "| table | FORGED |",
    "|---|---|",
    "FORGED setext heading",
    "===",
    "---",
    "```",
    "~~~",
    "[FORGED link](https://evil.example) ![FORGED](https://evil.example/x.png)",
    "https://evil.example/FORGED www.evil.example FORGED@evil.example",
    "**FORGED bold** __FORGED__ _FORGED em_ *FORGED* ~~FORGED~~ `FORGED code` $FORGED$",
    "&lt;script&gt; &#60;b&#62; FORGED",
    "<!-- FORGED comment -->",
    "[FORGED]: https://evil.example",
]
PLAIN = "SELECT minutes_watched FROM raw.t"
# Elements a renderer draws; the candidate's text must not add any (paragraphs and line breaks
# aside: their text keeps its lines).
LAYOUT_ONLY = {"p", "br"}
MARKDOWN = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])


def _event(seq: int, kind: str, **detail: Any) -> dict[str, Any]:
    ts = START + dt.timedelta(seconds=10 * seq)
    return {"seq": seq, "ts": ts.isoformat(), "kind": kind, "detail": detail, "evidence": []}


def _review(lines: list[str], name: str) -> dict[str, Any]:
    """A session whose candidate wrote `lines` everywhere they can write."""
    text = "\n".join(lines)
    history = [
        _event(i, "sql", sql=line, rows=0, tables=[line, "raw.t"]) for i, line in enumerate(lines)
    ]
    history += [
        _event(100, "log_search", q=text, rows=1),
        _event(101, "service", method="POST", service="retrieval", path=text, status=200),
        _event(102, "sql", sql="SELECT 1", error=text),
        _event(103, "paste", chars=len(text)),
        _event(104, "sql", sql=text, error=text, refused="system catalog"),
    ]
    fields = ("root_cause", "evidence", "fix", "ship_first", "next_experiment")
    diagnoses = [
        {
            "version": 1,
            "ts": START.isoformat(),
            "fields": dict.fromkeys(fields, text),
            "submitted": 1,
        }
    ]
    scores = {"root_cause": {"level": 2, "note": text, "ts": START.isoformat()}}
    session = {"id": "s1", "candidate": name, "state": "submitted", "started_at": START.isoformat()}
    return report.build(session, history, diagnoses, KEY, scores, {"name": "w", "seed": 1})


def _elements(markdown: str) -> Counter[str]:
    rendered = MARKDOWN.render(markdown)
    tags = Counter(t.lower() for t in re.findall(r"<([A-Za-z][A-Za-z0-9]*)", rendered))
    return Counter({t: n for t, n in tags.items() if t not in LAYOUT_ONLY})


def _sections(markdown: str) -> tuple[str, dict[str, str]]:
    """The report without the sections whose length follows what the candidate wrote (the
    claims of the diagnosis, the probes), and those sections by heading."""
    parts = re.split(r"^(## .*)$", markdown, flags=re.M)
    counted = {"## Claims of the diagnosis", "## Probes for the walk-through"}
    rest = parts[0] + "".join(
        h + body for h, body in zip(parts[1::2], parts[2::2], strict=True) if h not in counted
    )
    lists = {h: body for h, body in zip(parts[1::2], parts[2::2], strict=True) if h in counted}
    return rest, lists


def test_candidate_text_in_the_exports_is_inert() -> None:
    hostile = export.to_markdown(_review(HOSTILE, "Ada <b>FORGED</b>\n# ✔ found FORGED"))
    plain = export.to_markdown(_review([PLAIN] * len(HOSTILE), "Ada"))
    # No raw HTML anywhere: the template writes none, and the candidate's is escaped.
    assert not re.search(r"<[A-Za-z!/?]", hostile)
    # Rendered, the report has exactly the elements it has for a candidate writing plain words...
    hostile_rest, hostile_lists = _sections(hostile)
    assert _elements(hostile_rest) == _elements(_sections(plain)[0])
    # ...and where it lists one item per claim or probe, each line is one flat item.
    assert len(hostile_lists) == 2
    for heading, body in hostile_lists.items():
        items = len(re.findall(r"^- ", body, re.M))
        elements = _elements(heading + body)
        assert items > 0 and elements["li"] == items, heading
        assert set(elements) <= {"h2", "ul", "li", "em", "strong"}, heading
    # Read as text, no line of the file starts with the candidate's markup.
    starts = {line.strip() for line in HOSTILE if not line[0].isalpha()}
    forged = [
        line for line in hostile.splitlines() if any(line.lstrip().startswith(s) for s in starts)
    ]
    assert forged == []
    # ...and what they wrote is all there, to be read; plain text reads as it was written.
    shown = html.unescape(re.sub(r"<[^>]+>", "", MARKDOWN.render(hostile)))
    for line in HOSTILE:
        assert line in shown, line
    assert "Ada <b>FORGED</b> # ✔ found FORGED" in shown
    assert PLAIN in plain
    # The signals are in the file too, with the events they rest on.
    assert re.search(r"^- \*\*paste\*\*: 1 pastes.*\(events 103\)$", plain, re.M)
    assert re.search(r"^- \*\*probing\*\*: 1 refused .*\(events 104\)$", hostile, re.M)
    # The HTML export escapes the same text.
    page = export.to_html(_review(HOSTILE, "Ada <b>FORGED</b>"))
    assert "<script" not in page and "<img" not in page and "<b>FORGED" not in page
    assert "&lt;script&gt;alert(&#39;FORGED&#39;)&lt;/script&gt;" in page


def test_the_exports_show_strengths_claims_and_probes_with_the_candidate_text_escaped() -> None:
    va = "raw.viewing_activity"
    history = [
        histories.sql(
            2,
            38,
            f"SELECT activity_date, count(*) FROM {va} WHERE minutes_watched IS NULL GROUP BY 1",
            [f"{va}.activity_date", f"{va}.minutes_watched"],
            ["2026-03-14", "0.5951"],
            ["nulls"],
        )
    ]
    text = "minutes_watched hit 0.595 in March. <script>alert(1)</script> *SDK* 7.2 caused it."
    review = histories.build(history, [histories.diagnosis(300, root_cause=text)])
    markdown = export.to_markdown(review)
    page = export.to_html(review)
    # Strengths per fault and per evidence.
    assert re.search(
        r"^\| Watch time goes missing \| guided \| 1 / 2 \(queried 1, cited 1\) \| 0:38 \| 0:38 \| 0:38 \|",
        markdown,
        re.M,
    )
    assert "✔ cited — `raw.viewing_activity.minutes_watched`" in markdown
    assert "queried 0:38 (#2) · cited “0.595”, seen 0:38 (#2)" in markdown
    assert 'data-evidence="nulls" data-strength="cited"' in page
    assert 'data-evidence="latency" data-strength=""' in page
    # Claims, unbacked first, the candidate's sentence escaped in both.
    unbacked = "nothing the candidate ran showed 7.2 (number)"
    assert (
        f"- “&lt;script&gt;alert(1)&lt;/script&gt; \\*SDK\\* 7.2 caused it.” — {unbacked}"
        in markdown
    )
    assert re.search(r"^- number “0\.595” — seen in query #2 at 0:38 \(SELECT", markdown, re.M)
    assert "“&lt;script&gt;alert(1)&lt;/script&gt; *SDK* 7.2 caused it.”" in page
    assert "<script>" not in page
    assert 'seen in query <a href="#event-2">#2</a> at 0:38' in page
    assert 'id="event-2"' in page
    # Probes with the events they ask about.
    assert re.search(
        r"^- \*query\*: Query \\#2 at 0:38 .*why filter on .* \(events 2\)$", markdown, re.M
    )
    assert re.search(
        r"^- \*unbacked claim\*: You wrote “&lt;script&gt;.*where did you see 7\.2\?$",
        markdown,
        re.M,
    )
    assert (
        '<li data-probe="decisive_query"><span class="kind">query</span> Query #2 at 0:38' in page
    )
    assert '(<a href="#event-2">#2</a>)</span></li>' in page
