"""Batch measurement: one task per micrograph, Dask workers, per-image markers, resume after kill -9."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from nanoseg.config import build_config
from nanoseg.measure import measure_files

PX = ("--pixel-size", "2nm")


def _config(**classify):
    return build_config({"data": {"pixel_size_nm": 2.0}, "classify": {"method": "rules", **classify}},
                        profile="demo")


def _tables(out: Path) -> tuple[pd.DataFrame, dict]:
    summary = json.loads((out / "summary.json").read_text())
    return pd.read_csv(out / "particles.csv"), summary


@pytest.fixture
def batch_log(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("nanoseg"), "propagate", True)
    caplog.set_level(logging.INFO, logger="nanoseg")
    return caplog


def test_local_cluster_gives_the_results_of_one_process(batch, model):
    """Two Dask worker processes (a real distributed.LocalCluster) and this process: same files."""
    one = measure_files([batch / "images"], batch / "one", _config(), model=model)
    two = measure_files([batch / "images"], batch / "two", _config(), model=model, workers=2)
    particles_one, summary_one = _tables(batch / "one")
    particles_two, summary_two = _tables(batch / "two")
    pd.testing.assert_frame_equal(particles_one, particles_two)
    assert summary_one == summary_two == json.loads((batch / "one" / "summary.json").read_text())
    assert one["n_particles"] == two["n_particles"] > 0
    assert (batch / "one" / "decisions.csv").read_bytes() == (batch / "two" / "decisions.csv").read_bytes()
    for stem in "abc":  # the per-image outputs a rerun resumes from
        assert (batch / "two" / "markers" / f"{stem}.json").is_file()
        assert len(pd.read_parquet(batch / "two" / "particles.parquet" / f"{stem}.parquet")) == \
            int((particles_two["image"] == stem).sum())


def test_pooled_image_by_image_as_from_the_whole_table(batch):
    """The batch writes the tables and summary from one image's rows at a time: as from the whole table."""
    from nanoseg.measure import results_settings, write_results

    first = measure_files([batch / "images"], batch / "parts", _config(), labels_dir=batch / "labels")
    areas = pd.read_csv(batch / "parts" / "particles.csv")["area_px"]
    # Some particles discarded (by size, by a threshold of their own), and a report table that spans images.
    config = _config(min_area_px=int(areas.max()))
    config = config.model_copy(update={"measure": config.measure.model_copy(update={"report_rows": 3})})
    summary = measure_files([batch / "images"], batch / "parts", config, labels_dir=batch / "labels")
    whole = pd.concat([pd.read_parquet(batch / "parts" / "particles.parquet" / f"{stem}.parquet") for stem in "abc"],
                      ignore_index=True)
    assert whole["image"].nunique() == 3 and 0 < summary["n_discarded"] < first["n_particles"]
    again = write_results(whole, batch / "whole", pixel_size_source=summary["pixel_size_source"],
                          **results_settings(config))
    assert (batch / "parts" / "particles.csv").read_bytes() == (batch / "whole" / "particles.csv").read_bytes()
    for key in ("n_images", "n_particles", "n_kept", "n_discarded", "discard_reasons", "pixel_size_nm", "descriptors"):
        assert summary[key] == again[key], key
    decisions = pd.read_csv(batch / "parts" / "decisions.csv")
    pd.testing.assert_frame_equal(decisions, pd.read_csv(batch / "whole" / "particles.csv")[decisions.columns])
    listed = [(batch / folder / "report.html").read_text().split("<h2>Particles")[1] for folder in ("parts", "whole")]
    assert listed[0] == listed[1] and listed[0].startswith(f" (first 3 of {len(whole)};")


def test_an_existing_cluster_is_reached_by_its_address(batch, model):
    """--scheduler: the tasks run on a cluster started elsewhere (here: in the test)."""
    from distributed import LocalCluster

    measure_files([batch / "images"], batch / "one", _config(), model=model)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        measure_files([batch / "images"], batch / "remote", _config(), model=model,
                      scheduler=cluster.scheduler_address)
    pd.testing.assert_frame_equal(_tables(batch / "one")[0], _tables(batch / "remote")[0])


def test_rerun_measures_only_what_changed(batch, model, batch_log):
    out = batch / "out"
    measure_files([batch / "images"], out, _config(), model=model)
    first = _tables(out)[0]
    batch_log.clear()
    measure_files([batch / "images"], out, _config(), model=model)
    assert "3 of 3 micrographs were done by an earlier call" in batch_log.text
    pd.testing.assert_frame_equal(_tables(out)[0], first)

    # An image file written again is measured again; the others are not.
    image = batch / "images" / "b.tif"
    image.write_bytes(image.read_bytes())
    os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))
    batch_log.clear()
    measure_files([batch / "images"], out, _config(), model=model)
    assert "2 of 3 micrographs were done by an earlier call" in batch_log.text
    pd.testing.assert_frame_equal(_tables(out)[0], first)

    # Another setting that a task reads: everything again.
    batch_log.clear()
    measure_files([batch / "images"], out, _config(min_area_px=5), model=model)
    assert "done by an earlier call" not in batch_log.text


