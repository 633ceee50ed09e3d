"""Benchmark scripts; run each from the project root as ``python -m benchmarks.NAME`` (index: results/README.md)."""
