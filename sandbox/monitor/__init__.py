"""Production monitoring of the simulated model's served features."""
