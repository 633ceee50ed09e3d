"""``nanoseg shapes``: import outlines, learn particle shapes (WGAN-GP), sample a shape library."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nanoseg.cli import common

app = typer.Typer(no_args_is_help=True)


@app.command("import")
def import_outlines(
    source: Path = typer.Argument(..., help="Folder of outline images, a mask image with painted particles, "
                                  "or an ImageJ/Fiji ROI file/set (.roi/.zip)."),
    dest: Path = typer.Argument(..., help="Outline folder to write (outline_000.png ... + contact_sheet.png)."),
    size: int = typer.Option(64, "--size", help="Side of the square outline images in px."),
) -> None:
    """Convert outlines from any supported form into a folder of centred single-particle images.

    Example:

      nanoseg shapes import RoiSet.zip my-outlines

      nanoseg shapes import painted_mask.tif my-outlines --size 64
    """
    from nanoseg.io import load_outlines, write_outline_folder

    outlines = load_outlines(source, size)
    write_outline_folder(outlines, dest)
    typer.echo(f"{len(outlines)} outlines -> {dest} (see {dest / 'contact_sheet.png'})")


@app.command("train")
def train(
    outlines: Path = typer.Argument(..., help="Outlines: folder of images, mask image or ImageJ ROI set."),
    out: Path = typer.Option(Path("shapes"), "--out", "-o", help="Output folder (a checkpoint there is resumed)."),
    n: Optional[int] = typer.Option(None, "--n", help="Shapes to sample into library.npz (default shapes.n_samples)."),
    config: Optional[Path] = common.ConfigOpt,
    profile: Optional[str] = common.ProfileOpt,
    sets: Optional[list[str]] = common.SetOpt,
    seed: Optional[int] = common.SeedOpt,
    device: Optional[str] = common.DeviceOpt,
) -> None:
    """Train the WGAN-GP on outlines and write generator.pt, library.npz, losses and contact sheets.

    With --set shapes.source=polygon no network is trained: random polygons of the outlines' size
    are drawn instead.

    Example:

      nanoseg shapes train ../shared/data/bam-tio2/outlines --out runs/shapes --profile demo

      nanoseg shapes train RoiSet.zip --out shapes --set shapes.steps=3000
    """
    extra = {"data": {"outlines": str(outlines)}}
    if n is not None:
        extra["shapes"] = {"n_samples": n}
    cfg = common.resolve_config(config, profile, sets, seed, device, extra=extra)
    from nanoseg.io import load_outlines
    from nanoseg.runtime import configure_torch, seed_everything, select_device
    from nanoseg.shapes import build_library

    configure_torch(cfg.num_threads)
    seed_everything(cfg.seed)
    shapes_in = load_outlines(outlines, cfg.shapes.outline_size_px)
    stats = build_library(cfg.shapes, out, shapes_in, device=select_device(cfg.device), seed=cfg.seed)
    typer.echo(f"{stats['n_shapes']} shapes ({stats['n_dropped']} samples dropped) -> {out / 'library.npz'}; "
               f"median area {stats['shape_median_area_px']:.0f} px (outlines {stats['outline_median_area_px']:.0f} px)")


@app.command("sample")
def sample(
    generator: Path = typer.Argument(..., help="generator.pt written by `nanoseg shapes train`."),
    out: Path = typer.Option(Path("shapes"), "--out", "-o", help="Folder for library.npz and samples.png."),
    n: int = typer.Option(1000, "--n", help="Number of shapes to keep."),
    seed: Optional[int] = common.SeedOpt,
    device: Optional[str] = common.DeviceOpt,
) -> None:
    """Sample clean single-particle shapes from a trained generator into library.npz.

    Example:

      nanoseg shapes sample runs/shapes/generator.pt --n 5000 --out more-shapes
    """
    import numpy as np

    from nanoseg import nets
    from nanoseg.atomic import atomic_path
    from nanoseg.io import write_png
    from nanoseg.plots import contact_sheet
    from nanoseg.runtime import select_device
    from nanoseg.shapes import sample_shapes

    dev = select_device(device or "auto")
    net, _ = nets.load(generator, dev, kind="shape-generator")
    shapes, dropped = sample_shapes(net, n, device=dev, seed=seed or 0)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "library.npz") as tmp:
        np.savez_compressed(tmp, shapes=shapes)
    write_png(out / "samples.png", contact_sheet(shapes))
    typer.echo(f"{len(shapes)} shapes ({dropped} samples dropped as empty or touching the border) -> {out / 'library.npz'}")
