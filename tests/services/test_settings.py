"""The stack's settings: read from `SANDBOX_` variables in one place, refused with a message that
names the variable, documented in README, and what the running gateway actually uses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sandbox.layout import WorldPaths
from sandbox.services.settings import Settings, SettingsError, markdown_table, variable
from tests.conftest import REPO
from tests.services.conftest import gateway_client, session_maker


def test_every_setting_has_a_description_and_a_default() -> None:
    for name, info in Settings.model_fields.items():
        assert info.description and info.description.endswith("."), name
        assert not info.is_required(), name
    assert Settings() == Settings.from_env({})


def test_the_readme_table_is_the_settings() -> None:
    readme = (REPO / "README.md").read_text()
    start, end = "<!-- settings-table -->\n", "\n<!-- /settings-table -->"
    table = readme[readme.index(start) + len(start) : readme.index(end)]
    assert table == markdown_table(), "print the table with: python -m sandbox.services.settings"


def test_variables_set_the_fields_and_empty_or_foreign_ones_are_ignored(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "SANDBOX_ROW_CAP": " 25 ",
            "SANDBOX_QUERY_TIME_LIMIT_S": "2.5",
            "SANDBOX_PUBLIC_URL": "https://sandbox.example.com/",
            "SANDBOX_DASHBOARDS": str(tmp_path),
            "SANDBOX_CONSOLE_WORKERS": "",  # empty: the default
            "SANDBOX_PORT": "8101",  # compose's, not a setting of the processes
        }
    )
    assert settings.row_cap == 25 and settings.query_time_limit_s == 2.5
    assert settings.public_url == "https://sandbox.example.com"
    assert settings.dashboards == tmp_path
    assert settings.console_workers == Settings().console_workers
    with pytest.raises(ValueError):
        settings.row_cap = 1  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    ("environ", "named", "why"),
    [
        ({"SANDBOX_ROW_CAP": "many"}, "SANDBOX_ROW_CAP='many'", "valid integer"),
        ({"SANDBOX_QUERY_TIME_LIMIT_S": "0"}, "SANDBOX_QUERY_TIME_LIMIT_S='0'", "greater than 0"),
        ({"SANDBOX_PUBLIC_URL": "sandbox.example.com"}, "SANDBOX_PUBLIC_URL=", "http://"),
        ({"SANDBOX_DASHBOARDS": "/no/such/dir"}, "SANDBOX_DASHBOARDS=", "not a directory"),
        (
            {"SANDBOX_CONSOLE_WORKERS": "3", "SANDBOX_CONSOLE_MAX_WORKERS": "2"},
            "SANDBOX_CONSOLE_MAX_WORKERS (2) is below SANDBOX_CONSOLE_WORKERS (3)",
            "",
        ),
    ],
    ids=["not-a-number", "out-of-range", "not-an-address", "not-a-directory", "workers"],
)
def test_a_bad_value_is_refused_naming_its_variable(
    environ: dict[str, str], named: str, why: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(environ)
    assert named in str(raised.value) and why in str(raised.value)


def test_a_service_with_a_bad_setting_stops_at_its_start_naming_it(tmp_path: Path) -> None:
    gateway = [sys.executable, "-m", "sandbox.services.gateway"]
    done = subprocess.run(
        [*gateway, "--world", str(tmp_path), "--port", "0"],
        env={**os.environ, variable("row_cap"): "-1"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "SANDBOX_ROW_CAP='-1'" in done.stderr and "Traceback" not in done.stderr


def test_environment_overrides_reach_the_running_gateway(
    paths: WorldPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_ROW_CAP", "3")
    monkeypatch.setenv("SANDBOX_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("SANDBOX_PUBLIC_URL", "https://sandbox.example.com/")
    monkeypatch.setenv("SANDBOX_CLIENT_EVENTS_PER_MINUTE", "2")
    client: TestClient
    with gateway_client(paths, settings=Settings.from_env()) as client:
        links = session_maker(client, paths)()
        assert links["candidate_url"].startswith("https://sandbox.example.com/?token=")
        token = {"Authorization": f"Bearer {links['candidate_token']}"}
        reply = client.post("/api/sql", json={"sql": "SELECT * FROM range(10)"}, headers=token)
        assert reply.status_code == 200, reply.text
        assert reply.json()["rows"] == [[0], [1], [2]] and reply.json()["truncated"]
        assert "up to 3 rows shown" in client.get("/sql", headers=token).text  # the page says so
        big = client.post("/api/sql", json={"sql": "SELECT 1 -- " + "x" * 5000}, headers=token)
        assert big.status_code == 413 and "larger than 4 KiB" in big.json()["detail"]
        paste = {"kind": "paste", "field": "fix", "chars": 10}
        codes = [client.post("/api/events", json=paste, headers=token).status_code for _ in "abc"]
        assert codes == [204, 204, 429]
