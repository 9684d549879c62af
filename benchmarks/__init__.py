"""Benchmarks: they measure and print a report, and never assert (machines are noisy)."""
