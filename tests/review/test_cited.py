"""Numbers and dates a diagnosis writes, matched to values the candidate saw within rounding and
percent forms."""

from __future__ import annotations

import pytest

from sandbox.review.cited import matches, values_in


def _one(text: str):
    [value] = values_in(text)
    return value


@pytest.mark.parametrize("written", ["40%", "40.1 %", "0.40", "0.4", "0.401", "40"])
def test_a_value_written_rounded_or_as_a_percent_matches(written: str) -> None:
    seen = "0.4012" if "%" in written or "." in written else "40.12"
    assert matches(_one(f"the share is {written} now"), seen)


@pytest.mark.parametrize("written", ["41%", "0.41", "0.402", "39"])
def test_a_different_value_does_not(written: str) -> None:
    seen = "0.4012" if written != "39" else "40.12"
    assert not matches(_one(f"the share is {written} now"), seen)


def test_thousands_separators_dates_and_scientific_values() -> None:
    assert matches(_one("about 1,235 customers"), "1234.6")
    assert not matches(_one("about 1,235 customers"), "1236")
    assert matches(_one("since 2026-03-14."), "2026-03-14")
    assert not matches(_one("since 2026-03-14."), "2026-03-15")
    assert matches(_one("a rate of 0.00001"), "1e-05")


def test_prose_counts_versions_and_identifiers_are_not_values() -> None:
    assert values_in("2 tables over 3 days, model v2 and p99, in 2026-03, at 10:30") == []
    assert [v.text for v in values_in("SDK 7.2.1 shipped; 12% of 7.2 users")] == ["12%", "7.2"]
    assert [v.text for v in values_in("SDK 7.2 shipped; 12% of users")] == ["7.2", "12%"]
