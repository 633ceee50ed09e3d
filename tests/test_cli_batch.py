"""Batches through the real CLI: a bad micrograph costs only itself, output errors are one line,
and a reused --out holds only the outputs of the last run."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from nanoseg import pipeline
from nanoseg.cli.common import OUT_MARKER
from nanoseg.pipeline import Stage

PX = ["--set", "data.info_bar_rows=0", "--set", "classify.method=rules"]


pytestmark = pytest.mark.usefixtures("keep_global_rng")


def _corrupt(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return path


def _measure(cli, root: Path, *args: object) -> tuple[int, str, str]:
    return cli("measure", *args, "--labels", root / "labels", *PX)


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
    res = _measure(cli, batch, batch / "images", "--out", batch / "out", "--strict")
    assert res.code == 2
    assert str(bad) in res.error_line()
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
    res = _measure(cli, tmp_path, tmp_path / "x.tif", tmp_path / "y.tif", "--out", tmp_path / "out")
    assert res.code == 2
    assert "none of the 2 micrograph(s) could be used" in res.error_line()
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- output errors


def test_out_that_is_a_file_is_one_line(batch, cli):
    (batch / "out").write_text("not a folder")
    res = _measure(cli, batch, batch / "images", "--out", batch / "out")
    assert res.code == 2
    assert "--out" in res.error_line() and "is a file; give a folder" in res.err
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
        res = _measure(cli, batch, batch / "images", "--out", out)
    finally:
        out.chmod(0o700)
    assert res.code == 2
    assert "permission denied" in res.error_line() and "choose another --out" in res.err
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
    res = _measure(cli, batch, batch / "images", "--out", out)
    assert res.code == 2
    line = res.error_line()
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
    res = _measure(cli, batch, batch / "images", "--out", out)
    assert res.code == 2
    assert "files nanoseg did not write (particles.csv)" in res.error_line()
    assert [p.name for p in out.iterdir()] == ["particles.csv"]
    assert (out / "particles.csv").read_text() == "someone else's table"


def test_another_commands_output_is_refused(batch, cli):
    out = batch / "out"
    out.mkdir()
    (out / OUT_MARKER).write_text(json.dumps({"command": "segment predict"}))
    res = _measure(cli, batch, batch / "images", "--out", out)
    assert res.code == 2 and "the outputs of `nanoseg segment predict`" in res.error_line()


def test_an_input_among_the_outputs_to_replace_is_refused(batch, cli):
    out = batch / "out"
    assert _measure(cli, batch, batch / "images", "--out", out)[0] == 0
    table = (out / "particles.csv").read_bytes()
    res = _measure(cli, batch, batch / "images", "--out", out, "--compare", out / "particles.csv")
    assert res.code == 2 and "copy it elsewhere or choose another --out" in res.error_line()
    assert (out / "particles.csv").read_bytes() == table


# --------------------------------------------------------------------------- segment predict


def test_predict_leaves_out_a_corrupt_micrograph(batch, cli, model):
    bad = _corrupt(batch / "images" / "bad.tif")
    out = batch / "seg"
    res = cli("segment", "predict", batch / "images", "--model", model, "--out", out, *PX)
    assert res.code == 1, res.output
    assert "failed: 1 of 4 images" in res.err and str(bad) in res.err
    assert sorted(p.stem for p in (out / "labels").iterdir()) == ["a", "b", "c"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 4 and summary["n_segmented"] == 3
    assert [r["image"] for r in summary["images"]] == ["a", "b", "c"]
    assert [f["image"] for f in summary["failures"]] == [str(bad)]

    res = cli("segment", "predict", batch / "images", "--model", model, "--out", out, "--strict", *PX)
    assert res.code == 2 and str(bad) in res.error_line()
    assert sorted(p.stem for p in (out / "labels").iterdir()) == ["a", "b", "c"]  # untouched by the abort


def test_predict_rerun_keeps_no_stale_per_image_files(batch, cli, model):
    out = batch / "seg"
    assert cli("segment", "predict", batch / "images", "--model", model, "--out", out, "--probabilities", *PX)[0] == 0
    res = cli("segment", "predict", batch / "images" / "a.tif", batch / "images" / "b.tif",
              "--model", model, "--out", out, *PX)
    assert res.code == 0, res.output
    for folder in ("labels", "binary", "overlays"):
        assert sorted(p.stem for p in (out / folder).iterdir()) == ["a", "b"]
    assert not (out / "probabilities").exists()
    res = cli("measure", batch / "images", "--model", model, "--out", out, *PX)
    assert res.code == 2 and "the outputs of `nanoseg segment predict`" in res.error_line()


# --------------------------------------------------------------------------- nanoseg run


def toy_segment(ctx):
    """Stand-in for the segment stage: the true labels of every micrograph the run reads."""
    from nanoseg.io import load_micrographs

    labels_dir = Path(ctx.config.data.images).parent / "labels"
    for mg in load_micrographs(ctx.config.data):
        (ctx.out_dir / "labels").mkdir(exist_ok=True)
        (ctx.out_dir / "labels" / f"{mg.stem}.tif").write_bytes((labels_dir / f"{mg.stem}.tif").read_bytes())
    (ctx.out_dir / "model.pt").write_bytes(b"the adapt stage passes it on")


def toy_classify(ctx):
    """Stand-in for the classify stage: no decisions, so that measure applies the rules."""


@pytest.fixture
def toy_run(monkeypatch):
    stages = (
        Stage("segment", f"{__name__}:toy_segment", ("seed", "data"), ("images",)),
        Stage("adapt", "nanoseg.segment.adapt:run_stage", ("seed", "data", "adapt"), ("images",)),
        Stage("classify", f"{__name__}:toy_classify", ("seed", "classify")),
        Stage("measure", "nanoseg.measure:run_stage", ("data", "classify", "measure"), ("images",)),
    )
    monkeypatch.setattr(pipeline, "STAGES", stages)
    monkeypatch.setattr(pipeline, "STAGE_NAMES", tuple(s.name for s in stages))


def test_run_leaves_out_a_corrupt_micrograph_in_every_stage(batch, cli, toy_run):
    bad = _corrupt(batch / "images" / "bad.tif")
    args = ("run", batch, "--out", batch / "run", "--profile", "demo", "--set", "shapes.source=polygon", *PX)
    res = cli(*args)
    assert res.code == 1, res.output
    assert "failed: 1 of 4 images" in res.err and str(bad) in res.err
    assert sorted(p.stem for p in (batch / "run" / "segment" / "labels").iterdir()) == ["a", "b", "c"]
    summary = json.loads((batch / "run" / "measure" / "summary.json").read_text())
    assert [f["image"] for f in summary["failures"]] == [str(bad)]
    assert any("1 of 4 micrographs could not be used" in w for w in summary["warnings"])

    res = cli(*args, "--strict")
    assert res.code == 2 and str(bad) in res.error_line()


def test_run_out_that_is_a_file_is_one_line(batch, cli, toy_run):
    (batch / "run").write_text("")
    res = cli("run", batch, "--out", batch / "run", "--profile", "demo", "--set", "shapes.source=polygon")
    assert res.code == 2 and "is a file; give a folder" in res.error_line()
