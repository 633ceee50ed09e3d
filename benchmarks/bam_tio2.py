"""Reproducible benchmark on the public BAM TiO2 SEM images (Rühle et al., Sci. Rep. 11, 4942, 2021).

Scores the baselines the paper compares on a fixed validation split of the 30 shared images
with every metric of :mod:`nanoseg.metrics` under both protocols (``paper`` and ``strict``),
compares the size distributions after the keep/discard step with the manual masks + manual
classes, records wall time and peak memory, and writes ``benchmarks/results/bam_tio2.md``
(and ``.json``).

Split (fixed, listed below): the 30 shared ids sorted ascending; every 5th one, starting with
the first (positions 0, 5, 10, 15, 20, 25), is a validation image, the other 24 train. The rule
spreads the validation images over the whole acquisition series. The paper's own six validation
images are among the ten images held back from this project, so its numbers are not directly
comparable with ours (different images).

Baselines (each a function ``(config, work_dir) -> BaselineRun`` with predictions for the
validation images -- probability maps (float in [0, 1]) or label images -- and the particles
kept by the keep/discard step). Every network is trained with the settings of ``--profile``
(``quick`` by default; ``--smoke`` divides every step count by 50 and draws random polygons
instead of WGAN shapes, to check the script end to end in minutes -- its numbers mean nothing):

- ``manual_masks``: the manual masks themselves -- a check of the scoring path (scores perfectly).
- ``a_cyclegan_direct``: the CycleGAN's image-to-mask generator (trained by the workflow's
  ``translate`` stage, on fake masks and the 24 training images) used directly as segmenter.
- ``b_simulated_workflow``: the full workflow (:func:`nanoseg.pipeline.run_pipeline`: shapes from
  the outlines, fake masks, CycleGAN, pairs, segmentation network, keep/discard classifier),
  trained on simulated data only; ``data.images`` = the 24 training images. (a) and (b) share
  the stages up to ``translate`` (one run folder; the pipeline skips finished stages).
- ``c_tsem_unet``: a UNet trained on masks made automatically from the registered TSEM images of
  the 24 training images (:func:`nanoseg.evaluate.baselines.make_tsem_training_set`).
- ``d_manual_unet``: a UNet trained on the manual masks of the 24 training images.

The ``paper`` protocol scores the particle probability (1 - background probability of the
three-class target) with the authors' own post-processing (threshold sweep + distance
watershed). The ``strict`` protocol scores what each baseline itself delivers: the segment
stage's instance labels (three-class watershed) for (b), (c) and (d), threshold 0.5 + the
paper's watershed for (a); the probability map serves only for the ROC (Youden). The kept
particles are those instances after the keep/discard step: the workflow's trained classifier
for (b), the classifier's rules (border contact etc.) for (a), (c) and (d), which have no
classifier.

    python -m benchmarks.bam_tio2 [--baselines manual_masks,a_cyclegan_direct] [--profile quick]
    python -m benchmarks.bam_tio2 --smoke      # minutes; writes results/bam_tio2_smoke.md
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    DATA,
    RESULTS,
    ROOT,
    SMOKE_FACTOR,
    TRAIN_IDS,
    VALIDATION_IDS,
    benchmark_config,
    cpu_count,
    device_name,
    finite,
    keep_discard,
    manual_kept_labels,
    manual_mask,
    pixel_size_nm,
    rules_only,
    unet_config,
)
from nanoseg.atomic import write_json, write_text
from nanoseg.config import Config
from nanoseg.errors import NanosegError
from nanoseg.runtime import peak_rss_mb

logger = logging.getLogger("nanoseg.benchmarks.bam_tio2")

#: Table 1 of Rühle et al. (2021), labelled as paper reference values in the report:
#: {method: {metric: value}}. Left empty: the values could not be retrieved from the sources
#: available while this script was written. Enter them from the paper (with the page/table
#: reference) -- they are the only hand-typed numbers allowed in the report.
PAPER_TABLE1: dict[str, dict[str, float]] = {}


# --------------------------------------------------------------------------------------------
# Runs and resources
# --------------------------------------------------------------------------------------------


@dataclass
class BaselineRun:
    """What a baseline hands back for scoring.

    Attributes
    ----------
    predictions : dict
        Validation id -> (712, 1024) probability map (float in [0, 1]), binary mask or label
        image. The ``paper`` protocol scores these (it thresholds and splits them itself).
    labels : dict, optional
        Validation id -> the baseline's own instance labels (its post-processing, before
        keep/discard). The ``strict`` protocol scores these, with ``predictions`` as the
        probability map of the ROC; default: ``predictions``, split at 0.5.
    kept : dict, optional
        Validation id -> label image of the particles kept by the keep/discard step (for the
        size distributions); default: every predicted particle away from the border.
    stages : dict
        Stage name -> {"wall_s": seconds, "peak_rss_mb": process peak RSS after the stage}.
    notes : str
        One line for the report (settings, profile, device).
    """

    predictions: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] | None = None
    kept: dict[str, np.ndarray] | None = None
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: str = ""


@contextmanager
def stage(run_stages: dict[str, dict[str, float]], name: str):
    """Record the wall time of a stage and the process's peak RSS after it.

    The peak is the running maximum of the process; run one baseline per process for
    per-baseline peaks (``--baselines NAME``).
    """
    t0 = time.perf_counter()
    yield
    run_stages[name] = {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}


# --------------------------------------------------------------------------------------------
# Baselines: each returns predictions for VALIDATION_IDS
# --------------------------------------------------------------------------------------------


def _device(config: Config) -> Any:
    from nanoseg.runtime import configure_torch, select_device

    configure_torch(config.num_threads)
    return select_device(config.device)


def validation_micrographs() -> dict[str, Any]:
    """The validation SEM images (info bar cropped, particles bright), by id."""
    from nanoseg.io import read_micrograph

    return {i: read_micrograph(DATA / "sem" / f"{i}.tif") for i in VALIDATION_IDS}


def link_training_folder(folder: Path, masks: bool) -> Path:
    """``folder/images/<id>.tif`` (and ``folder/masks/<id>_m.tif``) linked to the 24 training files."""
    from nanoseg.evaluate.baselines import link_file

    for i in TRAIN_IDS:
        link_file(DATA / "sem" / f"{i}.tif", folder / "images" / f"{i}.tif")
        if masks:
            link_file(DATA / "masks" / f"{i}_m.tif", folder / "masks" / f"{i}_m.tif")
    return folder


def segment_validation(model: Path, config: Config, device: Any, run: BaselineRun) -> tuple[dict, dict]:
    """Segment the validation images with a trained model; fills ``run.predictions``.

    Returns the validation micrographs and their instance labels, both keyed by image id.
    """
    from nanoseg import nets, segment

    with stage(run.stages, "segment validation images"):
        net, meta = nets.load(model, device)
        micrographs = validation_micrographs()
        labels = {}
        for i, mg in micrographs.items():
            labels[i], run.predictions[i] = segment.segment_image(net, meta, mg.image, config.segment,
                                                                  pixel_size_nm=mg.pixel_size_nm, device=device)
    run.labels = labels
    return micrographs, labels


def train_and_predict(pairs_dir: Path, config: Config, work_dir: Path, run: BaselineRun) -> None:
    """Train the segmentation net on a folder of pairs, segment the validation images (rules keep/discard)."""
    from nanoseg import segment
    from nanoseg.runtime import seed_everything

    device = _device(config)
    with stage(run.stages, "load pairs"):
        pairs = segment.load_pairs(pairs_dir)
    with stage(run.stages, f"train {config.segment.architecture} ({config.segment.steps} steps)"):
        model = segment.train(pairs, config.segment, work_dir / "model", device=device,
                              rng=seed_everything(config.seed), pixel_size_nm=pixel_size_nm())
    micrographs, labels = segment_validation(model, config, device, run)
    with stage(run.stages, "keep/discard (rules)"):
        run.kept = keep_discard(labels, micrographs, rules_only(config))
    run.notes = (f"{config.segment.architecture}, {config.segment.target} target, {config.segment.steps} steps, "
                 f"{len(pairs)} pairs, profile {config.profile}, {device}")


def simulated_run(config: Config, work_dir: Path, to_stage: str | None, run: BaselineRun) -> Path:
    """The workflow on the 24 training images and the outlines (shared by (a) and (b)).

    Stage times are read from the run's completion markers, so a stage finished by an
    earlier baseline (or an earlier, interrupted call) reports its own time.
    """
    from nanoseg.pipeline import STAGE_NAMES, run_pipeline

    run_dir = work_dir.parent / "simulated_run"
    images = link_training_folder(work_dir.parent / "simulated_data", masks=False) / "images"
    config = config.model_copy(deep=True)
    config.data.images = images
    config.data.outlines = DATA / "outlines"
    run_pipeline(config, run_dir, to_stage=to_stage, device=_device(config))
    for name in STAGE_NAMES:
        marker = run_dir / name / ".done.json"
        if marker.is_file():
            run.stages[f"workflow: {name}"] = {"wall_s": json.loads(marker.read_text())["seconds"],
                                               "peak_rss_mb": round(peak_rss_mb(), 1)}
        if name == to_stage:
            break
    return run_dir


def baseline_manual_masks(config: Config, work_dir: Path) -> BaselineRun:
    """The manual masks as predictions: checks that the scoring path scores them perfectly."""
    run = BaselineRun(predictions={}, notes="manual masks scored against themselves (sanity check)")
    with stage(run.stages, "load"):
        run.predictions = {i: manual_mask(i) for i in VALIDATION_IDS}
        run.kept = {i: manual_kept_labels(i) for i in VALIDATION_IDS}
    return run


def baseline_a_cyclegan_direct(config: Config, work_dir: Path) -> BaselineRun:
    """(a) The CycleGAN's image-to-mask generator used directly on the SEM images."""
    from nanoseg import nets
    from nanoseg.metrics import paper_watershed
    from nanoseg.translate import IMAGE_TO_MASK, gan_segment

    config = config.model_copy(deep=True)
    config.translate.method = "cyclegan"
    run = BaselineRun(predictions={})
    run_dir = simulated_run(config, work_dir, "translate", run)
    device = _device(config)
    with stage(run.stages, "segment validation images"):
        generator, _ = nets.load(run_dir / "translate" / IMAGE_TO_MASK, device)
        micrographs = validation_micrographs()
        labels = {}
        for i, mg in micrographs.items():
            run.predictions[i] = gan_segment(mg.image, generator, device, bf16=config.translate.bf16)
            labels[i] = paper_watershed(run.predictions[i] > 0.5, exclude_border=False, keep_unmarked=True)
    run.labels = labels
    with stage(run.stages, "keep/discard (rules)"):
        run.kept = keep_discard(labels, micrographs, rules_only(config))
    run.notes = (f"CycleGAN image->mask generator, {config.translate.steps} steps, profile {config.profile}, "
                 f"{device}; kept: threshold 0.5 + watershed + rules")
    return run


