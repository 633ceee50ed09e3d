"""Benchmark what a user gets: the shipped ``nanoseg run`` on the shared TiO2 micrographs, several seeds.

For each seed the script runs, as subprocesses, exactly the commands of the README:

1. ``nanoseg run DATA --out WORK/seed<S>/run --profile PROFILE --seed S`` with the profile's
   defaults and no other setting (``--smoke`` adds the step-count cuts of
   :func:`bam_tio2.smoke_overrides`). DATA is ``../shared/data/bam-tio2`` itself (its ``sem/``
   and ``outlines/``; the workflow never reads ``masks/`` or ``classes/``), or, with
   ``--images N``, a folder of links to the first N micrographs and the outlines;
2. ``nanoseg measure DATA/sem --model RUN/adapt/model.pt --classifier RUN/classify/model.pt
   --config RUN/config.yaml --probabilities``: the run's models applied to the micrographs the
   way a user measures new images.

It then scores every image against the expert's manual masks: the ``strict`` protocol on the
measured instance labels (probability maps only for Youden's ROC) and the ``paper`` protocol on
the probability maps (see :mod:`nanoseg.metrics`), and compares the kept particles' size
distribution with the manual particles that the manual classes keep (count; mean, median, D10,
D90 of min Feret and ECD; relative errors; KS), all pooled over the images. Diagnostics per seed:
the segmenter's strict F1 on its own held-out synthetic pairs beside its F1 on the real images
(the domain gap), the artifact filter's drop count, and the precision/recall of "keep" against
the manual classes.

The supervised reference (``--supervised``, on by default) trains the same segmentation net
(the profile's segment settings, UNet) on the manual masks by k-fold cross-validation (fold k
holds out every k-th image, 6 images per fold for 30 images), one seed, and keeps particles by
the classifier's rules; it is scored on the same images in the same way.

Results: ``benchmarks/results/workflow_<profile>[_smoke].md`` and ``.json``, per seed and mean +- sd
across seeds, with per-stage wall time and peak RSS, the machine and the commit. Overlays of
three fixed images (expert outlines vs the first seed's particles) go to
``benchmarks/results/workflow_<profile>[_smoke]/``; they show the CC BY-NC-ND micrographs, so
they are not committed (``.gitignore``): the script makes them again.

    python benchmarks/workflow.py                         # quick profile, seeds 0,1,2, all 30 images
    python benchmarks/workflow.py --profile demo --smoke --seeds 0 --images 3   # minutes; the tests run this
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bam_tio2 as bt  # noqa: E402  (the TiO2 data helpers: manual masks, kept classes, smoke sizes)

from nanoseg.atomic import write_json, write_text  # noqa: E402
from nanoseg.errors import NanosegError  # noqa: E402

ROOT = bt.ROOT
DATA = bt.DATA
RESULTS = bt.RESULTS
logger = logging.getLogger("nanoseg.benchmarks.workflow")

#: Images whose overlays are drawn (fixed: first, middle and last of the 30 sorted ids).
OVERLAY_IDS: tuple[str, ...] = (bt.ALL_IDS[0], bt.ALL_IDS[14], bt.ALL_IDS[-1])
#: Size descriptors compared with the expert's kept particles.
SIZE_DESCRIPTORS: tuple[str, ...] = ("min_feret_nm", "ecd_nm")
#: Scores shown in the tables (mean +- sd over seeds).
HEADLINE = (("strict", "f1"), ("strict", "image_iou"), ("paper", "image_iou"), ("paper", "instance_iou"))


# --------------------------------------------------------------------------------------------
# Running the commands
# --------------------------------------------------------------------------------------------


def nanoseg_cli(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``python -m nanoseg ARGS`` (the installed CLI); returns its wall time, CPU time and peak RSS.

    The CPU time (user + system) is what the process would need alone on one core: with
    ``--jobs`` > 1 the wall time is that of a shared machine, the CPU time is not.

    Raises NanosegError naming the log when the command fails.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "nanoseg", *args]
    logger.info("$ nanoseg %s", " ".join(args))
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        # wait4 gives this child's own resource use (RUSAGE_CHILDREN would mix all children).
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise NanosegError(f"nanoseg {args[0]} failed (exit {proc.returncode}); see {log_path}: {' | '.join(tail)}")
    return {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def smoke_sets(profile: str) -> list[str]:
    """``--set`` options that shrink every step count like ``bam_tio2.py --smoke``."""
    from nanoseg.config import build_config

    sets = []
    for section, values in bt.smoke_overrides(build_config(profile=profile)).items():
        sets += [f"{section}.{key}={value}" for key, value in values.items()]
    return sets


def data_folder(image_ids: tuple[str, ...], work_dir: Path) -> Path:
    """The data folder a user would give: the shared one itself, or links to a subset of it."""
    if image_ids == bt.ALL_IDS:
        return DATA
    from nanoseg.baselines import link_file

    folder = work_dir / "data"
    for i in image_ids:
        link_file(DATA / "sem" / f"{i}.tif", folder / "sem" / f"{i}.tif")
    for outline in sorted((DATA / "outlines").iterdir()):
        link_file(outline, folder / "outlines" / outline.name)
    return folder


def run_seed(seed: int, profile: str, sets: list[str], data: Path, seed_dir: Path,
             env: dict[str, str] | None = None, resume: bool = False) -> dict[str, Any]:
    """``nanoseg run`` then ``nanoseg measure`` for one seed; returns stage times and memory.

    With ``resume`` the measure folder of an earlier call is kept: ``nanoseg measure`` itself
    skips the images it finished with the same model and settings, so its time is that of the
    remaining images.
    """
    run_dir, measure_dir = seed_dir / "run", seed_dir / "measure"
    set_args = [a for s in sets for a in ("--set", s)]
    logger.info("seed %d", seed)
    run_res = nanoseg_cli(["run", str(data), "--out", str(run_dir), "--profile", profile, "--seed", str(seed),
                           *set_args], seed_dir / "run.log", env)
    stages: dict[str, dict[str, float]] = {}
    for marker in (run_dir / name / ".done.json" for name in _stage_names()):
        rec = json.loads(marker.read_text())
        stages[f"run: {marker.parent.name}"] = {"wall_s": rec["seconds"], "peak_rss_mb": rec.get("peak_rss_mb")}
    stages["nanoseg run (whole process)"] = run_res
    if measure_dir.exists() and not resume:
        shutil.rmtree(measure_dir)
    measure_args = ["measure", str(data / "sem"), "--model", str(run_dir / "adapt" / "model.pt"),
                    "--config", str(run_dir / "config.yaml"), "--out", str(measure_dir), "--probabilities"]
    if (run_dir / "classify" / "model.pt").is_file():
        measure_args += ["--classifier", str(run_dir / "classify" / "model.pt")]
    stages["nanoseg measure (whole process)"] = nanoseg_cli(measure_args, seed_dir / "measure.log", env)
    return {"stages": stages, "run_dir": run_dir, "measure_dir": measure_dir}


def _stage_names() -> tuple[str, ...]:
    from nanoseg.pipeline import STAGE_NAMES

    return STAGE_NAMES


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def kept_from_decisions(labels: dict[str, np.ndarray], decisions_csv: Path) -> dict[str, np.ndarray]:
    """Label images holding only the particles that ``decisions.csv`` marks as kept."""
    import pandas as pd

    decisions = pd.read_csv(decisions_csv, dtype={"image": str})
    kept = {}
    for name, lab in labels.items():
        rows = decisions[(decisions["image"] == name) & decisions["kept"].astype(bool)]
        kept[name] = np.where(np.isin(lab, rows["label"].to_numpy()), lab, 0)
    return kept


def size_table(kept: dict[str, np.ndarray], expert_kept: dict[str, np.ndarray],
               pixel_size_nm: float | None) -> list[dict[str, Any]]:
    """Kept particles vs the expert's kept particles, pooled: count, mean, median, D10, D90, KS.

    Particles touching the image border are left out on both sides.
    """
    from nanoseg.evaluate import measure_instances
    from nanoseg.metrics import size_distribution_agreement

    pred, gt = measure_instances({i: (kept[i], expert_kept[i]) for i in expert_kept}, pixel_size_nm)
    if pred.empty:
        return [{"descriptor": d, "n_pred": 0, "n_gt": int(len(gt))} for d in SIZE_DESCRIPTORS]
    table = size_distribution_agreement(pred, gt, SIZE_DESCRIPTORS)
    records = table.to_dict(orient="records")
    for rec in records:
        rec["count_rel_error"] = (rec["n_pred"] - rec["n_gt"]) / rec["n_gt"] if rec["n_gt"] else float("nan")
    return records


def min_feret_row(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """The min Feret row of a :func:`size_table`."""
    return next(r for r in sizes if r["descriptor"] == "min_feret_nm")


def label_ids(labels: np.ndarray) -> set[int]:
    """The particle labels of a label image (0, the background, left out)."""
    return set(np.unique(labels).tolist()) - {0}


def matched_labels(pred: np.ndarray, gt: np.ndarray, min_iou: float = 0.5) -> list[tuple[int, int]]:
    """(our label, expert label) of the particles matched one to one at IoU >= ``min_iou``."""
    from skimage.segmentation import relabel_sequential

    from nanoseg.metrics import iou_matrix, match_instances

    gt_seq, _, gt_inverse = relabel_sequential(np.asarray(gt))
    pred_seq, _, pred_inverse = relabel_sequential(np.asarray(pred))
    g_idx, p_idx = match_instances(iou_matrix(pred_seq, gt_seq), min_iou)
    return [(int(pred_inverse[p + 1]), int(gt_inverse[g + 1])) for g, p in zip(g_idx, p_idx)]


def keep_precision_recall(labels: dict[str, np.ndarray], kept: dict[str, np.ndarray],
                          expert: dict[str, np.ndarray], expert_kept: dict[str, np.ndarray]) -> dict[str, float]:
    """How well "kept" agrees with the expert's classes, on particles matched at IoU > 0.5.

    ``precision``: kept particles that match a particle the expert kept, over all kept ones;
    ``recall``: expert-kept particles matched by a kept particle, over all expert-kept ones
    (both end to end, so segmentation misses count). ``*_matched``: the same restricted to
    predicted particles that match a manual particle at all (the keep/discard step alone).
    ``expert`` holds the manual particles' labels, ``expert_kept`` those the expert kept, with
    the same label numbers.
    """
    tp = n_kept = n_expert = 0
    m_kept = m_expert = 0
    for i in expert:
        ours_kept, expert_ids = label_ids(kept[i]), label_ids(expert_kept[i])
        pairs = matched_labels(labels[i], expert[i])
        pk = np.array([a in ours_kept for a, _ in pairs], bool)
        gk = np.array([b in expert_ids for _, b in pairs], bool)
        n_kept += len(ours_kept)
        n_expert += len(expert_ids)
        tp += int((pk & gk).sum())
        m_kept += int(pk.sum())
        m_expert += int(gk.sum())
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    return {"precision": ratio(tp, n_kept), "recall": ratio(tp, n_expert),
            # Kept-by-both particles are matched by definition, so tp serves both views.
            "precision_matched": ratio(tp, m_kept), "recall_matched": ratio(tp, m_expert),
            "n_kept": n_kept, "n_expert_kept": n_expert}


def size_error_by_stage(labels: dict[str, np.ndarray], expert: dict[str, np.ndarray],
                        expert_kept: dict[str, np.ndarray], pixel_size_nm: float | None) -> dict[str, dict[str, Any]]:
    """Which stage the kept particles' size error comes from: segmentation or the keep decision.

    ``found``: the expert's kept particles that one of ours matches (IoU 0.5), measured on the
    expert's outlines, against all the expert kept: what the segmentation's misses and merges
    alone do to the distribution. ``perfect_keep``: our particles matched to those, on our
    outlines: what the distribution would be with a perfect keep decision. The rest of the kept
    particles' error is the keep decision's. Min Feret rows of :func:`size_table`.
    """
    ours_matched, theirs_matched = {}, {}
    for i in expert:
        rows = expert[i].shape[0]  # the manual masks may lack the info bar's rows
        kept_ids = label_ids(expert_kept[i])
        pairs = [(a, b) for a, b in matched_labels(labels[i][:rows], expert[i]) if b in kept_ids]
        ours_matched[i] = np.where(np.isin(labels[i][:rows], [a for a, _ in pairs]), labels[i][:rows], 0)
        theirs_matched[i] = np.where(np.isin(expert_kept[i], [b for _, b in pairs]), expert_kept[i], 0)

    def min_feret(kept: dict[str, np.ndarray]) -> dict[str, Any]:
        return min_feret_row(size_table(kept, expert_kept, pixel_size_nm))

    return {"found": min_feret(theirs_matched), "perfect_keep": min_feret(ours_matched)}


def synthetic_f1(run_dir: Path, device: Any = "cpu") -> dict[str, float]:
    """The segmenter's strict scores on the synthetic pairs it held out for validation."""
    import pandas as pd

    from nanoseg import nets
    from nanoseg.config import SegmentConfig
    from nanoseg.evaluate import evaluate_predictions, summary_row
    from nanoseg.segment import segment_image

    net, meta = nets.load(run_dir / "segment" / "model.pt", device)
    cfg = SegmentConfig.model_validate(meta["config"])
    preds, gts = {}, {}
    for name in meta.get("val_pairs", []):
        path = run_dir / "pairs" / f"{name}.npz"
        if not path.is_file():
            path = run_dir / "pairs" / name
        with np.load(path) as pair:
            image, instances = pair["image"], pair["instances"]
        preds[name], _ = segment_image(net, meta, image, cfg, pixel_size_nm=meta.get("pixel_size_nm"), device=device)
        gts[name] = instances
    if not preds:
        return {"n_pairs": 0}
    df: pd.DataFrame = evaluate_predictions(preds, gts, "strict")
    row = summary_row(df)
    return {"n_pairs": len(preds), "f1": row["f1"], "image_iou": row["image_iou"]}


