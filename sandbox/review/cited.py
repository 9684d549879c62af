"""Numbers and dates a diagnosis cites, and whether one is a value the candidate saw.

A cited number matches a seen value when it is that value as a person would write it down:
rounded to the decimals written (half a unit of the last written digit either way, so 0.4012
is cited as "0.40", "0.4" or "0.401", and 1234.6 as "1235" or "1,235"), or as a percent ("40%"
or "40.1 %" for 0.4012, and "40%" for a seen 40.12 as well). Dates match exactly, written as
ISO dates. Single-digit whole numbers without a percent sign ("2 tables", "3 days") are prose,
not measurements, and are not taken as citations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CITED = re.compile(
    r"(?P<date>(?<![\w.-])\d{4}-\d{2}-\d{2}(?![\w]))"
    r"|(?<![\w.,-])(?P<number>-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?!\.\d|,\d)"
    r"(?P<percent>\s?%)?(?![\w-])"
)
_SLACK = 1e-9  # float noise on top of the half-unit tolerance


@dataclass(frozen=True)
class Cited:
    """One number or date as written in the diagnosis."""

    text: str  # as written: "40%", "0.595", "2026-03-14"
    start: int
    end: int
    date: str | None = None
    number: float | None = None
    decimals: int = 0
    percent: bool = False

    @property
    def kind(self) -> str:
        return "date" if self.date else "number"


def values_in(text: str) -> list[Cited]:
    """The numbers and dates of `text`, in order."""
    found = []
    for match in _CITED.finditer(text):
        if match["date"]:
            found.append(Cited(match["date"], match.start(), match.end(), date=match["date"]))
            continue
        written = match["number"].replace(",", "")
        decimals = len(written.partition(".")[2])
        percent = bool(match["percent"])
        if not percent and decimals == 0 and len(written.lstrip("-")) == 1:
            continue
        found.append(
            Cited(
                match.group().strip(),
                match.start(),
                match.end(),
                number=float(written),
                decimals=decimals,
                percent=percent,
            )
        )
    return found


def matches(cited: Cited, seen: str) -> bool:
    """Whether `seen` (a value an event showed, as `evidence.seen_values` keeps it) is what the
    diagnosis wrote as `cited`."""
    if cited.date is not None:
        return seen == cited.date
    if cited.number is None or _DATE.match(seen):
        return False
    try:
        value = float(seen)
    except ValueError:
        return False
    forms = [(cited.number, cited.decimals)]
    if cited.percent:
        forms.append((cited.number / 100, cited.decimals + 2))
    return any(abs(value - number) <= 0.5 * 10**-decimals + _SLACK for number, decimals in forms)


def seen_in(cited: Cited, seen: list[str]) -> str | None:
    """The first seen value `cited` matches, if any."""
    return next((value for value in seen if matches(cited, value)), None)
