"""``nanoseg measure`` on many micrographs: the per-image task of :mod:`nanoseg.batch`.

Each task segments one micrograph (or reads its label image), measures and classifies its
particles and writes

- ``OUT/segment/labels/<stem>.tif`` (and ``probabilities/``) when segmenting,
- ``OUT/particles.parquet/<stem>.parquet``: its rows of the particle table,
- ``OUT/overlays/<stem>.png`` when overlays are asked for, and for the images the report shows,
- last, its marker ``OUT/markers/<stem>.json``.

The pooled table, the summary and the report are then made from the Parquet files
(:func:`nanoseg.measure.measure_files`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from nanoseg import io
from nanoseg.atomic import atomic_path
from nanoseg.batch import (
    BatchResult,
    TaskJob,
    failed,
    file_digest,
    finish,
    no_progress,
    run_batch,
    settings_key,
    text_name,
    usable,
    worker_cache,
)
from nanoseg.classify import DECISION_COLUMNS
from nanoseg.errors import NanosegError
from nanoseg.measure.figures import overlay_kept
from nanoseg.measure.table import ParticleTable, load_classifier, measure_and_decide
from nanoseg.particles import label_file, label_items

#: Per-image outputs under ``OUT``; a rerun into the same folder reuses the valid ones.
PER_IMAGE_DIRS = ("markers", "particles.parquet", "segment", "overlays")
PARTS = "particles.parquet"


@dataclass(frozen=True)
class MeasureJob(TaskJob):
    """A measure task's settings besides its image (sent with every task; small)."""

    model: str | None = None
    labels_dir: str | None = None
    classifier: str | None = None
    device: str = "cpu"
    probabilities: bool = False
    overlays: bool = False
    report_stems: frozenset[str] = frozenset()  # overlays the report shows: drawn even without `overlays`


def part_path(out_dir: str | Path, stem: str) -> Path:
    return Path(out_dir) / PARTS / f"{stem}.parquet"


def _load_nets(job: MeasureJob) -> tuple[Any, Any, Any]:
    from nanoseg.segment import load_segmenter  # scipy, and torch to load the net: only when segmenting

    segmenter = load_segmenter(job.model, job.device) if job.labels_dir is None else None
    net, cls_cfg, _, _ = load_classifier(job.classifier, job.config.classify, job.device)
    return segmenter, net, cls_cfg


def measure_one(path: str, job: MeasureJob) -> dict[str, Any]:
    """Segment (or read the labels of), measure and classify one micrograph; write its outputs and marker.

    Returns
    -------
    dict
        The marker (``n_particles``, ``n_kept``, ``pixel_size_nm``, ``pixel_size_source``,
        ``seconds``, ...), or an error (:func:`nanoseg.batch.failed`) for an image that cannot be
        used (a :class:`NanosegError`; anything else is a bug and raises).
    """
    t0 = time.perf_counter()
    stem, out = Path(path).stem, Path(job.out_dir)
    name = text_name(stem)  # the table's image column; the files keep the stem
    outputs, inputs = [], []
    try:
        with no_progress():
            mg = io.read_in_series(path, job.config.data, job.scale)
            segmenter, net, cls_cfg = worker_cache((job.key, job.model, job.classifier, job.device),
                                                   lambda: _load_nets(job), job.threads)
            if job.labels_dir is not None:
                items = [(name, *item[1:])
                         for item in label_items([mg], job.labels_dir, fix="check data.info_bar_rows")]
                particles, _ = measure_and_decide(items, cls_cfg, net=net, device=job.device)
                labels = items[0][1]
                inputs.append(label_file(Path(job.labels_dir), stem))
            else:
                from nanoseg.segment import segment_at_model_scale

                seg_net, meta = segmenter
                seg = segment_at_model_scale(seg_net, meta, mg.image, job.config.segment,
                                             pixel_size_nm=mg.pixel_size_nm, device=job.device)
                # measured and classified where the network drew the outlines (see ModelScaleSegmentation)
                particles, _ = measure_and_decide([(name, seg.labels, seg.image, seg.pixel_size_nm)], cls_cfg,
                                                  net=net, device=job.device)
                particles = seg.table_on_image_grid(particles)
                labels, probability = seg.on_image_grid()
                if job.probabilities:
                    outputs.append(io.write_tiff(out / "segment" / "probabilities" / f"{stem}.tif", probability,
                                                 pixel_size_nm=mg.pixel_size_nm))
                outputs.append(io.write_tiff(out / "segment" / "labels" / f"{stem}.tif", labels,
                                             pixel_size_nm=mg.pixel_size_nm, ome=True))
    except NanosegError as exc:
        return failed(path, exc)
    # Through a file object: pyarrow cannot open a path that is not UTF-8 (see text_name).
    with atomic_path(part_path(out, stem)) as tmp, open(tmp, "wb") as fh:
        particles.to_parquet(fh, index=False)
    outputs.append(part_path(out, stem))
    if job.overlays or stem in job.report_stems:
        kept = particles.loc[particles["kept"], "label"].to_numpy()
        outputs.append(io.write_png(out / "overlays" / f"{stem}.png", overlay_kept(mg.image, labels, kept)))
    return finish(job, path, {"n_particles": int(len(particles)), "n_kept": int(particles["kept"].sum()),
                              "pixel_size_nm": mg.pixel_size_nm, "pixel_size_source": mg.pixel_size_source,
                              "seconds": round(time.perf_counter() - t0, 3)}, outputs, inputs)


