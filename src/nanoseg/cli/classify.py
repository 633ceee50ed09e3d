"""``nanoseg classify``: train the keep/discard network, decide which particles to measure.

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
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="Folder of pair_*.npz training pairs (self-supervised: "
                                         "their 'whole' masks are the targets)."),
    manual: Optional[Path] = typer.Option(None, "--manual", help="Folder with sem/ (or images/), masks/ (<id>_m.tif) "
                                          "and classes/ (<id>_cm.tif, white = kept particles)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Micrographs <id>.tif (instead of --manual)."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Binary masks <id>_m.tif (instead of --manual)."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="Keep/discard masks <id>_cm.tif (instead of --manual)."),
    out: Path = typer.Option(Path("classifier.pt"), "--out", "-o", help="Model file to write; a checkpoint "
                             "<out>.ckpt beside it lets the same command resume."),
    config: Optional[Path] = common.ConfigOpt,
    profile: Optional[str] = common.ProfileOpt,
    sets: Optional[list[str]] = common.SetOpt,
    seed: Optional[int] = common.SeedOpt,
    device: Optional[str] = common.DeviceOpt,
) -> None:
    """Train the keep/discard network (inputs: micrograph + binary mask; output: keep score per pixel).

    Train either on the fake training pairs (no annotation needed) or on manual keep/discard
    masks. With classify.score_threshold 'auto' (default) a tenth of the images is held out to
    calibrate the score threshold, which is saved with the model.
    Settings: classify.steps, classify.tile_size_px, classify.batch_size, classify.bf16, ...
    Run the same command again after an interruption to resume from the checkpoint.

    Example:

      nanoseg classify train --pairs runs/tio2/pairs --out classifier.pt

      nanoseg classify train --manual ../shared/data/bam-tio2 --out classifier-manual.pt --set classify.steps=2000
    """
    cfg = common.resolve_config(config, profile, sets, seed, device)
    if manual is not None:
        img_dir = next((manual / n for n in ("sem", "images") if (manual / n).is_dir()), None)
        if img_dir is None:
            raise NanosegError(f"--manual {manual}: no sem/ or images/ folder inside")
        images, masks, classes = images or img_dir, masks or manual / "masks", classes or manual / "classes"
    if pairs is None and None in (images, masks, classes):
        raise NanosegError("classify train: give --pairs DIR, --manual DIR, or all of --images, --masks and --classes")
    dev = common.prepare_torch(cfg)
    from nanoseg import nets
    from nanoseg.classify import fit_classifier, load_manual_samples, load_pair_samples
    from nanoseg.io import list_images, pixel_size_with_source

    pixel_size_nm = cfg.data.pixel_size_nm
    if pairs is not None:
        samples, source = load_pair_samples(pairs), f"pairs {pairs}"
    else:
        samples = load_manual_samples(images, masks, classes, dark_particles=cfg.data.dark_particles)
        source = f"manual classes {classes}"
        if pixel_size_nm is None:  # the images' own, when they agree
            found = {pixel_size_with_source(p)[0] for p in list_images(images)}
            pixel_size_nm = found.pop() if len(found) == 1 else None
    typer.echo(f"{len(samples)} training images from {source}")
    ckpt = out.with_name(out.name + ".ckpt")
    net, meta = fit_classifier(samples, cfg.classify, device=dev, checkpoint=ckpt, seed=cfg.seed)
    meta["pixel_size_nm"] = pixel_size_nm  # None: unknown (pairs without --set data.pixel_size_nm)
    nets.save(net, out, meta={"task": "classify", "trained_on": source, **meta}, kind="classifier")
    ckpt.unlink(missing_ok=True)
    typer.echo(f"model: {out} ({meta['steps']} steps, final loss {meta['final_loss']:.4f}, "
               f"score threshold {meta['score_threshold']:.3f})")


@app.command()
def predict(
    images: list[Path] = typer.Argument(..., help="Micrographs and/or folders of micrographs."),
    labels: Path = typer.Option(..., "--labels", "-l", help="Folder of instance label images <stem>.tif "
                                "(e.g. from `nanoseg segment predict`, OUT/labels)."),
    classifier: Optional[Path] = typer.Option(None, "--classifier", help="Keep/discard network; without it the "
                                              "rules alone decide."),
    out: Path = typer.Option(Path("decisions.csv"), "--out", "-o", help="CSV to write (image, label, score, kept, reason)."),
    config: Optional[Path] = common.ConfigOpt,
    profile: Optional[str] = common.ProfileOpt,
    sets: Optional[list[str]] = common.SetOpt,
    device: Optional[str] = common.DeviceOpt,
    pixel_size: Optional[str] = common.PixelSizeOpt,
) -> None:
    """Decide for every segmented particle whether it is kept, and why not.

    Rules (classify.min_area_px, max_area_px, min_feret_px, min_solidity, min_inscribed_fraction, exclude_border,
    intensity_threshold, min_mean_intensity)
    are always applied; with --classifier, particles with a mean keep score at or below
    classify.score_threshold ('auto': the threshold calibrated when the classifier was trained)
    are discarded too.

    Example:

      nanoseg classify predict ../shared/data/bam-tio2/sem --labels segmented/labels --classifier classifier.pt

      nanoseg classify predict img.tif --labels labels/ --set classify.min_area_px=30 --out decisions.csv
    """
    common.check_out_csv(out)
    cfg = common.resolve_config(config, profile, sets, None, device, pixel_size)
    dev = common.prepare_torch(cfg)
    from nanoseg.classify import classify_images, write_decisions
    from nanoseg.io import list_images, read_micrographs
    from nanoseg.particles import label_items

    micrographs = read_micrographs([p for item in images for p in list_images(item)], cfg.data)
    items = label_items(micrographs, labels, fix="give the --labels folder `nanoseg segment predict` wrote for "
                        "these micrographs")
    from nanoseg.measure import load_classifier

    net, cls_cfg, _, _ = load_classifier(classifier, cfg.classify, dev)
    decisions = classify_images(items, cls_cfg, net=net, device=dev)
    write_decisions(decisions, out)
    typer.echo(f"kept {int(decisions['kept'].sum())} of {len(decisions)} particles -> {out}")
