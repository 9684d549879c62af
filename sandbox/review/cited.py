"""Numbers and dates a diagnosis cites, and whether one is a value the candidate saw.

A cited number matches a seen value when it is that value as a person would write it down:
rounded to the decimals written (half a unit of the last written digit either way, so 0.4012
is cited as "0.40", "0.4" or "0.401", and 1234.6 as "1235" or "1,235"), or as a percent ("40%"
or "40.1 %" for 0.4012, and "40%" for a seen 40.12 as well). Dates match exactly, written as
ISO dates. Single-digit whole numbers without a percent sign ("2 tables", "3 days") and clock
times ("10:30") are prose, not measurements, and are not taken as citations.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CITED = re.compile(
    r"(?P<date>(?<![\w.-])\d{4}-\d{2}-\d{2}(?![\w]))"
    r"|(?<![\w.,:-])(?P<number>-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?!\.\d|,\d|:\d)"
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
    return any(low <= value <= high for low, high in _forms(cited))


def _forms(cited: Cited) -> list[tuple[float, float]]:
    """The (low, high) ranges of seen values `cited` stands for."""
    if cited.number is None:
        return []
    forms = [(cited.number, cited.decimals)]
    if cited.percent:
        forms.append((cited.number / 100, cited.decimals + 2))
    return [
        (number - (0.5 * 10**-decimals + _SLACK), number + (0.5 * 10**-decimals + _SLACK))
        for number, decimals in forms
    ]


@dataclass(frozen=True)
class Seen:
    """What one event showed, ready to look values up in: a long session holds thousands of
    events of up to thousands of values each."""

    dates: list[str] = field(default_factory=list)  # ISO, sorted
    numbers: list[float] = field(default_factory=list)  # sorted

    @classmethod
    def of(cls, values: Sequence[str]) -> Seen:
        dates, numbers = set(), []
        for value in values:
            if _DATE.match(value):
                dates.add(value)
                continue
            try:
                numbers.append(float(value))
            except ValueError:
                continue
        return cls(sorted(dates), sorted(numbers))

    def has(self, cited: Cited) -> bool:
        """Whether any value shown is what the diagnosis wrote as `cited` (`matches`)."""
        if cited.date is not None:
            at = bisect.bisect_left(self.dates, cited.date)
            return at < len(self.dates) and self.dates[at] == cited.date
        for low, high in _forms(cited):
            at = bisect.bisect_left(self.numbers, low)
            if at < len(self.numbers) and self.numbers[at] <= high:
                return True
        return False

    def dated_between(self, start: str, end: str) -> bool:
        """Whether no value shown is a date, or one falls between the ISO dates given."""
        if not self.dates:
            return True
        at = bisect.bisect_left(self.dates, start)
        return at < len(self.dates) and self.dates[at] <= end


class SeenIndex:
    """`Seen` of each event of a timeline, made when first asked for."""

    def __init__(self) -> None:
        self._by_seq: dict[int, Seen] = {}

    def __call__(self, item: dict[str, Any]) -> Seen:
        seq = int(item["seq"])
        if seq not in self._by_seq:
            self._by_seq[seq] = Seen.of(item.get("seen") or [])
        return self._by_seq[seq]
