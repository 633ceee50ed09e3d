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
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer

from nanoseg.atomic import is_temp_file, write_json
from nanoseg.config import Config, deep_merge, load_config, parse_assignment, without_removed
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


#: A Dask scheduler address: ``[protocol://]host[:port]``, the host a name, an IPv4 or a bracketed IPv6 address.
SCHEDULER_ADDRESS = re.compile(r"([a-z][a-z0-9+.-]*://)?([\w.-]+|\[[0-9a-f:.]+\])(:\d{1,5})?", re.IGNORECASE)


def check_workers(workers: int | None, scheduler: str | None) -> None:
    """--workers and --scheduler exclude each other, and --scheduler must be an address.

    Dask would take a malformed address apart only when connecting, with a traceback.
    """
    if workers is not None and scheduler is not None:
        raise NanosegError("--workers and --scheduler: give one of them (a new local cluster, or an existing one)")
    if scheduler is not None and not SCHEDULER_ADDRESS.fullmatch(scheduler.strip()):
        raise NanosegError(f"--scheduler {scheduler!r}: not a scheduler address; give one like tcp://10.0.0.5:8786")

#: Written into an output folder by the command that owns it; a rerun clears only a folder marked so.
OUT_MARKER = ".nanoseg-outputs.json"
#: Held in an output folder by the process writing into it (:func:`out_lock`).
OUT_LOCK = ".nanoseg-lock.json"


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
    from nanoseg.segment import segmenter_meta

    meta = segmenter_meta(model)
    segment_values = without_removed("segment", meta.get("config", {}))
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


def check_out_csv(out: Path, name: str = "--out", beside: str = "") -> None:
    """Stop before any work unless ``out`` names a CSV file that can be written.

    ``beside`` says what else is written next to it, for the message. A folder given where the
    file belongs would otherwise fail only at the write, under the temporary file's name.

    Raises
    ------
    NanosegError
        If ``out`` is a folder or not named ``*.csv``, or its folder cannot be written
        (:func:`check_out_folder`).
    """
    if out.is_dir():
        raise NanosegError(f"{name} {out} is a folder; give a .csv file name, e.g. {out / 'results.csv'}")
    if out.suffix.lower() != ".csv":
        raise NanosegError(f"{name} {out}: give a .csv file name{beside}")
    check_out_folder(out.parent, name)


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


@contextmanager
def out_lock(out: Path, name: str = "--out") -> Iterator[None]:
    """Hold the output folder ``out`` for this process while the block writes into it.

    Two commands writing into one folder mix their results, so the second is refused. The lock
    is a file :data:`OUT_LOCK` in ``out`` with the holder's pid, host and start time; one left by
    a process that is gone (a kill, a crash; same host, no such pid) is taken over with a
    warning. It is removed when the block ends, however it ends, and so are the folders made
    only to hold it when nothing else was written into them.

    Parameters
    ----------
    out : Path
        The output folder (created if missing).
    name : str
        How the error names the folder: the option or argument the user gave it as.

    Raises
    ------
    NanosegError
        If another nanoseg process holds ``out`` (or ``out`` cannot be a folder, see
        :func:`check_out_folder`).
    """
    check_out_folder(out, name)
    made = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    out.mkdir(parents=True, exist_ok=True)
    lock = out / OUT_LOCK
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        _take_lock(lock, mine, out, name)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
    finally:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty: outputs were written
                break


def _take_lock(lock: Path, mine: dict[str, Any], out: Path, name: str) -> None:
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
                pid, host, since = int(holder["pid"]), str(holder["host"]), str(holder["since"])
            except (OSError, ValueError, KeyError, TypeError):
                # Unreadable: being written by its holder this very moment, or damaged.
                raise NanosegError(f"{name} {out} is in use by another nanoseg ({lock}); wait for it or choose "
                                   f"another {name} (if no nanoseg writes there, delete {lock})") from None
            if host != mine["host"] or _pid_alive(pid):
                other = "" if host == mine["host"] else f" (if it no longer runs there, delete {lock})"
                raise NanosegError(f"{name} {out} is in use by nanoseg pid {pid} on {host} since {since}; "
                                   f"wait for it or choose another {name}{other}")
            logger.warning("%s %s: taking over the lock of nanoseg pid %d (since %s), which no longer runs",
                           name, out, pid, since)
            # Two commands started in the same instant on the same stale lock could both pass here;
            # the O_EXCL create above is what keeps every other case to one holder.
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(mine, fh)
        return
    raise NanosegError(f"{name} {out} is in use by another nanoseg that has just started; "
                       f"wait for it or choose another {name}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: checks the process exists, sends nothing
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    # A killed process stays a zombie until its parent (a shell, a scheduler) collects it: it
    # writes nothing any more, so its lock is stale already.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (macOS): trust the signal
        return True
    return state not in ("Z", "X")


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
        The entries to remove once the new outputs are complete (:func:`nanoseg.atomic.replacing`).
    """
    check_out_folder(out)
    entries = sorted(e for e in out.iterdir() if e.name != OUT_LOCK) if out.is_dir() else []
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


def claim_outputs(out: Path, command: str, stale: Sequence[Path] = ()) -> None:
    """Mark ``out`` as ``command``'s (:data:`OUT_MARKER`), so that a rerun may replace its outputs.

    Call it just before the first write, once the inputs are read: a command stopped by its
    inputs then leaves the folder as it was. The earlier outputs ``stale`` (from
    :func:`outputs_to_replace`) are removed only once the new ones are complete
    (:func:`nanoseg.atomic.replacing`); they are named here, before the work.
    """
    if stale:
        logger.info("%d output(s) of an earlier `nanoseg %s` in %s (%s) are removed or replaced once the new "
                    "ones are complete", len(stale), command, out, ", ".join(p.name for p in stale))
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
