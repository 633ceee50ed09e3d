"""Batches through the real CLI: a bad micrograph costs only itself, output errors are one line,
and a reused --out holds only the outputs of the last run."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from nanoseg import pipeline
from nanoseg.cli import main
from nanoseg.cli.common import OUT_MARKER
from nanoseg.io import write_tiff
from nanoseg.pipeline import Stage

PX = ["--set", "data.info_bar_rows=0", "--set", "classify.method=rules"]


@pytest.fixture(autouse=True, scope="module")
def _keep_global_rng():
    """Leave the global random states as found: the CLI seeds them, and tests elsewhere that
    train without a seed of their own get other weights after it."""
    import random

    import torch

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.random.set_rng_state(states[2])


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``nanoseg ARGS`` in this process through ``main`` (so exit codes and error lines are
    the real ones); returns (exit status, stdout + stderr, stderr)."""
    log = logging.getLogger("nanoseg")
    handlers, propagate, level = log.handlers[:], log.propagate, log.level

    def run(*args: object) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["nanoseg", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        code = exit_info.value.code
        return (code if isinstance(code, int) else int(code is not None)), captured.out + captured.err, captured.err

    yield run
    # main() installs its own log handler; later tests capture the nanoseg loggers themselves.
    log.handlers[:], log.propagate, log.level = handlers, propagate, level


def _micrograph(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 64x64 uint8 micrograph with bright discs on a noisy background, and its labels."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    labels = np.zeros((64, 64), np.uint16)
    for i, (r, c) in enumerate([(18, 18), (20, 46), (46, 24), (44, 48)][: 2 + seed % 3], start=1):
        labels[disk((r, c), 7 + seed % 2)] = i
    image = np.where(labels > 0, 200.0, 50.0) + rng.normal(0, 8, labels.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


@pytest.fixture
def batch(tmp_path) -> Path:
    """images/a.tif, b.tif, c.tif (2 nm pixels) with labels/<stem>.tif; returns tmp_path."""
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for seed, stem in enumerate("abc"):
        image, labels = _micrograph(seed)
        write_tiff(tmp_path / "images" / f"{stem}.tif", image, pixel_size_nm=2.0)
        write_tiff(tmp_path / "labels" / f"{stem}.tif", labels)
    return tmp_path


def _corrupt(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return path


def _measure(cli, root: Path, *args: object) -> tuple[int, str, str]:
    return cli("measure", *args, "--labels", root / "labels", *PX)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- one bad file


def test_measure_leaves_out_a_corrupt_micrograph_and_lists_it(batch, cli):
    (batch / "images" / "c.tif").unlink()
    bad = _corrupt(batch / "images" / "bad.tif")
    code, output, err = _measure(cli, batch, batch / "images", "--out", batch / "out")
    assert code == 1, output
    assert "failed: 1 of 3 images" in err and f"{bad}: cannot read image" in err
    summary = json.loads((batch / "out" / "summary.json").read_text())
    assert [f["image"] for f in summary["failures"]] == [str(bad)]
    assert summary["failures"][0]["error"].startswith("cannot read image")
    assert summary["n_images"] == 2
    assert any("1 of 3 micrographs could not be used" in w and "bad.tif" in w for w in summary["warnings"])
    assert "1 of 3 micrographs could not be used" in (batch / "out" / "report.html").read_text()
    assert sorted(p.stem for p in (batch / "out" / "overlays").iterdir()) == ["a", "b"]


def test_measure_leaves_out_a_micrograph_without_labels(batch, cli):
    (batch / "labels" / "b.tif").unlink()
    code, output, err = _measure(cli, batch, batch / "images", "--out", batch / "out")
    assert code == 1, output
    assert "failed: 1 of 3 images" in err and "no label image for micrograph" in err
    summary = json.loads((batch / "out" / "summary.json").read_text())
    assert [Path(f["image"]).name for f in summary["failures"]] == ["b.tif"]


def test_a_clean_batch_exits_0_with_no_failures(batch, cli):
    code, output, _ = _measure(cli, batch, batch / "images", "--out", batch / "out")
    assert code == 0, output
    assert json.loads((batch / "out" / "summary.json").read_text())["failures"] == []


def test_strict_stops_at_the_first_failure_and_writes_nothing(batch, cli):
    bad = _corrupt(batch / "images" / "bad.tif")
    code, _, err = _measure(cli, batch, batch / "images", "--out", batch / "out", "--strict")
    assert code == 2
    assert str(bad) in _one_error_line(err)
    assert not (batch / "out").exists()


def test_strict_failure_keeps_the_earlier_outputs(batch, cli):
    assert _measure(cli, batch, batch / "images", "--out", batch / "out")[0] == 0
    before = {p: p.read_bytes() for p in (batch / "out").rglob("*") if p.is_file()}
    _corrupt(batch / "images" / "bad.tif")
    assert _measure(cli, batch, batch / "images", "--out", batch / "out", "--strict")[0] == 2
    assert {p: p.read_bytes() for p in (batch / "out").rglob("*") if p.is_file()} == before


def test_every_micrograph_failing_is_one_error(tmp_path, cli):
    (tmp_path / "labels").mkdir()
    for name in ("x.tif", "y.tif"):
        _corrupt(tmp_path / name)
    code, _, err = _measure(cli, tmp_path, tmp_path / "x.tif", tmp_path / "y.tif", "--out", tmp_path / "out")
    assert code == 2
    assert "none of the 2 micrograph(s) could be used" in _one_error_line(err)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- output errors


def test_out_that_is_a_file_is_one_line(batch, cli):
    (batch / "out").write_text("not a folder")
    code, _, err = _measure(cli, batch, batch / "images", "--out", batch / "out")
    assert code == 2
    assert "--out" in _one_error_line(err) and "is a file; give a folder" in err
    assert (batch / "out").read_text() == "not a folder"


def test_read_only_out_is_refused_before_any_work(batch, cli, monkeypatch):
    out = batch / "out"
    out.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the permission check see what a user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: (
            not (Path(path) == out and mode & os.W_OK) and real_access(path, mode, **kwargs)))
    else:
        out.chmod(0o500)
    try:
        code, _, err = _measure(cli, batch, batch / "images", "--out", out)
    finally:
        out.chmod(0o700)
    assert code == 2
    assert "permission denied" in _one_error_line(err) and "choose another --out" in err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("error, fragment", [
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied; choose another --out"),
    (OSError(errno.ENOSPC, "No space left on device"), "disk full while writing"),
])
def test_a_failed_write_is_one_line(batch, cli, monkeypatch, error, fragment):
    out = batch / "out"
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        # Fail only the writes into --out, as a read-only or full disk there would.
        if Path(kwargs.get("dir", ".")).resolve().is_relative_to(out.resolve()):
            error.filename = str(Path(kwargs["dir"]) / f"{kwargs['prefix']}abcdefgh{kwargs['suffix']}")
            raise error
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    code, _, err = _measure(cli, batch, batch / "images", "--out", out)
    assert code == 2
    line = _one_error_line(err)
    assert fragment in line and str(out) in line and ".tmp" not in line


# --------------------------------------------------------------------------- reused --out


def test_rerun_replaces_the_outputs_of_the_earlier_run(batch, cli):
    out = batch / "out"
    assert _measure(cli, batch, batch / "images", "--out", out)[0] == 0
    assert sorted(p.stem for p in (out / "overlays").iterdir()) == ["a", "b", "c"]
    (out / "my-notes.txt").write_text("mine")
    code, output, _ = _measure(cli, batch, batch / "images" / "a.tif", batch / "images" / "b.tif", "--out", out)
    assert code == 0, output
    assert "removed" in output and "earlier `nanoseg measure`" in output
    assert sorted(p.stem for p in (out / "overlays").iterdir()) == ["a", "b"]
    assert json.loads((out / "summary.json").read_text())["n_images"] == 2
    assert (out / "my-notes.txt").read_text() == "mine"


def test_a_folder_nanoseg_did_not_write_is_refused_untouched(batch, cli):
    out = batch / "results"
    out.mkdir()
    (out / "particles.csv").write_text("someone else's table")
    code, _, err = _measure(cli, batch, batch / "images", "--out", out)
    assert code == 2
    assert "files nanoseg did not write (particles.csv)" in _one_error_line(err)
    assert [p.name for p in out.iterdir()] == ["particles.csv"]
    assert (out / "particles.csv").read_text() == "someone else's table"


def test_another_commands_output_is_refused(batch, cli):
    out = batch / "out"
    out.mkdir()
    (out / OUT_MARKER).write_text(json.dumps({"command": "segment predict"}))
    code, _, err = _measure(cli, batch, batch / "images", "--out", out)
    assert code == 2 and "the outputs of `nanoseg segment predict`" in _one_error_line(err)


def test_an_input_among_the_outputs_to_replace_is_refused(batch, cli):
    out = batch / "out"
    assert _measure(cli, batch, batch / "images", "--out", out)[0] == 0
    table = (out / "particles.csv").read_bytes()
    code, _, err = _measure(cli, batch, batch / "images", "--out", out, "--compare", out / "particles.csv")
    assert code == 2 and "copy it elsewhere or choose another --out" in _one_error_line(err)
    assert (out / "particles.csv").read_bytes() == table


# --------------------------------------------------------------------------- segment predict


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny segmentation model (40 steps on 64x64 discs: a few seconds)."""
    from nanoseg.config import build_config
    from nanoseg.segment import Pair, train

    pairs = []
    for seed in range(3):
        image, labels = _micrograph(seed)
        pairs.append(Pair(image.astype(np.float32) / 255, labels.astype(np.int32), f"p{seed}"))
    cfg = build_config({"segment": {"architecture": "unet", "base_width": 4, "depth": 2, "tile_size_px": 48,
                                    "batch_size": 2, "val_every": 10, "bf16": False}}).segment
    return train(pairs, cfg, tmp_path_factory.mktemp("model"), steps=40, rng=np.random.default_rng(1),
                 pixel_size_nm=2.0)


def test_predict_leaves_out_a_corrupt_micrograph(batch, cli, model):
    bad = _corrupt(batch / "images" / "bad.tif")
    out = batch / "seg"
    code, output, err = cli("segment", "predict", batch / "images", "--model", model, "--out", out, *PX)
    assert code == 1, output
    assert "failed: 1 of 4 images" in err and str(bad) in err
    assert sorted(p.stem for p in (out / "labels").iterdir()) == ["a", "b", "c"]

    code, _, err = cli("segment", "predict", batch / "images", "--model", model, "--out", out, "--strict", *PX)
    assert code == 2 and str(bad) in _one_error_line(err)
    assert sorted(p.stem for p in (out / "labels").iterdir()) == ["a", "b", "c"]  # untouched by the abort


def test_predict_rerun_keeps_no_stale_per_image_files(batch, cli, model):
    out = batch / "seg"
    assert cli("segment", "predict", batch / "images", "--model", model, "--out", out, "--probabilities", *PX)[0] == 0
    code, output, _ = cli("segment", "predict", batch / "images" / "a.tif", batch / "images" / "b.tif",
                          "--model", model, "--out", out, *PX)
    assert code == 0, output
    for folder in ("labels", "binary", "overlays"):
        assert sorted(p.stem for p in (out / folder).iterdir()) == ["a", "b"]
    assert not (out / "probabilities").exists()
    code, _, err = cli("measure", batch / "images", "--model", model, "--out", out, *PX)
    assert code == 2 and "the outputs of `nanoseg segment predict`" in _one_error_line(err)


# --------------------------------------------------------------------------- nanoseg run


def toy_segment(ctx):
    """Stand-in for the segment stage: the true labels of every micrograph the run reads."""
    from nanoseg.io import load_micrographs

    labels_dir = Path(ctx.config.data.images).parent / "labels"
    for mg in load_micrographs(ctx.config.data):
        (ctx.out_dir / "labels").mkdir(exist_ok=True)
        (ctx.out_dir / "labels" / f"{mg.stem}.tif").write_bytes((labels_dir / f"{mg.stem}.tif").read_bytes())


def toy_classify(ctx):
    """Stand-in for the classify stage: no decisions, so that measure applies the rules."""


@pytest.fixture
def toy_run(monkeypatch):
    stages = (
        Stage("segment", f"{__name__}:toy_segment", ("seed", "data"), ("images",)),
        Stage("classify", f"{__name__}:toy_classify", ("seed", "classify")),
        Stage("measure", "nanoseg.measure:run_stage", ("data", "classify", "measure"), ("images",)),
    )
    monkeypatch.setattr(pipeline, "STAGES", stages)
    monkeypatch.setattr(pipeline, "STAGE_NAMES", tuple(s.name for s in stages))


def test_run_leaves_out_a_corrupt_micrograph_in_every_stage(batch, cli, toy_run):
    bad = _corrupt(batch / "images" / "bad.tif")
    args = ("run", batch, "--out", batch / "run", "--profile", "demo", "--set", "shapes.source=polygon", *PX)
    code, output, err = cli(*args)
    assert code == 1, output
    assert "failed: 1 of 4 images" in err and str(bad) in err
    assert sorted(p.stem for p in (batch / "run" / "segment" / "labels").iterdir()) == ["a", "b", "c"]
    summary = json.loads((batch / "run" / "measure" / "summary.json").read_text())
    assert [f["image"] for f in summary["failures"]] == [str(bad)]
    assert any("1 of 4 micrographs could not be used" in w for w in summary["warnings"])

    code, _, err = cli(*args, "--strict")
    assert code == 2 and str(bad) in _one_error_line(err)


def test_run_out_that_is_a_file_is_one_line(batch, cli, toy_run):
    (batch / "run").write_text("")
    code, _, err = cli("run", batch, "--out", batch / "run", "--profile", "demo", "--set", "shapes.source=polygon")
    assert code == 2 and "is a file; give a folder" in _one_error_line(err)
