"""The fault catalog is cheap to load: every process that reads a scenario loads it."""

import subprocess
import sys

HEAVY = ("sklearn", "scipy", "pandas", "faiss", "mlflow", "evidently")


def test_reading_a_scenario_imports_no_model_library() -> None:
    """The gateway, its console workers, the jobs and the CLI validate scenarios against the
    catalog and never fit, score or plot: they must not pay seconds of imports for it."""
    probe = (
        "import sys; from sandbox import scenario; scenario.load(None); "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
