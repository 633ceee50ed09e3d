"""The run folder and the resumable workflow.

``RUN/config.yaml`` holds the resolved config; each stage writes into ``RUN/<stage>/`` and
finishes by writing ``RUN/<stage>/.done.json`` (atomically) with a hash of everything that
produced it: the config sections it reads, the input files it reads and the hash of the stage
before it, and with the size and SHA-256 of every file the stage wrote. A stage counts as
finished only when that marker exists, its hash matches and its files are still those it wrote,
so a process killed at any moment leaves at worst an unfinished stage, which the next run redoes
(training stages resume from their last checkpoint when the hash is unchanged; the segment stage
keeps its trained net when only its inference settings changed), and a deleted or
edited output is made again rather than reported. Whenever a stage runs, the markers of the
stages after it are removed first: they were made from the files it is about to replace.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanoseg.atomic import (
    changed_files,
    file_record,
    file_sha256,
    is_temp_file,
    remove_temp_files,
    write_json,
    write_text,
)
from nanoseg.config import Config
from nanoseg.errors import NanosegError
from nanoseg.io import load_micrographs, load_outlines
from nanoseg.runtime import configure_torch, peak_rss_mb, seed_everything, select_device

logger = logging.getLogger("nanoseg.pipeline")

DONE_MARKER = ".done.json"
STARTED_MARKER = ".started.json"


@dataclass(frozen=True)
class Stage:
    """One step of the workflow: where its code is and what it depends on."""

    name: str
    target: str  # "module:function", imported only when the stage runs
    sections: tuple[str, ...]  # config fields whose change makes the stage stale
    inputs: tuple[str, ...] = ()  # data fields (folders/files) whose content makes it stale
    summary: str = ""
    # Files an outdated stage starts from instead of an empty folder. Only for files that check
    # themselves: a training checkpoint carries a fingerprint of what it learned from and is
    # resumed only when that still matches, so a change of inference settings alone re-segments
    # without retraining, while any change of the pairs or training settings trains afresh.
    keep: tuple[str, ...] = ()


STAGES: tuple[Stage, ...] = (
    Stage("shapes", "nanoseg.shapes:run_stage", ("seed", "data", "shapes"), ("outlines",),
          "1. learn particle shapes from the outlines (WGAN-GP)"),
    Stage("masks", "nanoseg.masks:run_stage", ("seed", "data", "masks"), ("images",),
          "2. assemble agglomerated fake masks (Perlin placement)"),
    Stage("translate", "nanoseg.translate:run_train_stage", ("seed", "data", "translate"), ("images",),
          "3. learn masks -> micrographs (CycleGAN) or fit the SEM renderer"),
    Stage("pairs", "nanoseg.translate:run_pairs_stage", ("seed", "data", "translate"), ("images",),
          "4. generate fake micrographs, filter artifact particles, write training pairs"),
    Stage("segment", "nanoseg.segment:run_stage", ("seed", "data", "segment"), ("images",),
          "5. train the segmentation net, segment the micrographs, watershed into particles",
          keep=("checkpoint.pt", "best.pt", "history.json", "training.png")),
    Stage("adapt", "nanoseg.segment.adapt:run_stage", ("seed", "data", "segment", "adapt"), ("images",),
          "5b. self-train the net on the real micrographs' confident particles (off unless adapt.rounds > 0)"),
    Stage("classify", "nanoseg.classify:run_stage", ("seed", "data", "classify"), ("images",),
          "6. keep whole, unoccluded particles"),
    Stage("measure", "nanoseg.measure:run_stage", ("data", "classify", "measure"), ("images",),
          "7. measure particles in nm, size distribution, report"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


@dataclass
class StageContext:
    """What a stage function gets: the config, its own folder and access to earlier stages."""

    config: Config
    run_dir: Path
    stage: Stage
    device: Any = "cpu"
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("nanoseg"))

    @property
    def out_dir(self) -> Path:
        """This stage's folder (exists when the stage function is called)."""
        return self.run_dir / self.stage.name

    def stage_dir(self, name: str) -> Path:
        """Folder of an earlier, finished stage."""
        if name not in STAGE_NAMES:
            raise KeyError(name)
        return self.run_dir / name


