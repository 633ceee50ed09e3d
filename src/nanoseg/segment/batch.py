"""``nanoseg segment predict`` on many micrographs: the per-image task of :mod:`nanoseg.batch`.

Each task segments one micrograph and writes ``OUT/labels/``, ``OUT/binary/``, ``OUT/overlays/``
(and ``OUT/probabilities/``) files for it (:func:`nanoseg.segment.write_segmentation`), then
its marker ``OUT/markers/<stem>.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanoseg import io
from nanoseg.batch import (
    BatchResult,
    TaskJob,
    failed,
    file_digest,
    finish,
    no_progress,
    run_batch,
    settings_key,
    worker_cache,
)
from nanoseg.errors import NanosegError
from nanoseg.segment.infer import load_segmenter, segment_image, write_segmentation

#: Per-image outputs under ``OUT``; a rerun into the same folder reuses the valid ones.
PER_IMAGE_DIRS = ("markers", "labels", "binary", "overlays", "probabilities")


@dataclass(frozen=True)
class SegmentJob(TaskJob):
    """A segment task's settings besides its image."""

    model: str = ""
    device: str = "cpu"
    probabilities: bool = False


def segment_one(path: str, job: SegmentJob) -> dict[str, Any]:
    """Segment one micrograph; write its files and marker (``particles``, ``seconds``), or an error."""
    t0 = time.perf_counter()
    try:
        with no_progress():
            mg = io.read_in_series(path, job.config.data, job.scale)
            net, meta = worker_cache((job.key, job.model, job.device), lambda: load_segmenter(job.model, job.device),
                                     job.threads)
            labels, probability = segment_image(net, meta, mg.image, job.config.segment, pixel_size_nm=mg.pixel_size_nm,
                                                device=job.device, probability=job.probabilities)
    except NanosegError as exc:
        return failed(path, exc)
    written = write_segmentation(job.out_dir, mg, labels, probability)
    return finish(job, path, {"particles": int(labels.max()), "seconds": round(time.perf_counter() - t0, 2)},
                  written)


def segment_batch(paths: Sequence[str | Path], out_dir: str | Path, config: Any, model: str | Path, *,
                  device: Any = "cpu", probabilities: bool = False, strict: bool = True, workers: int | None = None,
                  scheduler: str | None = None, before_writing: Callable[[list[Any]], None] | None = None) -> BatchResult:
    """Run :func:`segment_one` for every micrograph not done yet (:func:`nanoseg.batch.run_batch`).

    Parameters are those of :func:`nanoseg.batch.run_batch` and of ``nanoseg segment predict``;
    ``config`` gives ``data`` and ``segment``.
    """
    out_dir = Path(out_dir)
    digest = file_digest(model)

    def make_job(scale: Any, readable: list[str], threads: int | None) -> SegmentJob:
        key = settings_key(config, ("data", "segment"), digest, bool(probabilities),
                           [scale.bits, scale.value_range, scale.dark_particles])
        return SegmentJob(out_dir=str(out_dir), config=config, scale=scale, key=key, threads=threads, model=str(model),
                          device=str(device), probabilities=probabilities)

    return run_batch(paths, out_dir, config, segment_one, make_job, per_image_folders=PER_IMAGE_DIRS[1:],
                     before_writing=before_writing, strict=strict, workers=workers, scheduler=scheduler,
                     desc="segment")
