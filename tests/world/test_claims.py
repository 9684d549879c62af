"""The brief's claims about the business: every shipped scenario's brief is true of its world, a
claim the data does not show fails, and a brief that speaks of cancellations or the plan says
so in claims that can be checked. The changelog's app releases are ones the clients report."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from sandbox import scenario
from sandbox.scenario import Claim
from sandbox.testing import Worlds
from sandbox.world import claims
from sandbox.world.build import BuildSummary
from tests.conftest import EDGE_WORLDS, EXAMPLES, FAULT_WORLDS, TIER_WORLDS, connect

SHIPPED = sorted(
    [*(scenario.builtin_path(name) for name in scenario.BUILTIN), *EXAMPLES.glob("*.toml")]
)
# The test world each shipped scenario is built as (`tests.conftest`), at the tests' scale.
TEST_WORLD = {
    "default.toml": "default",
    "control.toml": "control",
    "label-leakage.toml": "leakage",
    "embedding-index-mismatch.toml": "embedding",
    "composite.toml": "composite",
    "feature-nulls-wrong-mean-hard.toml": "default-hard",
    "label-leakage-hard.toml": "leakage-hard",
    "embedding-index-mismatch-hard.toml": "embedding-hard",
}
CAL = scenario.load(None).world.calendar()


def test_every_shipped_scenario_has_a_test_world() -> None:
    assert {p.name for p in SHIPPED} == set(TEST_WORLD)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_a_brief_that_speaks_of_cancellations_or_the_plan_declares_claims(path: Path) -> None:
    brief = scenario.load(path).brief
    text = brief.text.lower()
    if "plan" in text or "cancellations" in text or "churn is up" in text:
        assert any(c.metric == "cancellations" for c in brief.claims), path.name


# The briefs that claim something about the business; the others say nothing of it (checked
# by the test above).
CLAIMING = [p for p in SHIPPED if scenario.load(p).brief.claims]


def test_most_shipped_briefs_make_checkable_claims() -> None:
    assert len(CLAIMING) >= len(SHIPPED) // 2, [p.name for p in CLAIMING]


@pytest.mark.parametrize("path", CLAIMING, ids=lambda p: p.name)
def test_the_briefs_claims_hold_in_its_world(worlds: Worlds, path: Path) -> None:
    spec = scenario.load(path)
    con = connect(worlds.get(TEST_WORLD[path.name]))
    try:
        result = claims.checks(con, CAL, spec.brief.claims)
    finally:
        con.close()
    assert len(result) == len(spec.brief.claims)
    assert all(c.passed for c in result), [c.model_dump() for c in result]


def test_a_claimed_rise_the_data_does_not_show_fails(faulty_world: BuildSummary) -> None:
    con = connect(faulty_world)
    try:
        # Before the default fault starts (day 15), the world is on plan.
        healthy = [
            Claim(metric="cancellations", direction=d, weeks=(1, 2))
            for d in ("above", "below", "not above", "not below")
        ]
        result = claims.checks(con, CAL, healthy)
    finally:
        con.close()
    assert [c.outcome for c in result] == ["failed", "failed", "passed", "passed"], result


def test_a_clear_difference_beats_the_counts_noise_and_the_margin() -> None:
    weeks = pl.DataFrame(
        {
            "cancellations": [100, 130, 1_000, 1_060],
            "plan_cancellations": [100, 100, 1_000, 1_000],
            "revenue": [0.0] * 4,
            "plan_revenue": [0.0] * 4,
        }
    )

    def rise(week: int) -> bool:
        claim = Claim(metric="cancellations", direction="above", weeks=(week, week))
        return claims.holds(claim, *claims.deviation(claim, weeks))

    # +30 on 100: 30%, and three times its noise (3 x 10): clear. +60 on 1,000: over the 5%
    # margin, but under three times its noise (95): not clear.
    assert [rise(w) for w in (1, 2, 3, 4)] == [False, True, False, False]


# An app release named in the changelog: "apps 5.2.0 staged rollout", "iOS app 5.2.2 ...".
APP_VERSION_NAMED = re.compile(r"\bapps? (\d+\.\d+\.\d+)\b", re.IGNORECASE)


@pytest.mark.parametrize("world", sorted({*FAULT_WORLDS, *TIER_WORLDS, *EDGE_WORLDS}))
def test_every_app_version_the_changelog_names_is_reported_from_its_release(
    worlds: Worlds, world: str
) -> None:
    con = connect(worlds.get(world))
    try:
        entries = con.sql("SELECT ts::DATE AS day, title, body FROM ops.changelog").pl()
        first_seen = dict(
            con.sql(
                "SELECT app_version, min(activity_date) FROM raw.viewing_activity GROUP BY 1"
            ).fetchall()
        )
    finally:
        con.close()
    named = [
        (day, version)
        for day, title, body in entries.iter_rows()
        for version in APP_VERSION_NAMED.findall(f"{title} {body}")
    ]
    assert named, "the changelog names no app release"
    for day, version in named:
        assert version in first_seen, f"{day}: app {version} is named, but no client reports it"
        assert first_seen[version] >= day, f"app {version} is reported before its release {day}"
