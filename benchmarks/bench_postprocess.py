"""Post-processing steps computed over the whole image against around the particles only.

Two steps of :func:`nanoseg.segment.instances_from_probabilities` used to work on the whole
image and now work on crops around the particles, with the same result:

- the markers' h-maxima: ``skimage.morphology.h_maxima`` over the whole image against
  :func:`nanoseg.segment.instances.h_maxima_within`;
- the boundary band's give-back: ``skimage.segmentation.expand_labels`` (a distance transform of
  the whole image) times the foreground against :func:`nanoseg.segment.instances.expand_within`.

For each seed folder of a finished ``benchmarks/workflow.py`` call, the segmentation model
(``RUN/adapt/model.pt``) predicts the 30 shared TiO2 micrographs (no TTA), and each step runs
both ways for the run's settings and one other (marker_threshold 0.5 / marker_h 0.1; band
6 px). Reports the pixels where the two differ (must be 0), the median time of each per image,
and the median time of the whole post-processing (``instances_from_probabilities``).

    python -m benchmarks.bench_postprocess --runs benchmarks/work/workflow_quick --seeds 0,1,2

Results: ``benchmarks/results/bench_postprocess.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common

#: (marker_threshold, marker_h, boundary_width_px); None: the run's own
SETTINGS = ((None, None, None), (0.5, 0.1, 6))


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def seed_times(run_dir: Path) -> dict[str, Any]:
    from skimage.measure import label
    from skimage.morphology import h_maxima
    from skimage.segmentation import expand_labels, watershed

    from nanoseg import io, nets
    from nanoseg.config import load_config
    from nanoseg.segment import instances_from_probabilities
    from nanoseg.segment.data import INTERIOR, foreground_mask
    from nanoseg.segment.infer import predict_probabilities
    from nanoseg.segment.instances import expand_within, h_maxima_within

    cfg = load_config(run_dir / "config.yaml").segment
    net, meta = nets.load(run_dir / "adapt" / "model.pt")
    times: dict[str, list[float]] = {k: [] for k in ("markers_whole", "markers_within", "band_whole", "band_within",
                                                     "post_processing")}
    differ = {"markers": 0, "band": 0}
    for image_id in common.ALL_IDS:
        height, width = common.manual_mask(image_id).shape  # the micrograph above its info bar
        image = np.asarray(io.read_micrograph(common.DATA / "sem" / f"{image_id}.tif").image)[:height, :width]
        probs = predict_probabilities(net, image, meta["target"], bf16=False, tta=False)
        interior, foreground = probs[INTERIOR], foreground_mask(probs, meta["target"], 0.5)
        _, t = _timed(instances_from_probabilities, probs, meta["target"], cfg)
        times["post_processing"].append(t)
        for threshold, h, band in SETTINGS:
            region = (interior > (threshold or cfg.marker_threshold)) & foreground
            h, band = h or cfg.marker_h, band or cfg.boundary_width_px
            old, t = _timed(lambda: h_maxima(interior.astype(np.float64), h).astype(bool) & region)
            times["markers_whole"].append(t)
            new, t = _timed(h_maxima_within, interior, region, h)
            times["markers_within"].append(t)
            differ["markers"] += int((old != new).sum())
            markers = watershed(-interior, label(new, connectivity=2), mask=region).astype(np.int32)
            old, t = _timed(lambda: expand_labels(markers, distance=band) * foreground)
            times["band_whole"].append(t)
            new, t = _timed(expand_within, markers, foreground, band)
            times["band_within"].append(t)
            differ["band"] += int((old != new).sum())
    return {"maps": len(times["markers_whole"]), "pixels_differing": differ,
            "median_s": {k: float(np.median(v)) for k, v in times.items()},
            "marker_threshold": cfg.marker_threshold, "marker_h": cfg.marker_h,
            "boundary_width_px": cfg.boundary_width_px}


def render(results: dict[str, Any]) -> str:
    lines = ["# Post-processing: whole image against around the particles", "",
             f"Made by `benchmarks/bench_postprocess.py` on {results['date']}, commit {results['commit']}; "
             f"{results['machine']}; load average at start {results['load_at_start']}. Models: `{results['runs']}/"
             "seed<S>/run/adapt/model.pt`, the 30 shared TiO2 micrographs (no TTA), each step with the run's "
             "settings and with marker_threshold 0.5 / marker_h 0.1 / a 6 px band.", "",
             "| seed | step | probability maps | pixels that differ | whole image, median s | around the particles, "
             "median s |", "| --- | --- | --- | --- | --- | --- |"]
    for seed, r in results["seeds"].items():
        med = r["median_s"]
        for step, name in (("markers", "h-maxima markers"), ("band", "band give-back (expand)")):
            lines.append(f"| {seed} | {name} | {r['maps']} | {r['pixels_differing'][step]} | "
                         f"{med[step + '_whole']:.3f} | {med[step + '_within']:.3f} |")
    lines += ["", "Whole post-processing (`instances_from_probabilities`, the run's settings), median s per image: "
              + ", ".join(f"seed {s} {r['median_s']['post_processing']:.3f}" for s, r in results["seeds"].items())
              + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_run_folder_arguments(parser, "seed<S>/run")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "bench_postprocess.md")
    args = parser.parse_args(argv)
    from nanoseg.runtime import configure_torch

    configure_torch(None)
    load = os.getloadavg()
    seeds = {int(s): seed_times(args.runs / f"seed{s}" / "run") for s in args.seeds}
    results = {**common.provenance(load), "runs": common.shown_path(args.runs), "seeds": seeds}
    common.save_results(args.out, results, render(results))
    return results


if __name__ == "__main__":
    main()