def pooled_table(result: BatchResult, out_dir: str | Path, head_rows: int, dest: str | Path | None = None) -> Any:
    """Write ``particles.csv`` and ``decisions.csv`` from a batch's Parquet files, one image at a
    time, and return the :class:`nanoseg.measure.ParticleTable` the summary and report use.

    Memory holds one image's rows at a time and the kept particles' size columns, whatever the
    number of images. ``out_dir`` holds the Parquet files; the tables go to ``dest`` (default:
    ``out_dir``).
    """
    out_dir = Path(out_dir)
    dest = out_dir if dest is None else Path(dest)
    if not result.markers:
        raise NanosegError("measure: no label images to measure")
    tables, n = [], 0
    with atomic_path(dest / "particles.csv") as p_tmp, atomic_path(dest / "decisions.csv") as d_tmp, \
            open(p_tmp, "w", newline="") as p_out, open(d_tmp, "w", newline="") as d_out:
        for i, marker in enumerate(result.markers):
            with open(part_path(out_dir, marker["image"]), "rb") as fh:  # as measure_one writes it
                part = pd.read_parquet(fh)
            part.to_csv(p_out, index=False, header=i == 0, float_format="%.6g")
            part[DECISION_COLUMNS].to_csv(d_out, index=False, header=i == 0, float_format="%.5g")
            tables.append(ParticleTable.of(part, max(0, head_rows - n)))
            n += len(part)
    return ParticleTable.combine(tables, head_rows)


def _with_labels(labels_dir: Path) -> Callable[[dict[str, Any], list[dict[str, str]], bool], list[str]]:
    """A :func:`nanoseg.batch.run_batch` check: the micrographs that have a label image."""
    def check(frames: dict[str, Any], failures: list[dict[str, str]], strict: bool) -> list[str]:
        kept = []
        for p in frames:
            stem = Path(p).stem
            if label_file(labels_dir, stem) is not None:
                kept.append(p)
                continue
            usable({"path": p, "error": f"{labels_dir / (stem + '.tif')}: no label image for micrograph {p} "
                                         "(check data.info_bar_rows)"}, failures, strict)
        if not kept:
            raise io.nothing_usable(failures)
        return kept
    return check


def _checks(labels_check: Any) -> Callable[[dict[str, Any], list[dict[str, str]], bool], list[str]]:
    """The labels check (when measuring label images), then :func:`_one_calibration`."""
    def check(frames: dict[str, Any], failures: list[dict[str, str]], strict: bool) -> list[str]:
        if labels_check is not None:
            kept = set(labels_check(frames, failures, strict))
            frames = {p: st for p, st in frames.items() if p in kept}
        return _one_calibration(frames, failures, strict)
    return check


