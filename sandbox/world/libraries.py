"""The libraries whose results make up a world's data. The same scenario, seed and code give the
same world byte for byte only with the same versions of them: a world's manifest records them,
and the test suite keys its cached worlds by them."""

from __future__ import annotations

import importlib.metadata

# Distribution names: the warehouse and its queries, the frames and numbers of the simulation,
# the models and their registry, the retrieval index, the drift reports.
SHAPING_LIBRARIES = (
    "duckdb",
    "polars",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "mlflow",
    "faiss-cpu",
    "evidently",
)


def library_versions() -> dict[str, str | None]:
    """The installed version of each library that shapes a world (None for one not installed)."""
    versions: dict[str, str | None] = {}
    for name in SHAPING_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