def baseline_b_simulated_workflow(config: Config, work_dir: Path) -> BaselineRun:
    """(b) The full workflow (shapes -> masks -> translate -> segment -> classify), simulated data only."""
    from nanoseg import nets

    run = BaselineRun(predictions={})
    run_dir = simulated_run(config, work_dir, None, run)
    device = _device(config)
    micrographs, labels = segment_validation(run_dir / "segment" / "model.pt", config, device, run)
    with stage(run.stages, f"keep/discard ({config.classify.method})"):
        classifier, classify_cfg = None, config.classify
        if config.classify.method == "network":
            from nanoseg.classify import resolve_threshold

            classifier, meta = nets.load(run_dir / "classify" / "model.pt", device)
            classify_cfg = resolve_threshold(classify_cfg, meta)
        run.kept = keep_discard(labels, micrographs, classify_cfg, net=classifier, device=device)
    run.notes = (f"{config.segment.architecture} {config.segment.steps} steps on {config.translate.n_pairs} "
                 f"simulated pairs ({config.translate.method}), classifier {config.classify.method}, "
                 f"profile {config.profile}, {device}")
    return run


def baseline_c_tsem_unet(config: Config, work_dir: Path) -> BaselineRun:
    """(c) A UNet trained on masks made from the TSEM images (threshold + watershed, registered)."""
    from nanoseg.evaluate.baselines import make_tsem_training_set

    run = BaselineRun(predictions={})
    with stage(run.stages, "TSEM masks (register, threshold, watershed)"):
        records = make_tsem_training_set(DATA, TRAIN_IDS, work_dir / "pairs")
    train_and_predict(work_dir / "pairs", unet_config(config), work_dir, run)
    iou = np.mean([r.iou_aligned for r in records])
    iou0 = np.mean([r.iou_unaligned for r in records])
    run.notes += f"; TSEM masks vs manual masks (training images): IoU {iou0:.3f} unaligned -> {iou:.3f} aligned"
    return run


