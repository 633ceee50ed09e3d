"""``nanoseg baseline``: inputs of the baselines the paper compares (TSEM-derived masks).

The other baselines need no command of their own: (d) a UNet on the manual masks is
``nanoseg segment train DATA_DIR`` (it reads ``sem/`` + ``masks/``), and (c) is the same on the
folder written by ``nanoseg baseline tsem-masks``.

Nothing heavy is imported at module level so that ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("tsem-masks")
def tsem_masks(
    data_dir: Path = typer.Argument(..., help="Folder with sem/<id>.tif and tsem/<id+1>.tif (the BAM TiO2 layout)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: images/, masks/, overlays/, registration.csv."),
    ids: Optional[list[str]] = typer.Option(None, "--ids", help="Image ids (repeatable or comma-separated); "
                                            "default: every image in DATA_DIR/sem."),
    threshold: str = typer.Option("otsu", "--threshold", help="Automatic threshold of the TSEM image: otsu or li."),
    min_distance: int = typer.Option(5, "--min-distance", min=1, help="Minimum distance between watershed markers in px."),
) -> None:
    """Make training masks from TSEM images: register to the SEM image, threshold, watershed.

    Each TSEM image is aligned to its SEM image (phase correlation of the outlines, with a
    rotation/scale check), thresholded automatically and split into particles by a
    distance-transform watershed. Writes OUT/images/<id>.tif (a link to the SEM image),
    OUT/masks/<id>_m.tif (0/255, touching particles separated by 1-px lines),
    OUT/overlays/<id>.png and OUT/registration.csv (shifts; IoU with the manual masks before
    and after alignment where DATA_DIR/masks has them). Train baseline (c) on OUT with
    `nanoseg segment train OUT`.

    Example:

      nanoseg baseline tsem-masks ../shared/data/bam-tio2 --out tsem-pairs

      nanoseg baseline tsem-masks ../shared/data/bam-tio2 --out tsem-pairs --ids 1908250,1908252

      nanoseg segment train tsem-pairs --out seg-tsem --set segment.architecture=unet
    """
    from nanoseg.errors import NanosegError
    from nanoseg.evaluate.baselines import make_tsem_training_set

    if threshold not in ("otsu", "li"):
        raise NanosegError(f"--threshold {threshold!r}: choose otsu or li")
    id_list = [i.strip() for item in ids or [] for i in item.split(",") if i.strip()] or None
    records = make_tsem_training_set(data_dir, id_list, out, method=threshold, min_distance_px=min_distance)
    for r in records:
        iou = "" if r.iou_aligned is None else f"  IoU vs manual {r.iou_unaligned:.3f} -> {r.iou_aligned:.3f}"
        typer.echo(f"{r.id}: shift ({r.shift_rows_px:+.1f}, {r.shift_cols_px:+.1f}) px, {r.n_particles} particles{iou}")
    scored = [r for r in records if r.iou_aligned is not None]
    if scored:
        before = sum(r.iou_unaligned for r in scored) / len(scored)
        after = sum(r.iou_aligned for r in scored) / len(scored)
        typer.echo(f"mean IoU with the manual masks: {before:.3f} unaligned -> {after:.3f} aligned ({len(scored)} images)")
    typer.echo(f"wrote {len(records)} pairs to {out} (train with `nanoseg segment train {out}`)")
