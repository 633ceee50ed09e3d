"""The h-maxima marker step: whole-image reconstruction against reconstruction around the particles.

For each seed folder of a finished ``benchmarks/workflow.py`` run, the segmentation model
(``RUN/adapt/model.pt``) predicts the 30 shared TiO2 micrographs (no TTA), and the markers'
h-maxima are computed twice: ``skimage.morphology.h_maxima`` over the whole image (what
nanoseg did before) and :func:`nanoseg.segment.instances._h_maxima_within` (what it does now),
for the run's ``marker_threshold`` / ``marker_h`` and one other setting. Reports the pixels
where the two differ (must be 0) and the median time of each per image.

    python benchmarks/bench_markers.py --runs benchmarks/work/workflow_quick --seeds 0,1,2

Results: ``benchmarks/results/bench_markers.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bam_tio2 as bt  # noqa: E402

SETTINGS = ((None, None), (0.5, 0.1))  # (marker_threshold, marker_h); None: the run's own


def seed_times(run_dir: Path) -> dict[str, Any]:
    from skimage.morphology import h_maxima

    from nanoseg import io, nets
    from nanoseg.config import load_config
    from nanoseg.segment.data import INTERIOR, foreground_mask
    from nanoseg.segment.infer import predict_probabilities
    from nanoseg.segment.instances import _h_maxima_within

    cfg = load_config(run_dir / "config.yaml").segment
    net, meta = nets.load(run_dir / "adapt" / "model.pt")
    whole, within, differ = [], [], 0
    for image_id in bt.ALL_IDS:
        height, width = bt.manual_mask(image_id).shape  # the micrograph above its info bar
        image = np.asarray(io.read_micrograph(bt.DATA / "sem" / f"{image_id}.tif").image)[:height, :width]
        probs = predict_probabilities(net, image, meta["target"], bf16=False, tta=False)
        interior, foreground = probs[INTERIOR], foreground_mask(probs, meta["target"], 0.5)
        for threshold, h in SETTINGS:
            region = (interior > (threshold or cfg.marker_threshold)) & foreground
            h = h or cfg.marker_h
            t0 = time.perf_counter()
            old = h_maxima(interior.astype(np.float64), h).astype(bool) & region
            t1 = time.perf_counter()
            new = _h_maxima_within(interior, region, h)
            t2 = time.perf_counter()
            whole.append(t1 - t0)
            within.append(t2 - t1)
            differ += int((old != new).sum())
    return {"maps": len(whole), "pixels_differing": differ, "whole_image_s": float(np.median(whole)),
            "within_s": float(np.median(within)), "marker_threshold": cfg.marker_threshold, "marker_h": cfg.marker_h}


def render(results: dict[str, Any]) -> str:
    lines = ["# h-maxima markers: whole image against around the particles", "",
             f"Made by `benchmarks/bench_markers.py` on {results['date']}, commit {results['commit']}; "
             f"{results['machine']}; load average at start {results['load_at_start']}. Models: `{results['runs']}/"
             "seed<S>/run/adapt/model.pt`, the 30 shared TiO2 micrographs, the run's marker setting and "
             "marker_threshold 0.5 / marker_h 0.1.", "",
             "| seed | probability maps | pixels that differ | whole image, median s | around the particles, median s |",
             "| --- | --- | --- | --- | --- |"]
    for seed, r in results["seeds"].items():
        lines.append(f"| {seed} | {r['maps']} | {r['pixels_differing']} | {r['whole_image_s']:.3f} | {r['within_s']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bt.add_run_folder_arguments(parser, "seed<S>/run")
    parser.add_argument("--out", type=Path, default=bt.RESULTS / "bench_markers.md")
    args = parser.parse_args(argv)
    from nanoseg.runtime import configure_torch

    configure_torch(None)
    load = os.getloadavg()
    seeds = {int(s): seed_times(args.runs / f"seed{s}" / "run") for s in args.seeds}
    results = {**bt.provenance(load), "runs": bt.shown_path(args.runs), "seeds": seeds}
    bt.save_results(args.out, results, render(results))
    return results


if __name__ == "__main__":
    main()
