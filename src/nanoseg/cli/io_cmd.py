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
    """Show size, dtype, bit depth, pixel size (and where it came from) and info-bar rows of micrographs.

    The bit depth is the scale of each image read alone ('-' for float images); a run scales
    all its images by one bit depth (data.bit_depth).

    Example:

      nanoseg info ../shared/data/bam-tio2/sem

      nanoseg info scan.png --pixel-size 2.5nm --info-bar-rows 0
    """
    from nanoseg.errors import NanosegError
    from nanoseg.io import list_images, pixel_size_with_source, read_micrograph, read_raw

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
               f"{'info bar':>8}")
    failed = 0
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
        typer.echo(
            f"{path.name:<28} {f'{raw.shape[1]}x{raw.shape[0]}':>11} {str(raw.dtype):>8} "
            f"{'-' if mg.bit_depth is None else mg.bit_depth:>4} {size_text:>14} {source:>9} {mg.info_bar_rows:>8}"
        )
    if failed:
        raise typer.Exit(2)
