"""Measuring many micrographs: one task per image, in this process or on a Dask cluster, resumable.

Every micrograph is one task (:func:`measure_one`): read it with the intensity scale of the
whole series (a first pass, :func:`nanoseg.io.scan_micrograph`, finds it), segment it or read
its label image, measure and classify its particles, and write, each atomically,

- ``OUT/segment/labels/<stem>.tif`` (and ``probabilities/``) when segmenting,
- ``OUT/particles.parquet/<stem>.parquet``: its rows of the particle table,
- ``OUT/overlays/<stem>.png`` when overlays are asked for (and for the images the report shows),
- last, ``OUT/markers/<stem>.json``: the image is done.

A marker counts only when its key matches: the settings the task reads, the bytes of the
models and the series' scale, and the image file's size and modification time. A rerun, or a
batch resumed after a kill, skips the images with such a marker, so no image is measured twice
and none is lost. The nets are loaded once per worker process. The pooled table, the summary
and the report are then made from the Parquet files (:func:`nanoseg.measure.measure_files`).

Workers: none (default) runs the tasks here, one after another; ``workers=N`` starts a
``distributed.LocalCluster`` of N single-threaded processes, each with its share of the cores
for torch; ``scheduler=ADDRESS`` sends the tasks to an existing Dask cluster, whose workers
need nanoseg installed and must see the input and output folders at the same paths.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from nanoseg.errors import NanosegError

logger = logging.getLogger("nanoseg.measure")

#: Per-image outputs of a batch, under ``OUT``; a rerun into the same folder reuses them.
PER_IMAGE_DIRS = ("markers", "particles.parquet", "segment", "overlays")
MARKERS = "markers"
PARTS = "particles.parquet"


@dataclass(frozen=True)
class BatchJob:
    """Everything a task needs besides its image path (sent once per task; small)."""

    out_dir: str
    config: Any
    model: str | None
    labels_dir: str | None
    classifier: str | None
    device: str
    probabilities: bool
    overlays: bool
    report_stems: frozenset[str]  # images whose overlay the report shows: drawn even without overlays
    scale: Any  # nanoseg.io.SeriesScale
    key: str
    threads: int | None  # torch threads of a worker process (None: leave as configured)


# The nets of this worker process, loaded by its first task (a worker runs one task at a time).
_WORKER: dict[str, Any] = {}


@contextmanager
def _no_progress() -> Iterator[None]:
    """Per-image steps draw no progress bars of their own: the batch has one over the images."""
    before = os.environ.get("NANOSEG_NO_PROGRESS")
    os.environ["NANOSEG_NO_PROGRESS"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("NANOSEG_NO_PROGRESS", None)
        else:
            os.environ["NANOSEG_NO_PROGRESS"] = before


def _worker_nets(job: BatchJob) -> tuple[Any, Any, Any]:
    """(segmenter and meta or None, classifier net or None, classify settings), loaded once per process."""
    ident = (job.key, job.model, job.classifier, job.device)
    if _WORKER.get("ident") != ident:
        if job.threads is not None:
            from nanoseg.runtime import configure_torch

            configure_torch(job.threads)
        from nanoseg.measure.stage import load_classifier
        from nanoseg.segment import load_segmenter

        segmenter = load_segmenter(job.model, job.device) if job.labels_dir is None else None
        net, cls_cfg, _, _ = load_classifier(job.classifier, job.config.classify, job.device)
        _WORKER.clear()
        _WORKER.update(ident=ident, segmenter=segmenter, net=net, cls_cfg=cls_cfg)
    return _WORKER["segmenter"], _WORKER["net"], _WORKER["cls_cfg"]


def source_stamp(path: str | Path) -> dict[str, int]:
    """Size and modification time of an input file: a marker made from another file does not count."""
    st = Path(path).stat()
    return {"size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def marker_path(out_dir: str | Path, stem: str) -> Path:
    return Path(out_dir) / MARKERS / f"{stem}.json"


def part_path(out_dir: str | Path, stem: str) -> Path:
    return Path(out_dir) / PARTS / f"{stem}.parquet"


def read_marker(out_dir: str | Path, path: str | Path, key: str) -> dict[str, Any] | None:
    """The marker of ``path``'s image when it is valid for ``key`` and its particle rows are there, else None."""
    stem = Path(path).stem
    try:
        marker = json.loads(marker_path(out_dir, stem).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("key") != key or marker.get("path") != str(path):
        return None
    try:
        if marker.get("source") != source_stamp(path) or not part_path(out_dir, stem).is_file():
            return None
    except OSError:
        return None
    return marker


def measure_one(path: str, job: BatchJob) -> dict[str, Any]:
    """Segment (or read the labels of), measure and classify one micrograph; write its outputs and marker.

    Returns
    -------
    dict
        The marker (``image``, ``path``, ``n_particles``, ``n_kept``, ``pixel_size_nm``,
        ``pixel_size_source``, ``seconds``, ...), or ``{"image", "path", "error"}`` for an image
        that cannot be used (a :class:`NanosegError`; anything else is a bug and raises).
    """
    from nanoseg import io
    from nanoseg.atomic import atomic_path, write_json
    from nanoseg.measure.figures import overlay_kept
    from nanoseg.measure.stage import measure_and_decide
    from nanoseg.particles import label_items

    t0 = time.perf_counter()
    stem, out = Path(path).stem, Path(job.out_dir)
    try:
        with _no_progress():
            mg = io.read_in_series(path, job.config.data, job.scale)
            segmenter, net, cls_cfg = _worker_nets(job)
            if job.labels_dir is not None:
                items = label_items([mg], job.labels_dir, fix="check data.info_bar_rows")
            else:
                from nanoseg.segment import particle_probability, segment_image

                seg_net, meta = segmenter
                labels, probs = segment_image(seg_net, meta, mg.image, job.config.segment,
                                              pixel_size_nm=mg.pixel_size_nm, device=job.device)
                if job.probabilities:
                    io.write_tiff(out / "segment" / "probabilities" / f"{stem}.tif",
                                  particle_probability(probs, meta["target"]), pixel_size_nm=mg.pixel_size_nm)
                io.write_tiff(out / "segment" / "labels" / f"{stem}.tif", labels, pixel_size_nm=mg.pixel_size_nm,
                              ome=True)
                items = [(stem, labels, mg.image, mg.pixel_size_nm)]
            particles, _ = measure_and_decide(items, cls_cfg, net=net, device=job.device)
    except NanosegError as exc:
        return {"image": stem, "path": str(path), "error": str(exc).removeprefix(f"{path}: ")}
    with atomic_path(part_path(out, stem)) as tmp:
        particles.to_parquet(tmp, index=False)
    if job.overlays or stem in job.report_stems:
        labels = items[0][1]
        io.write_png(out / "overlays" / f"{stem}.png",
                     overlay_kept(mg.image, labels, particles.loc[particles["kept"], "label"].to_numpy()))
    marker = {"image": stem, "path": str(path), "key": job.key, "source": source_stamp(path),
              "n_particles": int(len(particles)), "n_kept": int(particles["kept"].sum()),
              "pixel_size_nm": mg.pixel_size_nm, "pixel_size_source": mg.pixel_size_source,
              "seconds": round(time.perf_counter() - t0, 3)}
    write_json(marker_path(out, stem), marker)
    return marker


def _file_digest(path: str | Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def batch_key(config: Any, *, model: str | Path | None, labels_dir: str | Path | None, classifier: str | Path | None,
              probabilities: bool, scale: Any) -> str:
    """Hash of everything a task's outputs depend on besides its own image file."""
    settings = {name: config.model_dump(mode="json")[name] for name in ("data", "segment", "classify")}
    settings["data"].pop("images", None)  # where the images are listed from does not change them
    parts = [settings, _file_digest(model) if labels_dir is None else None, _file_digest(classifier),
             str(Path(labels_dir).resolve()) if labels_dir is not None else None, bool(probabilities),
             [scale.bits, scale.value_range]]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def worker_threads(workers: int) -> int:
    """Torch threads of each of ``workers`` local worker processes: the usable cores shared out."""
    from nanoseg.runtime import available_cores

    return max(1, available_cores() // max(1, workers))


@contextmanager
def dask_client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """A ``distributed.Client``: on a new LocalCluster of ``workers`` processes, or at ``scheduler``."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - a dependency
        raise NanosegError(f"--workers/--scheduler need dask.distributed ({exc}); pip install 'distributed'") from exc
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise NanosegError(f"--scheduler {scheduler}: cannot connect ({exc}); start the scheduler "
                               "(`dask scheduler`) and its workers, or use --workers N for this machine") from exc
        with client:
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.WARNING) as cluster, Client(cluster) as client:
        yield client


def run_tasks(func: Callable[..., dict[str, Any]], paths: Sequence[str], job: Any, *, client: Any = None,
              desc: str = "", stop_at_error: bool = False) -> Iterator[dict[str, Any]]:
    """Run ``func(path, job)`` for every path, here or on ``client``, yielding results as they finish.

    With ``stop_at_error`` the remaining tasks are cancelled at the first result with an ``error``.
    """
    from nanoseg.runtime import progress

    bar = progress(total=len(paths), desc=desc)
    try:
        if client is None:
            for p in paths:
                result = func(p, job)
                bar.update(1)
                yield result
                if stop_at_error and "error" in result:
                    return
            return
        from distributed import as_completed

        futures = client.map(func, list(paths), job=job, pure=False)
        try:
            for future in as_completed(futures):
                result = future.result()
                bar.update(1)
                yield result
                if stop_at_error and "error" in result:
                    return
        finally:
            client.cancel(futures)
    finally:
        bar.close()


def _scan(path: str, job: Any) -> dict[str, Any]:
    """First pass over one micrograph (``job``: the data settings): what the series' scale needs."""
    from nanoseg.io import scan_micrograph

    try:
        return {"path": path, "stats": scan_micrograph(path, job)}
    except NanosegError as exc:
        return {"image": Path(path).stem, "path": path, "error": str(exc).removeprefix(f"{path}: ")}


def prune(out_dir: Path, stems: set[str]) -> None:
    """Remove per-image outputs of images that are not in this batch (an earlier call's other inputs)."""
    for folder in (out_dir / MARKERS, out_dir / PARTS, out_dir / "overlays", out_dir / "segment" / "labels",
                   out_dir / "segment" / "probabilities"):
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_file() and p.stem not in stems:
                    p.unlink()
    # Written by earlier versions of `nanoseg measure`, never by this one.
    for old in ("binary", "overlays"):
        if (out_dir / "segment" / old).is_dir():
            shutil.rmtree(out_dir / "segment" / old)


@dataclass
class BatchResult:
    """What :func:`measure_batch` leaves for the pooled results."""

    markers: list[dict[str, Any]]  # the measured images, in input order
    failures: list[dict[str, str]]  # {"image": path, "error": reason}
    skipped: int  # images done by an earlier call

    def particles(self, out_dir: str | Path) -> pd.DataFrame:
        """The particle table of the measured images, in input order, from their Parquet files."""
        frames = [pd.read_parquet(part_path(out_dir, m["image"])) for m in self.markers]
        if not frames:
            raise NanosegError("measure: no label images to measure")
        return pd.concat(frames, ignore_index=True)


def measure_batch(paths: Sequence[str | Path], out_dir: str | Path, config: Any, *, model: str | Path | None = None,
                  labels_dir: str | Path | None = None, classifier: str | Path | None = None, device: Any = "cpu",
                  probabilities: bool = False, overlays: bool = False, strict: bool = True,
                  workers: int | None = None, scheduler: str | None = None,
                  before_writing: Callable[[], None] | None = None) -> BatchResult:
    """Run :func:`measure_one` for every micrograph not done yet; see the module docstring.

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
        Address of an existing Dask scheduler (e.g. ``tcp://10.0.0.5:8786``).
    before_writing : callable, optional
        Called once the micrographs have been read (first pass) and their label images found,
        before the first output is written.

    Returns
    -------
    BatchResult
    """
    from nanoseg.io import nothing_usable, series_scale

    out_dir = Path(out_dir)
    paths = [str(p) for p in paths]
    stems = [Path(p).stem for p in paths]
    twins = sorted({s for s in stems if stems.count(s) > 1})
    if twins:
        raise NanosegError(f"measure: several micrographs are named {twins[0]} (in "
                           f"{', '.join(p for p in paths if Path(p).stem == twins[0])}); outputs are named by file "
                           "stem, so rename one or measure the folders separately")
    if workers is not None and workers < 1:
        raise NanosegError(f"--workers {workers}: give 1 or more worker processes")
    failures: list[dict[str, str]] = []
    device = str(device)
    with dask_client(workers, scheduler) if (workers or scheduler) else _none() as client:
        stats = []
        for result in run_tasks(_scan, paths, config.data, client=client, desc="scan", stop_at_error=strict):
            if _usable(result, failures, strict):
                stats.append(result)
        if not stats:
            raise nothing_usable(failures)
        order = {p: i for i, p in enumerate(paths)}
        stats.sort(key=lambda r: order[r["path"]])
        scale = series_scale([r["stats"] for r in stats], getattr(config.data, "bit_depth", "auto"))
        logger.info("intensity scale for %d micrograph(s): %s", len(stats), scale.text)
        readable = [r["path"] for r in stats]
        if labels_dir is not None:
            readable = _with_labels(readable, Path(labels_dir), failures, strict)
        if before_writing is not None:
            before_writing()
        key = batch_key(config, model=model, labels_dir=labels_dir, classifier=classifier,
                        probabilities=probabilities, scale=scale)
        job = BatchJob(out_dir=str(out_dir), config=config, model=str(model) if model is not None else None,
                       labels_dir=str(labels_dir) if labels_dir is not None else None,
                       classifier=str(classifier) if classifier is not None else None, device=device,
                       probabilities=probabilities, overlays=overlays,
                       report_stems=frozenset(Path(p).stem for p in readable[:config.measure.report_overlays]),
                       scale=scale, key=key, threads=worker_threads(workers) if workers and not scheduler else None)
        prune(out_dir, {Path(p).stem for p in readable})
        done = {p: m for p in readable if (m := read_marker(out_dir, p, key)) is not None}
        todo = [p for p in readable if p not in done]
        if done:
            logger.info("measure: %d of %d micrographs were measured by an earlier call with the same settings; "
                        "skipping them", len(done), len(readable))
        for result in run_tasks(measure_one, todo, job, client=client, desc="measure", stop_at_error=strict):
            if _usable(result, failures, strict):
                done[result["path"]] = result
    if not done:
        raise nothing_usable(failures)
    failures.sort(key=lambda f: order.get(f["image"], 0))
    return BatchResult(markers=[done[p] for p in readable if p in done], failures=failures,
                       skipped=len(readable) - len(todo))


def _usable(result: dict[str, Any], failures: list[dict[str, str]], strict: bool) -> bool:
    """False for a task's error result, which is recorded in ``failures`` (or raised when strict)."""
    if "error" not in result:
        return True
    if strict:
        raise NanosegError(f"{result['path']}: {result['error']}")
    logger.warning("%s: left out: %s", result["path"], result["error"])
    failures.append({"image": result["path"], "error": result["error"]})
    return False


@contextmanager
def _none() -> Iterator[None]:
    yield None


def _with_labels(paths: list[str], labels_dir: Path, failures: list[dict[str, str]], strict: bool) -> list[str]:
    """The micrographs that have a label image; the others fail (before anything is written)."""
    from nanoseg.io import nothing_usable

    kept = []
    for p in paths:
        stem = Path(p).stem
        if any((labels_dir / f"{stem}{suffix}").is_file() for suffix in (".tif", ".tiff", ".png")):
            kept.append(p)
            continue
        error = f"{labels_dir / (stem + '.tif')}: no label image for micrograph {p} (check data.info_bar_rows)"
        if strict:
            raise NanosegError(error)
        logger.warning("%s: left out: %s", p, error)
        failures.append({"image": p, "error": error})
    if not kept:
        raise nothing_usable(failures)
    return kept