def baseline_d_manual_unet(config: Config, work_dir: Path) -> BaselineRun:
    """(d) A UNet trained on the manual masks of TRAIN_IDS."""
    run = BaselineRun(predictions={})
    pairs_dir = link_training_folder(work_dir / "pairs", masks=True)
    train_and_predict(pairs_dir, unet_config(config), work_dir, run)
    return run


BASELINES: dict[str, Callable[[Config, Path], BaselineRun]] = {
    "manual_masks": baseline_manual_masks,
    "a_cyclegan_direct": baseline_a_cyclegan_direct,
    "b_simulated_workflow": baseline_b_simulated_workflow,
    "c_tsem_unet": baseline_c_tsem_unet,
    "d_manual_unet": baseline_d_manual_unet,
}


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def score_run(run: BaselineRun) -> dict[str, Any]:
    """Every metric under both protocols, and the size distributions after keep/discard.

    Returns
    -------
    dict
        ``paper`` / ``strict``: per-image records and their mean; ``sizes``: the
        size-distribution table (kept particles vs the manual masks + manual classes).
    """
    from nanoseg.evaluate import compare_sizes, evaluate_predictions, summary_row

    missing = sorted(set(VALIDATION_IDS) - set(run.predictions))
    if missing:
        raise NanosegError(f"baseline returned no prediction for {', '.join(missing)}")
    gts = {i: manual_mask(i) for i in VALIDATION_IDS}
    preds = {i: run.predictions[i] for i in VALIDATION_IDS}
    out: dict[str, Any] = {}
    instances: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for protocol in ("paper", "strict"):
        t0 = time.perf_counter()
        if protocol == "strict" and run.labels is not None:
            df = evaluate_predictions({i: run.labels[i] for i in VALIDATION_IDS}, gts, protocol,
                                      score_maps=preds, instances_out=instances)
        else:
            df = evaluate_predictions(preds, gts, protocol, instances_out=instances if protocol == "strict" else None)
        out[protocol] = {"images": df.to_dict(orient="records"), "mean": summary_row(df),
                         "threshold": df.attrs.get("threshold"), "thresholds": df.attrs.get("thresholds"),
                         "scoring_s": round(time.perf_counter() - t0, 1)}
    kept = run.kept or {i: instances[i][0] for i in VALIDATION_IDS}
    pairs = {i: (np.asarray(kept[i]), manual_kept_labels(i)) for i in VALIDATION_IDS}
    try:
        out["sizes"] = compare_sizes(pairs, pixel_size_nm()).to_dict(orient="records")
    except NanosegError as exc:  # e.g. the keep/discard step kept no particle
        out["sizes"], out["sizes_error"] = [], str(exc)
    out["n_kept_pred"] = int(sum(len(np.unique(p)) - 1 for p, _ in pairs.values()))
    out["n_kept_manual"] = int(sum(len(np.unique(g)) - 1 for _, g in pairs.values()))
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

