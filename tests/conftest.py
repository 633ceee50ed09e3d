"""Shared fixtures: the public TiO2 data (skipped when absent) and quiet progress bars."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bam-tio2"

os.environ.setdefault("NANOSEG_NO_PROGRESS", "1")
# Test tensors are tiny: one torch thread avoids thread start-up and oversubscription costs
# (subprocesses started by tests inherit it). Speed is measured in benchmarks/, not here.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data/bam-tio2; skips the test when the data is not there."""
    if not (SHARED_DATA / "sem").is_dir():
        pytest.skip(f"shared TiO2 data not found at {SHARED_DATA}")
    return SHARED_DATA
