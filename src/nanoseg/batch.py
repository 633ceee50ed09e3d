"""Many micrographs, one task each: in this process or on a Dask cluster, resumable after a kill.

The engine behind ``nanoseg measure`` (:mod:`nanoseg.measure.batch`) and ``nanoseg segment
predict`` (:mod:`nanoseg.segment.batch`). A batch

1. reads every micrograph once for the numbers its series' intensity scale needs
   (:func:`nanoseg.io.scan_micrograph`: one scale for all, as :func:`nanoseg.io.read_micrographs`);
2. runs one task per micrograph that an earlier call has not finished: the task reads its image
   with that scale (:func:`nanoseg.io.read_in_series`), writes its own outputs, each atomically,
   and last a marker ``OUT/markers/<stem>.json`` (:func:`finish`);
3. returns the markers in input order, for the pooled results.

A marker counts only when its key matches (the settings the task reads, the bytes of the
models, the series' scale: :func:`settings_key`), the image file has the size, modification
time and content (SHA-256) it had, and the outputs it lists are there with the size and
content they were written with. A rerun or a batch resumed after a kill skips those images,
so no image is done twice and none is lost; an image whose input or outputs changed since
(edited, truncated, replaced by another file of the same size) is done again, not trusted.

Workers: none (default) runs the tasks here, one after another; ``workers=N`` starts a
``distributed.LocalCluster`` of N single-threaded processes, each with its share of the cores
for torch; ``scheduler=ADDRESS`` sends the tasks to a running Dask cluster, whose workers need
nanoseg installed and must see the input and output folders at the same paths. A task's
function and job must be importable and picklable; models are loaded once per worker process
(:func:`worker_cache`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanoseg.atomic import changed_files, file_record, file_sha256, write_json
from nanoseg.errors import NanosegError
from nanoseg.io import nothing_usable, scan_micrograph, series_scale
from nanoseg.runtime import available_cores, progress

logger = logging.getLogger("nanoseg.batch")

MARKERS = "markers"

# What this worker process has loaded (a worker runs one task at a time): see worker_cache.
_WORKER: dict[str, Any] = {}


@dataclass(frozen=True)
class TaskJob:
    """What every task of a batch shares; a command's job adds its own fields."""

    out_dir: str
    config: Any  # nanoseg.config.Config
    scale: Any  # nanoseg.io.SeriesScale of the whole batch
    key: str  # settings_key: a marker made under another key does not count
    threads: int | None  # torch threads of a local worker process (None: as configured)


@dataclass
class BatchResult:
    """The images a batch has done (markers, in input order), those it left out, and how many it skipped."""

    markers: list[dict[str, Any]]
    failures: list[dict[str, str]]  # {"image": path, "error": reason}
    skipped: int  # done by an earlier call
    warnings: tuple[str, ...] = ()  # about the series as a whole (its intensity scale)


def worker_cache(ident: Any, load: Callable[[], Any], threads: int | None = None) -> Any:
    """``load()``'s result, computed once per worker process and ``ident`` (e.g. the nets of a job)."""
    if _WORKER.get("ident") != ident:
        if threads is not None:
            from nanoseg.runtime import configure_torch

            configure_torch(threads)
        value = load()
        _WORKER.clear()
        _WORKER.update(ident=ident, value=value)
    return _WORKER["value"]