def _fingerprint_inputs(config: Config, inputs: tuple[str, ...], cache: dict[Path, str] | None = None) -> str:
    """Names, sizes and contents (SHA-256) of the input files.

    Contents rather than modification times: a data folder copied or unpacked again holds the
    same data and must not make a finished run start over. ``cache`` (file -> digest) lets the
    stages of one call read each file once.
    """
    cache = {} if cache is None else cache
    h = hashlib.sha256()
    for field_name in inputs:
        root = getattr(config.data, field_name)
        if root is None:
            h.update(f"{field_name}:none".encode())
            continue
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for p in files:
            try:
                if p not in cache:
                    cache[p] = file_sha256(p)
                size = p.stat().st_size
            except FileNotFoundError:
                continue
            h.update(f"{p.relative_to(root.parent)}:{size}:{cache[p]}".encode())
    return h.hexdigest()[:16]


def stage_hashes(config: Config) -> dict[str, str]:
    """Hash of every stage, chained so that a change upstream makes everything after it stale."""
    out: dict[str, str] = {}
    previous = ""
    digests: dict[Path, str] = {}
    for stage in STAGES:
        h = hashlib.sha256()
        h.update(stage.name.encode())
        h.update(previous.encode())
        h.update(config.section_hash(*stage.sections).encode())
        h.update(_fingerprint_inputs(config, stage.inputs, digests).encode())
        previous = out[stage.name] = h.hexdigest()[:16]
    return out


def stage_outputs(stage_dir: Path) -> list[dict[str, Any]]:
    """Every file a stage wrote into its folder, as recorded in its ``.done.json``.

    Parameters
    ----------
    stage_dir : Path
        The stage's folder.

    Returns
    -------
    list of dict
        ``{"path": relative POSIX path, "size_bytes": int, "sha256": hex}``, sorted by path; the
        pipeline's own markers and atomic-write temporary files are left out.
    """
    outputs = []
    for p in sorted(stage_dir.rglob("*")):
        rel = p.relative_to(stage_dir).as_posix()
        if not p.is_file() or rel in (DONE_MARKER, STARTED_MARKER) or is_temp_file(p):
            continue
        outputs.append(file_record(stage_dir, p))
    return outputs


def stage_state(run_dir: Path, stage: str, stage_hash: str) -> tuple[str, str]:
    """Whether ``stage`` finished with exactly this hash and still has the files it wrote.

    Parameters
    ----------
    run_dir : Path
        The run folder.
    stage : str
        Stage name.
    stage_hash : str
        The stage's current hash (:func:`stage_hashes`).

    Returns
    -------
    state : str
        ``'done'``; ``'unfinished'`` (no marker: never run, or interrupted); ``'outdated'`` (made
        with another config or other inputs); ``'damaged'`` (an output is missing or changed, or
        the marker is unreadable).
    why : str
        One phrase for the log; empty when done or unfinished.
    """
    stage_dir = run_dir / stage
    marker = stage_dir / DONE_MARKER
    if not marker.is_file():
        return "unfinished", ""
    unreadable = f"its {DONE_MARKER} is unreadable"
    try:
        record = json.loads(marker.read_text())
        recorded_hash, outputs = record.get("hash"), record.get("outputs")
    except (ValueError, OSError, AttributeError):
        return "damaged", unreadable
    if recorded_hash != stage_hash:
        return "outdated", "config or inputs changed since it finished"
    if outputs is None:
        # Markers written before outputs were recorded have no list. They are accepted as they
        # were then: rerunning every stage of existing runs (hours of training) on upgrade would
        # cost more than the check they never had.
        return "done", ""
    try:
        why = changed_files(stage_dir, outputs)
    except (KeyError, TypeError):  # a hand-edited list
        return "damaged", unreadable
    return ("damaged", f"output {why}") if why else ("done", "")


