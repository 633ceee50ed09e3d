"""Shared fixtures: the public TiO2 data (skipped when absent), quiet progress bars, and the real
command line run in this process."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
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


class CliResult(NamedTuple):
    """What one ``nanoseg`` command did: exit status, stdout + stderr, and stderr alone."""

    code: int
    output: str
    err: str

    def error_line(self) -> str:
        """The command's one ``error:`` line; fails the test unless stderr ends with it and holds
        no other (log records of the work before it may precede it) and nothing is a traceback."""
        lines = self.err.strip().splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], self.err
        assert "Traceback" not in self.output
        return lines[-1]


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``nanoseg ARGS`` in this process through ``main`` (so exit codes and error lines are
    the real ones); returns a :class:`CliResult`."""
    from nanoseg.cli import main

    log = logging.getLogger("nanoseg")
    handlers, propagate, level = log.handlers[:], log.propagate, log.level

    def run(*args: object) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["nanoseg", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        code = exit_info.value.code
        return CliResult(code if isinstance(code, int) else int(code is not None), captured.out + captured.err,
                         captured.err)

    yield run
    # main() installs its own log handler; later tests capture the nanoseg loggers themselves.
    log.handlers[:], log.propagate, log.level = handlers, propagate, level


@pytest.fixture(autouse=True, scope="session")
def use_leak_safe_log_records():
    """Overrides napari's pytest plugin fixture of this name (active wherever napari is installed):
    it turns every log argument that is not a Python int or float into a string, so a numpy
    integer logged with %d raised inside the code under test. Log records stay standard here."""
    yield


@pytest.fixture(autouse=True)
def _fresh_log_once():
    """Messages logged once per command (``runtime.log_once``) are new again in every test."""
    from nanoseg import runtime

    runtime._LOGGED_ONCE.clear()


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test (training tests compare exact numbers across runs)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def keep_global_rng():
    """Leave the global random states as found: the CLI seeds them, and tests elsewhere that
    train without a seed of their own get other weights after it."""
    import random

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.random.set_rng_state(states[2])


def _disc_micrograph(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 64x64 uint8 micrograph with bright discs on a noisy background, and its labels."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    labels = np.zeros((64, 64), np.uint16)
    for i, (r, c) in enumerate([(18, 18), (20, 46), (46, 24), (44, 48)][: 2 + seed % 3], start=1):
        labels[disk((r, c), 7 + seed % 2)] = i
    image = np.where(labels > 0, 200.0, 50.0) + rng.normal(0, 8, labels.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="session")
def disc_micrograph():
    """``disc_micrograph(seed)`` -> (uint8 64x64 micrograph, its uint16 labels): 2-4 bright discs."""
    return _disc_micrograph


@pytest.fixture
def four_squares() -> tuple[np.ndarray, np.ndarray]:
    """A 64x64 float32 image (0.1 background, 0.8 squares) with four 15-px squares, and their int32 labels."""
    img = np.full((64, 64), 0.1, np.float32)
    inst = np.zeros((64, 64), np.int32)
    for i, (r, c) in enumerate([(5, 5), (5, 35), (35, 10), (35, 40)]):
        inst[r:r + 15, c:c + 15] = i + 1
        img[r:r + 15, c:c + 15] = 0.8
    return img, inst


@pytest.fixture
def batch(tmp_path) -> Path:
    """images/a.tif, b.tif, c.tif (2 nm pixels) with labels/<stem>.tif; returns tmp_path."""
    from nanoseg.io import write_tiff

    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for seed, stem in enumerate("abc"):
        image, labels = _disc_micrograph(seed)
        write_tiff(tmp_path / "images" / f"{stem}.tif", image, pixel_size_nm=2.0)
        write_tiff(tmp_path / "labels" / f"{stem}.tif", labels)
    return tmp_path


@pytest.fixture(scope="session")
def model(tmp_path_factory, disc_micrograph) -> Path:
    """A tiny segmentation model trained on the ``batch`` discs (40 steps on 64x64 images: a few seconds)."""
    from nanoseg.config import build_config
    from nanoseg.segment import Pair, train

    pairs = []
    for seed in range(3):
        image, labels = disc_micrograph(seed)
        pairs.append(Pair(image.astype(np.float32) / 255, labels.astype(np.int32), f"p{seed}"))
    cfg = build_config({"segment": {"architecture": "unet", "base_width": 4, "depth": 2, "tile_size_px": 48,
                                    "batch_size": 2, "val_every": 10, "bf16": False}}).segment
    return train(pairs, cfg, tmp_path_factory.mktemp("model"), steps=40, rng=np.random.default_rng(1),
                 pixel_size_nm=2.0)


@pytest.fixture
def tiny_segment() -> dict:
    """Segment settings that train a net in about a second: for tests of the stage, not of the net."""
    return {"architecture": "unet", "base_width": 4, "depth": 2, "tile_size_px": 48, "batch_size": 2, "steps": 4,
            "val_every": 2, "bf16": False, "tta": False}


@pytest.fixture
def segment_after(monkeypatch):
    """Shorten the pipeline to a pairs stage (``module:function``) and the real segment stage."""
    from nanoseg import pipeline
    from nanoseg.pipeline import Stage

    def use(pairs_function: str) -> None:
        stages = (Stage("pairs", pairs_function, ("seed", "data")),
                  next(s for s in pipeline.STAGES if s.name == "segment"))
        monkeypatch.setattr(pipeline, "STAGES", stages)
        monkeypatch.setattr(pipeline, "STAGE_NAMES", tuple(s.name for s in stages))

    return use

