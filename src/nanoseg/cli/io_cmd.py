"""``nanoseg info``: what nanoseg reads from micrographs (size, bit depth, pixel size, info bar)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nanoseg.cli import common


def command(
    images: list[Path] = typer.Argument(..., help="Image files or folders of images."),
    pixel_size: Optional[str] = common.PixelSizeOpt,
    info_bar_rows: str = typer.Option("auto", "--info-bar-rows", help="Rows of info bar to crop: 'auto' or a number."),
) -> None:
    """Show size, dtype, bit depth, pixel size (and where it came from), info-bar rows, whether the
    particles are dark, and how many pixels a particle spans.

    The bit depth is the scale of each image read alone ('-' for float images); a run scales
    all its images by one bit depth (data.bit_depth). The particle size is the median equivalent
    circular diameter of the isolated particles an automatic threshold finds (the size prior a
    run starts from); below about 10 px particles are too small to segment well.

    Example:

      nanoseg info ../shared/data/bam-tio2/sem

      nanoseg info scan.png --pixel-size 2.5nm --info-bar-rows 0
    """
    import numpy as np

    from nanoseg.errors import NanosegError
    from nanoseg.io import (
        DARK_BRIGHT_FRACTION,
        bright_fraction,
        list_images,
        pixel_size_with_source,
        read_micrograph,
        read_raw,
    )
    from nanoseg.masks import estimate_particle_density

    override = common.parse_length_nm(pixel_size) if pixel_size is not None else None
    if info_bar_rows == "auto":
        bar: int | str = "auto"
    else:
        try:
            bar = int(info_bar_rows)
        except ValueError:
            raise NanosegError(f"--info-bar-rows {info_bar_rows!r}: expected 'auto' or a whole number") from None
    files = [f for item in images for f in list_images(item)]
    typer.echo(f"{'image':<28} {'size (WxH)':>11} {'dtype':>8} {'bits':>4} {'pixel size':>14} {'source':>9} "
               f"{'info bar':>8} {'particles':>9} {'particle size':>16}")
    failed = 0
    diameters: list[tuple[float, float | None]] = []
    dark_images = 0
    for path in files:
        try:
            raw = read_raw(path)
            if override is None:
                size_nm, source = pixel_size_with_source(path)
            else:
                size_nm, source = override, "override"
            mg = read_micrograph(path, pixel_size_nm=size_nm, info_bar_rows=bar)
        except NanosegError as exc:
            # Keep going: one bad file should not hide what the others hold.
            typer.echo(f"error: {exc}", err=True)
            failed += 1
            continue
        size_text = f"{size_nm:.5g} nm" if size_nm is not None else "unknown (px)"
        dark = bright_fraction(mg.image) > DARK_BRIGHT_FRACTION
        dark_images += dark
        try:
            ecd_px = estimate_particle_density([1.0 - mg.image if dark else mg.image])["typical_ecd_px"]
            diameters.append((ecd_px, size_nm))
            particle_text = f"{ecd_px:.0f} px" + (f" / {ecd_px * size_nm:.3g} nm" if size_nm else "")
        except NanosegError:
            particle_text = "none found"
        typer.echo(
            f"{path.name:<28} {f'{raw.shape[1]}x{raw.shape[0]}':>11} {str(raw.dtype):>8} "
            f"{'-' if mg.bit_depth is None else mg.bit_depth:>4} {size_text:>14} {source:>9} {mg.info_bar_rows:>8} "
            f"{'dark' if dark else 'bright':>9} {particle_text:>16}"
        )
    if diameters:
        px = float(np.median([d for d, _ in diameters]))
        nm = [d * s for d, s in diameters if s]
        typer.echo(f"particles about {px:.0f} px across" + (f" ({np.median(nm):.3g} nm)" if nm else "")
                   + f", median of {len(diameters)} micrograph(s), from the isolated particles of an automatic threshold")
        if px < MIN_PARTICLE_PX:
            typer.echo(f"warning: particles about {px:.0f} px across are below ~{MIN_PARTICLE_PX} px: too few pixels to "
                       "segment and measure them well; acquire at a higher magnification (smaller pixel size)", err=True)
    if dark_images:
        typer.echo(f"{dark_images} micrograph(s) show dark particles on a bright background (transmission images): "
                   "`nanoseg run` and `measure` invert them (data.dark_particles: auto)")
    if failed:
        raise typer.Exit(2)


#: Particles spanning fewer pixels than this lose their shape in the segmentation (their outline is
#: a few pixels, and the watershed markers need room).
MIN_PARTICLE_PX = 10
