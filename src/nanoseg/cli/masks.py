"""``nanoseg masks``: assemble fake segmentation masks from a shape library."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nanoseg.cli import common

app = typer.Typer(no_args_is_help=True)


@app.command("simulate")
def simulate(
    shapes: Path = typer.Argument(..., help="Shape library: a shapes stage folder / library.npz, or an outline "
                                  "folder, mask image or ROI set (used as shapes directly)."),
    out: Path = typer.Option(Path("masks"), "--out", "-o", help="Output folder for the tiles."),
    n: Optional[int] = typer.Option(None, "--n", help="Number of fake masks (default masks.n_masks)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Micrographs to estimate the particle density and "
                                          "size from (default data.images)."),
    config: Optional[Path] = common.ConfigOpt,
    profile: Optional[str] = common.ProfileOpt,
    sets: Optional[list[str]] = common.SetOpt,
    seed: Optional[int] = common.SeedOpt,
    pixel_size: Optional[str] = common.PixelSizeOpt,
) -> None:
    """Write fake masks (mask_0000.tif, instances_0000.tif), particles.csv, contact_sheet.png, stats.json.

    Example:

      nanoseg masks simulate runs/tio2/shapes --images ../shared/data/bam-tio2/sem --n 20 --out fake-masks

      nanoseg masks simulate ../shared/data/bam-tio2/outlines --n 5 --set masks.particles_per_tile=[80,120]
    """
    extra: dict = {}
    if n is not None:
        extra["masks"] = {"n_masks": n}
    if images is not None:
        extra["data"] = {"images": str(images)}
    cfg = common.resolve_config(config, profile, sets, seed, None, pixel_size, extra=extra)
    from nanoseg.atomic import write_json
    from nanoseg.grid import working_scale
    from nanoseg.io import load_outlines
    from nanoseg.masks import load_library, plan_masks, simulate_masks, summarize
    from nanoseg.runtime import seed_everything
    from nanoseg.shapes import shape_summary

    if shapes.is_file() and shapes.suffix == ".npz":
        library, stats = load_library(shapes.parent) if shapes.name == "library.npz" else (None, {})
        if library is None:
            import numpy as np

            with np.load(shapes) as data:
                library = data["shapes"].astype(bool)
    elif (shapes / "library.npz").is_file():
        library, stats = load_library(shapes)
    else:
        library = load_outlines(shapes, cfg.shapes.outline_size_px, scale=working_scale(cfg))
        stats = {"outline_median_area_px": shape_summary(library)["median_area_px"]}
    rng = seed_everything(cfg.seed)
    plan = plan_masks(library, stats, cfg, rng)
    particles = simulate_masks(library, cfg.masks, out, plan["count_range"], rng, plan["size_factor"],
                               plan["count_levels"])
    summary = summarize(out, particles, plan, cfg.masks)
    write_json(out / "stats.json", summary)
    fake = summary["fake"]
    typer.echo(f"{cfg.masks.n_masks} masks -> {out}: {plan['count_range'][0]}-{plan['count_range'][1]} particles per "
               f"tile, foreground {fake['foreground_fraction']:.1%}, median ECD {fake['median_ecd_px']:.1f} px "
               f"(size prior '{plan['size_prior']}')")
