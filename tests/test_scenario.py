"""Scenario files: validation errors name the file and the field; the schema describes faults."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import scenario
from sandbox.faults.feature_nulls_wrong_mean import FeatureNullsWrongMean

BRIEF = '[brief]\ntitle = "t"\ntext = "x"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_default_scenario_plants_the_null_imputation_fault() -> None:
    spec = scenario.load(None)
    assert [type(f) for f in spec.faults] == [FeatureNullsWrongMean]
    assert spec.world.n_customers == 25_000
    assert spec.brief.title


def test_control_scenario_has_no_faults() -> None:
    spec = scenario.builtin("control")
    assert spec.faults == []


def test_unknown_world_field_names_field_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[world]\nseeed = 3\n" + BRIEF)
    with pytest.raises(scenario.ScenarioError) as exc:
        scenario.load(path)
    assert str(path) in str(exc.value)
    assert "world.seeed" in str(exc.value)


def test_bad_fault_parameter_names_the_fault_field(tmp_path: Path) -> None:
    path = write(
        tmp_path, BRIEF + '[[faults]]\nid = "feature-nulls-wrong-mean"\nnull_share = 1.5\n'
    )
    with pytest.raises(scenario.ScenarioError) as exc:
        scenario.load(path)
    message = str(exc.value)
    assert str(path) in message and "faults[0]" in message and "null_share" in message


def test_unknown_fault_id_lists_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, BRIEF + '[[faults]]\nid = "no-such-fault"\n')
    with pytest.raises(scenario.ScenarioError) as exc:
        scenario.load(path)
    assert "faults[0]" in str(exc.value) and "feature-nulls-wrong-mean" in str(exc.value)


def test_a_mean_that_is_not_wrong_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path, BRIEF + '[[faults]]\nid = "feature-nulls-wrong-mean"\nfill_multiplier = 1.05\n'
    )
    with pytest.raises(scenario.ScenarioError, match="fill_multiplier"):
        scenario.load(path)


def test_onset_after_the_production_window_is_refused(tmp_path: Path) -> None:
    text = "[world]\nproduction_days = 20\n" + BRIEF
    text += '[[faults]]\nid = "feature-nulls-wrong-mean"\nonset_day = 30\n'
    with pytest.raises(scenario.ScenarioError, match=r"faults\[0\]\.onset_day"):
        scenario.load(write(tmp_path, text))


def test_two_faults_releasing_a_model_on_one_day_are_refused_naming_both(
    tmp_path: Path,
) -> None:
    text = BRIEF + '[[faults]]\nid = "stale-decision-threshold"\nonset_day = 20\n'
    text += '[[faults]]\nid = "training-time-travel"\nonset_day = 20\n'
    with pytest.raises(scenario.ScenarioError) as exc:
        scenario.load(write(tmp_path, text))
    message = str(exc.value)
    assert "faults[0] (stale-decision-threshold)" in message
    assert "faults[1] (training-time-travel)" in message and "day 20" in message
    # A day apart, both releases happen.
    apart = text.replace("onset_day = 20\n[brief]", "").replace(
        'time-travel"\nonset_day = 20', 'time-travel"\nonset_day = 21'
    )
    spec = scenario.load(write(tmp_path, apart))
    assert [f.id for f in spec.faults] == ["stale-decision-threshold", "training-time-travel"]


def test_malformed_toml_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[world\nseed = 1\n")
    with pytest.raises(scenario.ScenarioError, match="not valid TOML"):
        scenario.load(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(scenario.ScenarioError, match="cannot read"):
        scenario.load(tmp_path / "absent.toml")


def test_missing_brief_is_reported(tmp_path: Path) -> None:
    with pytest.raises(scenario.ScenarioError, match="brief"):
        scenario.load(write(tmp_path, "[world]\nseed = 1\n"))


def test_overrides_change_seed_and_scale_only() -> None:
    spec = scenario.load(None).with_overrides(seed=11, scale=0.5)
    assert (spec.world.seed, spec.world.n_customers) == (11, 12_500)
    assert spec.faults[0].params == scenario.load(None).faults[0].params


def test_json_schema_describes_fault_parameters() -> None:
    schema = scenario.json_schema()
    text = str(schema)
    assert {"world", "brief", "faults"} <= set(schema["properties"])
    assert "null_share" in text and "feature-nulls-wrong-mean" in text


def test_a_world_keeps_the_scenario_as_built() -> None:
    import tomllib

    from sandbox import scenario as scenario_mod

    given = scenario_mod.load(None)
    assert given.as_toml() == given.text, "unchanged scenarios keep their text and comments"
    built = given.with_overrides(seed=11, scale=0.3)
    again = scenario_mod.parse(built.as_toml(), "as built")
    assert tomllib.loads(built.as_toml()) == built.raw
    assert (again.world.seed, again.world.scale) == (11, 0.3)
    assert [f.id for f in again.faults] == [f.id for f in given.faults]


def test_a_fault_needing_more_customers_than_the_scale_gives_is_refused_before_the_build(
    tmp_path: Path,
) -> None:
    from sandbox.faults.label_leakage import LabelLeakage

    need = LabelLeakage.min_customers
    assert need > scenario.MIN_CUSTOMERS
    text = "[world]\nscale = {}\n" + BRIEF + '[[faults]]\nid = "label-leakage"\n'
    too_small = round(need / 25_000 * 0.9, 3)
    with pytest.raises(scenario.ScenarioError) as exc:
        scenario.load(write(tmp_path, text.format(too_small)))
    message = str(exc.value)
    assert "faults[0] (label-leakage)" in message and f"{need:,} customers" in message
    assert f"scale {too_small} gives {round(25_000 * too_small):,}" in message
    enough = float(message.split("--scale ")[1].split(" ")[0])
    assert scenario.load(write(tmp_path, text.format(enough))).world.n_customers >= need


def test_every_fault_at_its_default_parameters_builds_at_the_tests_small_scale() -> None:
    from sandbox.faults import registry
    from sandbox.testing import SMALL_SCALE

    small = round(25_000 * SMALL_SCALE)
    assert all(cls.min_customers <= small for cls in registry.catalog().values())


def test_brief_claims_name_complete_production_weeks(tmp_path: Path) -> None:
    claim = '[[brief.claims]]\nmetric = "cancellations"\ndirection = "above"\nweeks = [{}, {}]\n'
    ok = write(tmp_path, BRIEF + claim.format(4, 6))
    assert scenario.load(ok).brief.claims[0].weeks == (4, 6)
    for first, last, why in ((4, 7, "not a complete production week"), (3, 2, "not a range")):
        with pytest.raises(scenario.ScenarioError) as exc:
            scenario.load(write(tmp_path, BRIEF + claim.format(first, last)))
        assert "brief.claims[0]" in str(exc.value) and why in str(exc.value)


def test_the_difficulty_is_standard_unless_set_and_a_fault_entry_overrides_it(
    tmp_path: Path,
) -> None:
    fault = '[[faults]]\nid = "feature-nulls-wrong-mean"\n'
    unset = scenario.load(write(tmp_path, BRIEF + fault))
    assert unset.difficulty == "standard" and unset.faults[0].tier == "standard"
    hard = scenario.load(write(tmp_path, 'difficulty = "hard"\n' + BRIEF + fault))
    assert hard.faults[0].tier == "hard"
    mixed = scenario.load(
        write(tmp_path, 'difficulty = "hard"\n' + BRIEF + fault + 'difficulty = "guided"\n')
    )
    assert (mixed.difficulty, mixed.faults[0].tier) == ("hard", "guided")
    assert mixed.faults[0].key(mixed.world.calendar()).difficulty == "guided"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('difficulty = "expert"\n' + BRIEF, "s.toml: difficulty:"),
        (
            BRIEF + '[[faults]]\nid = "label-leakage"\ndifficulty = "easy"\n',
            "s.toml: faults[0].difficulty:",
        ),
    ],
)
def test_a_malformed_difficulty_names_the_file_and_field(
    tmp_path: Path, text: str, field: str
) -> None:
    with pytest.raises(scenario.ScenarioError, match=r"guided.*standard.*hard") as exc:
        scenario.load(write(tmp_path, text))
    assert field in str(exc.value)


def test_a_difficulty_override_survives_the_scenario_as_built() -> None:
    built = scenario.load(None).with_overrides(seed=11, difficulty="hard")
    again = scenario.parse(built.as_toml(), "as built")
    assert (again.difficulty, again.world.seed, again.faults[0].tier) == ("hard", 11, "hard")
