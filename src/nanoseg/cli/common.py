"""Options shared by the subcommands, and turning them into one validated Config.

Nothing here imports torch: `nanoseg ... --help` stays instant.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import typer

from nanoseg.atomic import is_temp_file, write_json
from nanoseg.config import Config, deep_merge, load_config, parse_assignment
from nanoseg.errors import NanosegError
from nanoseg.units import UNIT_NM, check_pixel_size_nm

logger = logging.getLogger("nanoseg.cli")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (see `nanoseg config init`).")
ProfileOpt = typer.Option(None, "--profile", "-p", help="Defaults profile: demo, quick (CPU) or paper (GPU).")
SetOpt = typer.Option(None, "--set", "-s", help="Override one setting, e.g. --set segment.steps=500 (repeatable).")
SeedOpt = typer.Option(None, "--seed", help="Seed for every random draw (repeatable runs).")
DeviceOpt = typer.Option(None, "--device", help="auto, cpu or cuda.")
PixelSizeOpt = typer.Option(None, "--pixel-size", help="Pixel size override, e.g. 7.34nm, 0.5um, 3.1e-9m.")
StrictOpt = typer.Option(False, "--strict", help="Stop at the first micrograph that cannot be read or processed "
                         "(default: leave it out, list it at the end and exit with status 1).")
WorkersOpt = typer.Option(None, "--workers", "-w", min=1, help="Process the micrographs on N local worker "
                          "processes (a Dask LocalCluster; the cores are shared among them); default: one after "
                          "another in this process.")
SchedulerOpt = typer.Option(None, "--scheduler", help="Address of a running Dask scheduler (e.g. "
                            "tcp://10.0.0.5:8786) whose workers see the same files; instead of --workers.")


def check_workers(workers: int | None, scheduler: str | None) -> None:
    """--workers and --scheduler exclude each other."""
    if workers is not None and scheduler is not None:
        raise NanosegError("--workers and --scheduler: give one of them (a new local cluster, or an existing one)")

#: Written into an output folder by the command that owns it; a rerun clears only a folder marked so.
OUT_MARKER = ".nanoseg-outputs.json"


def reflow(doc: str) -> str:
    """A docstring with each plain paragraph on one line, so that the help wraps to the terminal.

    Paragraphs that start indented (examples, commands) keep their lines.
    """
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if p.startswith((" ", "\b")) else " ".join(line.strip() for line in p.splitlines())
                       for p in paragraphs)


def reflow_help(app: typer.Typer) -> None:
    """:func:`reflow` the docstring of every command of ``app`` and of its sub-apps.

    Rich's help keeps a docstring's line breaks, which then fall mid-sentence on any terminal
    wider or narrower than the source.
    """
    for info in app.registered_commands:
        if info.callback is not None and info.callback.__doc__:
            info.callback.__doc__ = reflow(info.callback.__doc__)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)


def parse_length_nm(text: str) -> float:
    """Parse ``'7.34nm'``, ``'0.5 um'``, ``'3.1e-9m'`` or a bare number (nm) into nm.

    Units are those of :data:`nanoseg.units.UNIT_NM` (nm, um/µm/micron, m, mm, pm, A/Å, ...); the
    length must be a plausible pixel size (:func:`nanoseg.units.check_pixel_size_nm`).
    """
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([a-zA-Zµå]*)\s*", text)
    if not match:
        raise NanosegError(f"--pixel-size {text!r}: expected a number with a unit, e.g. 7.34nm")
    try:
        value = float(match.group(1))
    except ValueError:
        raise NanosegError(f"--pixel-size {text!r}: expected a number with a unit, e.g. 7.34nm") from None
    unit = match.group(2).lower()
    factor = 1.0 if unit == "" else UNIT_NM.get(unit)  # a bare number is in nm
    if factor is None:
        raise NanosegError(f"--pixel-size {text!r}: unknown unit '{unit}' (use nm, um or m)")
    return check_pixel_size_nm(value * factor, f"--pixel-size {text!r}")


def resolve_config(
    config_path: Optional[Path] = None,
    profile: Optional[str] = None,
    sets: Optional[list[str]] = None,
    seed: Optional[int] = None,
    device: Optional[str] = None,
    pixel_size: Optional[str] = None,
    extra: Optional[dict[str, Any]] = None,
) -> Config:
    """Merge file, profile, command-line overrides and ``extra`` (highest priority) into a Config."""
    overrides: dict[str, Any] = {}
    for text in sets or []:
        overrides = deep_merge(overrides, parse_assignment(text))
    if seed is not None:
        overrides["seed"] = seed
    if device is not None:
        overrides["device"] = device
    if pixel_size is not None:
        overrides = deep_merge(overrides, {"data": {"pixel_size_nm": parse_length_nm(pixel_size)}})
    if extra:
        overrides = deep_merge(overrides, extra)
    return load_config(config_path, profile=profile, overrides=overrides)


def resolve_model_config(
    model: Path,
    config_path: Optional[Path] = None,
    profile: Optional[str] = None,
    sets: Optional[list[str]] = None,
    device: Optional[str] = None,
    pixel_size: Optional[str] = None,
) -> Config:
    """:func:`resolve_config` for commands that segment with a trained model.

    The post-processing a model was trained and validated with (band width, marker settings,
    the threshold chosen at training) is saved in the model; it overrides the file's and the
    profile's ``segment`` section, and only ``--set segment.*`` overrides it. ``segment predict``
    and ``measure`` both go through here, so one model gives one segmentation.
    """
    from nanoseg.segment import load_segmenter

    _, meta = load_segmenter(model)
    segment_values = dict(meta.get("config", {}))
    for text in sets or []:
        segment_values = deep_merge(segment_values, parse_assignment(text).get("segment", {}))
    return resolve_config(config_path, profile, sets, None, device, pixel_size, extra={"segment": segment_values})


def prepare_torch(cfg: Config) -> Any:
    """Threads, seed and device for a single-stage command; returns the ``torch.device``."""
    from nanoseg.runtime import configure_torch, seed_everything, select_device

    configure_torch(cfg.num_threads)
    seed_everything(cfg.seed)
    return select_device(cfg.device)


def expand_images(items: Sequence[Path]) -> list[Path]:
    """Micrograph files from the command line: folders listed, files kept as given.

    A file is not checked here, so that one that cannot be read fails alone, as a batch
    failure, instead of stopping the command.
    """
    from nanoseg.io import list_images

    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            paths.extend(list_images(item))
        elif item.is_file():
            paths.append(item)
        else:
            raise NanosegError(f"{item}: no such micrograph or folder")
    return paths


def check_out_folder(out: Path, name: str = "--out") -> None:
    """Stop before any work when ``out`` cannot be a folder this process writes into.

    ``name`` is how the error names the folder: the option or argument the user gave it as.

    Raises
    ------
    NanosegError
        If ``out`` or a folder above it is a file, or the nearest existing folder is not writable.
    """
    if out.exists() and not out.is_dir():
        raise NanosegError(f"{name} {out} is a file; give a folder")
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise NanosegError(f"{name} {out}: {existing} is a file; give a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise NanosegError(f"{name} {out}: permission denied in {existing}; choose another {name}")


def outputs_to_replace(out: Path, command: str, owned: Sequence[str], inputs: Sequence[Path] = ()) -> list[Path]:
    """Check ``--out`` before any work; return what an earlier run of ``command`` left there.

    A missing or empty folder is fine. A folder marked (:data:`OUT_MARKER`) by the same command
    is reused: its entries named like ``owned`` will be replaced, anything else in it is left.
    Any other non-empty folder is refused, since only the user knows what its files are.

    Parameters
    ----------
    out : Path
        The ``--out`` folder.
    command : str
        The command as typed after ``nanoseg``, e.g. ``'measure'``.
    owned : sequence of str
        Names (``fnmatch`` patterns) of the files and folders the command writes into ``out``.
    inputs : sequence of Path
        The command's input files and folders: refused when an earlier output holds one.

    Returns
    -------
    list of Path
        The entries to remove (by :func:`replace_outputs`) once the inputs have been read.
    """
    check_out_folder(out)
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if not entries:
        return []
    try:
        made_by = json.loads((out / OUT_MARKER).read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        made_by = None
    if made_by != command:
        what = (f"the outputs of `nanoseg {made_by}`" if made_by else
                f"files nanoseg did not write ({', '.join(e.name for e in entries[:3])}"
                f"{', ...' if len(entries) > 3 else ''})")
        raise NanosegError(f"--out {out} already holds {what}; choose a new or empty folder")
    # Temporary files of writes a kill cut short are outputs too: nothing else will remove them.
    stale = [e for e in entries if is_temp_file(e) or any(fnmatch.fnmatch(e.name, pat) for pat in owned)]
    for item in inputs:
        hit = next((e for e in stale if item.resolve().is_relative_to(e.resolve())), None)
        if hit is not None:
            raise NanosegError(f"{item} lies in {hit}, which `nanoseg {command}` replaces; "
                               "copy it elsewhere or choose another --out")
    return stale


def replace_outputs(out: Path, command: str, stale: Sequence[Path]) -> None:
    """Remove an earlier run's outputs (from :func:`outputs_to_replace`) and mark ``out`` as ``command``'s.

    Call it just before the first write, once the inputs are read: a command stopped by its
    inputs then leaves the earlier outputs as they were.
    """
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if stale:
        logger.info("removed %d output(s) of an earlier `nanoseg %s` from %s (%s)", len(stale), command, out,
                    ", ".join(p.name for p in stale))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / OUT_MARKER, {"command": command})


def report_failures(failures: Sequence[dict[str, str]], n_images: int) -> None:
    """List the micrographs a batch left out, and exit with status 1 when there are any.

    Status 1 says "done, but not for every image"; 2 is kept for a command that did nothing.
    """
    if not failures:
        return
    typer.echo(f"failed: {len(failures)} of {n_images} images", err=True)
    for failure in failures:
        typer.echo(f"  {failure['image']}: {failure['error']}", err=True)
    raise typer.Exit(1)
