"""ML Incident Sandbox."""

__version__ = "0.1.0"
