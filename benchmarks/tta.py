"""What test-time augmentation costs and gains: the workflow benchmark's models with and without TTA.

For each seed folder of a finished ``benchmarks/workflow.py`` run, the run's segmentation model
segments the shared TiO2 micrographs twice, with the settings saved in the model, once plain
and once with ``segment.tta`` (probabilities averaged over the 8 flips and 90-degree rotations),
timing each image. Both are scored with the ``strict`` protocol against the manual masks
(F1 at IoU 0.5, image IoU), so the gain is measured on the images the benchmark reports.

    python benchmarks/tta.py --work-dir benchmarks/work/workflow_quick --seeds 0

Results: ``benchmarks/results/tta_<profile>.json`` and ``.md``. Times are those of the machine
at the time (load average recorded); the ratio of the two is what carries over.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bam_tio2 as bt  # noqa: E402

from nanoseg.atomic import write_json, write_text  # noqa: E402


def segment_all(model_path: Path, image_ids: tuple[str, ...], tta: bool) -> tuple[dict[str, np.ndarray], list[float]]:
    """Labels of every image and the seconds each took, with the model's own settings."""
    from nanoseg import nets
    from nanoseg.config import SegmentConfig
    from nanoseg.io import read_micrograph
    from nanoseg.segment import segment_image

    net, meta = nets.load(model_path)
    cfg = SegmentConfig.model_validate({**meta["config"], "tta": tta})
    labels, seconds = {}, []
    for i in image_ids:
        mg = read_micrograph(bt.DATA / "sem" / f"{i}.tif")
        t0 = time.perf_counter()
        labels[i], _ = segment_image(net, meta, mg.image, cfg, pixel_size_nm=mg.pixel_size_nm)
        seconds.append(time.perf_counter() - t0)
    return labels, seconds


def score(labels: dict[str, np.ndarray], image_ids: tuple[str, ...]) -> dict[str, float]:
    from nanoseg.evaluate import evaluate_predictions, summary_row

    table = evaluate_predictions(labels, {i: bt.manual_mask(i) for i in image_ids}, "strict")
    row = summary_row(table)
    return {k: float(row[k]) for k in ("f1", "precision", "recall", "image_iou")}


def render(results: dict[str, Any]) -> str:
    lines = [f"# Test-time augmentation: cost and gain ({results['profile']} profile)", "",
             f"Made by `benchmarks/tta.py` on {results['date']}, commit {results['commit']}; {results['machine']}; "
             f"load average at start {results['load_at_start']}. Models: `{results['work_dir']}/seed<S>/run/segment/"
             f"model.pt` of the workflow benchmark; {len(results['images'])} images, strict protocol.", "",
             "| seed | F1 plain | F1 TTA | image IoU plain | image IoU TTA | s/image plain | s/image TTA |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for seed, r in results["seeds"].items():
        p, t = r["plain"], r["tta"]
        lines.append(f"| {seed} | {p['f1']:.3f} | {t['f1']:.3f} | {p['image_iou']:.3f} | {t['image_iou']:.3f} | "
                     f"{p['median_s_per_image']:.2f} | {t['median_s_per_image']:.2f} |")
    m = results["mean"]
    lines += ["", f"Mean over seeds: F1 {m['f1_gain']:+.3f}, image IoU {m['image_iou_gain']:+.3f}, "
              f"time x{m['time_ratio']:.1f} per image with TTA."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=bt.ROOT / "benchmarks" / "work" / "workflow_quick")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--images", type=int, default=None, help="First N of the 30 images (default all).")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from nanoseg.runtime import configure_torch

    configure_torch(None)
    image_ids = bt.ALL_IDS[:args.images] if args.images else bt.ALL_IDS
    load = os.getloadavg()
    seeds: dict[int, Any] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        model = args.work_dir / f"seed{seed}" / "run" / "segment" / "model.pt"
        if not model.is_file():
            raise SystemExit(f"error: {model} not found; run benchmarks/workflow.py first")
        seeds[seed] = {}
        for name, tta in (("plain", False), ("tta", True)):
            labels, seconds = segment_all(model, image_ids, tta)
            seeds[seed][name] = {**score(labels, image_ids), "median_s_per_image": float(np.median(seconds)),
                                 "total_s": float(np.sum(seconds))}
            print(seed, name, seeds[seed][name], flush=True)
    gains = {k: float(np.mean([r["tta"][k] - r["plain"][k] for r in seeds.values()])) for k in ("f1", "image_iou")}
    ratio = float(np.mean([r["tta"]["total_s"] / r["plain"]["total_s"] for r in seeds.values()]))
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=bt.ROOT, capture_output=True,
                            text=True).stdout.strip()
    results = {"profile": args.profile, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit,
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
               "load_at_start": " / ".join(f"{v:.2f}" for v in load),
               "work_dir": str(args.work_dir.relative_to(bt.ROOT)) if args.work_dir.is_relative_to(bt.ROOT)
               else str(args.work_dir), "images": list(image_ids), "seeds": seeds,
               "mean": {"f1_gain": gains["f1"], "image_iou_gain": gains["image_iou"], "time_ratio": ratio}}
    out = args.out or bt.RESULTS / f"tta_{args.profile}.md"
    write_json(out.with_suffix(".json"), results)
    write_text(out, render(results) + "\n")
    print(render(results))
    return results


if __name__ == "__main__":
    main()