def _one_calibration(frames: dict[str, Any], failures: list[dict[str, str]], strict: bool) -> list[str]:
    """A :func:`nanoseg.batch.run_batch` check: in a batch where some micrographs have a pixel size,
    those without one are left out. Their particles could only be pooled in px with the others'
    nm, and a distribution of two scales is no distribution."""
    known = [p for p, st in frames.items() if st.pixel_size_nm is not None]
    if not known or len(known) == len(frames):
        return list(frames)
    for p, st in frames.items():
        if st.pixel_size_nm is None:
            usable({"path": p, "error": f"no pixel size, while {len(known)} other micrograph(s) of this batch have "
                                        "one (e.g. " + Path(known[0]).name + "): give --pixel-size, or measure "
                                        "it in a batch of its own"}, failures, strict)
    return known


def measure_batch(paths: Sequence[str | Path], out_dir: str | Path, config: Any, *, model: str | Path | None = None,
                  labels_dir: str | Path | None = None, classifier: str | Path | None = None, device: Any = "cpu",
                  probabilities: bool = False, overlays: bool = False, strict: bool = True,
                  workers: int | None = None, scheduler: str | None = None,
                  before_writing: Callable[[list[Any]], None] | None = None) -> BatchResult:
    """Run :func:`measure_one` for every micrograph not done yet (:func:`nanoseg.batch.run_batch`).

    Parameters
    ----------
    paths : sequence of path
        Micrograph files (their stems name the outputs and must differ).
    out_dir : path
    config : Config
        Uses ``data``, ``segment``, ``classify`` and ``measure.report_overlays``.
    model, labels_dir, classifier, device, probabilities
        As :func:`nanoseg.measure.measure_files`.
    overlays : bool
        Draw ``overlays/<stem>.png`` for every image (else only for the report's first ones).
    strict : bool
        Stop at the first micrograph that cannot be used; otherwise leave it out and record it.
    workers : int, optional
        Local Dask worker processes (one task each at a time).
    scheduler : str, optional
        Address of a running Dask scheduler (e.g. ``tcp://10.0.0.5:8786``).
    before_writing : callable, optional
        ``before_writing(frames)`` (:func:`nanoseg.batch.run_batch`): called once the micrographs
        have been read (first pass) and their label images found, before the first output is written.
    """
    out_dir = Path(out_dir)
    digests = (file_digest(model) if labels_dir is None else None, file_digest(classifier))

    def make_job(scale: Any, readable: list[str], threads: int | None) -> MeasureJob:
        key = settings_key(config, ("data", "segment", "classify"), *digests,
                           str(Path(labels_dir).resolve()) if labels_dir is not None else None, bool(probabilities),
                           [scale.bits, scale.value_range, scale.dark_particles])
        return MeasureJob(out_dir=str(out_dir), config=config, scale=scale, key=key, threads=threads,
                          model=str(model) if model is not None else None,
                          labels_dir=str(labels_dir) if labels_dir is not None else None,
                          classifier=str(classifier) if classifier is not None else None, device=str(device),
                          probabilities=probabilities, overlays=overlays,
                          report_stems=frozenset(Path(p).stem for p in readable[:config.measure.report_overlays]))

    def clear(frames: list[Any]) -> None:
        # Written by nanoseg measure before it ran on the batch engine, never since.
        for old in ("binary", "overlays"):
            if (out_dir / "segment" / old).is_dir():
                shutil.rmtree(out_dir / "segment" / old)
        if before_writing is not None:
            before_writing(frames)

    return run_batch(paths, out_dir, config, measure_one, make_job,
                     per_image_folders=(PARTS, "overlays", "segment/labels", "segment/probabilities"),
                     check=_checks(_with_labels(Path(labels_dir)) if labels_dir is not None else None),
                     before_writing=clear, strict=strict, workers=workers, scheduler=scheduler, desc="measure")
