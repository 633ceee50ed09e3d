"""``nanoseg translate``: train the mask <-> micrograph translator, generate training pairs, GAN segmentation.

Nothing heavy is imported at module level so that ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nanoseg.cli import common
from nanoseg.errors import NanosegError

app = typer.Typer(no_args_is_help=True)


@app.command()
def train(
    masks: Path = typer.Argument(..., help="Folder of fake masks (mask_*.tif, from `nanoseg masks` or RUN/masks)."),
    images: Path = typer.Argument(..., help="Folder of real micrographs."),
    out: Path = typer.Option(Path("translate"), "--out", "-o", help="Output folder (reused to resume training)."),
    config: Optional[Path] = common.ConfigOpt,
    profile: Optional[str] = common.ProfileOpt,
    sets: Optional[list[str]] = common.SetOpt,
    seed: Optional[int] = common.SeedOpt,
    device: Optional[str] = common.DeviceOpt,
    pixel_size: Optional[str] = common.PixelSizeOpt,
) -> None:
    """Train the CycleGAN masks <-> micrographs, or fit the SEM renderer (translate.method=render), or both (refine).

    Writes mask_to_image.pt and image_to_mask.pt (or renderer.json; refine writes both), losses.csv/png
    and sample grids into OUT. Run the same command again to resume an interrupted training.

    Example:

      nanoseg translate train runs/tio2/masks ../shared/data/bam-tio2/sem --out translate

      nanoseg translate train masks/ images/ --out renderer --set translate.method=render
    """
    if not masks.is_dir():
        raise NanosegError(f"{masks}: masks folder not found")
    cfg = common.resolve_config(config, profile, sets, seed, device, pixel_size, extra={"data": {"images": str(images)}})
    dev = common.prepare_torch(cfg)
    from nanoseg.translate import train_translator

    train_translator(cfg, masks, out, dev)
    typer.echo(f"translator: {out}")


@app.command()
def generate(
    masks: Path = typer.Argument(..., help="Folder of fake masks (mask_*.tif, instances_*.tif, particles.csv)."),
    model: Path = typer.Option(Path("translate"), "--model", "-m", help="Folder written by `nanoseg translate train`."),
    out: Path = typer.Option(Path("pairs"), "--out", "-o", help="Output folder for the pairs."),
    n: Optional[int] = typer.Option(None, "--n", "-n", help="Number of pairs (default: translate.n_pairs)."),
    config: Optional[Path] = common.ConfigOpt,
    profile: Optional[str] = common.ProfileOpt,
    sets: Optional[list[str]] = common.SetOpt,
    seed: Optional[int] = common.SeedOpt,
    device: Optional[str] = common.DeviceOpt,
) -> None:
    """Translate fake masks into fake micrographs, filter artifact particles and write N training pairs.

    The translator (CycleGAN, renderer, or renderer + refining CycleGAN) is taken from what MODEL holds. Writes pair_XXXX.npz,
    manifest.csv, filter.json (dropped instances per pair) and contact_sheet.png.

    Example:

      nanoseg translate generate runs/tio2/masks --model runs/tio2/translate --out pairs --n 500
    """
    if n is not None and n < 1:
        raise NanosegError("--n: must be at least 1")
    if not masks.is_dir():
        raise NanosegError(f"{masks}: masks folder not found")
    from nanoseg.translate import MASK_TO_IMAGE, RENDERER

    has_gan, has_renderer = (model / MASK_TO_IMAGE).is_file(), (model / RENDERER).is_file()
    if not (has_gan or has_renderer):
        raise NanosegError(f"{model}: neither {MASK_TO_IMAGE} nor {RENDERER} found (run `nanoseg translate train` first)")
    cfg = common.resolve_config(config, profile, sets, seed, device, None)
    dev = common.prepare_torch(cfg)
    # Use whichever translator the folder holds: a generator trained on rendered images needs the
    # renderer before it (refine); with a mask generator and a renderer the config decides.
    if has_gan:
        from nanoseg import nets

        refines = nets.load_meta(model / MASK_TO_IMAGE, kind="translator").get("input") == "rendered micrograph"
        if refines and not has_renderer:
            raise NanosegError(f"{model}: {MASK_TO_IMAGE} refines rendered images but {RENDERER} is missing "
                               "(copy the whole translate folder)")
        if refines:
            cfg.translate.method = "refine"
        elif not has_renderer or cfg.translate.method == "refine":
            cfg.translate.method = "cyclegan"
    else:
        cfg.translate.method = "render"
    from nanoseg.translate import make_pairs

    summary = make_pairs(cfg, masks, model, out, dev, n_pairs=n)
    typer.echo(f"{summary['n_pairs']} pairs in {out}; artifact filter dropped {summary['instances_dropped']} "
               f"of {summary['instances_before_filter']} instances")


@app.command()
def segment(
    images: Path = typer.Argument(..., help="A micrograph or a folder of micrographs."),
    model: Path = typer.Option(Path("translate/image_to_mask.pt"), "--model", "-m", help="Trained image -> mask generator."),
    out: Path = typer.Option(Path("gan-segment"), "--out", "-o", help="Output folder."),
    threshold: float = typer.Option(0.5, "--threshold", help="Probability threshold of the binary mask."),
    config: Optional[Path] = common.ConfigOpt,
    profile: Optional[str] = common.ProfileOpt,
    sets: Optional[list[str]] = common.SetOpt,
    device: Optional[str] = common.DeviceOpt,
    pixel_size: Optional[str] = common.PixelSizeOpt,
) -> None:
    """Segment micrographs directly with the CycleGAN's image -> mask generator (the paper's "GAN" row).

    Writes OUT/probability/<stem>.tif (float32 [0, 1]) and OUT/binary/<stem>.tif (uint8 0/255, after
    the artifact filter), and prints the dropped instances per image.

    Example:

      nanoseg translate segment ../shared/data/bam-tio2/sem --model runs/tio2/translate/image_to_mask.pt --out gan-seg
    """
    if not 0.0 < threshold < 1.0:
        raise NanosegError("--threshold: must lie between 0 and 1")
    if not images.exists():
        raise NanosegError(f"{images}: no such micrograph or folder")
    cfg = common.resolve_config(config, profile, sets, None, device, pixel_size)
    dev = common.prepare_torch(cfg)
    import numpy as np

    from nanoseg import nets
    from nanoseg.io import list_images, read_micrographs, write_tiff
    from nanoseg.runtime import progress
    from nanoseg.translate import gan_segment_instances

    generator, _ = nets.load(model, dev, kind="translator")
    paths = list_images(images) if images.is_dir() else [images]
    micrographs = read_micrographs(paths, cfg.data)
    for path, mg in progress(zip(paths, micrographs), total=len(paths), desc="GAN segmentation"):
        prob, instances, dropped = gan_segment_instances(mg.image, generator, dev,
                                                         method=cfg.translate.artifact_threshold,
                                                         threshold=threshold, bf16=cfg.translate.bf16)
        write_tiff(out / "probability" / f"{path.stem}.tif", prob.astype(np.float32), mg.pixel_size_nm)
        write_tiff(out / "binary" / f"{path.stem}.tif", instances > 0, mg.pixel_size_nm)
        typer.echo(f"{path.name}: {int((np.unique(instances) != 0).sum())} particles, {len(dropped)} dropped by the artifact filter")
    typer.echo(f"results: {out}")
