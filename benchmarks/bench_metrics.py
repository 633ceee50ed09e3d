"""Time every metric on one 1024x712 image with ~150 particles; writes results/metrics.json.

Uses the first manual mask of ../shared/data/bam-tio2 as ground truth when it is there (else a
synthetic image of random discs) and a perturbed copy as prediction: a smoothed, noisy
probability map, thresholded at 0.5.

    python -m benchmarks.bench_metrics
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy import ndimage as ndi

from benchmarks import common
from nanoseg import metrics as M
from nanoseg.atomic import write_json
from nanoseg.evaluate import evaluate_predictions
from nanoseg.labels import label_binary

SHARED = common.DATA / "masks"


def ground_truth() -> tuple[np.ndarray, str]:
    masks = sorted(SHARED.glob("*_m.tif")) if SHARED.is_dir() else []
    if masks:
        import tifffile

        return tifffile.imread(masks[0])[:712] > 0, masks[0].name
    from skimage.draw import disk

    rng = np.random.default_rng(0)
    gt = np.zeros((712, 1024), bool)
    for r, c in rng.integers(20, (692, 1004), size=(150, 2)):
        gt[disk((r, c), 12, shape=gt.shape)] = True
    return gt, "synthetic discs"


def timed(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)  # --help; no options
    gt, source = ground_truth()
    gt_labels = label_binary(gt, 1)
    rng = np.random.default_rng(0)
    prob = np.clip(ndi.gaussian_filter(gt.astype(float), 1.5) + rng.normal(0, 0.1, gt.shape), 0, 1).astype(np.float32)
    binary = prob > 0.5
    pred_labels = M.paper_watershed(binary)
    bin_labels = label_binary(binary, 1)
    cases = {
        "image_iou": lambda: M.image_iou(binary, gt),
        "youden_index": lambda: M.youden_index(prob, gt),
        "pixel_error_11_thresholds": lambda: M.pixel_error(prob, gt),
        "iou_matrix": lambda: M.iou_matrix(pred_labels, gt_labels),
        "instance_iou": lambda: M.instance_iou(pred_labels, gt_labels),
        "detection_scores": lambda: M.detection_scores(pred_labels, gt_labels),
        "mean_average_precision": lambda: M.mean_average_precision(pred_labels, gt_labels),
        "rand_scores": lambda: M.rand_scores(bin_labels, gt_labels),
        "information_scores": lambda: M.information_scores(bin_labels, gt_labels),
        "thin_borders": lambda: M.thin_borders(bin_labels),
        "warping_error": lambda: M.warping_error(binary, gt),
        "paper_watershed": lambda: M.paper_watershed(binary),
    }
    results = {name: round(timed(fn), 4) for name, fn in cases.items()}
    t0 = time.perf_counter()
    evaluate_predictions({"x": prob}, {"x": gt}, "strict")
    results["evaluate_strict_one_image"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    evaluate_predictions({"x": prob}, {"x": gt}, "paper")
    results["evaluate_paper_one_image"] = round(time.perf_counter() - t0, 3)
    report = {
        "what": "seconds per call (median of 3) on one 1024x712 image",
        "ground_truth": source,
        "n_gt_particles": int(gt_labels.max()),
        "n_pred_particles": int(pred_labels.max()),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "seconds": results,
    }
    out = write_json(common.RESULTS / "metrics.json", report)
    for name, value in results.items():
        print(f"{name:<30} {value:8.4f} s")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