def is_done(run_dir: Path, stage: str, stage_hash: str) -> bool:
    """True when ``stage`` finished with exactly this hash and its outputs are unchanged."""
    return stage_state(run_dir, stage, stage_hash)[0] == "done"


def _load_target(target: str) -> Callable[[StageContext], Any]:
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def _prepare_stage_dir(stage_dir: Path, stage_hash: str, force: bool, keep: tuple[str, ...] = ()) -> bool:
    """Empty the folder unless it holds an interrupted attempt with the same hash; True if resuming.

    A kept folder loses the temporary files of writes the interruption cut short (nothing
    else): they are hidden, and would otherwise pile up with every killed attempt. The files
    named in ``keep`` survive the emptying (see :attr:`Stage.keep`).
    """
    started = stage_dir / STARTED_MARKER
    resuming = False
    if stage_dir.exists():
        try:
            same = json.loads(started.read_text()).get("hash") == stage_hash
        except (ValueError, OSError, AttributeError):
            same = False
        # A finished attempt is never resumed: its marker failing means its files are not to be trusted.
        if same and not force and not (stage_dir / DONE_MARKER).exists():
            resuming = True
            removed = remove_temp_files(stage_dir)
            if removed:
                logger.info("%-9s removed %d temporary file(s) left by an interrupted write",
                            stage_dir.name, len(removed))
        else:
            _empty_except(stage_dir, () if force else keep)
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / DONE_MARKER).unlink(missing_ok=True)
    write_json(started, {"hash": stage_hash, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    return resuming


def _empty_except(stage_dir: Path, keep: tuple[str, ...]) -> None:
    kept = [name for name in keep if (stage_dir / name).is_file()]
    if not kept:
        shutil.rmtree(stage_dir)
        return
    for p in stage_dir.iterdir():
        if p.name not in kept:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    logger.info("%-9s starts from its earlier %s (used only if they fit the new settings and data)",
                stage_dir.name, ", ".join(kept))


def _invalidate_later_stages(run_dir: Path, stage: str) -> None:
    """Remove the markers of every stage after ``stage``, which is about to replace their inputs.

    This, not the stage hashes (which see config and input files only), is what makes the later
    stages run again, and run afresh, also in a later call (after ``to_stage`` or a kill).
    """
    later = STAGE_NAMES[STAGE_NAMES.index(stage) + 1:]
    invalidated = [name for name in later if (run_dir / name / DONE_MARKER).exists()]
    for name in later:
        # STARTED first: a kill in between must not leave a finished folder that looks resumable.
        (run_dir / name / STARTED_MARKER).unlink(missing_ok=True)
        (run_dir / name / DONE_MARKER).unlink(missing_ok=True)
    if invalidated:
        logger.info("%-9s reruns, so %s will run again", stage, ", ".join(invalidated))


def check_inputs(config: Config, *, failures: list[dict[str, str]] | None = None) -> None:
    """Fail fast, before any training, on inputs the later stages could not use.

    Reads every micrograph once (tens of ms each) so that a corrupt file, a missing pixel
    size warning or an image smaller than a training tile shows up at the start of a run,
    not after the first stages have trained for minutes.

    Parameters
    ----------
    config : Config
    failures : list, optional
        When given, micrographs that cannot be read are recorded here (``{"image": path,
        "error": reason}``) instead of stopping the run; the stages leave them out.
    """
    if config.data.outlines is not None and not Path(config.data.outlines).exists():
        raise NanosegError(f"{config.data.outlines}: outlines not found (set data.outlines to a folder of "
                           "outline images, a painted mask or an ImageJ ROI set)")
    if config.data.outlines is None and config.shapes.source == "wgan":
        raise NanosegError("data.outlines: not set; the WGAN needs outlines (or set shapes.source: polygon)")
    if config.data.outlines is not None:
        # Read now (a few small images): an empty or unreadable outline stops the run before
        # it starts a run folder, not at its first stage.
        outlines = load_outlines(config.data.outlines, config.shapes.outline_size_px)
        if config.shapes.source == "wgan" and len(outlines) < 2:
            raise NanosegError(f"{config.data.outlines}: the WGAN needs at least 2 outlines, found "
                               f"{len(outlines)} (add outlines, or set shapes.source: polygon)")
    micrographs = load_micrographs(config.data, strict=failures is None, failures=failures)
    if config.translate.method in ("cyclegan", "refine"):
        tile = config.translate.tile_size_px
        for mg in micrographs:
            if min(mg.image.shape) < tile:
                raise NanosegError(f"{mg.path}: {mg.image.shape[1]}x{mg.image.shape[0]} px (without info bar) is smaller "
                                   f"than translate.tile_size_px={tile}; lower it or use larger images")


def run_pipeline(
    config: Config,
    run_dir: str | Path,
    *,
    from_stage: str | None = None,
    to_stage: str | None = None,
    force: bool = False,
    device: Any = None,
    check: bool = True,
    failures: list[dict[str, str]] | None = None,
) -> dict[str, str]:
    """Run the workflow into ``run_dir``, skipping stages that are finished and up to date.

    A finished stage whose outputs were deleted or changed since is run again from scratch, and
    so is every stage after it (the log says which file); so is a stage after any stage that runs.

    Parameters
    ----------
    config : Config
        The resolved configuration; written to ``run_dir/config.yaml``.
    run_dir : path
        The run folder (created if missing).
    from_stage : str, optional
        Redo this stage and everything after it, even if finished.
    to_stage : str, optional
        Stop after this stage.
    force : bool
        Redo every stage from scratch (no resume from checkpoints).
    device : torch.device or str, optional
        Device for the networks; default from ``config.device``.
    check : bool
        Validate the inputs first (:func:`check_inputs`).
    failures : list, optional
        When given, the micrographs that cannot be read are left out by every stage and
        recorded here; without it the first of them stops the run before any stage.

    Returns
    -------
    dict
        Stage name -> ``'skipped'`` or ``'ran'``.
    """
    run_dir = Path(run_dir)
    for name in (from_stage, to_stage):
        if name is not None and name not in STAGE_NAMES:
            raise NanosegError(f"unknown stage '{name}' (stages: {', '.join(STAGE_NAMES)})")
    if check:
        check_inputs(config, failures=failures)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", config.to_yaml())

    configure_torch(config.num_threads)
    if device is None:
        device = select_device(config.device)
    hashes = stage_hashes(config)
    outcome: dict[str, str] = {}
    for stage in STAGES:
        stage_dir = run_dir / stage.name
        redo = force or stage.name == from_stage
        state, why = ("redo", "") if redo else stage_state(run_dir, stage.name, hashes[stage.name])
        if state == "done":
            logger.info("%-9s up to date, skipped (%s)", stage.name, stage_dir)
            outcome[stage.name] = "skipped"
        else:
            if state in ("outdated", "damaged"):
                logger.log(logging.WARNING if state == "damaged" else logging.INFO,
                           "%s: %s; rerunning the stage", stage.name, why)
            resuming = _prepare_stage_dir(stage_dir, hashes[stage.name], redo,
                                          stage.keep if state == "outdated" else ())
            _invalidate_later_stages(run_dir, stage.name)
            logger.info("%-9s %s%s", stage.name, stage.summary, " (resuming)" if resuming else "")
            seed_everything(config.seed)
            ctx = StageContext(config=config, run_dir=run_dir, stage=stage, device=device)
            t0 = time.perf_counter()
            _load_target(stage.target)(ctx)
            seconds = time.perf_counter() - t0
            write_json(stage_dir / DONE_MARKER, {"hash": hashes[stage.name], "seconds": round(seconds, 2),
                                                 "peak_rss_mb": round(peak_rss_mb(), 1),
                                                 "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                 "outputs": stage_outputs(stage_dir)})
            logger.info("%-9s done in %.1f s -> %s", stage.name, seconds, stage_dir)
            outcome[stage.name] = "ran"
        if stage.name == to_stage:
            break
    return outcome
