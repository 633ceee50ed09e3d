"""Would choosing the watershed markers on each run's own held-out fake pairs generalise to the real images?

For each seed's run folder of a workflow benchmark call, the run's segmentation net segments its
held-out synthetic pairs and the 30 shared TiO2 micrographs once (with the run's own inference
settings, TTA included); the probabilities are then split into particles for every pair of
``segment.marker_threshold`` x ``segment.marker_h`` on a grid, and each split is scored with the
strict protocol: F1 on the fakes (their instance truth) and on the real images (the expert's
masks). The question is whether the setting that maximises F1 on the fakes, which a run could pick
by itself without any annotation, also raises F1 on the real images, above all in a seed that
over-splits.

    python -m benchmarks.marker_calibration --runs /work/bench/fresh --out benchmarks/results/marker_calibration_quick.md

Results: the Markdown file given by ``--out`` and a ``.json`` beside it.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.workflow_scoring import held_out_pairs
from nanoseg.atomic import write_json, write_text

logger = logging.getLogger("nanoseg.benchmarks.marker_calibration")

MARKER_THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
MARKER_HEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5)


def run_probabilities(run_dir: Path, image_ids: tuple[str, ...]) -> tuple[dict, dict, dict, dict, Any]:
    """Class probabilities of the held-out fakes and the real images, with their truths."""
    from nanoseg import nets
    from nanoseg.config import load_config
    from nanoseg.io import read_micrograph
    from nanoseg.segment import foreground_threshold, predict_probabilities

    net, meta = nets.load(run_dir / "adapt" / "model.pt")
    cfg = load_config(run_dir / "config.yaml").segment
    kind = meta["target"]

    def probs(image: np.ndarray) -> np.ndarray:
        return predict_probabilities(net, image, kind, bf16=cfg.bf16, tile_px=cfg.inference_tile_px,
                                     overlap_px=cfg.tile_overlap_px, tta=cfg.tta)

    fake_p, fake_gt = {}, {}
    for path in held_out_pairs(run_dir, meta):
        with np.load(path) as pair:
            fake_p[path.stem], fake_gt[path.stem] = probs(pair["image"]), pair["instances"]
    real_p, real_gt = {}, {}
    for i in image_ids:
        real_p[i] = probs(read_micrograph(common.DATA / "sem" / f"{i}.tif").image)
        real_gt[i] = common.manual_mask(i)
    return fake_p, fake_gt, real_p, real_gt, (cfg, kind, foreground_threshold(cfg, meta))


def f1_for(probs: dict, truths: dict, cfg: Any, kind: str, threshold: float) -> float:
    from nanoseg.evaluate import evaluate_predictions, summary_row
    from nanoseg.segment import instances_from_probabilities

    labels = {k: instances_from_probabilities(p, kind, cfg, threshold=threshold) for k, p in probs.items()}
    return float(summary_row(evaluate_predictions(labels, truths, "strict"))["f1"])


def calibrate_seed(run_dir: Path, image_ids: tuple[str, ...]) -> dict[str, Any]:
    t0 = time.perf_counter()
    fake_p, fake_gt, real_p, real_gt, (cfg, kind, thr) = run_probabilities(run_dir, image_ids)
    grid = []
    for mt in MARKER_THRESHOLDS:
        for mh in MARKER_HEIGHTS:
            c = cfg.model_copy(update={"marker_threshold": mt, "marker_h": mh})
            grid.append({"marker_threshold": mt, "marker_h": mh, "f1_fake": f1_for(fake_p, fake_gt, c, kind, thr),
                         "f1_real": f1_for(real_p, real_gt, c, kind, thr)})
            logger.info("%s: %s", run_dir, grid[-1])
    default = next(g for g in grid if g["marker_threshold"] == cfg.marker_threshold and g["marker_h"] == cfg.marker_h)
    chosen = max(grid, key=lambda g: g["f1_fake"])
    return {"run_dir": str(run_dir), "n_fake": len(fake_p), "n_real": len(real_p), "default": default,
            "chosen_on_fakes": chosen, "best_on_real": max(grid, key=lambda g: g["f1_real"]), "grid": grid,
            "wall_s": round(time.perf_counter() - t0, 1)}


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = ["# Watershed markers chosen on each run's own fakes", "",
             common.run_folder_header("marker_calibration.py", meta) + " Strict F1 at IoU 0.5; fakes: the run's held-out "
             "synthetic pairs against their "
             "instance masks; real: the 30 TiO2 micrographs against "
             f"the expert's masks. Grid: marker_threshold {list(MARKER_THRESHOLDS)} x marker_h "
             f"{list(MARKER_HEIGHTS)}.", "",
             "| seed | default (threshold, h): F1 fakes / real | chosen on the fakes: setting, F1 fakes / real "
             "| best on the real images (needs annotation): setting, F1 fakes / real |", "|---|---|---|---|"]

    def cell(g: dict[str, Any]) -> str:
        return f"({g['marker_threshold']}, {g['marker_h']}): {g['f1_fake']:.3f} / {g['f1_real']:.3f}"

    for seed, r in results["seeds"].items():
        lines.append(f"| {seed} | {cell(r['default'])} | {cell(r['chosen_on_fakes'])} | {cell(r['best_on_real'])} |")
    lines += ["", "Every grid point is in the JSON file beside this one."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_run_folder_arguments(parser, "seed<S>/run")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "marker_calibration_quick.md")
    parser.add_argument("--note", default="",
                        help="Conditions of the call (which benchmark call made the run folders).")
    args = parser.parse_args(argv)
    runs = common.seed_folders(parser, args, "run", "adapt/model.pt")
    load = os.getloadavg()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    seeds = {s: calibrate_seed(run_dir, common.ALL_IDS) for s, run_dir in runs.items()}
    results = {"meta": common.run_folder_meta(load, args), "seeds": seeds}
    write_json(args.out.with_suffix(".json"), results)
    write_text(args.out, render(results))

if __name__ == "__main__":
    main()
