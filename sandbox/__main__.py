"""`python -m sandbox` is the `sandbox` command."""

from sandbox.cli import app

app()
