"""Scoring of the workflow benchmark: one seed's ``nanoseg measure`` output against the expert.

Plain functions on label images keyed by image id; ``benchmarks/workflow.py`` runs the commands
and calls them, ``benchmarks/workflow_report.py`` renders what they return, and the offline
benchmarks (``classify_options.py``, ``keep_rules.py``, ``tta.py``) rescore saved runs with them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common

#: Size descriptors compared with the expert's kept particles.
SIZE_DESCRIPTORS: tuple[str, ...] = ("min_feret_nm", "ecd_nm")
#: Scores shown in the tables (mean +- sd over seeds).
HEADLINE = (("strict", "f1"), ("strict", "image_iou"), ("paper", "image_iou"), ("paper", "instance_iou"))



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


#: Lower edges of the IoU bins of :func:`outline_error_by_match` (the last bin ends at 1).
IOU_BIN_EDGES: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)


def matched_pair_sizes(labels: dict[str, np.ndarray], expert: dict[str, np.ndarray],
                       expert_kept: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """Our outline and the expert's of every expert-kept particle one of ours matches (IoU 0.5).

    One record per pair: ``iou``, ``min_feret_px`` and ``area_px`` of ours and of the expert's
    (``*_ours``, ``*_expert``). Pairs where either particle touches the image border are left
    out, as in :func:`size_table`.
    """
    from nanoseg.particles import measure_particles

    records = []
    for i in expert:
        rows = expert[i].shape[0]  # the manual masks may lack the info bar's rows
        ours, theirs = np.asarray(labels[i][:rows]), np.asarray(expert_kept[i])
        kept_ids = label_ids(theirs)
        pairs = [(a, b) for a, b in matched_labels(ours, expert[i]) if b in kept_ids]
        if not pairs:
            continue
        po = measure_particles(ours).set_index("label")
        pe = measure_particles(theirs).set_index("label")
        # Intersections of all overlapping (ours, theirs) label pairs in one pass.
        both = (ours > 0) & (theirs > 0)
        keys, counts = np.unique(ours[both].astype(np.int64) * (int(theirs.max()) + 1) + theirs[both],
                                 return_counts=True)
        inter = dict(zip(keys.tolist(), counts.tolist()))
        for a, b in pairs:
            if a not in po.index or b not in pe.index:
                continue
            area_a, area_b = float(po.at[a, "area_px"]), float(pe.at[b, "area_px"])
            common = inter.get(a * (int(theirs.max()) + 1) + b, 0)
            records.append({"iou": common / (area_a + area_b - common),
                            "min_feret_px_ours": float(po.at[a, "min_feret_px"]),
                            "min_feret_px_expert": float(pe.at[b, "min_feret_px"]),
                            "area_px_ours": area_a, "area_px_expert": area_b})
    return records


def outline_error_by_match(pairs: list[dict[str, float]]) -> list[dict[str, Any]]:
    """The matched pairs' min Feret error, split by how well ours matches the expert's outline.

    Per IoU bin (:data:`IOU_BIN_EDGES`): ``n``, ``share`` of the pairs, ``mean_ratio`` (our mean
    min Feret over the expert's), ``median_ratio`` (of the per-pair ratios), ``median_area_ratio``
    and ``contribution``: the bin's summed min Feret difference over the expert's summed min
    Feret of all pairs, so that the bins' contributions add up to the matched pairs' mean error.
    A well-placed edge shows as ratios near 1 in the top bin; a piece of a neighbour taken in
    (a partial merge) as large area ratios in the low bins.
    """
    if not pairs:
        return []
    iou = np.array([p["iou"] for p in pairs])
    ours = np.array([p["min_feret_px_ours"] for p in pairs])
    theirs = np.array([p["min_feret_px_expert"] for p in pairs])
    area_ratio = np.array([p["area_px_ours"] / p["area_px_expert"] for p in pairs])
    edges = (*IOU_BIN_EDGES, np.inf)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (iou >= lo) & (iou < hi)
        n = int(sel.sum())
        out.append({"iou_from": lo, "iou_to": min(hi, 1.0), "n": n, "share": n / len(pairs),
                    "mean_ratio": float(ours[sel].mean() / theirs[sel].mean()) if n else float("nan"),
                    "median_ratio": float(np.median(ours[sel] / theirs[sel])) if n else float("nan"),
                    "median_area_ratio": float(np.median(area_ratio[sel])) if n else float("nan"),
                    "contribution": float((ours[sel] - theirs[sel]).sum() / theirs.sum())})
    return out


def held_out_pairs(run_dir: Path, meta: dict[str, Any]) -> list[Path]:
    """The fake pairs a run's segmenter held out for validation (``meta['val_pairs']``, names with or
    without ``.npz``)."""
    return [run_dir / "pairs" / (name if name.endswith(".npz") else f"{name}.npz") for name in meta.get("val_pairs", [])]


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
    for path in held_out_pairs(run_dir, meta):
        with np.load(path) as pair:
            image, instances = pair["image"], pair["instances"]
        name = path.stem
        preds[name], _ = segment_image(net, meta, image, cfg, pixel_size_nm=meta.get("pixel_size_nm"), device=device)
        gts[name] = instances
    if not preds:
        return {"n_pairs": 0}
    df: pd.DataFrame = evaluate_predictions(preds, gts, "strict")
    row = summary_row(df)
    return {"n_pairs": len(preds), "f1": row["f1"], "image_iou": row["image_iou"]}


def expert_truth(image_ids: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per image: the manual mask (bool) and the manual particles the manual classes keep."""
    return {i: (common.manual_mask(i), common.manual_kept_labels(i)) for i in image_ids}


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
    scored = score_images(labels, probs, kept, truth, common.pixel_size_nm())
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
