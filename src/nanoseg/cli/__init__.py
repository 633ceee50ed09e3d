"""The ``nanoseg`` command line: a thin layer over the stage modules.

Commands parse and validate before importing torch, so ``--help`` is instant.
"""

from __future__ import annotations

import errno
import importlib
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from nanoseg.cli import common
from nanoseg.errors import NanosegError

app = typer.Typer(
    name="nanoseg",
    help="Particle size distributions from electron micrographs of agglomerated nanoparticles.\n\n"
    "Examples:\n\n"
    "  nanoseg demo --out demo-run\n\n"
    "  nanoseg run ../shared/data/bam-tio2 --out runs/tio2 --profile quick\n\n"
    "  nanoseg run my-config.yaml --from segment",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from nanoseg import __version__

        typer.echo(f"nanoseg {__version__}")
        raise typer.Exit()


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@app.callback()
def _global(
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    from nanoseg.runtime import setup_logging

    if log_level.upper() not in LOG_LEVELS:
        raise NanosegError(f"--log-level {log_level!r}: not a log level; use one of {', '.join(LOG_LEVELS)}")
    setup_logging(log_level)


def _folder_inputs(folder: Path) -> dict:
    """Find micrographs and outlines in a data folder (``images/`` or ``sem/``, ``outlines/``)."""
    images = next((folder / n for n in ("images", "sem") if (folder / n).is_dir()), folder)
    data: dict = {"images": str(images)}
    if (folder / "outlines").exists():
        data["outlines"] = str(folder / "outlines")
    return {"data": data}


@app.command()
def run(
    source: Path = typer.Argument(..., help="A YAML config file, or a data folder holding micrographs "
                                  "(in images/ or sem/, or at top level) and outlines/."),
    out: Path = typer.Option(Path("nanoseg-run"), "--out", "-o", help="Run folder (created; reused to resume)."),
    from_stage: Optional[str] = typer.Option(None, "--from", help="Redo this stage and all after it."),
    to_stage: Optional[str] = typer.Option(None, "--to", help="Stop after this stage."),
    force: bool = typer.Option(False, "--force", help="Redo every stage from scratch."),
    profile: Optional[str] = common.ProfileOpt,
    sets: Optional[list[str]] = common.SetOpt,
    seed: Optional[int] = common.SeedOpt,
    device: Optional[str] = common.DeviceOpt,
    pixel_size: Optional[str] = common.PixelSizeOpt,
    strict: bool = common.StrictOpt,
) -> None:
    """Run the whole workflow; finished, unchanged stages are skipped.

    A micrograph that cannot be read is left out of every stage and listed at the end and in
    OUT/measure/summary.json (failures); the exit status is then 1. --strict stops the run at
    the first such file, before any stage.

    Examples:

      nanoseg run ../shared/data/bam-tio2 --out runs/tio2

      nanoseg run config.yaml --from classify --set classify.score_threshold=0.6
    """
    if not source.exists():
        raise NanosegError(f"{source}: no such config file or data folder")
    if source.is_dir():
        cfg = common.resolve_config(None, profile, sets, seed, device, pixel_size, extra=_folder_inputs(source))
    else:
        cfg = common.resolve_config(source, profile, sets, seed, device, pixel_size)
    common.check_out_folder(out)
    from nanoseg.io import list_images
    from nanoseg.pipeline import run_pipeline

    failures: list[dict[str, str]] | None = None if strict else []
    with common.out_lock(out):
        run_pipeline(cfg, out, from_stage=from_stage, to_stage=to_stage, force=force, failures=failures)
    typer.echo(f"results: {out / 'measure'}")
    if failures:
        common.report_failures(failures, len(list_images(cfg.data.images)))


@app.command("make-demo-data")
def make_demo_data(
    out: Path = typer.Argument(..., help="Folder to write images/ and outlines/ into."),
    n_images: int = typer.Option(6, "--n-images", help="Number of micrographs."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
) -> None:
    """Render synthetic SEM micrographs of agglomerated particles, plus 40 user-like outlines.

    Example:

      nanoseg make-demo-data demo-data --n-images 6
    """
    from nanoseg.demo import make_demo_data as _make

    common.check_out_folder(out, "OUT")
    _make(out, n_images=n_images, seed=seed)
    typer.echo(f"demo data: {out}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-run"), "--out", "-o", help="Folder for the demo data and the run."),
    profile: str = typer.Option("demo", "--profile", "-p", help="Profile (demo finishes in minutes on 2 cores)."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    sets: Optional[list[str]] = common.SetOpt,
) -> None:
    """Make demo data, then run the whole workflow on it.

    Example:

      nanoseg demo --out demo-run
    """
    from nanoseg.demo import make_demo_data as _make
    from nanoseg.pipeline import run_pipeline

    common.check_out_folder(out)
    data = out / "data"
    if not (data / "images").is_dir():
        _make(data, seed=seed)
    cfg = common.resolve_config(None, profile, sets, seed, None, None, extra=_folder_inputs(data))
    run_pipeline(cfg, out / "run")
    typer.echo(f"results: {out / 'run' / 'measure'}")


config_app = typer.Typer(help="Show, create and document configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("init")
def config_init(
    profile: str = typer.Option("quick", "--profile", "-p", help="Profile to start from."),
    sets: Optional[list[str]] = common.SetOpt,
    advanced: bool = typer.Option(False, "--advanced", help="Also write the advanced keys the profile sets "
                                  "(network sizes, training schedules, post-processing)."),
) -> None:
    """Print a config file for a profile (redirect it into a file and edit).

    It holds the settings a user sets; the profile gives every other key its value. --advanced
    writes them all. docs/config.md describes each key.
    """
    typer.echo(common.resolve_config(None, profile, sets).to_yaml(advanced=advanced), nl=False)


@config_app.command("check")
def config_check(
    path: Path = typer.Argument(..., help="YAML config file."),
    sets: Optional[list[str]] = common.SetOpt,
) -> None:
    """Validate a config file (with any --set on top) and the data paths it names; prints the resolved config."""
    cfg = common.resolve_config(path, sets=sets)
    # A wrong path is the commonest config error, and a run would only find it at its start.
    for key in ("images", "outlines"):
        value = getattr(cfg.data, key)
        if value is not None and not Path(value).exists():
            raise NanosegError(f"{path}: data.{key} {value} does not exist (paths are relative to the "
                               "folder you run nanoseg in); fix the path")
    typer.echo(cfg.to_yaml(), nl=False)


@config_app.command("docs")
def config_docs(
    into: Optional[Path] = typer.Option(None, "--into", help="Write the reference into this Markdown file "
                                        "between its config-reference markers instead of printing it."),
) -> None:
    """Print the reference of every config key (Markdown).

    Example:

      nanoseg config docs --into docs/config.md
    """
    from nanoseg.config import config_reference, embed_reference

    if into is None:
        typer.echo(config_reference())
    else:
        typer.echo(f"wrote {embed_reference(into)}")


def _register_stage_commands() -> None:
    # Each stage owns its command module; they import nothing heavy at module level.
    from nanoseg.cli import stages

    stages.register(app)


_register_stage_commands()
common.reflow_help(app)


def os_error_line(exc: OSError) -> str:
    """One line for a file-system error, naming the path and a fix.

    Input files are read through checks that raise :class:`NanosegError`, so what reaches
    here is mostly a write: a folder without permission, a file where a folder should be, a
    full disk.
    """
    from nanoseg.atomic import user_path

    path = exc.filename if exc.filename is not None else "an output file"
    if exc.filename is not None and user_path(exc.filename) != Path(exc.filename):
        # The hidden name of an atomic write means nothing to the user: name the file it was to
        # replace (a rename's second name), else the path without the hidden names.
        path = exc.filename2 if exc.filename2 is not None else user_path(exc.filename)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing {path}; free space or choose another --out"
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        return f"{path}: permission denied; choose another --out (or make the folder writable)"
    if isinstance(exc, IsADirectoryError):
        return f"{path} is a folder where a file is needed; give a file name as --out"
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        return f"{path} is a file where a folder is needed; give a folder as --out"
    return f"{path}: {exc.strerror or exc}"


#: The exception classes of the click that typer runs on: click itself, or (typer >= 0.20) its own copy.
click_errors = importlib.import_module(typer.BadParameter.__module__)


def usage_error_line(exc: Exception) -> str:
    """One line for a command-line usage error (a bad option value, an unknown option), with the
    command whose ``--help`` lists the options."""
    text = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    return f"{text} (see `{ctx.command_path} --help`)" if ctx is not None else text


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2.

    Status 1 is a batch that finished without some of its images (listed); 130 an interrupt.
    """
    # Not click's standalone mode: it prints a usage error as a framed box of usage and hints
    # instead of the one `error:` line every other bad input gets.
    no_args_help = getattr(click_errors, "NoArgsIsHelpError", ())  # click >= 8.2
    try:
        code = app(standalone_mode=False)  # --help and typer.Exit return their exit status
        sys.exit(code if isinstance(code, int) else 0)
    except no_args_help as exc:
        # Bare `nanoseg` or `nanoseg config`: the help (already printed where rich formats it), status 2.
        if exc.format_message():
            print(exc.format_message(), file=sys.stderr)
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:
        print(f"error: {usage_error_line(exc)}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, click_errors.UsageError) else exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except NanosegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        # The traceback stays reachable for a bug report, without burying the one line users need.
        logging.getLogger("nanoseg").debug("file-system error", exc_info=exc)
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        sys.exit(2)
