"""``nanoseg segment``: train the segmentation network, segment micrographs, export to ONNX or bioimage.io.

Nothing heavy is imported at module level so that ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nanoseg.cli import common
from nanoseg.errors import NanosegError

app = typer.Typer(no_args_is_help=True)

#: What `nanoseg segment predict` writes into --out; a rerun into the same folder replaces exactly these,
#: except the per-image folders (nanoseg.segment.batch.PER_IMAGE_DIRS), which it reuses where still valid.
PREDICT_OWNED = ("labels", "binary", "overlays", "probabilities", "markers", "summary.json")
PREDICT_RESUMABLE = ("labels", "binary", "overlays", "probabilities", "markers")


@app.command()
def train(
    pairs: Path = typer.Argument(..., help="Folder of pair_*.npz files, or of sem/ (or images/) + masks/ subfolders."),
    out: Path = typer.Option(Path("segment"), "--out", "-o", help="Output folder (reused to resume training)."),
    invert: bool = typer.Option(False, "--invert", help="Invert the images (dark particles, e.g. TEM/TSEM)."),
    config: Optional[Path] = common.ConfigOpt,
    profile: Optional[str] = common.ProfileOpt,
    sets: Optional[list[str]] = common.SetOpt,
    seed: Optional[int] = common.SeedOpt,
    device: Optional[str] = common.DeviceOpt,
    pixel_size: Optional[str] = common.PixelSizeOpt,
) -> None:
    """Train the segmentation network on image/mask pairs.

    Writes OUT/model.pt (weights, config, target kind, training pixel size, threshold),
    best.pt, checkpoint.pt, history.json and training.png. Run the same command again to resume.
    The pixel size stored in the model is --pixel-size, else data.pixel_size_nm, else the
    images' own (from their metadata; they must agree).

    Example:

      nanoseg segment train runs/tio2/pairs --out seg-model

      nanoseg segment train ../shared/data/bam-tio2 --out seg-manual --pixel-size 7.34nm --set segment.steps=3000
    """
    cfg = common.resolve_config(config, profile, sets, seed, device, pixel_size)
    dev = common.prepare_torch(cfg)
    from nanoseg.runtime import seed_everything
    from nanoseg.segment import load_pairs, train as train_net

    loaded = load_pairs(pairs, invert=invert, info_bar_rows=cfg.data.info_bar_rows,
                        pixel_size_nm=cfg.data.pixel_size_nm)
    typer.echo(f"{len(loaded)} training pairs from {pairs}")
    model = train_net(loaded, cfg.segment, out, device=dev, rng=seed_everything(cfg.seed),
                      pixel_size_nm=cfg.data.pixel_size_nm)
    typer.echo(f"model: {model}")


@app.command()
def predict(
    images: list[Path] = typer.Argument(..., help="Micrographs and/or folders of micrographs."),
    model: Path = typer.Option(..., "--model", "-m", help="Model written by `nanoseg segment train` (model.pt), or its ONNX export."),
    out: Path = typer.Option(Path("segmented"), "--out", "-o", help="Output folder."),
    config: Optional[Path] = common.ConfigOpt,
    profile: Optional[str] = common.ProfileOpt,
    sets: Optional[list[str]] = common.SetOpt,
    device: Optional[str] = common.DeviceOpt,
    pixel_size: Optional[str] = common.PixelSizeOpt,
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write OUT/probabilities/<stem>.tif, "
                                       "the particle probability (float32) that `nanoseg evaluate` scores."),
    strict: bool = common.StrictOpt,
    workers: Optional[int] = common.WorkersOpt,
    scheduler: Optional[str] = common.SchedulerOpt,
) -> None:
    """Segment micrographs of any size into particle instances.

    Writes OUT/labels/<stem>.tif (uint16/uint32 instance labels), OUT/binary/<stem>.tif (0/255,
    touching particles separated by 1-px lines), OUT/overlays/<stem>.png, OUT/summary.json
    (particles and seconds per image, the images left out and why) and, with --probabilities,
    OUT/probabilities/<stem>.tif. Post-processing settings come from the model; override them
    with --set (e.g. --set segment.min_size_px=20).

    A micrograph that cannot be read or segmented is left out: the others are segmented, every
    one left out is listed at the end, and the exit status is 1 (--strict stops at the first
    instead). OUT must be new, empty, or an earlier `segment predict` output, whose files are
    then replaced; its micrographs segmented with the same model and settings are not segmented
    again (OUT/markers/<stem>.json), so a killed batch resumes. --workers N runs the images on N
    local processes, --scheduler on a running Dask cluster.

    Example:

      nanoseg segment predict ../shared/data/bam-tio2/sem --model seg-model/model.pt --out seg

      nanoseg segment predict a.tif b.tif --model model.pt --set segment.threshold=0.4
    """
    if not model.is_file():
        raise NanosegError(f"{model}: model file not found (train one with `nanoseg segment train`)")
    common.check_workers(workers, scheduler)
    paths = common.expand_images(images)
    with common.out_lock(out):
        stale = [p for p in common.outputs_to_replace(out, "segment predict", PREDICT_OWNED, [*paths, model])
                 if p.name not in PREDICT_RESUMABLE or (p.name == "probabilities" and not probabilities)]
        cfg = common.resolve_model_config(model, config, profile, sets, device, pixel_size)
        dev = common.prepare_torch(cfg)
        from nanoseg.atomic import replacing, write_json
        from nanoseg.segment.batch import segment_batch

        batch = segment_batch(paths, out, cfg, model, device=dev, probabilities=probabilities, strict=strict,
                              workers=workers, scheduler=scheduler,
                              before_writing=lambda _frames: common.claim_outputs(out, "segment predict", stale))
        summary = [{"image": m["image"], "particles": m["particles"], "seconds": m["seconds"]} for m in batch.markers]
        failures = batch.failures
        with replacing(out, stale) as new:
            write_json(new / "summary.json", {"model": str(model), "n_images": len(paths),
                                              "n_segmented": len(summary), "images": summary, "failures": failures})
    for row in summary:
        typer.echo(f"{row['image']}: {row['particles']} particles ({row['seconds']:.1f} s)")
    typer.echo(f"results: {out}")
    common.report_failures(failures, len(paths))


@app.command()
def export(
    model: Path = typer.Argument(..., help="Model written by `nanoseg segment train` (model.pt)."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Output ONNX file (--format onnx)."),
    fmt: str = typer.Option("onnx", "--format", help="onnx, or bioimageio: a bioimage.io model package (zip) "
                            "with TorchScript and ONNX weights, test tensors, cover and documentation."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file: the .onnx or the package .zip."),
    sample: Optional[Path] = typer.Option(None, "--sample", help="bioimageio: micrograph whose centre crop is the "
                                          "package's test input (default: synthetic discs)."),
) -> None:
    """Export a segmentation model to ONNX or as a bioimage.io model package.

    ONNX: input 'image' N x 1 x H x W, any H and W; output 'probabilities'. bioimageio: a zip
    (spec format 0.5) whose weights output the class probabilities; nanoseg's watershed is not
    part of it (needs `pip install "nanoseg[bioimageio]"`).

    Example:

      nanoseg segment export seg-model/model.pt --onnx seg-model/model.onnx

      nanoseg segment export seg-model/model.pt --format bioimageio --out seg-model/nanoseg.zip
    """
    if fmt not in ("onnx", "bioimageio"):
        raise NanosegError(f"--format {fmt}: use onnx or bioimageio")
    if onnx is not None and (fmt != "onnx" or out is not None):
        raise NanosegError("--onnx names the output of --format onnx alone; give --out instead")
    if fmt == "onnx" and sample is not None:
        raise NanosegError("--sample is for --format bioimageio")
    target = onnx or out
    if target is None:
        raise NanosegError("no output file: give --out")
    if not model.is_file():
        raise NanosegError(f"{model}: model file not found (train one with `nanoseg segment train`)")
    if fmt == "onnx":
        from nanoseg.segment import export_onnx

        typer.echo(f"onnx: {export_onnx(model, target)}")
        return
    from nanoseg.segment.bioimageio import export_bioimageio, require_bioimageio

    require_bioimageio()  # before loading torch and the model: the missing package is the first thing to say
    typer.echo(f"bioimage.io package: {export_bioimageio(model, target, sample=sample)}")
