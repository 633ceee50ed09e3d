"""`nanoseg segment predict` on the batch engine: Dask workers, markers, resume."""

from __future__ import annotations

import json

import tifffile

PX = ("--pixel-size", "2nm")


def test_predict_on_two_workers_writes_what_one_process_writes(batch, cli, model):
    assert cli("segment", "predict", batch / "images", "--model", model, "--out", batch / "one", *PX)[0] == 0
    res = cli("segment", "predict", batch / "images", "--model", model, "--out", batch / "two", "--workers", "2",
              "--probabilities", *PX)
    assert res.code == 0, res.output
    for stem in "abc":
        for folder in ("labels", "binary"):
            assert (tifffile.imread(batch / "one" / folder / f"{stem}.tif") ==
                    tifffile.imread(batch / "two" / folder / f"{stem}.tif")).all()
        assert (batch / "two" / "probabilities" / f"{stem}.tif").is_file()
    one, two = (json.loads((batch / name / "summary.json").read_text()) for name in ("one", "two"))
    assert [(r["image"], r["particles"]) for r in one["images"]] == [(r["image"], r["particles"]) for r in two["images"]]


def test_predict_rerun_segments_only_the_images_not_done(batch, cli, model):
    out = batch / "seg"
    assert cli("segment", "predict", batch / "images", "--model", model, "--out", out, *PX)[0] == 0
    written = {stem: (out / "labels" / f"{stem}.tif").stat().st_mtime_ns for stem in "bc"}
    (out / "markers" / "b.json").unlink()  # as if killed before b was finished
    (out / "labels" / "a.tif").unlink()  # an output of a finished image lost: a is done again
    res = cli("segment", "predict", batch / "images", "--model", model, "--out", out, *PX)
    assert res.code == 0, res.output
    assert "1 of 3 micrographs were done by an earlier call" in res.output
    assert (out / "labels" / "a.tif").is_file()
    assert (out / "labels" / "b.tif").stat().st_mtime_ns != written["b"]
    assert (out / "labels" / "c.tif").stat().st_mtime_ns == written["c"]  # c was not segmented again
    summary = json.loads((out / "summary.json").read_text())
    assert [r["image"] for r in summary["images"]] == ["a", "b", "c"] and summary["n_segmented"] == 3
