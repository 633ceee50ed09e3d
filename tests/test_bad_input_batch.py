"""Batches that are rerun, shared or interrupted: nothing silently wrong, nothing lost.

A rerun trusts a per-image output only while it is the file that was written (size and
SHA-256 in the marker) and the micrograph is the one it came from (its content, not only its
size and time); the pooled outputs replace the earlier ones only once they are all written; an
output folder is held by one nanoseg at a time; a file name that is not UTF-8 is measured.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from test_bad_input import Case, check_case, measure

from nanoseg import atomic
from nanoseg.cli.common import OUT_LOCK
from nanoseg.io import write_tiff

pytestmark = pytest.mark.usefixtures("keep_global_rng")

POOLED = ("particles.csv", "decisions.csv", "summary.json", "report.html", "hist_min_feret.png")


def _lock(root: Path, pid: int, host: str | None = None) -> None:
    (root / "out").mkdir()
    (root / "out" / OUT_LOCK).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                     "since": "2026-01-01 12:00:00"}))


def held_here(root, _):
    _lock(root, os.getppid())  # alive for as long as this test: the process that started pytest
    return measure(root, root / "images")


def held_elsewhere(root, _):
    _lock(root, 1, "another-host")
    return measure(root, root / "images")


def lock_unreadable(root, _):
    (root / "out").mkdir()
    (root / "out" / OUT_LOCK).write_text("")  # as its holder sees it between creating and writing it
    return measure(root, root / "images")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def held_by_the_dead(root, _):
    _lock(root, _dead_pid())
    return measure(root, root / "images")


def one_without_pixel_size(root, _):
    # Pooled with the others' nm, its px would make a distribution of two scales.
    write_tiff(root / "images" / "b.tif", tifffile.imread(root / "images" / "b.tif"))
    return measure(root, root / "images")


BATCH_CASES = [
    Case("one-micrograph-without-pixel-size", one_without_pixel_size, 1,
         ("{root}/images/b.tif", "no pixel size, while 2 other micrograph(s) of this batch have one",
          "give --pixel-size")),
    Case("out-locked-by-a-live-process", held_here, 2,
         (f"--out {{root}}/out is in use by nanoseg pid {os.getppid()} on {socket.gethostname()} since "
          "2026-01-01 12:00:00", "wait for it or choose another --out")),
    Case("out-locked-on-another-host", held_elsewhere, 2,
         ("--out {root}/out is in use by nanoseg pid 1 on another-host", f"delete {{root}}/out/{OUT_LOCK}")),
    Case("out-lock-unreadable", lock_unreadable, 2,
         ("--out {root}/out is in use by another nanoseg", f"delete {{root}}/out/{OUT_LOCK}")),
    Case("out-locked-by-a-dead-process", held_by_the_dead, 0, ("taking over the lock of nanoseg pid",)),
]


@pytest.mark.parametrize("case", BATCH_CASES, ids=lambda c: c.id)
def test_batch_bad_input(case, batch, cli, monkeypatch):
    check_case(case, batch, cli, monkeypatch)


def _run(cli, root: Path, *images: object, out: str = "out", extra: tuple = ()) -> str:
    """The output of a measure that must succeed, its words joined by single spaces (logs wrap)."""
    res = cli(*measure(root, *(images or (root / "images",)), out=out, extra=extra))
    assert res.code == 0 and "Traceback" not in res.output, res.output
    return " ".join(res.output.split())


def _pooled(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in POOLED}


def _table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "particles.csv")


# --------------------------------------------------------------------------- per-image outputs


def _edit(path: Path) -> None:
    part = pd.read_parquet(path)
    part["min_feret_nm"] *= 3
    part.to_parquet(path, index=False)


@pytest.mark.parametrize("damage", [_edit, lambda p: p.write_bytes(p.read_bytes()[:200]), lambda p: p.write_bytes(b"")],
                         ids=["edited", "truncated", "empty"])
def test_a_changed_parquet_is_measured_again(batch, cli, damage):
    out = batch / "out"
    _run(cli, batch)
    fresh = _table(out)
    damage(out / "particles.parquet" / "b.parquet")
    said = _run(cli, batch)
    assert "2 of 3 micrographs were done by an earlier call" in said
    assert "particles.parquet/b.parquet changed since it was written" in said
    pd.testing.assert_frame_equal(_table(out), fresh)


def test_the_earlier_pooled_outputs_stay_while_the_rerun_works(batch, cli, monkeypatch):
    from nanoseg.measure import batch as measure_batch

    out = batch / "out"
    _run(cli, batch)
    before = _pooled(out)
    (out / "particles.parquet" / "b.parquet").write_bytes(b"")
    real, seen = measure_batch.measure_one, []

    def watched(path, job):
        seen.append(_pooled(out) == before)
        return real(path, job)

    monkeypatch.setattr(measure_batch, "measure_one", watched)
    _run(cli, batch)
    assert seen == [True]


def test_a_micrograph_swapped_for_one_of_the_same_size_and_time_is_measured_again(batch, cli):
    out = batch / "out"
    _run(cli, batch)
    b = batch / "images" / "b.tif"
    st, image = b.stat(), tifffile.imread(b)
    for value in range(256):  # another micrograph that compresses to the same number of bytes
        other = image.copy()
        other[32, 32] = value
        write_tiff(b, other, pixel_size_nm=2.0)
        if b.stat().st_size == st.st_size and (other != image).any():
            break
    assert b.stat().st_size == st.st_size
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p, rsync -a or tar restore it
    assert "2 of 3 micrographs were done by an earlier call" in _run(cli, batch)
    _run(cli, batch, out="fresh")
    pd.testing.assert_frame_equal(_table(out), _table(batch / "fresh"))


@pytest.mark.parametrize("damage", [lambda p: p.write_bytes(p.read_bytes()[:p.stat().st_size // 2]),
                                    lambda p: p.write_bytes(p.read_bytes()[:-16] + bytes(16))],
                         ids=["truncated", "edited"])
def test_predict_redoes_a_changed_label_image(batch, cli, model, damage):
    def predict(out):
        res = cli("segment", "predict", batch / "images" / "a.tif", batch / "images" / "b.tif", "--model", model,
                  "--out", batch / out, "--set", "data.info_bar_rows=0")
        assert res.code == 0, res.output
        return " ".join(res.output.split())

    predict("seg")
    written = tifffile.imread(batch / "seg" / "labels" / "b.tif")
    damage(batch / "seg" / "labels" / "b.tif")
    assert "1 of 2 micrographs were done by an earlier call" in predict("seg")
    np.testing.assert_array_equal(tifffile.imread(batch / "seg" / "labels" / "b.tif"), written)


# --------------------------------------------------------------------------- pooled outputs


def test_a_full_disk_while_pooling_keeps_the_earlier_results(batch, cli, monkeypatch):
    out = batch / "out"
    _run(cli, batch)
    before = _pooled(out)
    real = atomic.write_json

    def full(path, data):
        if Path(path).name == "summary.json":  # the table and histograms are written by then
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(atomic, "write_json", full)
    res = cli(*measure(batch, batch / "images" / "a.tif", batch / "images" / "b.tif"))
    assert res.code == 2 and f"disk full while writing {out / 'summary.json'};" in res.error_line()
    assert _pooled(out) == before
    assert [p for p in out.rglob("*") if atomic.is_temp_file(p)] == []
    monkeypatch.undo()
    _run(cli, batch, batch / "images" / "a.tif", batch / "images" / "b.tif")
    assert json.loads((out / "summary.json").read_text())["n_images"] == 2


def test_evaluate_on_a_full_disk_writes_neither_table(batch, cli, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "write_json", full)
    res = cli("evaluate", batch / "labels", batch / "labels", "--protocol", "strict", "--out", batch / "ev" / "x.csv")
    assert res.code == 2 and "disk full while writing" in res.error_line()
    assert list((batch / "ev").iterdir()) == []


# --------------------------------------------------------------------------- the output folder


def test_the_lock_is_held_while_the_command_works_and_gone_after_it(batch, cli, monkeypatch):
    from nanoseg.measure import batch as measure_batch

    out, real, holders = batch / "out", measure_batch.measure_one, []

    def watched(path, job):
        holders.append(json.loads((out / OUT_LOCK).read_text())["pid"])
        return real(path, job)

    monkeypatch.setattr(measure_batch, "measure_one", watched)
    _run(cli, batch)
    assert holders == [os.getpid()] * 3 and not (out / OUT_LOCK).exists()
    (batch / "images" / "b.tif").write_bytes(b"junk")
    res = cli(*measure(batch, batch / "images", extra=("--strict",)))
    assert res.code == 2 and not (out / OUT_LOCK).exists()


def test_a_stale_lock_is_taken_over(batch, cli):
    _lock(batch, _dead_pid())
    _run(cli, batch)
    assert not (batch / "out" / OUT_LOCK).exists() and len(_table(batch / "out")) > 0


def test_predict_into_a_folder_in_use_is_refused(batch, cli, model):
    _lock(batch, os.getppid())
    res = cli("segment", "predict", batch / "images", "--model", model, "--out", batch / "out")
    assert res.code == 2 and "is in use by nanoseg pid" in res.error_line()
    assert [p.name for p in (batch / "out").iterdir()] == [OUT_LOCK]


# --------------------------------------------------------------------------- file names


def test_a_file_name_that_is_not_utf8_is_measured(batch, cli):
    name = os.fsdecode(b"caf\xe9")
    for folder in ("images", "labels"):
        (batch / folder / "b.tif").rename(batch / folder / f"{name}.tif")
    res = _run(cli, batch)
    table = _table(batch / "out")
    assert sorted(table["image"].unique()) == ["a", "c", "caf\\xe9"]
    assert "failed" not in res
    assert "3 of 3 micrographs were done by an earlier call" in _run(cli, batch)


def test_the_lock_of_a_killed_process_not_yet_collected_is_taken_over(batch, cli):
    """kill -9, then a rerun at once: the killed holder is a zombie until its parent collects it."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.kill()
        for _ in range(100):  # until the kernel has made it a zombie (not collected: no wait() yet)
            if Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.02)
        _lock(batch, child.pid)
        res = cli("measure", batch / "images", "--labels", batch / "labels", "--out", batch / "out",
                  "--set", "data.info_bar_rows=0", "--set", "classify.method=rules")
        assert res.code == 0 and "taking over the lock of nanoseg pid" in " ".join(res.output.split()), res.output
    finally:
        child.wait()
