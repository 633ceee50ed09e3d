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

Baselines (each a function returning a :class:`BaselineRun` with predictions for the
validation images -- probability maps (float in [0, 1]) or label images -- and, optionally, the
particles kept by the keep/discard step):

- ``manual_masks``: the manual masks themselves -- a check of the scoring path (scores perfectly).
- ``a_cyclegan_direct``: the CycleGAN's image-to-mask generator used directly as segmenter.
- ``b_simulated_workflow``: the full workflow, trained on simulated data only.
- ``c_tsem_unet``: a UNet trained on masks made automatically from the registered TSEM images.
- ``d_manual_unet``: a UNet trained on the manual masks of the 24 training images.

(a)-(d) are wired in separately; until then they report "not run".

    python benchmarks/bam_tio2.py [--baselines manual_masks,a_cyclegan_direct] [--profile quick]
"""

from __future__ import annotations

import argparse
import logging
import platform
import resource
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg.atomic import write_json, write_text
from nanoseg.errors import NanosegError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "bam-tio2"
RESULTS = ROOT / "benchmarks" / "results"
logger = logging.getLogger("nanoseg.benchmarks.bam_tio2")

#: The 30 shared images, sorted.
ALL_IDS: tuple[str, ...] = (
    "1908248", "1908250", "1908252", "1908254", "1908258", "1908260", "1908264", "1908266", "1908270", "1908272",
    "1908274", "1908276", "1908280", "1908284", "1908286", "1908288", "1908290", "1908292", "1908296", "1908298",
    "1908300", "1908302", "1908304", "1908306", "1908308", "1908312", "1908314", "1908316", "1908318", "1908322",
)
#: Every 5th id from the first: ALL_IDS[0::5].
VALIDATION_IDS: tuple[str, ...] = ("1908248", "1908260", "1908274", "1908288", "1908300", "1908312")
TRAIN_IDS: tuple[str, ...] = (
    "1908250", "1908252", "1908254", "1908258", "1908264", "1908266", "1908270", "1908272", "1908276", "1908280",
    "1908284", "1908286", "1908290", "1908292", "1908296", "1908298", "1908302", "1908304", "1908306", "1908308",
    "1908314", "1908316", "1908318", "1908322",
)
assert VALIDATION_IDS == ALL_IDS[0::5] and sorted(TRAIN_IDS + VALIDATION_IDS) == list(ALL_IDS)

#: Rows of the SEM images that hold the image (the bottom 56 of 768 are the info bar).
IMAGE_ROWS = 712
#: Pixel size of the TiO2 images in nm, used when the TIFF metadata cannot be read.
PIXEL_SIZE_NM = 7.34375

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
        image.
    kept : dict, optional
        Validation id -> label image of the particles kept by the keep/discard step (for the
        size distributions); default: every predicted particle away from the border.
    stages : dict
        Stage name -> {"wall_s": seconds, "peak_rss_mb": process peak RSS after the stage}.
    notes : str
        One line for the report (settings, profile, device).
    """

    predictions: dict[str, np.ndarray]
    kept: dict[str, np.ndarray] | None = None
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: str = ""


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far in MiB (Linux reports KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


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
# Data
# --------------------------------------------------------------------------------------------


def manual_mask(image_id: str) -> np.ndarray:
    """The manual mask of an image, cropped to the image rows (bool, 712 x 1024)."""
    from nanoseg.evaluate import read_ground_truth

    return read_ground_truth(DATA / "masks" / f"{image_id}_m.tif")[:IMAGE_ROWS]


def manual_kept_labels(image_id: str) -> np.ndarray:
    """Manual particles (4-connected) that the expert kept for size measurement.

    A particle is kept when more than half of its pixels are white in ``classes/<id>_cm.tif``
    (1024 x 704: the class masks end 8 rows above the info bar; rows below count as discarded).
    """
    from nanoseg.evaluate import read_ground_truth
    from nanoseg.metrics import label_binary

    labels = label_binary(manual_mask(image_id), 1)
    classes = read_ground_truth(DATA / "classes" / f"{image_id}_cm.tif") != 0
    kept_px = np.zeros(labels.shape, bool)
    rows = min(classes.shape[0], labels.shape[0])
    kept_px[:rows] = classes[:rows, : labels.shape[1]]
    n = int(labels.max())
    area = np.bincount(labels.ravel(), minlength=n + 1)
    white = np.bincount(labels.ravel(), weights=kept_px.ravel(), minlength=n + 1)
    keep = white > 0.5 * np.maximum(area, 1)
    keep[0] = False
    return np.where(keep[labels], labels, 0)


def pixel_size_nm() -> float:
    """Pixel size from the first validation image's metadata (7.34375 nm for this data set)."""
    try:
        from nanoseg.io import read_pixel_size_nm

        size = read_pixel_size_nm(DATA / "sem" / f"{VALIDATION_IDS[0]}.tif")
    except (ImportError, NanosegError):
        size = None
    return float(size) if size else PIXEL_SIZE_NM


# --------------------------------------------------------------------------------------------
# Baselines: each returns predictions for VALIDATION_IDS
# --------------------------------------------------------------------------------------------


def baseline_manual_masks(profile: str, work_dir: Path) -> BaselineRun:
    """The manual masks as predictions: checks that the scoring path scores them perfectly."""
    run = BaselineRun(predictions={}, notes="manual masks scored against themselves (sanity check)")
    with stage(run.stages, "load"):
        run.predictions = {i: manual_mask(i) for i in VALIDATION_IDS}
        run.kept = {i: manual_kept_labels(i) for i in VALIDATION_IDS}
    return run


def baseline_a_cyclegan_direct(profile: str, work_dir: Path) -> BaselineRun:
    """(a) The CycleGAN's image-to-mask generator used directly on the SEM images."""
    raise NotImplementedError("baseline (a) is wired in by the lead")


def baseline_b_simulated_workflow(profile: str, work_dir: Path) -> BaselineRun:
    """(b) The full workflow (shapes -> masks -> translate -> segment -> classify), simulated data only."""
    raise NotImplementedError("baseline (b) is wired in by the lead")


def baseline_c_tsem_unet(profile: str, work_dir: Path) -> BaselineRun:
    """(c) A UNet trained on masks made from the TSEM images (threshold + watershed, registered)."""
    raise NotImplementedError("baseline (c) is wired in by the lead")


def baseline_d_manual_unet(profile: str, work_dir: Path) -> BaselineRun:
    """(d) A UNet trained on the manual masks of TRAIN_IDS."""
    raise NotImplementedError("baseline (d) is wired in by the lead")


BASELINES: dict[str, Callable[[str, Path], BaselineRun]] = {
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
        df = evaluate_predictions(preds, gts, protocol, instances_out=instances if protocol == "strict" else None)
        out[protocol] = {"images": df.to_dict(orient="records"), "mean": summary_row(df),
                         "threshold": df.attrs.get("threshold"), "thresholds": df.attrs.get("thresholds"),
                         "scoring_s": round(time.perf_counter() - t0, 1)}
    kept = run.kept or {i: instances[i][0] for i in VALIDATION_IDS}
    pairs = {i: (np.asarray(kept[i]), manual_kept_labels(i)) for i in VALIDATION_IDS}
    sizes = compare_sizes(pairs, pixel_size_nm())
    out["sizes"] = sizes.to_dict(orient="records")
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
        f"Generated by `benchmarks/bam_tio2.py` on {meta['date']} ({meta['machine']}), profile `{meta['profile']}`.",
        f"Validation images ({len(VALIDATION_IDS)}): {', '.join(VALIDATION_IDS)}; training images: {len(TRAIN_IDS)} "
        "(every 5th of the 30 sorted shared ids is a validation image).",
        "Protocols: see the docstring of `nanoseg.metrics` (`paper` = as Rühle et al. 2021 scored, "
        "thresholds tuned on these images; `strict` = threshold 0.5 fixed, missed particles penalised).",
        "Errors: lower is better; all other scores: higher is better.",
        "",
    ]
    done = {k: v for k, v in results.items() if "error" not in v}
    not_run = {k: v["error"] for k, v in results.items() if "error" in v}
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
    parser.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / "work" / "bam_tio2",
                        help="Where baselines keep their runs (not committed).")
    parser.add_argument("--out", type=Path, default=RESULTS / "bam_tio2.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not (DATA / "masks").is_dir():
        raise SystemExit(f"error: {DATA} not found; the benchmark needs the shared TiO2 data")
    names = [n.strip() for n in args.baselines.split(",") if n.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise SystemExit(f"error: unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        logger.info("baseline %s", name)
        try:
            run = BASELINES[name](args.profile, args.work_dir / name)
        except NotImplementedError as exc:
            results[name] = {"error": f"not run ({exc})"}
            continue
        scored = score_run(run)
        scored["stages"] = run.stages
        scored["notes"] = run.notes
        results[name] = scored
        logger.info("%s: paper instance IoU %.4f, strict F1 %.4f", name, scored["paper"]["mean"]["instance_iou"],
                    scored["strict"]["mean"]["f1"])
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "profile": args.profile,
            "machine": f"{platform.machine()}, {platform.python_version()}, {_cpu_count()} CPU cores"}
    report = render_report(results, meta)
    write_text(args.out, report + "\n")
    write_json(args.out.with_suffix(".json"), _finite({"meta": meta, "results": results}))
    print(report)


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


def _finite(tree: Any) -> Any:
    """numpy scalars to Python, NaN/inf to None: the JSON stays valid."""
    if isinstance(tree, dict):
        return {str(k): _finite(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_finite(v) for v in tree]
    if hasattr(tree, "item") and np.ndim(tree) == 0:
        tree = tree.item()
    if isinstance(tree, float) and not np.isfinite(tree):
        return None
    return tree


if __name__ == "__main__":
    main()