_PAPER_COLUMNS = ("image_iou", "instance_iou", "instance_iou_area_gt9", "youden", "pixel_error",
                  "split_merge_error", "rand_error", "rand_error_thinned", "info_error_thinned")
_STRICT_COLUMNS = ("image_iou", "instance_iou", "instance_iou_gt", "symmetric_instance_iou", "precision", "recall",
                   "f1", "ap50", "ap50_95", "sq", "rq", "pq", "youden", "warping_error", "split_merge_error",
                   "rand_error", "rand_error_thinned", "info_error_thinned")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_report(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """Markdown report of all baselines; every number comes from ``results`` except the
    paper reference values of :data:`PAPER_TABLE1`."""
    parts = [
        "# BAM TiO2 benchmark",
        "",
        f"Generated by `benchmarks/bam_tio2.py` on {meta['date']} ({meta['machine']}), profile `{meta['profile']}`"
        + (f", total wall time {meta['total_wall_s'] / 60:.1f} min." if "total_wall_s" in meta else "."),
        *([f"**SMOKE RUN** (`--smoke`): every step count divided by {SMOKE_FACTOR}, random polygons instead of WGAN "
           "shapes; it checks that the script runs end to end, its numbers mean nothing.", ""] if meta.get("smoke") else []),
        f"Validation images ({len(VALIDATION_IDS)}): {', '.join(VALIDATION_IDS)}; training images: {len(TRAIN_IDS)} "
        "(every 5th of the 30 sorted shared ids is a validation image).",
        "Protocols: see the docstring of `nanoseg.metrics` (`paper` = as Rühle et al. 2021 scored, "
        "thresholds tuned on these images, the authors' watershed; `strict` = each baseline's own instance labels "
        "(no tuning), missed particles penalised, the probability map only for Youden's ROC).",
        "Errors: lower is better; all other scores: higher is better.",
        "",
    ]
    done = {k: v for k, v in results.items() if "error" not in v}
    not_run = {k: v["error"] for k, v in results.items() if "error" in v}
    if done:
        parts += ["## Baselines", ""] + [f"- `{k}`: {v.get('notes') or '-'}" for k, v in done.items()] + [""]
    for protocol, columns in (("paper", _PAPER_COLUMNS), ("strict", _STRICT_COLUMNS)):
        parts += [f"## Segmentation, `{protocol}` protocol (mean over the validation images)", ""]
        rows = [[name] + [res[protocol]["mean"].get(c) for c in columns] for name, res in done.items()]
        parts += [_table(rows, ["baseline", *columns]) if rows else "_no baseline run_", ""]
    parts += ["## Size distributions after keep/discard (pooled over the validation images)", "",
              "Kept particles of each baseline against the manual masks' particles that the manual classes keep.", ""]
    rows = []
    for name, res in done.items():
        for rec in res["sizes"]:
            rows.append([name, rec["descriptor"], rec["n_pred"], rec["n_gt"], rec["mean_pred"], rec["mean_gt"],
                         rec["mean_rel_error"], rec["sd_rel_error"], rec["median_rel_error"], rec["ks_statistic"],
                         rec["ks_p_value"]])
    parts += [_table(rows, ["baseline", "descriptor", "n", "n manual", "mean", "mean manual", "rel. error mean",
                            "rel. error sd", "rel. error median", "KS D", "KS p"]) if rows else "_no baseline run_", ""]
    parts += [f"- `{name}`: {res['sizes_error']}" for name, res in done.items() if res.get("sizes_error")]
    parts += [""] if any(res.get("sizes_error") for res in done.values()) else []
    parts += ["## Resources", ""]
    rows = []
    for name, res in done.items():
        for stage_name, rec in res.get("stages", {}).items():
            rows.append([name, stage_name, rec["wall_s"], rec["peak_rss_mb"]])
        rows.append([name, "scoring (paper + strict)", res["paper"]["scoring_s"] + res["strict"]["scoring_s"], "-"])
    parts += [_table(rows, ["baseline", "stage", "wall time (s)", "peak RSS (MiB)"]) if rows else "_none_", ""]
    if not_run:
        parts += ["## Not run", ""] + [f"- `{k}`: {v}" for k, v in not_run.items()] + [""]
    parts += ["## Paper reference values (Rühle et al. 2021, Table 1)", ""]
    if PAPER_TABLE1:
        metrics = sorted({m for v in PAPER_TABLE1.values() for m in v})
        rows = [[method] + [vals.get(m) for m in metrics] for method, vals in PAPER_TABLE1.items()]
        parts += ["Typed from the paper (reference values, not computed here; six other validation images):", "",
                  _table(rows, ["method (paper)", *metrics]), ""]
    else:
        parts += ["Not included: the values of the paper's Table 1 could not be retrieved when this script was "
                  "written. They are the only numbers that may be typed into this report, as `PAPER_TABLE1` in the "
                  "script, labelled as paper reference values. Note that the paper scored six images that are held "
                  "back from this project, so its numbers are not for the same images.", ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baselines", default=",".join(BASELINES), help="Comma-separated baselines to run.")
    parser.add_argument("--profile", default="quick", choices=("demo", "quick", "paper"))
    parser.add_argument("--smoke", action="store_true",
                        help=f"Divide every step count by {SMOKE_FACTOR} (polygon shapes): checks the script end to end "
                        "in minutes "
                        "(meaningless numbers; written to results/bam_tio2_smoke.md).")
    parser.add_argument("--resume", action="store_true",
                        help="Keep what earlier calls left in --work-dir (finished stages, training checkpoints); "
                        "their stage times are then those of the earlier calls.")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="Where baselines keep their runs (not committed); default benchmarks/work/bam_tio2[_smoke].")
    parser.add_argument("--out", type=Path, default=None, help="Report; default results/bam_tio2[_smoke].md.")
    args = parser.parse_args(argv)
    suffix = "_smoke" if args.smoke else ""
    work_dir = args.work_dir or ROOT / "benchmarks" / "work" / f"bam_tio2{suffix}"
    out = args.out or RESULTS / f"bam_tio2{suffix}.md"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not (DATA / "masks").is_dir():
        raise SystemExit(f"error: {DATA} not found; the benchmark needs the shared TiO2 data")
    names = [n.strip() for n in args.baselines.split(",") if n.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise SystemExit(f"error: unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    if not args.resume and work_dir.exists():
        shutil.rmtree(work_dir)  # every baseline trains from scratch: honest stage times
    config = benchmark_config(args.profile, smoke=args.smoke)
    t_start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        logger.info("baseline %s", name)
        try:
            run = BASELINES[name](config, work_dir / name)
        except NotImplementedError as exc:
            results[name] = {"error": f"not run ({exc})"}
            continue
        except Exception as exc:  # one broken baseline must not cost the others' hours
            logger.exception("baseline %s failed", name)
            results[name] = {"error": f"failed: {type(exc).__name__}: {exc}"}
            continue
        scored = score_run(run)
        scored["stages"] = run.stages
        scored["notes"] = run.notes
        results[name] = scored
        logger.info("%s: paper instance IoU %.4f, strict F1 %.4f", name, scored["paper"]["mean"]["instance_iou"],
                    scored["strict"]["mean"]["f1"])
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "profile": args.profile,
            "smoke": args.smoke, "total_wall_s": round(time.perf_counter() - t_start, 1),
            "machine": f"{platform.machine()}, {platform.python_version()}, {cpu_count()} CPU cores, {device_name()}"}
    report = render_report(results, meta)
    write_text(out, report + "\n")
    write_json(out.with_suffix(".json"), finite({"meta": meta, "config": config.model_dump(mode="json"),
                                                   "results": results}))
    print(report)


if __name__ == "__main__":
    main()
