"""Measuring a set of images and writing the results: the pipeline stage and ``nanoseg measure``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from nanoseg import atomic, nets
from nanoseg.atomic import atomic_path, replacing, write_text
from nanoseg.batch import text_name
from nanoseg.classify import counting_rule
from nanoseg.errors import NanosegError
from nanoseg.grid import working_scale
from nanoseg.io import list_images, write_png
from nanoseg.measure.batch import measure_batch, pooled_table
from nanoseg.measure.distributions import (
    BOOTSTRAP_RESAMPLES,
    MAIN_DESCRIPTORS,
    column_unit,
    compare_distributions,
    ec_definition_check,
    size_summary,
)
from nanoseg.measure.figures import DESCRIPTOR_LABELS, overlay_kept, plot_comparison, plot_histogram
from nanoseg.measure.report import render_report
from nanoseg.measure.table import ParticleTable, classifier_settings
from nanoseg.particles import nm_column

logger = logging.getLogger("nanoseg.measure")


# --------------------------------------------------------------------------------------------
# Measuring a set of images and writing the results
# --------------------------------------------------------------------------------------------


def _read_size_prior(run_dir: Path | None) -> dict[str, Any]:
    """The size prior the masks were built with, as recorded by the shapes/masks stages."""
    found: dict[str, Any] = {}
    if run_dir is not None:
        for stage in ("masks", "shapes"):
            path = run_dir / stage / "stats.json"
            try:
                stats = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for key, value in stats.items():
                # the prior itself, and what it did to the particle size of the fake masks
                if "size_prior" in key or (key in ("size_factor", "resulting_median_ecd_px") and "size_prior" in stats):
                    found[f"{stage}.{key}"] = round(value, 4) if isinstance(value, float) else value
    return found


def size_prior_fallbacks(size_prior: Any) -> list[str]:
    """Sentences for every stage whose size prior differs from the configured one.

    Parameters
    ----------
    size_prior : any
        As from :func:`_read_size_prior`: ``{'<stage>.size_prior': used,
        '<stage>.size_prior_configured': configured, ...}``; anything else has no fallback.
    """
    if not isinstance(size_prior, Mapping):
        return []
    out = []
    for key, configured in size_prior.items():
        if not key.endswith(".size_prior_configured"):
            continue
        stage = key.removesuffix(".size_prior_configured")
        used = size_prior.get(f"{stage}.size_prior")
        if used is not None and used != configured:
            out.append(f"the {stage} stage was configured with size_prior={configured} but fell back to "
                       f"size_prior={used}: the training masks' particle sizes follow {used}")
    return out


def write_results(
    particles: pd.DataFrame | ParticleTable,
    out_dir: Path,
    *,
    micrographs: Mapping[str, np.ndarray] | None = None,
    labels: Mapping[str, np.ndarray] | None = None,
    overlay_files: Mapping[str, Path] | None = None,
    bins: int = 30,
    fit: bool = True,
    report: bool = True,
    pixel_size_source: str = "unknown",
    size_prior: Any = "unknown",
    compare: tuple[str, pd.DataFrame] | None = None,
    extra: Mapping[str, Any] | None = None,
    report_rows: int = 50,
    report_overlays: int = 12,
    counting_rule: Mapping[str, Any] | None = None,
    warnings: Sequence[str] = (),
    seed: int = 0,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """Write ``particles.csv``, ``summary.json``, histograms, overlays and ``report.html``.

    Parameters
    ----------
    particles : pandas.DataFrame or ParticleTable
        Every particle with ``image``, ``kept`` and ``reason`` (see :func:`join_decisions`),
        written to ``particles.csv``; or a :class:`ParticleTable` of a table whose
        ``particles.csv`` its maker wrote.
    out_dir : path
        Output folder.
    micrographs, labels : mapping of image name -> array, optional
        For the overlay PNGs (kept green, discarded red).
    overlay_files : mapping of image name -> path, optional
        Overlay PNGs drawn already (by a batch's tasks), for the report.
    bins : int
        Histogram bins.
    fit : bool
        Fit log-normals.
    report : bool
        Render ``report.html``.
    pixel_size_source : str
        Where the pixel size came from (stated in the report).
    size_prior : any
        The size prior used to build the fake masks ('unknown' when not recorded).
    compare : (name, DataFrame), optional
        Another particle table (e.g. manual); its kept particles are compared with these by
        a KS test on the minimum Feret diameter, with overlaid histograms.
    extra : mapping, optional
        More entries for ``summary.json``.
    report_rows, report_overlays : int
        Particles listed and overlays embedded in the report.
    counting_rule : mapping, optional
        Which particles were counted (see :func:`nanoseg.classify.counting_rule`); the pixel
        size and its source are added. Without it the rule is recorded as not stated.
    warnings : sequence of str
        Methods that switched silently on the way (e.g. classifier requested but missing);
        a fallback of the size prior recorded in ``size_prior`` is added here.
    seed, n_resamples : int
        Seed and resamples of the bootstrap confidence intervals (see :func:`bootstrap_ci`).

    Returns
    -------
    dict
        The summary written to ``summary.json``: counts, discard reasons, pixel size,
        ``counting_rule``, ``warnings``, ``descriptors`` (see :func:`size_summary`) and
        ``ec_definition``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(particles, pd.DataFrame):
        with atomic_path(out_dir / "particles.csv") as tmp:
            particles.to_csv(tmp, index=False, float_format="%.6g")
        table = ParticleTable.of(particles, report_rows)
    else:
        table = particles
    kept = table.kept
    summary_desc = size_summary(kept, MAIN_DESCRIPTORS, fit=fit, n_resamples=n_resamples, seed=seed)
    pixel_sizes = table.pixel_sizes
    pixel_size_nm = pixel_sizes[0] if len(pixel_sizes) == 1 else (pixel_sizes or None)
    rule = dict(counting_rule) if counting_rule is not None else {
        "method": None, "rules": None, "classifier": None, "edge_particles_excluded": None,
        "partly_covered_excluded": None, "partly_covered_excluded_by": None}
    rule.update(pixel_size_nm=pixel_size_nm, pixel_size_source=pixel_size_source)
    all_warnings = list(warnings)
    for text in size_prior_fallbacks(size_prior):
        logger.warning("measure: %s", text)
        all_warnings.append(text)
    min_feret = summary_desc["min_feret"]
    ec = ec_definition_check(kept, "min_feret_nm", median_ci95_nm=min_feret.get("median_ci95")
                             if min_feret["column"] == "min_feret_nm" else None)
    summary: dict[str, Any] = {
        "n_images": table.n_images,
        "n_particles": table.n_particles,
        "n_kept": int(len(kept)),
        "n_discarded": table.n_particles - len(kept),
        "discard_reasons": table.reasons,
        "pixel_size_nm": pixel_size_nm,
        "pixel_size_source": pixel_size_source,
        "size_prior": size_prior,
        "counting_rule": rule,
        "warnings": all_warnings,
        "descriptors": summary_desc,
        "ec_definition": ec,
    }
    figures: dict[str, Path] = {}
    for stem in MAIN_DESCRIPTORS:
        entry = summary_desc[stem]
        col = entry["column"]
        paths = plot_histogram(kept[col].to_numpy(dtype=float) if len(kept) else np.array([]),
                               out_dir / f"hist_{stem}", title=f"{DESCRIPTOR_LABELS[stem]} (kept particles)",
                               xlabel=f"{DESCRIPTOR_LABELS[stem]} / {entry['unit']}", bins=bins, lognormal=entry.get("lognormal"))
        figures[stem] = paths[0]
    if compare is not None:
        other_name, other = compare
        col = summary_desc["min_feret"]["column"]
        if col not in other.columns:
            raise NanosegError(f"--compare {other_name}: no column '{col}' (measure both with the same pixel-size setting)")
        other_kept = other[other["kept"].astype(bool)] if "kept" in other.columns else other
        ks = compare_distributions(kept[col], other_kept[col])
        ks.update(column=col, name_a="this run", name_b=other_name)
        paths = plot_comparison(kept[col], other_kept[col], out_dir / "compare_min_feret", names=("this run", other_name),
                                xlabel=f"minimum Feret diameter / {column_unit(col)}", bins=bins, ks=ks)
        figures["comparison"] = paths[0]
        summary["comparison"] = ks
    overlays: dict[str, Path] = dict(overlay_files or {})
    if micrographs and labels:
        for name, image in micrographs.items():
            if name not in labels:
                continue
            keep_ids = kept.loc[kept["image"] == name, "label"].to_numpy()
            path = out_dir / "overlays" / f"{name}.png"
            write_png(path, overlay_kept(image, labels[name], keep_ids))
            overlays[name] = path
    if extra:
        summary.update(extra)
    atomic.write_json(out_dir / "summary.json", summary)  # looked up per call: tests fill the disk here
    if report:
        write_text(out_dir / "report.html", render_report(summary, table.head, figures=figures, overlays=overlays,
                                                                max_rows=report_rows, max_overlays=report_overlays))
    return summary


_SOURCE_WORDS = {"override": "set by the user (data.pixel_size_nm / --pixel-size)", "rsciio": "vendor TIFF metadata",
                 "ome": "OME-TIFF metadata", "imagej": "ImageJ TIFF metadata", "tiff": "TIFF resolution tags"}


def results_settings(config: Any) -> dict[str, Any]:
    """The :func:`write_results` arguments that come from the config, the same for the pipeline,
    ``nanoseg measure`` and the napari plugin."""
    m = config.measure
    return {"bins": m.histogram_bins, "fit": m.fit_lognormal, "report": m.report, "report_rows": m.report_rows,
            "report_overlays": m.report_overlays, "seed": config.seed}


def pixel_size_source(micrographs: Sequence[Any]) -> str:
    """One phrase saying where the micrographs' pixel sizes came from."""
    sources = [getattr(m, "pixel_size_source", "none") if m.pixel_size_nm is not None else "none" for m in micrographs]
    known = [s for s in sources if s != "none"]
    if not known:
        return "unknown: no pixel size in the image metadata and none set (sizes in px)"
    words = ", ".join(sorted({_SOURCE_WORDS.get(s, s) for s in known}))
    if len(known) < len(sources):
        return f"{words} for {len(known)} of {len(sources)} images (the others are measured in px only)"
    return words


def run_stage(ctx: Any) -> None:
    """Pipeline stage 7: ``nanoseg measure`` on the run's own label images and classifier.

    The same per-image tasks, pooled tables and report as the command (:func:`measure_files`),
    so a run and a later ``nanoseg measure --labels RUN/adapt/labels --classifier
    RUN/classify/model.pt`` give the same particles.csv; a micrograph that cannot be read is left
    out and listed, as the earlier stages did.
    """
    cfg = ctx.config
    classifier = ctx.stage_dir("classify") / "model.pt"
    # Particles are measured and classified on the grid the nets learned at: on a resampled
    # working grid (nanoseg.grid) that is the model's, not the label images' (on the micrographs').
    by_model = working_scale(cfg) != 1.0
    summary = measure_files([cfg.data.images], ctx.out_dir, cfg,
                            model=ctx.stage_dir("adapt") / "model.pt" if by_model else None,
                            labels_dir=None if by_model else ctx.stage_dir("adapt") / "labels",
                            classifier=classifier if classifier.is_file() else None, device=ctx.device,
                            strict=False, overlays=True, run_dir=ctx.run_dir,
                            classifier_option="classify/model.pt (rerun with --from classify)")
    ctx.log.info("measure: %d of %d particles kept in %d images; %s", summary["n_kept"], summary["n_particles"],
                 summary["n_images"], summary["ec_definition"]["statement"])


def _read_adaptation(run_dir: Path) -> list[dict[str, Any]] | None:
    """The self-training rounds the adapt stage wrote (``adapt/rounds.json``), without per-image rows."""
    path = run_dir / "adapt" / "rounds.json"
    try:
        rounds = json.loads(path.read_text())["rounds"] if path.is_file() else None
    except (ValueError, KeyError):
        logger.warning("measure: %s is unreadable; the report leaves the adaptation rounds out", path)
        return None
    return [{k: v for k, v in r.items() if k != "images"} for r in rounds] if rounds is not None else None


def _read_realism(run_dir: Path) -> dict[str, Any] | None:
    """The fake micrographs' realism scores the pairs stage wrote (``pairs/realism.json``), if any."""
    path = run_dir / "pairs" / "realism.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        logger.warning("measure: %s is unreadable; the report leaves the realism out", path)
        return None


def read_particles_csv(path: str | Path, column: str | None = None) -> pd.DataFrame:
    """Read a ``particles.csv`` written by this module (or any table with the same columns).

    Parameters
    ----------
    path : path-like
    column : str, optional
        A size column the table must have, numeric, with at least one kept particle.

    Raises
    ------
    NanosegError
        If the file is missing or not a readable table, or ``column`` is missing or unusable.
    """
    path = Path(path)
    fix = "give a particles.csv from `nanoseg measure`"
    if not path.is_file():
        raise NanosegError(f"{path}: particle table not found ({fix})")
    try:
        df = pd.read_csv(path, dtype={"image": str, "reason": str}, keep_default_na=False,
                         na_values={c: ["", "nan", "NaN"] for c in ("score",)})
    except ValueError as exc:  # what pandas raises for a malformed, empty or undecodable file
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise NanosegError(f"{path}: not a readable CSV table ({reason}); {fix}") from None
    if "kept" in df.columns:
        df["kept"] = df["kept"].astype(str).str.lower().isin(["true", "1", "yes"])
    if column is not None:
        if column not in df.columns:
            raise NanosegError(f"{path}: no column '{column}' ({fix}, measured with the same pixel-size setting)")
        given = df[column].replace("", np.nan)
        values = pd.to_numeric(given, errors="coerce")
        if (values.isna() & given.notna()).any():
            raise NanosegError(f"{path}: column '{column}' holds values that are not numbers ({fix})")
        df[column] = values
        kept = values[df["kept"]] if "kept" in df.columns else values
        if not np.isfinite(kept.to_numpy(dtype=float)).any():
            raise NanosegError(f"{path}: no kept particle with a '{column}' to compare with ({fix} that has some)")
    return df


def measure_files(
    images: Sequence[str | Path],
    out_dir: str | Path,
    config: Any,
    *,
    model: str | Path | None = None,
    labels_dir: str | Path | None = None,
    classifier: str | Path | None = None,
    compare_csv: str | Path | None = None,
    device: Any = "cpu",
    probabilities: bool = False,
    strict: bool = True,
    overlays: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    before_writing: Callable[[], None] | None = None,
    replaces: Sequence[str | Path] = (),
    run_dir: str | Path | None = None,
    classifier_option: str = "--classifier",
) -> dict[str, Any]:
    """Segment (or read labels of), classify and measure micrographs; write all results.

    One task per micrograph (:mod:`nanoseg.measure.batch`), in this process or on a Dask
    cluster; an image measured by an earlier call into ``out_dir`` with the same settings is
    not measured again. The pooled table, summary and report come from the per-image results;
    they replace an earlier call's only once they are all written (:func:`nanoseg.atomic.replacing`),
    so a call that fails on the way leaves the earlier results whole.

    Parameters
    ----------
    images : sequence of path
        Micrograph files or folders of them.
    out_dir : path
        Output folder: ``particles.csv``, ``particles.parquet/``, ``decisions.csv``,
        ``summary.json``, histograms, ``overlays/``, ``report.html`` (and ``segment/labels/``
        when segmenting), ``markers/`` (one per image done).
    config : Config
        Uses ``data`` (pixel size, info bar, dark particles), ``segment``, ``classify``, ``measure``.
    model : path, optional
        Segmentation model (``adapt/model.pt`` of a run); used unless ``labels_dir`` is given.
    labels_dir : path, optional
        Folder of instance label images ``<stem>.tif`` matching the micrographs.
    classifier : path, optional
        Keep/discard network (``classify/model.pt``). Without it the rules alone decide.
    compare_csv : path, optional
        Another ``particles.csv`` to compare the kept min Feret distribution with (KS test).
    device : torch.device or str
    probabilities : bool
        When segmenting, also write ``segment/probabilities/<stem>.tif`` (particle probability).
    strict : bool
        Raise at the first micrograph that cannot be read, segmented or paired with its labels.
        Otherwise such a micrograph is left out with a warning and listed in the summary's
        ``failures`` (``{"image": path, "error": reason}``); it raises only when none is left.
    overlays : bool
        Draw ``overlays/<stem>.png`` for every micrograph; otherwise only for those the report
        shows (``measure.report_overlays``).
    workers : int, optional
        Local Dask worker processes; default: every image in this process.
    scheduler : str, optional
        Address of an existing Dask scheduler to run the images on.
    before_writing : callable, optional
        Called once every input has been checked, before the first file is written: the place
        to claim the folder; an input error then leaves it as it was.
    replaces : sequence of path
        Earlier outputs in ``out_dir`` that this call's results replace (an earlier run's pooled
        files, per-image folders this call does not write): removed once the new results are
        complete, not before.
    run_dir : path, optional
        The run folder the model and labels come from, for the size prior, the fakes' realism and
        the self-training rounds it recorded; default: the run folder of ``model``
        (``RUN/adapt/model.pt``), if it is one.
    classifier_option : str
        What the warning names when the settings ask for a classifier and none is given.

    Returns
    -------
    dict
        The summary written to ``summary.json``.
    """
    out_dir = Path(out_dir)
    # Folders are listed; files are kept as given, so that a wrong one fails alone when not strict.
    paths = [p for item in images for p in (list_images(item) if Path(item).is_dir() else [Path(item)])]
    if not paths:
        raise NanosegError("measure: no micrographs given")
    if labels_dir is None and model is None:
        raise NanosegError("measure: give --model (a segmentation model) or --labels (a folder of label images)")
    if labels_dir is not None and not Path(labels_dir).is_dir():
        raise NanosegError(f"--labels {labels_dir}: no such folder (give the folder of label images <stem>.tif)")
    cls_cfg, calibration, warnings = classifier_settings(classifier, config.classify, option=classifier_option)
    if run_dir is None and model is not None:
        run_dir = Path(model).resolve().parent.parent
    compare = None

    def checked(frames: list[Any]) -> None:
        nonlocal compare
        warnings.extend(classifier_scale_warning(classifier, model if labels_dir is None else None, frames))
        if compare_csv is not None:
            # Checked before anything is written: a bad table then leaves no outputs behind.
            calibrated = all(f.pixel_size_nm is not None for f in frames)
            compare = (Path(compare_csv).name,
                       read_particles_csv(compare_csv, nm_column("min_feret") if calibrated else "min_feret_px"))
        if before_writing is not None:
            before_writing()

    batch = measure_batch(paths, out_dir, config, model=model, labels_dir=labels_dir, classifier=classifier,
                          device=device, probabilities=probabilities, overlays=overlays, strict=strict,
                          workers=workers, scheduler=scheduler, before_writing=checked)
    warnings += [*batch.warnings, *left_out_warning(batch.failures, len(paths))]
    measured = [SimpleNamespace(pixel_size_nm=m["pixel_size_nm"], pixel_size_source=m["pixel_size_source"])
                for m in batch.markers]
    overlay_files = {text_name(m["image"]): p for m in batch.markers
                     if (p := out_dir / "overlays" / f"{m['image']}.png").is_file()}
    with replacing(out_dir, replaces) as new:
        return write_results(
            pooled_table(batch, out_dir, config.measure.report_rows, dest=new), new, overlay_files=overlay_files,
            pixel_size_source=pixel_size_source(measured), compare=compare,
            size_prior=(_read_size_prior(Path(run_dir)) if run_dir is not None else None) or "unknown",
            extra={"classify_method": cls_cfg.method, "failures": batch.failures,
                   "realism": _read_realism(Path(run_dir)) if run_dir is not None else None,
                   "adaptation": _read_adaptation(Path(run_dir)) if run_dir is not None else None},
            counting_rule=counting_rule(cls_cfg, classifier_model=classifier, calibration=calibration),
            warnings=warnings, **results_settings(config),
        )


#: Pixel sizes further apart than this (relative) make a classifier judge particles of another size in px.
CLASSIFIER_SCALE_TOLERANCE = 0.05


def classifier_scale_warning(classifier: str | Path | None, model: str | Path | None,
                             frames: Sequence[Any]) -> list[str]:
    """A warning when the keep/discard classifier was trained at another pixel size than the one it
    judges particles at: the segmentation model's (images are resampled to it) or, for label
    images, the micrographs' own. Its rules in px and its learned sizes then mean other particles."""
    if classifier is None:
        return []
    trained = nets.load_meta(classifier, kind="classifier").get("pixel_size_nm")
    if not trained:
        return []
    at = None
    if model is not None and Path(model).suffix.lower() == ".pt":
        at = nets.load_meta(model, kind="segmenter").get("pixel_size_nm")
    sizes = {at} if at else {f.pixel_size_nm for f in frames if f.pixel_size_nm}
    off = sorted(s for s in sizes if abs(s / trained - 1) > CLASSIFIER_SCALE_TOLERANCE)
    if not off:
        return []
    text = (f"the classifier {Path(classifier).name} was trained at {trained:g} nm per pixel but judges particles at "
            f"{', '.join(f'{s:g}' for s in off)} nm per pixel: its keep decisions may not hold there (train it on "
            "this magnification, or leave --classifier out to keep by the rules)")
    logger.warning("%s", text)
    return [text]


def left_out_warning(failures: Sequence[dict[str, str]], n_images: int) -> list[str]:
    """The report's warning that the results lack some micrographs (none when ``failures`` is empty)."""
    if not failures:
        return []
    names = ", ".join(Path(f["image"]).name for f in failures)
    return [f"{len(failures)} of {n_images} micrographs could not be used and are not in these results: {names} "
            "(the reasons are under failures in summary.json)"]

