"""Reading models from a world's registry the way the serving processes do: without importing
MLflow, from the world's own files wherever the world was copied to."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.pipeline import registry
from sandbox.world.build import BuildSummary


def test_a_copied_world_loads_its_own_model_files(
    faulty_world: BuildSummary, tmp_path: Path
) -> None:
    copy = tmp_path / "mlflow"
    shutil.copytree(faulty_world.root / "candidate" / "mlflow", copy)
    champion = registry.model_version(copy, "models:/churn-model@champion")
    assert registry.local_artifacts(copy, champion["storage_location"]).is_relative_to(copy)
    assert champion["tags"]["decision_threshold"]
    model = registry.load_model(copy, "models:/churn-model@champion")
    pinned = registry.load_model(copy, f"models:/churn-model/{champion['version']}")
    assert type(model) is type(pinned) and hasattr(model, "predict_proba")
    with pytest.raises(LookupError, match="no models:/churn-model@nope"):
        registry.model_version(copy, "models:/churn-model@nope")


def test_serving_does_not_import_mlflow(faulty_world: BuildSummary) -> None:
    mlflow_dir = faulty_world.root / "candidate" / "mlflow"
    probe = (
        "import sys; from pathlib import Path; from sandbox.pipeline import registry; "
        f"registry.load_model(Path({str(mlflow_dir)!r}), 'models:/ticket-encoder@production'); "
        "print('mlflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
