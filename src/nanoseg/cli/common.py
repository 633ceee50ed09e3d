"""Options shared by the subcommands, and turning them into one validated Config.

Nothing here imports torch: `nanoseg ... --help` stays instant.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import typer

from nanoseg.config import Config, deep_merge, load_config, parse_assignment
from nanoseg.errors import NanosegError

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (see `nanoseg config init`).")
ProfileOpt = typer.Option(None, "--profile", "-p", help="Defaults profile: demo, quick (CPU) or paper (GPU).")
SetOpt = typer.Option(None, "--set", "-s", help="Override one setting, e.g. --set segment.steps=500 (repeatable).")
SeedOpt = typer.Option(None, "--seed", help="Seed for every random draw (repeatable runs).")
DeviceOpt = typer.Option(None, "--device", help="auto, cpu or cuda.")
PixelSizeOpt = typer.Option(None, "--pixel-size", help="Pixel size override, e.g. 7.34nm, 0.5um, 3.1e-9m.")

_UNITS_NM = {"m": 1e9, "mm": 1e6, "um": 1e3, "µm": 1e3, "micron": 1e3, "nm": 1.0, "a": 0.1, "å": 0.1, "pm": 1e-3, "": 1.0}


def parse_length_nm(text: str) -> float:
    """Parse ``'7.34nm'``, ``'0.5 um'``, ``'3.1e-9m'`` or a bare number (nm) into nm."""
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([a-zA-Zµå]*)\s*", text)
    if not match:
        raise NanosegError(f"--pixel-size {text!r}: expected a number with a unit, e.g. 7.34nm")
    try:
        value = float(match.group(1))
    except ValueError:
        raise NanosegError(f"--pixel-size {text!r}: expected a number with a unit, e.g. 7.34nm") from None
    unit = match.group(2).lower()
    if unit not in _UNITS_NM:
        raise NanosegError(f"--pixel-size {text!r}: unknown unit '{unit}' (use nm, um or m)")
    nm = value * _UNITS_NM[unit]
    if not nm > 0 or nm != nm or nm == float("inf"):
        raise NanosegError(f"--pixel-size {text!r}: must be a positive, finite length")
    return nm


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
    from nanoseg import nets

    _, meta = nets.load(model)
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