def expert_truth(image_ids: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per image: the manual mask (bool) and the manual particles the manual classes keep."""
    return {i: (bt.manual_mask(i), bt.manual_kept_labels(i)) for i in image_ids}


def score_images(labels: dict[str, np.ndarray], probs: dict[str, np.ndarray] | None, kept: dict[str, np.ndarray],
                 truth: dict[str, tuple[np.ndarray, np.ndarray]], pixel_size_nm: float | None) -> dict[str, Any]:
    """Both protocols, the size table and keep precision/recall for one set of predictions.

    ``truth`` maps image id -> (manual mask, expert-kept labels of its 4-connected particles).
    """
    from nanoseg.evaluate import evaluate_predictions, summary_row
    from nanoseg.labels import label_binary

    image_ids = tuple(truth)
    gts = {i: truth[i][0] for i in image_ids}
    out: dict[str, Any] = {}
    strict = evaluate_predictions({i: labels[i] for i in image_ids}, gts, "strict",
                                  score_maps={i: probs[i] for i in image_ids} if probs else None)
    out["strict"] = {"mean": summary_row(strict), "images": strict.to_dict(orient="records"),
                     "missed": missed_breakdown(labels, gts)}
    if probs:
        paper = evaluate_predictions({i: probs[i] for i in image_ids}, gts, "paper")
        out["paper"] = {"mean": summary_row(paper), "threshold": paper.attrs.get("threshold"),
                        "images": paper.to_dict(orient="records")}
    expert_kept = {i: truth[i][1] for i in image_ids}
    out["sizes"] = size_table(kept, expert_kept, pixel_size_nm)
    expert = {i: label_binary(gts[i] > 0, 1) for i in image_ids}
    out["keep"] = keep_precision_recall(labels, kept, expert, expert_kept)
    out["size_by_stage"] = size_error_by_stage(labels, expert, expert_kept, pixel_size_nm)
    return out


def missed_breakdown(labels: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, int]:
    """Why the manual particles without a match were missed, summed over the images (:func:`missed_causes`)."""
    from nanoseg.labels import label_binary
    from nanoseg.metrics import missed_causes

    total: dict[str, int] = {}
    for i, mask in masks.items():
        rows = min(mask.shape[0], labels[i].shape[0])  # the manual masks may lack the info bar's rows
        for key, n in missed_causes(labels[i][:rows], label_binary(mask[:rows] > 0, 1)).items():
            total[key] = total.get(key, 0) + n
    return total


def read_seed_outputs(measure_dir: Path, image_ids: tuple[str, ...], probabilities: bool = True) -> tuple[dict, ...]:
    """Labels, probability maps (unless ``probabilities`` is False) and kept labels that ``nanoseg measure`` wrote."""
    import tifffile

    from nanoseg.io import read_labels

    labels = {i: read_labels(measure_dir / "segment" / "labels" / f"{i}.tif") for i in image_ids}
    kept = kept_from_decisions(labels, measure_dir / "decisions.csv")
    if not probabilities:
        return labels, kept
    probs = {i: tifffile.imread(measure_dir / "segment" / "probabilities" / f"{i}.tif").astype(np.float32)
             for i in image_ids}
    return labels, probs, kept


def score_seed(seed_run: dict[str, Any], truth: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Everything the report shows for one seed."""
    run_dir, measure_dir = seed_run["run_dir"], seed_run["measure_dir"]
    labels, probs, kept = read_seed_outputs(measure_dir, tuple(truth))
    t0 = time.perf_counter()
    scored = score_images(labels, probs, kept, truth, bt.pixel_size_nm())
    scored["synthetic"] = synthetic_f1(run_dir)
    filter_json = run_dir / "pairs" / "filter.json"
    if filter_json.is_file():
        filt = json.loads(filter_json.read_text())
        scored["artifact_filter"] = {k: filt[k] for k in ("threshold_method", "instances_before_filter",
                                                          "instances_dropped", "dropped_fraction")}
    realism_json = run_dir / "pairs" / "realism.json"
    if realism_json.is_file():
        scored["realism"] = json.loads(realism_json.read_text())
    rounds_json = run_dir / "adapt" / "rounds.json"
    if rounds_json.is_file():
        scored["adaptation"] = [{k: v for k, v in r.items() if k != "images"}
                                for r in json.loads(rounds_json.read_text()).get("rounds", [])]
    run_summary = json.loads((run_dir / "measure" / "summary.json").read_text())
    measure_summary = json.loads((measure_dir / "summary.json").read_text())
    scored["consistency"] = {"run_n_kept": run_summary.get("n_kept"), "measure_n_kept": measure_summary.get("n_kept")}
    scored["size_prior"] = measure_summary.get("size_prior")
    scored["stages"] = {**seed_run["stages"], "scoring": {"wall_s": round(time.perf_counter() - t0, 1),
                                                         "peak_rss_mb": None}}
    return scored


# --------------------------------------------------------------------------------------------
# Supervised reference: UNet on the manual masks, k-fold cross-validation
# --------------------------------------------------------------------------------------------


def supervised_key(profile: str, smoke: bool, image_ids: tuple[str, ...], n_folds: int) -> dict[str, Any]:
    """What the supervised reference depends on: a cached result is reused only when all of it matches.

    It keeps particles by the rules alone, so of the classify settings only the rules count.
    """
    import hashlib

    from nanoseg.classify import RULE_SETTINGS

    config = bt._unet(bt.benchmark_config(profile, smoke=smoke))
    rules = json.dumps(config.classify.model_dump(mode="json", include=set(RULE_SETTINGS)), sort_keys=True)
    return {"profile": profile, "smoke": smoke, "images": list(image_ids), "folds": min(n_folds, len(image_ids)),
            "seed": config.seed, "segment": config.section_hash("segment"),
            "classify_rules": hashlib.sha256(rules.encode()).hexdigest()[:16]}


def cached_supervised(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The supervised result stored at ``path`` when it was made with exactly ``key``, else None."""
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except ValueError:
        return None
    return stored["result"] if stored.get("key") == key else None


def supervised_reference(profile: str, smoke: bool, truth: dict[str, tuple[np.ndarray, np.ndarray]], work_dir: Path,
                         n_folds: int = 5) -> dict[str, Any]:
    """Train on the manual masks of all folds but one, segment the held-out fold; score all images."""
    from nanoseg import nets, segment
    from nanoseg.baselines import link_file
    from nanoseg.io import read_micrograph
    from nanoseg.runtime import configure_torch, seed_everything

    image_ids = tuple(truth)
    config = bt._unet(bt.benchmark_config(profile, smoke=smoke))
    configure_torch(config.num_threads)
    n_folds = min(n_folds, len(image_ids))
    labels, probs, stages = {}, {}, {}
    micrographs = {i: read_micrograph(DATA / "sem" / f"{i}.tif") for i in image_ids}
    for k in range(n_folds):
        held_out = image_ids[k::n_folds]
        folder = work_dir / f"fold{k}"
        for i in image_ids:
            if i not in held_out:
                link_file(DATA / "sem" / f"{i}.tif", folder / "pairs" / "images" / f"{i}.tif")
                link_file(DATA / "masks" / f"{i}_m.tif", folder / "pairs" / "masks" / f"{i}_m.tif")
        t0 = time.perf_counter()
        pairs = segment.load_pairs(folder / "pairs")
        model = segment.train(pairs, config.segment, folder / "model", rng=seed_everything(config.seed),
                              pixel_size_nm=bt.pixel_size_nm())
        net, meta = nets.load(model)
        for i in held_out:
            labels[i], probs[i] = segment.segment_image(net, meta, micrographs[i].image, config.segment,
                                                        pixel_size_nm=micrographs[i].pixel_size_nm)
        stages[f"fold {k}: train {config.segment.steps} steps + segment {len(held_out)}"] = {
            "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(bt.peak_rss_mb(), 1)}
    kept = bt.keep_discard(labels, micrographs, bt._rules_only(config))
    scored = score_images(labels, probs, kept, truth, bt.pixel_size_nm())
    scored["stages"] = stages
    scored["notes"] = (f"{config.segment.architecture} {config.segment.target}, {config.segment.steps} steps, "
                       f"{n_folds}-fold cross-validation on the manual masks, seed {config.seed}, kept by the rules")
    return scored


# --------------------------------------------------------------------------------------------
# Aggregation and report
# --------------------------------------------------------------------------------------------


def headline(scored: dict[str, Any]) -> dict[str, float]:
    """The numbers compared across seeds: scores, size errors, counts, diagnostics."""
    out: dict[str, float] = {}
    for protocol, key in HEADLINE:
        if protocol in scored:
            out[f"{protocol}_{key}"] = scored[protocol]["mean"].get(key)
    for rec in scored["sizes"]:
        d = rec["descriptor"]
        for stat in ("mean", "median", "d10", "d90"):
            out[f"{d}_{stat}_rel_error"] = rec.get(f"{stat}_rel_error")
        out[f"{d}_ks_p"] = rec.get("ks_p_value")
    first = scored["sizes"][0]
    out["n_kept"], out["n_expert_kept"] = first.get("n_pred"), first.get("n_gt")
    out["count_rel_error"] = first.get("count_rel_error")
    out["keep_precision"], out["keep_recall"] = scored["keep"]["precision"], scored["keep"]["recall"]
    if "synthetic" in scored:
        out["synthetic_f1"] = scored["synthetic"].get("f1")
    return out


def mean_sd(values: list[float | None]) -> dict[str, float | None]:
    """Mean and sd (ddof 1; None for one value) of the finite values."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
    if arr.size == 0:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else None, "n": int(arr.size)}


def aggregate(per_seed: dict[int, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean +- sd across seeds of every headline number."""
    rows = {s: headline(r) for s, r in per_seed.items()}
    keys = sorted({k for r in rows.values() for k in r})
    return {k: mean_sd([rows[s].get(k) for s in rows]) for k in keys}


def _fmt(value: Any, key: str = "") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if key.endswith("rel_error"):
        return f"{100 * value:+.1f} %"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def _pm(stat: dict[str, Any], key: str) -> str:
    if stat["mean"] is None:
        return "-"
    if stat["sd"] is None:
        return _fmt(stat["mean"], key)
    if key.endswith("rel_error"):
        return f"{100 * stat['mean']:+.1f} +- {100 * stat['sd']:.1f} %"
    return f"{stat['mean']:.3f} +- {stat['sd']:.3f}" if abs(stat["mean"]) < 10 else f"{stat['mean']:.0f} +- {stat['sd']:.0f}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


#: Rows of the main table: (label, headline key).
MAIN_ROWS = (
    ("strict F1 at IoU 0.5", "strict_f1"),
    ("strict image IoU", "strict_image_iou"),
    ("paper image IoU", "paper_image_iou"),
    ("paper instance IoU", "paper_instance_iou"),
    ("kept particles: count error", "count_rel_error"),
    ("kept: mean min Feret error", "min_feret_nm_mean_rel_error"),
    ("kept: median min Feret error", "min_feret_nm_median_rel_error"),
    ("kept: D10 min Feret error", "min_feret_nm_d10_rel_error"),
    ("kept: D90 min Feret error", "min_feret_nm_d90_rel_error"),
    ("kept: mean ECD error", "ecd_nm_mean_rel_error"),
    ("kept: median ECD error", "ecd_nm_median_rel_error"),
    ("keep precision vs manual classes", "keep_precision"),
    ("keep recall vs manual classes", "keep_recall"),
    ("segmenter F1 on held-out synthetic pairs", "synthetic_f1"),
)


def render_report(results: dict[str, Any]) -> str:
    """Markdown report; every number comes from ``results``."""
    meta, seeds = results["meta"], results["seeds"]
    agg, sup = results["aggregate"], results.get("supervised")
    sup_head = headline(sup) if sup else {}
    parts = [
        f"# Workflow benchmark, profile `{meta['profile']}`" + (" (SMOKE)" if meta["smoke"] else ""),
        "",
        f"Generated by `benchmarks/workflow.py` on {meta['date']}, commit {meta['commit']}, {meta['machine']}; "
        f"total wall time {meta['total_wall_s'] / 60:.1f} min. Machine load at the start: {meta['load_at_start']}."
        + (f" Seeds ran {meta['jobs']} at a time, sharing the cores." if meta.get("jobs", 1) > 1 else "")
        + (" Resumed from an interrupted call: finished stages kept their earlier times." if meta.get("resumed") else "")
        + (f" Conditions: {meta['note']}." if meta.get("note") else ""),
        "",
    ]
    if meta["smoke"]:
        parts += ["**SMOKE RUN**: every step count divided by "
                  f"{bt.SMOKE_FACTOR} and random polygons instead of WGAN shapes; it checks the code path, "
                  "its numbers mean nothing.", ""]
    parts += [
        f"What ran, per seed ({', '.join(map(str, meta['seeds']))}): `{meta['run_command']}`, then "
        f"`{meta['measure_command']}`. Scored on {len(meta['images'])} images against the manual masks; sizes of "
        "the kept particles against the manual particles that the manual classes keep (pooled over the images, "
        "particles touching the image border excluded on both sides). Size prior: "
        f"{', '.join(sorted({str(s.get('size_prior')) for s in seeds.values()}))}.",
        "",
        "## Annotation-free workflow vs supervised reference",
        "",
    ]
    header = ["", "annotation-free: mean +- sd over seeds", *[f"seed {s}" for s in seeds],
              "supervised (manual masks, cross-validated)"]
    rows = []
    per_seed = {s: headline(r) for s, r in seeds.items()}
    for label, key in MAIN_ROWS:
        rows.append([label, _pm(agg.get(key, {"mean": None, "sd": None}), key),
                     *[_fmt(per_seed[s].get(key), key) for s in seeds], _fmt(sup_head.get(key), key)])
    rows.append(["kept particles (expert: " + str(next(iter(per_seed.values())).get("n_expert_kept")) + ")",
                 _pm(agg.get("n_kept", {"mean": None, "sd": None}), "n"),
                 *[_fmt(per_seed[s].get("n_kept")) for s in seeds], _fmt(sup_head.get("n_kept"))])
    parts += [_table(rows, header), ""]
    if sup:
        made = sup.get("made", {})
        parts += [f"Supervised reference: {sup['notes']}; computed {made.get('date', '-')} at commit "
                  f"{made.get('commit', '-')} in {_fmt(made.get('wall_s'))} s (stored in `{meta['supervised_file']}`, "
                  "reused while the segment/classify settings, images and folds are unchanged).", ""]
    parts += ["## Sizes (pooled kept particles, nm)", ""]
    rows = []
    for name, res in [*[(f"seed {s}", r) for s, r in seeds.items()], *([("supervised", sup)] if sup else [])]:
        for rec in res["sizes"]:
            rows.append([name, rec["descriptor"], _fmt(rec.get("n_pred")), _fmt(rec.get("n_gt")),
                         *[f"{_fmt(rec.get(f'{s}_pred'))} / {_fmt(rec.get(f'{s}_gt'))}" for s in ("mean", "median",
                                                                                               "d10", "d90")],
                         _fmt(rec.get("ks_statistic")), _fmt(rec.get("ks_p_value"))])
    parts += [_table(rows, ["", "descriptor", "n", "n expert", "mean (ours / expert)", "median", "D10", "D90",
                            "KS D", "KS p"]), ""]
    parts += ["## Diagnostics per seed", ""]
    rows = []
    for s, r in seeds.items():
        filt = r.get("artifact_filter", {})
        keep = r["keep"]
        rows.append([f"seed {s}", _fmt(r["synthetic"].get("f1")), _fmt(r["strict"]["mean"].get("f1")),
                     f"{filt.get('instances_dropped', '-')} of {filt.get('instances_before_filter', '-')} "
                     f"({filt.get('threshold_method', '-')})",
                     _fmt(keep["precision_matched"]), _fmt(keep["recall_matched"]),
                     f"{r['consistency']['run_n_kept']} / {r['consistency']['measure_n_kept']}",
                     _fmt(r.get("realism", {}).get("classifier_accuracy")), _missed_text(r["strict"].get("missed"))])
    parts += [_table(rows, ["", "F1 on held-out synthetic pairs", "F1 on the real images",
                            "artifact filter: dropped of fake particles", "keep precision (matched particles)",
                            "keep recall (matched particles)", "kept: `nanoseg run` / `nanoseg measure`",
                            "fake-vs-real classifier accuracy (0.5 = indistinguishable)",
                            "manual particles missed at IoU 0.5: merged with another / not found / outline off"]), ""]
    by_stage = {s: r["size_by_stage"] for s, r in seeds.items() if r.get("size_by_stage")}
    if by_stage:
        parts += ["## Where the kept size error comes from", "",
                  "Min Feret, against the particles the expert kept. Segmentation: the expert's kept particles "
                  "that one of ours matches at IoU 0.5 (on the expert's outlines: what misses and merges alone "
                  "do), and our particles matched to them (a perfect keep decision on our outlines). The kept "
                  "particles' remaining error is the keep decision's.", ""]
        rows = []
        for s, st in by_stage.items():
            kept_row = min_feret_row(seeds[s]["sizes"])
            rows.append([f"seed {s}", *[f"{_fmt(x.get('n_pred'))}: {_fmt(x.get('mean_rel_error'), 'rel_error')} / "
                                        f"{_fmt(x.get('median_rel_error'), 'rel_error')}"
                                        for x in (st["found"], st["perfect_keep"], kept_row)]])
        parts += [_table(rows, ["", "expert's kept particles we segment: n: mean / median error",
                                "our outlines of them (perfect keep): n: mean / median error",
                                "our kept particles: n: mean / median error"]), ""]
    adapted = {s: r["adaptation"] for s, r in seeds.items() if r.get("adaptation")}
    if adapted:
        parts += ["## Self-training rounds (adapt)", ""]
        rows = [[f"seed {s}", str(a["round"]), f"{a['pseudo_labelled']} of {a['particles']}",
                 _fmt(a.get("ignored_fraction")), _fmt(a.get("synthetic_val_iou"))]
                for s, rounds in adapted.items() for a in rounds]
        parts += [_table(rows, ["", "round", "pseudo-labelled particles", "ignored share of pixels",
                                "IoU on held-out synthetic pairs after the round"]), ""]
    parts += ["## Wall time and peak memory", "",
              "Stage times from the run folder's `.done.json` markers; peak RSS is the process's running maximum "
              "at the end of the stage. A whole process also shows its CPU time (user + system), where recorded: "
              "with several seeds at once the wall time is that of a shared machine, the CPU time is what the "
              "process needs alone on one core.", ""]
    names = list(next(iter(seeds.values()))["stages"])
    rows = [[n, *[_stage_cell(r["stages"].get(n, {})) for r in seeds.values()]] for n in names]
    if sup:
        rows += [[f"supervised {n}", _stage_cell(v)] + [""] * (len(seeds) - 1)
                 for n, v in sup["stages"].items()]
    parts += [_table(rows, ["stage", *[f"seed {s}" for s in seeds]]), ""]
    if results.get("overlays"):
        parts += ["## Overlays", "",
                  "Expert outlines (cyan) vs the particles of seed " f"{meta['seeds'][0]} (kept yellow, discarded "
                  "magenta), written to " + ", ".join(f"`{p}`" for p in results["overlays"]) + ". They show the "
                  "CC BY-NC-ND micrographs and are not committed: run the script to see them.", ""]
    return "\n".join(parts)


def _stage_cell(rec: dict[str, Any]) -> str:
    cpu = f" (CPU {_fmt(rec['cpu_s'])} s)" if rec.get("cpu_s") is not None else ""
    return f"{_fmt(rec.get('wall_s'))} s{cpu} / {_fmt(rec.get('peak_rss_mb'))} MiB"


def _missed_text(missed: dict[str, int] | None) -> str:
    if not missed or not missed.get("n_gt"):
        return "-"
    n = missed["n_gt"]
    return " / ".join(f"{100 * missed[k] / n:.0f} %" for k in ("merged", "not_found", "outline")) + f" of {n}"


#: Rows of the README's summary table.
README_ROWS = (
    ("strict F1 at IoU 0.5", "strict_f1"),
    ("image IoU (strict)", "strict_image_iou"),
    ("instance IoU (paper protocol)", "paper_instance_iou"),
    ("kept particles: count error", "count_rel_error"),
    ("kept particles: mean min Feret error", "min_feret_nm_mean_rel_error"),
    ("kept particles: median min Feret error", "min_feret_nm_median_rel_error"),
    ("kept particles: mean ECD error", "ecd_nm_mean_rel_error"),
)


def readme_section(results: dict[str, Any], results_md: str) -> str:
    """The README's benchmark summary, every number from ``results`` (see ``--readme``)."""
    meta, agg, sup = results["meta"], results["aggregate"], results.get("supervised")
    sup_head = headline(sup) if sup else {}
    n_seeds = len(meta["seeds"])
    run_walls = [r["stages"].get("nanoseg run (whole process)", {}).get("wall_s") for r in results["seeds"].values()]
    wall = mean_sd(run_walls)
    rows = [[label, _pm(agg.get(key, {"mean": None, "sd": None}), key), _fmt(sup_head.get(key), key)]
            for label, key in README_ROWS]
    folds = sup["notes"].split("-fold")[0].split()[-1] if sup else "-"
    text = [
        f"`benchmarks/workflow.py` ran `{meta['run_command']}` for seeds {', '.join(map(str, meta['seeds']))}, then "
        f"`nanoseg measure` with each run's models, and scored all {len(meta['images'])} shared TiO2 images against "
        "the expert's masks; sizes are the kept particles against the particles the expert kept "
        f"([{results_md}]({results_md}), {meta['date']}, commit {meta['commit'].split()[0]}). One `nanoseg run` took "
        f"{_pm(wall, 'wall_s')} s on {meta['machine'].split(', ')[2]}"
        + (f" ({meta['note']})" if meta.get("note") else "") + ".",
        "",
        _table(rows, ["", f"annotation-free: mean +- sd over {n_seeds} seeds",
                      f"supervised: UNet on the manual masks, {folds}-fold cross-validation, kept by the rules" if sup
                      else "supervised reference: not in this run"]),
    ]
    return "\n".join(text)


def write_overlays(measure_dir: Path, image_ids: tuple[str, ...], out_dir: Path) -> list[str]:
    """Expert outlines vs our particles on the micrograph, for the fixed overlay images."""
    from skimage.segmentation import find_boundaries

    from nanoseg.io import read_micrograph, write_png
    from nanoseg.labels import label_binary

    labels, _, kept = read_seed_outputs(measure_dir, tuple(i for i in OVERLAY_IDS if i in image_ids))
    written = []
    for i in labels:
        image = read_micrograph(DATA / "sem" / f"{i}.tif").image
        rgb = np.repeat((np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
        expert = find_boundaries(label_binary(bt.manual_mask(i), 1), mode="inner")
        ours = find_boundaries(labels[i], mode="inner")
        ours_kept = ours & (kept[i] > 0)
        rgb[ours & ~ours_kept] = (230, 40, 230)
        rgb[ours_kept] = (250, 230, 0)
        rgb[expert] = (0, 220, 255)
        path = out_dir / f"overlay_{i}.png"
        write_png(path, rgb)
        written.append(bt.shown_path(path))
    return written


# --------------------------------------------------------------------------------------------


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return out + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _finite(tree: Any) -> Any:
    """JSON-ready: paths as text, numpy scalars as Python, NaN/inf as None."""
    if isinstance(tree, dict):
        return {str(k): _finite(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_finite(v) for v in tree]
    return str(tree) if isinstance(tree, Path) else bt._finite(tree)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", choices=("demo", "quick", "paper"))
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated seeds (default 0,1,2).")
    parser.add_argument("--images", type=int, default=None, help="Use the first N of the 30 images (default all).")
    parser.add_argument("--smoke", action="store_true", help=f"Divide every step count by {bt.SMOKE_FACTOR} "
                        "(polygon shapes): checks the code path in minutes; meaningless numbers.")
    parser.add_argument("--no-supervised", dest="supervised", action="store_false",
                        help="Skip the supervised cross-validated reference.")
    parser.add_argument("--folds", type=int, default=5, help="Folds of the supervised reference (default 5).")
    parser.add_argument("--only-supervised", action="store_true",
                        help="Compute the supervised reference only and store it in results/<name>_supervised.json. "
                        "It does not depend on the workflow's settings, so a later run reuses it while the profile's "
                        "segment/classify settings, the images and the folds are the same.")
    parser.add_argument("--fresh-supervised", action="store_true", help="Recompute the supervised reference even "
                        "when a stored one matches.")
    parser.add_argument("--jobs", type=int, default=1, help="Seeds run at once (default 1). Each `nanoseg` "
                        "process then gets cores/jobs torch threads; stage times are those of a shared machine.")
    parser.add_argument("--resume", action="store_true", help="Keep the run folders of an interrupted call: "
                        "`nanoseg run` skips its finished stages (their times are those of the earlier call), "
                        "`nanoseg measure` its finished images.")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="Pass `--set KEY=VALUE` to every `nanoseg run` (repeatable): an experiment against the "
                        "profile's defaults. Give it its own --out and --work-dir; the report shows the command.")
    parser.add_argument("--note", default=None, help="A line on the conditions (e.g. machine load) for the report.")
    parser.add_argument("--render-from", type=Path, default=None, help="Only rewrite the report (and with --readme "
                        "the README section) from an earlier run's JSON; runs nothing.")
    parser.add_argument("--readme", type=Path, default=None, help="Also write the summary into this README between "
                        "its workflow-benchmark markers.")
    parser.add_argument("--work-dir", type=Path, default=None, help="Run folders (not committed); default "
                        "benchmarks/work/workflow_<profile>[_smoke].")
    parser.add_argument("--out", type=Path, default=None, help="Report; default results/workflow_<profile>[_smoke].md.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.render_from is not None:
        return rerender(args.render_from, args.note, args.readme, args.folds)
    if not (DATA / "masks").is_dir():
        raise SystemExit(f"error: {DATA} not found; the benchmark needs the shared TiO2 data")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"error: --seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise SystemExit("error: --seeds: give at least one seed")
    n_images = len(bt.ALL_IDS) if args.images is None else args.images
    if not 1 <= n_images <= len(bt.ALL_IDS):
        raise SystemExit(f"error: --images {args.images}: choose 1 to {len(bt.ALL_IDS)}")
    image_ids = bt.ALL_IDS[:n_images]
    name = f"workflow_{args.profile}{'_smoke' if args.smoke else ''}"
    work_dir = args.work_dir or ROOT / "benchmarks" / "work" / (name + ("_supervised" if args.only_supervised else ""))
    out = args.out or RESULTS / f"{name}.md"
    if work_dir.exists() and not args.resume:
        shutil.rmtree(work_dir)  # every seed trains from scratch
    sets = (smoke_sets(args.profile) if args.smoke else []) + list(args.sets)
    data = data_folder(image_ids, work_dir)
    t_start = time.perf_counter()
    load = os.getloadavg()
    per_seed: dict[int, dict[str, Any]] = {}
    overlays: list[str] = []
    truth = expert_truth(image_ids)
    supervised_path = out.with_name(f"{out.stem}_supervised.json")
    key = supervised_key(args.profile, args.smoke, image_ids, args.folds)

    def compute_supervised() -> dict[str, Any]:
        logger.info("supervised reference (%d-fold)", args.folds)
        t0 = time.perf_counter()
        result = supervised_reference(args.profile, args.smoke, truth, work_dir / "supervised", args.folds)
        result["made"] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(),
                          "wall_s": round(time.perf_counter() - t0, 1), "load_at_start": " / ".join(
                              f"{v:.2f}" for v in load)}
        write_json(supervised_path, _finite({"key": key, "result": result}))
        return result

    if args.only_supervised:
        compute_supervised()
        return {"supervised": str(supervised_path)}
    from concurrent.futures import ThreadPoolExecutor

    # Seeds run as separate `nanoseg` processes; with --jobs > 1 several at once (threads only
    # wait for their subprocesses), each process with its share of the cores.
    env = None
    if args.jobs > 1:
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, bt._cpu_count() // args.jobs)))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {seed: pool.submit(run_seed, seed, args.profile, sets, data, work_dir / f"seed{seed}", env,
                                      args.resume)
                   for seed in seeds}
        seed_runs = {seed: f.result() for seed, f in futures.items()}
    for seed in seeds:
        seed_run = seed_runs[seed]
        per_seed[seed] = score_seed(seed_run, truth)
        logger.info("seed %d: %s", seed, {k: round(v, 4) for k, v in headline(per_seed[seed]).items()
                                          if isinstance(v, float) and np.isfinite(v)})
        if not overlays:
            overlays = write_overlays(seed_run["measure_dir"], image_ids, out.with_suffix(""))
    supervised = None
    if args.supervised:
        supervised = None if args.fresh_supervised else cached_supervised(supervised_path, key)
        if supervised is not None:
            logger.info("supervised reference: reusing %s (same settings, images and folds)", supervised_path)
        else:
            supervised = compute_supervised()
    set_text = "".join(f" --set {s}" for s in sets)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "profile": args.profile, "smoke": args.smoke,
        "seeds": seeds, "images": list(image_ids), "commit": _commit(),
        "machine": f"{platform.machine()}, Python {platform.python_version()}, {bt._cpu_count()} CPU cores, "
                   f"{bt._device_name()}",
        "load_at_start": " / ".join(f"{v:.2f}" for v in load) + " (1/5/15 min load average)",
        "jobs": args.jobs, "resumed": args.resume,
        "run_command": f"nanoseg run {'DATA' if data != DATA else '../shared/data/bam-tio2'} --out RUN "
                       f"--profile {args.profile} --seed S{set_text}",
        "measure_command": "nanoseg measure DATA/sem --model RUN/adapt/model.pt --classifier RUN/classify/model.pt "
                           "--config RUN/config.yaml --probabilities --out M",
        "total_wall_s": round(time.perf_counter() - t_start, 1),
        "supervised_file": bt.shown_path(supervised_path),
    }
    results = {"meta": meta, "seeds": per_seed, "aggregate": aggregate(per_seed), "supervised": supervised,
               "overlays": overlays}
    if args.note:
        meta["note"] = args.note
    write_results(results, out, args.readme)
    return results


def write_results(results: dict[str, Any], out: Path, readme: Path | None = None) -> None:
    """The Markdown report and the JSON beside it (and the README section)."""
    report = render_report(results)
    write_text(out, report + "\n")
    write_json(out.with_suffix(".json"), _finite(results))
    if readme is not None:
        from nanoseg.atomic import embed_section

        md = out.relative_to(readme.resolve().parent) if out.is_relative_to(readme.resolve().parent) else out
        embed_section(readme, f"workflow-benchmark-{results['meta']['profile']}", readme_section(results, str(md)))
    print(report)


def rerender(json_path: Path, note: str | None, readme: Path | None, n_folds: int = 5) -> dict[str, Any]:
    """Rewrite the report (and README section) of a finished run from its JSON.

    A run made with ``--no-supervised`` (or before the reference was finished) gets the stored
    supervised reference when one was computed for exactly its profile, images and settings
    (:func:`supervised_key`): the reference does not depend on the workflow, only on those.
    """
    results = json.loads(json_path.read_text())
    results["seeds"] = {int(k): v for k, v in results["seeds"].items()}
    meta = results["meta"]
    if note:
        meta["note"] = note
    if results.get("supervised") is None:
        key = supervised_key(meta["profile"], meta["smoke"], tuple(meta["images"]), n_folds)
        stored = cached_supervised(ROOT / meta["supervised_file"], key)
        if stored is not None:
            logger.info("adding the supervised reference from %s", meta["supervised_file"])
            results["supervised"] = stored
    write_results(results, json_path.with_suffix(".md").resolve(), readme)
    return results


if __name__ == "__main__":
    main()
