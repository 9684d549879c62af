"""The `sandbox` command line, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from sandbox.cli import app
from sandbox.difficulty import TIERS
from sandbox.faults import registry
from sandbox.world.build import BuildSummary
from tests.conftest import EXAMPLES

runner = CliRunner()


def test_faults_list_json_documents_the_catalog() -> None:
    result = runner.invoke(app, ["faults", "list", "--json"])
    assert result.exit_code == 0
    entries = json.loads(result.stdout)
    entry = next(e for e in entries if e["id"] == "feature-nulls-wrong-mean")
    names = {p["name"] for p in entry["parameters"]}
    assert {"onset_day", "ramp_days", "target_feature", "null_share", "fill_multiplier"} <= names
    assert entry["stages"] == ["ingest", "features"]


def test_faults_show_and_unknown_fault() -> None:
    shown = runner.invoke(app, ["faults", "show", "feature-nulls-wrong-mean"])
    assert shown.exit_code == 0 and "null_share" in shown.stdout
    # Each tier, what it hides and how many queries the reference investigation takes.
    assert "difficulty" in shown.stdout and "SDK 7.2" in shown.stdout
    assert all(tier in shown.stdout for tier in ("guided", "standard", "hard"))
    for fault_id, cls in registry.catalog().items():
        same = not any(cls(cls.Params(), tier).tells(tier) for tier in TIERS)
        shown = runner.invoke(app, ["faults", "show", fault_id])
        assert ("the same trail at every tier" in shown.stdout) == same, fault_id
    tiers = runner.invoke(app, ["faults", "list", "--tiers"])
    assert "| `feature-nulls-wrong-mean` | 4 | 4 | 4 |" in tiers.stdout
    missing = runner.invoke(app, ["faults", "show", "nope"])
    assert missing.exit_code == 2 and "unknown fault" in missing.stderr


def test_scenario_validate_names_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[world]\nscale = -1\n[brief]\ntitle = "t"\ntext = "x"\n')
    result = runner.invoke(app, ["scenario", "validate", str(bad)])
    assert result.exit_code == 2
    assert "bad.toml" in result.stderr and "world.scale" in result.stderr


def test_scenario_schema_is_json() -> None:
    result = runner.invoke(app, ["scenario", "schema"])
    assert result.exit_code == 0 and "faults" in json.loads(result.stdout)["properties"]


def test_build_refuses_zero_scale_and_existing_dir(tmp_path: Path) -> None:
    zero = runner.invoke(app, ["build", "--out", str(tmp_path / "w"), "--scale", "0"])
    assert zero.exit_code == 2 and "--scale" in zero.stderr
    assert not (tmp_path / "w").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("x")
    refused = runner.invoke(app, ["build", "--out", str(taken), "--scale", "0.02"])
    assert refused.exit_code == 2 and "--force" in refused.stderr
    assert (taken / "keep.txt").read_text() == "x"


def test_verify_reports_checks_and_exit_code(faulty_world: BuildSummary, tmp_path: Path) -> None:
    result = runner.invoke(app, ["verify", str(faulty_world.root), "--json"])
    assert result.exit_code == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["passed"] is True and report["faults"]["feature-nulls-wrong-mean"]
    assert report["brief"] and all(c["outcome"] == "passed" for c in report["brief"])
    not_a_world = runner.invoke(app, ["verify", str(tmp_path)])
    assert not_a_world.exit_code == 2 and "manifest" in not_a_world.stderr


def test_a_world_too_small_to_model_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["build", "--out", str(tmp_path / "tiny"), "--scale", "0.0001"])
    assert result.exit_code == 2 and "world.scale" in result.stderr
    assert "at least 500" in result.stderr
    assert not (tmp_path / "tiny").exists()


def test_a_scale_too_small_for_a_fault_is_refused_before_the_build(tmp_path: Path) -> None:
    leakage = EXAMPLES / "label-leakage.toml"
    out = tmp_path / "w"
    result = runner.invoke(app, ["build", str(leakage), "--out", str(out), "--scale", "0.1"])
    assert result.exit_code == 2, result.stdout
    message = " ".join(result.stderr.split())
    assert "faults[0] (label-leakage) needs at least 5,000 customers" in message
    assert "scale 0.1 gives 2,500" in message and "--scale 0.2" in message
    assert not out.exists()


def test_session_create_refuses_an_unknown_assistance_before_calling_the_stack(
    tmp_path: Path,
) -> None:
    refused = runner.invoke(app, ["session", "create", str(tmp_path), "--assistance", "sometimes"])
    assert refused.exit_code == 2
    assert "--assistance" in refused.output and "allowed, not-allowed" in refused.output
    # A valid policy goes on to the stack, which is not running here.
    for options in (["--assistance", "not-allowed", "--workspace-only"], []):
        asked = runner.invoke(app, ["session", "create", str(tmp_path), *options])
        assert asked.exit_code == 2 and "no running stack" in asked.output


def test_demo_stops_at_its_builds_error_and_starts_no_stack(tmp_path: Path) -> None:
    """`sandbox demo` with no world yet builds one first; a build that cannot write its world
    says why, and no stack starts."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    ran = subprocess.run(
        [str(Path(sys.executable).with_name("sandbox")), "demo", "--out", str(blocked / "world")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 2, ran.stderr
    assert f"cannot write the world to {blocked / 'world'}: Not a directory" in ran.stderr
    assert "Traceback" not in ran.stderr and "candidate:" not in ran.stdout


def test_build_says_where_it_cannot_write(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    result = runner.invoke(app, ["build", "--out", str(blocked / "world"), "--scale", "0.04"])
    assert result.exit_code == 2
    assert "cannot write the world to" in result.output and "Not a directory" in result.output