@contextmanager
def no_progress() -> Iterator[None]:
    """A task's own steps draw no progress bars: the batch has one over the images."""
    before = os.environ.get("NANOSEG_NO_PROGRESS")
    os.environ["NANOSEG_NO_PROGRESS"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("NANOSEG_NO_PROGRESS", None)
        else:
            os.environ["NANOSEG_NO_PROGRESS"] = before


def source_stamp(path: str | Path) -> dict[str, Any]:
    """Size, modification time and content (SHA-256) of an input file, for its marker.

    A marker made from another file does not count (:func:`read_marker`).

    The content too: a micrograph replaced by another of the same size with its time restored
    (``cp -p``, ``rsync -a``, ``tar``) is another input. Hashing the whole file costs little
    beside processing it (1.5 s per GB on one core), and a partial hash would miss an edit in between.
    """
    st = Path(path).stat()
    return {"size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_digest(path)}


def text_name(name: str) -> str:
    """A file name (or stem, or a message holding one) as text that every table, JSON file and report can hold.

    The bytes of a file name that is not UTF-8 reach Python as lone surrogates
    (:func:`os.fsdecode`), which no UTF-8 writer (Parquet, CSV, HTML) accepts; they become
    ``\\xNN``, so that the name stays recognisable and distinct. Outputs on disk keep the
    file's own name.
    """
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def marker_path(out_dir: str | Path, stem: str) -> Path:
    return Path(out_dir) / MARKERS / f"{stem}.json"


def finish(job: TaskJob, path: str, record: dict[str, Any], outputs: Sequence[Path],
           inputs: Sequence[Path] = ()) -> dict[str, Any]:
    """Write the marker of a finished task (after its outputs) and return it.

    ``record`` is what the command needs later (counts, pixel size, seconds); ``outputs`` the
    files the task wrote, whose size and content are recorded: a marker counts only while they
    are unchanged (:func:`read_marker`). ``inputs`` are files the task read besides its image
    (a label image): the marker counts only while they too are unchanged.
    """
    out = Path(job.out_dir)
    marker = {**record, "image": Path(path).stem, "path": str(path), "key": job.key, "source": source_stamp(path),
              "outputs": [file_record(out, p) for p in outputs],
              "inputs": [{"path": str(p), **source_stamp(p)} for p in inputs]}
    write_json(marker_path(out, Path(path).stem), marker)
    return marker


def failed(path: str, exc: NanosegError) -> dict[str, Any]:
    """A task's result for an image that cannot be used."""
    return {"image": Path(path).stem, "path": str(path), "error": str(exc).removeprefix(f"{path}: ")}


def read_marker(out_dir: str | Path, path: str | Path, key: str) -> dict[str, Any] | None:
    """The marker of ``path``'s image when it still counts for ``key`` (see the module docstring), else None.

    A marker of the same settings whose input or outputs changed is logged: the image is done
    again rather than its outputs trusted.
    """
    out_dir = Path(out_dir)
    try:
        marker = json.loads(marker_path(out_dir, Path(path).stem).read_text())
        if not isinstance(marker, dict) or marker.get("key") != key or marker.get("path") != str(path):
            return None
        source, st = marker.get("source"), Path(path).stat()
        # Size and time first: a changed file is found without reading it.
        if not isinstance(source, dict) or [source.get("size_bytes"), source.get("mtime_ns")] \
                != [st.st_size, st.st_mtime_ns] or source != source_stamp(path):
            logger.info("%s: changed since it was done; doing it again", path)
            return None
        for other in marker["inputs"]:
            if other != {"path": other["path"], **source_stamp(other["path"])}:
                logger.info("%s: %s changed since it was done; doing it again", path, other["path"])
                return None
        why = changed_files(out_dir, marker["outputs"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        # No marker, or one unreadable or hand-edited (or from a version that recorded less).
        return None
    if why is not None:
        logger.warning("%s: output %s; doing the image again", path, why)
        return None
    return marker


def file_digest(path: str | Path | None) -> str | None:
    """SHA-256 of a file (a model), or None."""
    return None if path is None else file_sha256(path)


def settings_key(config: Any, sections: Sequence[str], *extra: Any) -> str:
    """Hash of the config ``sections`` a task reads and of ``extra`` (model digests, options, the scale)."""
    dump = config.model_dump(mode="json")
    settings = {name: dump[name] for name in sections}
    if "data" in settings:
        settings["data"].pop("images", None)  # where the images were listed from does not change them
    return hashlib.sha256(json.dumps([settings, *extra], sort_keys=True, default=str).encode()).hexdigest()[:16]


def worker_threads(workers: int) -> int:
    """Torch threads of each of ``workers`` local worker processes: the usable cores shared out."""
    return max(1, available_cores() // max(1, workers))


@contextmanager
def dask_client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """A ``distributed.Client`` on a new LocalCluster of ``workers`` processes, at ``scheduler``, or None."""
    if not workers and scheduler is None:
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - a dependency
        raise NanosegError(f"--workers/--scheduler need dask.distributed ({exc}); pip install distributed") from exc
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, ValueError) as exc:  # ValueError: an address dask cannot parse
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
    try:
        return {"path": path, "stats": scan_micrograph(path, job)}
    except NanosegError as exc:
        return failed(path, exc)


def usable(result: dict[str, Any], failures: list[dict[str, str]], strict: bool) -> bool:
    """False for a task's error result, which is recorded in ``failures`` (or raised when strict)."""
    if "error" not in result:
        return True
    if strict:
        raise NanosegError(f"{result['path']}: {result['error']}")
    logger.warning("%s: left out: %s", result["path"], result["error"])
    # Text: the list goes into summaries and reports, which cannot hold a file name that is not UTF-8.
    failures.append({"image": text_name(result["path"]), "error": text_name(result["error"])})
    return False


def prune(out_dir: Path, folders: Sequence[str], stems: set[str]) -> None:
    """Remove the per-image files in ``folders`` (under ``out_dir``) of images not in this batch."""
    for name in (MARKERS, *folders):
        folder = out_dir / name
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_file() and p.stem not in stems:
                    p.unlink()


def run_batch(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    config: Any,
    task: Callable[[str, Any], dict[str, Any]],
    make_job: Callable[[Any, list[str], int | None], TaskJob],
    *,
    per_image_folders: Sequence[str] = (),
    check: Callable[[dict[str, Any], list[dict[str, str]], bool], list[str]] | None = None,
    before_writing: Callable[[list[Any]], None] | None = None,
    strict: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
    desc: str = "",
) -> BatchResult:
    """Run ``task(path, job)`` for every micrograph of ``paths`` that is not done yet.

    Parameters
    ----------
    paths : sequence of path
        Micrograph files; their stems name the outputs and must differ.
    out_dir : path
    config : Config
        ``data`` reads the images; the rest is the command's.
    task : callable
        ``task(path, job) -> marker`` (:func:`finish`) or an error (:func:`failed`).
    make_job : callable
        ``make_job(scale, readable paths, threads) -> TaskJob`` with the key of these settings.
    per_image_folders : sequence of str
        Folders (relative to ``out_dir``) of per-image files ``<stem>.*``; those of images not in
        this batch are removed.
    check : callable, optional
        ``check({readable path: its FrameStats}, failures, strict) -> paths``: drops (or raises for) images that
        lack something the task needs, before anything is written.
    before_writing : callable, optional
        ``before_writing(frames)``, with the :class:`nanoseg.io.FrameStats` of the images to
        process (their pixel sizes, for instance): called once the inputs are checked, before the
        first output is written.
    strict : bool
        Stop at the first micrograph that cannot be used; otherwise leave it out and record it.
    workers, scheduler
        See the module docstring.
    desc : str
        Label of the progress bar.

    Returns
    -------
    BatchResult
    """
    out_dir = Path(out_dir)
    paths = [str(p) for p in paths]
    stems = [Path(p).stem for p in paths]
    twins = sorted({s for s in stems if stems.count(s) > 1})
    if twins:
        raise NanosegError(f"several micrographs are named {twins[0]} (in "
                           f"{', '.join(p for p in paths if Path(p).stem == twins[0])}); outputs are named by file "
                           "stem, so rename one or process the folders separately")
    if workers is not None and workers < 1:
        raise NanosegError(f"--workers {workers}: give 1 or more worker processes")
    order = {name: i for i, p in enumerate(paths) for name in {p, text_name(p)}}
    failures: list[dict[str, str]] = []
    with dask_client(workers, scheduler) as client:
        stats = [r for r in run_tasks(_scan, paths, config.data, client=client, desc="read", stop_at_error=strict)
                 if usable(r, failures, strict)]
        if not stats:
            raise nothing_usable(failures)
        stats.sort(key=lambda r: order[r["path"]])
        scale = series_scale([r["stats"] for r in stats], getattr(config.data, "bit_depth", "auto"),
                             getattr(config.data, "dark_particles", False))
        logger.info("intensity scale for %d micrograph(s): %s", len(stats), scale.text)
        readable = [r["path"] for r in stats]
        if check is not None:
            readable = check({r["path"]: r["stats"] for r in stats}, failures, strict)
        if before_writing is not None:
            chosen = set(readable)
            before_writing([r["stats"] for r in stats if r["path"] in chosen])
        job = make_job(scale, readable, worker_threads(workers) if workers and scheduler is None else None)
        prune(out_dir, per_image_folders, {Path(p).stem for p in readable})
        done = {p: m for p in readable if (m := read_marker(out_dir, p, job.key)) is not None}
        todo = [p for p in readable if p not in done]
        if done:
            logger.info("%d of %d micrographs were done by an earlier call with the same settings; skipping them",
                        len(done), len(readable))
        t0 = time.perf_counter()
        for result in run_tasks(task, todo, job, client=client, desc=desc, stop_at_error=strict):
            if usable(result, failures, strict):
                done[result["path"]] = result
        if todo:
            logger.info("%d micrograph(s) in %.1f s", len(todo), time.perf_counter() - t0)
    if not done:
        raise nothing_usable(failures)
    failures.sort(key=lambda f: order.get(f["image"], 0))  # keyed by text_name, as usable records them
    return BatchResult(markers=[done[p] for p in readable if p in done], failures=failures,
                       skipped=len(readable) - len(todo), warnings=scale.warnings)
