"""Signals of how the work was done, read from the recorded events: pastes, time away, probing,
requests from outside the workspace pages, overlapping requests, text produced faster than typing
allows. Each names the events it rests on. They are questions for the walk-through, never
verdicts: a person may paste their own notes, and an assistant the session allows is allowed.
"""

from __future__ import annotations

from typing import Any

# A fast typist sustains about 10 characters a second (120 words a minute); twice that, kept up
# over a stretch of text, is not typing.
TYPING_MAX_CPS = 20.0
# A word or two can come out in a quicker burst: the rate is judged over longer stretches only.
RATE_MIN_CHARS = 30
# Text that did not come through the keyboard (pasted, or sent without the editor at all): a
# table or column name copied from notes is shorter than this, a query or paragraph written
# elsewhere is longer.
UNTYPED_MIN_CHARS = 40


def signals(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the interviewer may want to ask about, each with the events it rests on."""
    found = []
    pastes = [i for i in timeline if i["kind"] == "paste"]
    if pastes:
        chars = sum(int(i["detail"].get("chars", 0) or 0) for i in pastes)
        found.append(
            _signal("paste", f"{len(pastes)} pastes into the diagnosis, {chars} characters", pastes)
        )
    away = [i for i in timeline if i["kind"] == "away"]
    if away:
        seconds = sum(float(i["detail"].get("seconds", 0) or 0) for i in away)
        found.append(
            _signal(
                "away", f"left the workspace tab {len(away)} times, {seconds / 60:.0f} min", away
            )
        )
    probes = [i for i in timeline if i["detail"].get("refused")]
    if probes:
        reaches = sorted({str(i["detail"]["refused"]) for i in probes})
        found.append(
            _signal(
                "probing",
                f"{len(probes)} refused reaches outside the workspace: {', '.join(reaches)}",
                probes,
            )
        )
    # Events recorded before the gateway told clients apart say nothing either way.
    told = [i for i in timeline if "client" in i["detail"]]
    outside = [i for i in told if i["detail"]["client"] != "workspace"]
    if outside:
        found.append(
            _signal(
                "outside-workspace",
                f"{len(outside)} of {len(told)} requests came from outside the workspace pages",
                outside,
            )
        )
    overlapping = [i for i in timeline if i["detail"].get("overlapped") is True]
    if overlapping:
        found.append(
            _signal(
                "overlapping-requests",
                f"{len(overlapping)} requests were in flight together with another request of "
                "the session, not both from the workspace pages",
                overlapping,
            )
        )
    fast = _fast_compositions(timeline)
    if fast:
        untyped = sum(u for _, u, _ in fast)
        quick = sum(q for _, _, q in fast)
        parts = []
        if untyped:
            parts.append(f"{untyped} characters not typed (pasted or sent without the editor)")
        if quick:
            parts.append(f"{quick} typed faster than {TYPING_MAX_CPS:g} a second")
        found.append(
            _signal(
                "fast-composition",
                f"{len(fast)} SQL runs or diagnosis saves hold text produced faster than typing "
                f"allows: {', '.join(parts)}",
                [item for item, _, _ in fast],
            )
        )
    return found


def by_event(found: list[dict[str, Any]]) -> dict[int, list[str]]:
    """The kinds of the signals each event is part of, by its `seq`: drawn next to the event."""
    marks: dict[int, list[str]] = {}
    for signal in found:
        for seq in signal["events"]:
            marks.setdefault(seq, []).append(signal["kind"])
    return marks


def _signal(kind: str, summary: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": kind, "summary": summary, "events": [i["seq"] for i in events]}


def text_speed(
    chars: int, composition: dict[str, Any] | None, growth: int | None = None
) -> tuple[int, int]:
    """Of a text of `chars` characters sent with `composition` (as its page measured it, or None
    when it never went through the editor): how many were not typed, and how many were typed
    faster than TYPING_MAX_CPS (0 when the typing was slower), each 0 below its threshold.
    `growth`, when known, is how much the text grew since its previous version (a diagnosis
    field): only that much can be new."""
    new = chars if growth is None else growth
    if composition is None:
        return (new if new >= UNTYPED_MIN_CHARS else 0), 0
    typed, pasted, inserted, kept = (
        _count(composition, k) for k in ("typed", "pasted", "inserted", "kept")
    )
    accounted = typed + pasted + inserted + (0 if growth is not None else kept)
    untyped = pasted + max(0, new - accounted)
    compose_s = _count(composition, "compose_ms") / 1000
    too_quick = typed >= RATE_MIN_CHARS and typed > TYPING_MAX_CPS * compose_s
    return (untyped if untyped >= UNTYPED_MIN_CHARS else 0), (typed if too_quick else 0)


def _count(composition: dict[str, Any], key: str) -> int:
    value = composition.get(key, 0)
    return int(value) if isinstance(value, int | float) and value > 0 else 0


def _fast_compositions(timeline: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int, int]]:
    """Each SQL run or diagnosis save with text produced faster than typing allows, with its
    characters not typed and typed too fast."""
    found = []
    previous: dict[str, str] = {}
    for item in timeline:
        detail = item["detail"]
        composition = detail.get("composition")
        if item["kind"] == "sql" and isinstance(detail.get("sql"), str):
            untyped, quick = text_speed(
                len(detail["sql"]), composition if isinstance(composition, dict) else None
            )
        elif item["kind"] == "diagnosis" and isinstance(detail.get("fields"), dict):
            untyped = quick = 0
            for field, text in detail["fields"].items():
                text = str(text)
                grown = max(0, len(text) - len(previous.get(field, "")))
                per_field = composition.get(field) if isinstance(composition, dict) else None
                u, q = text_speed(len(text), per_field, growth=grown)
                untyped, quick = untyped + u, quick + q
            previous = {f: str(t) for f, t in detail["fields"].items()}
        else:
            continue
        if untyped or quick:
            found.append((item, untyped, quick))
    return found
