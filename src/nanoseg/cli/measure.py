"""``nanoseg measure``: from micrographs to a calibrated particle table, size distribution and report.

Nothing heavy is imported at module level so that ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nanoseg.cli import common

#: What `nanoseg measure` writes into --out; a rerun into the same folder replaces exactly these,
#: except the per-image outputs of nanoseg.measure.batch.PER_IMAGE_DIRS, which it reuses where
#: they are still valid (so a killed batch resumes).
OWNED = ("particles.csv", "decisions.csv", "summary.json", "report.html", "hist_*.png", "hist_*.svg",
         "compare_*.png", "compare_*.svg", "overlays", "segment", "particles.parquet", "markers")
RESUMABLE = ("overlays", "segment", "particles.parquet", "markers")


def command(
    images: list[Path] = typer.Argument(..., help="Micrographs and/or folders of micrographs."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Segmentation model (e.g. RUN/adapt/model.pt) or its ONNX export."),
    labels: Optional[Path] = typer.Option(None, "--labels", "-l", help="Folder of instance label images <stem>.tif "
                                          "to measure instead of segmenting."),
    classifier: Optional[Path] = typer.Option(None, "--classifier", help="Keep/discard network (e.g. "
                                              "RUN/classify/model.pt); without it the rules alone decide."),
    out: Path = typer.Option(Path("measured"), "--out", "-o", help="Output folder."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write OUT/segment/probabilities/<stem>.tif "
                                       "(particle probability, for `nanoseg evaluate --scores` and the paper protocol)."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="Another particles.csv (e.g. from manual masks) "
                                           "to compare with: overlaid histograms and a two-sample KS test."),
    config: Optional[Path] = common.ConfigOpt,
    profile: Optional[str] = common.ProfileOpt,
    sets: Optional[list[str]] = common.SetOpt,
    device: Optional[str] = common.DeviceOpt,
    pixel_size: Optional[str] = common.PixelSizeOpt,
    strict: bool = common.StrictOpt,
    overlays: bool = typer.Option(False, "--overlays", help="Draw OUT/overlays/<stem>.png for every micrograph "
                                  "(default: only for those the report shows, measure.report_overlays)."),
    workers: Optional[int] = common.WorkersOpt,
    scheduler: Optional[str] = common.SchedulerOpt,
) -> None:
    """Segment, classify and measure particles; write the table, size distribution and HTML report.

    Writes OUT/particles.csv (every particle, kept or not and why; lengths in nm when the pixel
    size is known), OUT/decisions.csv, OUT/summary.json (count, mean, sd, median, D10/D50/D90
    per descriptor with bootstrap 95 % confidence intervals of the median and the mean,
    log-normal fits, EC nanomaterial check, the counting rule and any method that fell back),
    histograms (PNG + SVG), overlays (kept green, discarded red) and OUT/report.html
    (self-contained).

    A micrograph that cannot be read or segmented is left out: the others are measured, every
    one left out is listed at the end and in summary.json (failures), and the exit status is 1
    (--strict stops at the first instead). OUT must be new, empty, or an earlier `nanoseg
    measure` output, whose files are then replaced; its micrographs that were measured with the
    same settings and models are not measured again, so a killed batch resumes where it stopped.

    Each micrograph is one task: with --workers N on N processes of this machine, with
    --scheduler on an existing Dask cluster. Per image it writes OUT/segment/labels/<stem>.tif,
    OUT/particles.parquet/<stem>.parquet and OUT/markers/<stem>.json.

    Example:

      nanoseg measure ../shared/data/bam-tio2/sem --model runs/tio2/adapt/model.pt --classifier runs/tio2/classify/model.pt --out tio2-sizes

      nanoseg measure img.tif --labels my-labels/ --pixel-size 7.34nm --compare manual/particles.csv --out compared

      nanoseg measure series/ --model model.pt --workers 2 --out series-sizes
    """
    paths = common.expand_images(images)
    inputs = [p for p in (*paths, labels, compare, model, classifier) if p is not None]
    common.check_workers(workers, scheduler)
    with common.out_lock(out):
        stale = [p for p in common.outputs_to_replace(out, "measure", OWNED, inputs) if p.name not in RESUMABLE]
        # Per-image folders this call does not write are not left from another call either.
        unwritten = ([out / "segment"] if labels is not None else [] if probabilities
                     else [out / "segment" / "probabilities"])
        stale += [p for p in unwritten if p.is_dir()]
        if model is not None and labels is None:
            cfg = common.resolve_model_config(model, config, profile, sets, device, pixel_size)
        else:
            cfg = common.resolve_config(config, profile, sets, None, device, pixel_size)
        from nanoseg.measure import measure_files
        from nanoseg.runtime import configure_torch, select_device

        configure_torch(cfg.num_threads)
        summary = measure_files(paths, out, cfg, model=model, labels_dir=labels, classifier=classifier,
                                compare_csv=compare, device=select_device(cfg.device),
                                probabilities=probabilities, strict=strict, overlays=overlays, workers=workers,
                                scheduler=scheduler, before_writing=lambda: common.claim_outputs(out, "measure", stale),
                                replaces=stale)
    for warning in summary.get("warnings", []):
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"kept {summary['n_kept']} of {summary['n_particles']} particles in {summary['n_images']} images")
    min_feret = summary["descriptors"]["min_feret"]
    if min_feret.get("median_ci95"):
        low, high = min_feret["median_ci95"]
        typer.echo(f"median min Feret diameter {min_feret['median']:.4g} {min_feret['unit']} "
                   f"(95 % CI {low:.4g}-{high:.4g} {min_feret['unit']})")
    typer.echo(summary["ec_definition"]["statement"])
    if "comparison" in summary:
        ks = summary["comparison"]
        typer.echo(f"KS test vs {compare}: D = {ks['ks_statistic']:.3f}, p = {ks['p_value']:.3g}")
    typer.echo(f"results: {out}" + (f" (report: {out / 'report.html'})" if cfg.measure.report else ""))
    common.report_failures(summary["failures"], len(paths))
