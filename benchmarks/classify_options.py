"""Keep/discard classifier options on fixed segmentations: which particles each one keeps.

For each seed folder of a finished ``benchmarks/workflow.py`` run, the keep/discard network is
trained again on that run's fake pairs (``RUN/pairs``) with the run's classify settings plus one
option at a time, and applied to the labels that ``nanoseg measure`` wrote for the 30 shared TiO2
micrographs (``SEED/measure/segment/labels``). Segmentation, rules and images stay fixed, so the
differences are the classifier's alone. Scored like the workflow benchmark: the kept particles
against the particles the expert kept (count, mean/median/D10/D90 of min Feret and ECD), keep
precision/recall against the manual classes, and keep recall by fifth of the expert's particle
area (does a variant drop small whole particles?).

Variants: ``base`` (the run's own classifier, not retrained), ``base_auto`` (the run's own
classifier with its score threshold calibrated on the last tenth of its pairs: in-sample for a run
whose classifier trained on all of them, a cheap preview of ``auto``), ``size`` (``size_balance``),
``plain`` (no size balance), ``auto`` (``score_threshold`` 'auto': retrained without its held-out
pairs, threshold calibrated on them), ``ema`` / ``ema995`` (``auto`` with the moving average of the
weights, ``ema_decay`` 0.99 / 0.995), named on the command line. (The ``contact``, ``zoom`` and
``frag`` variants of the archived results measured settings since removed.) A trained model is kept in ``--work-dir`` and reused by a later call.

    python -m benchmarks.classify_options --runs benchmarks/work/workflow_quick --seeds 0,1,2 --variants base,size

Results: ``benchmarks/results/classify_options_<profile>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.workflow_scoring import (
    expert_truth,
    keep_precision_recall,
    label_ids,
    matched_labels,
    min_feret_row,
    read_seed_outputs,
    size_table,
)
from nanoseg.atomic import write_json, write_text

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "base_auto": {},
    "auto": {"score_threshold": "auto"},
    "size": {"size_balance": True},
    "plain": {"size_balance": False},
    "ema": {"score_threshold": "auto", "ema_decay": 0.99},
    "ema995": {"score_threshold": "auto", "ema_decay": 0.995},
}


def recall_by_area(labels: dict[str, np.ndarray], kept: dict[str, np.ndarray],
                   truth: dict[str, tuple[np.ndarray, np.ndarray]], n_bins: int = 5) -> list[dict[str, float]]:
    """Keep recall of the expert-kept particles matched at IoU 0.5, per fifth of their area."""
    from nanoseg.labels import label_binary

    areas, kept_flags = [], []
    for i, (mask, expert_kept) in truth.items():
        gt = label_binary(mask > 0, 1)
        expert_ids, ours = label_ids(expert_kept), label_ids(kept[i])
        gt_area = np.bincount(gt.ravel())
        for a, b in matched_labels(labels[i], gt):
            if b in expert_ids:
                areas.append(gt_area[b])
                kept_flags.append(a in ours)
    areas, kept_flags = np.asarray(areas, float), np.asarray(kept_flags, bool)
    edges = np.quantile(areas, np.linspace(0, 1, n_bins + 1))
    rows = []
    for k in range(n_bins):
        inside = (areas >= edges[k]) & ((areas < edges[k + 1]) if k < n_bins - 1 else (areas <= edges[k + 1]))
        rows.append({"area_px_from": float(edges[k]), "area_px_to": float(edges[k + 1]), "n": int(inside.sum()),
                     "keep_recall": float(kept_flags[inside].mean()) if inside.any() else float("nan")})
    return rows


def run_variant(seed_dir: Path, variant: str, model_dir: Path, image_ids: tuple[str, ...],
                truth: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    from nanoseg import classify, nets
    from nanoseg.config import load_config
    from nanoseg.io import read_micrograph

    config = load_config(seed_dir / "run" / "config.yaml")
    cfg = config.classify.model_copy(update=VARIANTS[variant])
    t0 = time.perf_counter()
    calibration = None
    if variant in ("base", "base_auto"):
        net, meta = nets.load(seed_dir / "run" / "classify" / "model.pt")
        cfg = classify.resolve_threshold(config.classify, meta)
        if variant == "base_auto":
            samples = classify.load_pair_samples(seed_dir / "run" / "pairs")
            held = samples[len(samples) - max(1, round(0.1 * len(samples))):]
            calibration = classify.calibrate_threshold(net, held, bf16=cfg.bf16)
            cfg = cfg.model_copy(update={"score_threshold": calibration["threshold"]})
    elif (model_dir / "model.pt").is_file():
        net, meta = nets.load(model_dir / "model.pt")
        cfg, calibration = classify.resolve_threshold(cfg, meta), meta.get("calibration")
    else:
        model_dir.mkdir(parents=True, exist_ok=True)
        samples = classify.load_pair_samples(seed_dir / "run" / "pairs")
        net, meta = classify.fit_classifier(samples, cfg, checkpoint=model_dir / "checkpoint.pt", seed=config.seed)
        nets.save(net, model_dir / "model.pt", meta={"task": "classify", "variant": variant, **meta,
                                                     "options": {k: list(v) if isinstance(v, tuple) else v
                                                                 for k, v in VARIANTS[variant].items()}},
                  kind="classifier")
        cfg, calibration = classify.resolve_threshold(cfg, meta), meta.get("calibration")
    train_s = time.perf_counter() - t0
    labels, _, _ = read_seed_outputs(seed_dir / "measure", image_ids)
    items = [(i, labels[i], (mg := read_micrograph(common.DATA / "sem" / f"{i}.tif")).image, mg.pixel_size_nm)
             for i in image_ids]
    decisions = classify.classify_images(items, cfg, net=net)
    kept = {}
    for i in image_ids:
        rows = decisions[(decisions["image"] == i) & decisions["kept"].astype(bool)]
        kept[i] = np.where(np.isin(labels[i], rows["label"].to_numpy()), labels[i], 0)
    from nanoseg.labels import label_binary

    expert_kept = {i: truth[i][1] for i in image_ids}
    sizes = size_table(kept, expert_kept, common.pixel_size_nm())
    keep = keep_precision_recall(labels, kept, {i: label_binary(truth[i][0] > 0, 1) for i in image_ids}, expert_kept)
    return {"train_s": round(train_s, 1), "score_threshold": float(cfg.score_threshold), "calibration": calibration,
            "keep": keep, "sizes": sizes,
            "recall_by_area": recall_by_area(labels, kept, truth)}


def render(results: dict[str, Any]) -> str:
    lines = [f"# Keep/discard classifier options on fixed segmentations ({results['profile']} profile)", "",
             f"Made by `benchmarks/classify_options.py` on {results['date']}, commit {results['commit']}; "
             f"{results['machine']}; load average at start {results['load_at_start']}. Run folders: "
             f"`{results['runs']}/seed<S>` ({len(results['images'])} images); each variant's classifier is trained "
             "on the run's fake pairs and applied to the labels its `nanoseg measure` wrote.", "",
             "| seed | variant | score threshold | kept / expert kept | count error | mean min Feret error | "
             "median min Feret error | keep precision | keep recall | keep recall, smallest fifth | "
             "keep recall, largest fifth |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for seed, by_variant in results["seeds"].items():
        for variant, r in by_variant.items():
            s = min_feret_row(r["sizes"])
            k, a = r["keep"], r["recall_by_area"]
            lines.append(f"| {seed} | {variant} | {r.get('score_threshold', 0.5):.3f} | {s['n_pred']} / {s['n_gt']} | {100 * s['count_rel_error']:+.1f} % | "
                         f"{100 * s['mean_rel_error']:+.1f} % | {100 * s['median_rel_error']:+.1f} % | "
                         f"{k['precision_matched']:.3f} | {k['recall_matched']:.3f} | {a[0]['keep_recall']:.2f} | "
                         f"{a[-1]['keep_recall']:.2f} |")
    lines += ["", "Keep precision/recall: of the predicted particles that match a manual particle at IoU 0.5 (the "
              "keep/discard step alone). Size and count errors: kept particles against the particles the expert "
              "kept, pooled over the images, border particles left out on both sides.", "",
              "Mean over seeds:", "", "| variant | count error | mean min Feret error | median min Feret error | "
              "keep recall |", "| --- | --- | --- | --- | --- |"]
    for variant, m in results["mean"].items():
        lines.append(f"| {variant} | {100 * m['count_rel_error']:+.1f} % | {100 * m['mean_rel_error']:+.1f} % | "
                     f"{100 * m['median_rel_error']:+.1f} % | {m['recall_matched']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_run_folder_arguments(parser, "seed<S>/run and seed<S>/measure")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--variants", default="base,size")
    parser.add_argument("--work-dir", type=Path, default=common.ROOT / "benchmarks" / "work" / "classify_options")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from nanoseg.runtime import configure_torch

    configure_torch(None)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    image_ids = common.ALL_IDS
    truth = expert_truth(image_ids)
    load = os.getloadavg()
    out = args.out or common.RESULTS / f"classify_options_{args.profile}.md"
    seeds: dict[int, dict[str, Any]] = {}
    for seed in args.seeds:
        seeds[seed] = {}
        for variant in variants:
            result = run_variant(args.runs / f"seed{seed}", variant, args.work_dir / f"seed{seed}" / variant,
                                 image_ids, truth)
            seeds[seed][variant] = result
            size = min_feret_row(result["sizes"])
            print(f"seed {seed} {variant}: kept {size['n_pred']}, mean min Feret {size['mean_rel_error']:+.3f}, "
                  f"keep recall {result['keep']['recall_matched']:.3f}", flush=True)
    mean = {}
    for variant in variants:
        sizes = [min_feret_row(seeds[s][variant]["sizes"]) for s in seeds]
        mean[variant] = {k: float(np.mean([x[k] for x in sizes]))
                         for k in ("count_rel_error", "mean_rel_error", "median_rel_error")}
        mean[variant]["recall_matched"] = float(np.mean([seeds[s][variant]["keep"]["recall_matched"] for s in seeds]))
    results = {"profile": args.profile, **common.provenance(load), "runs": common.shown_path(args.runs), "images": list(image_ids),
               "variants": {v: {k: list(x) if isinstance(x, tuple) else x for k, x in VARIANTS[v].items()}
                            for v in variants},
               "seeds": seeds, "mean": mean}
    write_json(out.with_suffix(".json"), json.loads(json.dumps(results, default=float)))
    write_text(out, render(results) + "\n")
    print(render(results))
    return results


if __name__ == "__main__":
    main()