def test_a_changed_label_image_is_measured_again(batch, batch_log):
    """A label image edited in place (the same folder, the same settings): that image is measured again."""
    import numpy as np
    import tifffile

    out = batch / "out"
    measure_files([batch / "images"], out, _config(), labels_dir=batch / "labels")
    first = _tables(out)[0]
    labels = batch / "labels" / "b.tif"
    lab = tifffile.imread(labels)
    tifffile.imwrite(labels, np.where(lab == lab.max(), 0, lab).astype(lab.dtype))  # one particle of b erased
    batch_log.clear()
    measure_files([batch / "images"], out, _config(), labels_dir=batch / "labels")
    assert "2 of 3 micrographs were done by an earlier call" in batch_log.text
    again = _tables(out)[0]
    assert (again["image"] == "b").sum() < (first["image"] == "b").sum()
    pd.testing.assert_frame_equal(again[again["image"] != "b"].reset_index(drop=True),
                                  first[first["image"] != "b"].reset_index(drop=True))


_KILL_AFTER_TWO = """
import sys, time
from pathlib import Path
from nanoseg.measure import batch
real = batch.measure_one
flag = Path(sys.argv[2])
done = []
def slow(path, job):
    if len(done) == 2:  # two images are finished: be killed here
        flag.write_text("")
        time.sleep(120)
    result = real(path, job)
    done.append(path)
    return result
batch.measure_one = slow
from nanoseg.cli import main
sys.argv = ["nanoseg", "measure", sys.argv[1] + "/images", "--model", sys.argv[3], "--out", sys.argv[1] + "/out",
            "--profile", "demo", "--set", "classify.method=rules", "--pixel-size", "2nm"]
main()
"""


def test_batch_killed_halfway_resumes_without_losing_or_repeating_an_image(batch, model, cli):
    from nanoseg.io import write_tiff

    for stem in "def":  # six images
        write_tiff(batch / "images" / f"{stem}.tif", *_copy_of(batch, "abc"["def".index(stem)]))
    flag = batch / "killed-here"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_AFTER_TWO, str(batch), str(flag), str(model)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    while not flag.exists():
        assert proc.poll() is None and time.time() < deadline, \
            f"the batch never reached its third image: {proc.stderr.read() if proc.poll() is not None else ''}"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = batch / "out"
    assert sorted(p.stem for p in (out / "markers").iterdir()) == ["a", "b"]
    assert not (out / "particles.csv").exists()  # no pooled results from a batch that did not finish

    res = cli("measure", batch / "images", "--model", model, "--out", out, "--profile", "demo",
              "--set", "classify.method=rules", *PX)
    assert res.code == 0, res.output
    assert "2 of 6 micrographs were done by an earlier call" in res.output
    resumed = pd.read_csv(out / "particles.csv")
    res = cli("measure", batch / "images", "--model", model, "--out", batch / "whole", "--profile", "demo",
              "--set", "classify.method=rules", *PX)
    assert res.code == 0, res.output
    whole = pd.read_csv(batch / "whole" / "particles.csv")
    pd.testing.assert_frame_equal(resumed, whole)  # none lost, none twice
    assert resumed.groupby("image").size().to_dict() == whole.groupby("image").size().to_dict()
    assert sorted(resumed["image"].unique()) == list("abcdef")


def _copy_of(batch: Path, stem: str):
    import tifffile

    return tifffile.imread(batch / "images" / f"{stem}.tif"), 2.0


def test_workers_and_scheduler_errors_are_one_line(batch, model, cli):
    res = cli("measure", batch / "images", "--model", model, "--out", batch / "o", "--workers", "2",
              "--scheduler", "tcp://127.0.0.1:1", *PX)
    assert res.code == 2 and "give one of them" in res.error_line()
    res = cli("measure", batch / "images", "--model", model, "--out", batch / "o2", "--scheduler",
              "tcp://127.0.0.1:1", *PX)
    assert res.code == 2 and "tcp://127.0.0.1:1: cannot connect" in res.error_line()
    assert not (batch / "o2" / "particles.csv").exists()


def test_two_micrographs_with_one_name_are_refused(batch, model, tmp_path):
    from nanoseg.errors import NanosegError

    other = tmp_path / "other"
    other.mkdir()
    (other / "a.tif").write_bytes((batch / "images" / "a.tif").read_bytes())
    with pytest.raises(NanosegError, match="several micrographs are named a"):
        measure_files([batch / "images", other], batch / "out", _config(), model=model)
