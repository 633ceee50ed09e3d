"""Where do the segmentation's outlines of the expert's kept particles run large: edges or merges?

The workflow benchmark's "where the kept size error comes from" table finds our outlines of the
particles we share with the expert some percent larger in min Feret. That can be an edge placed
outside the expert's line on every particle, or a minority of particles that took in a piece of a
touching neighbour (a partial merge, still matched at IoU 0.5). For each seed's ``nanoseg
measure`` output of a workflow benchmark call, every expert-kept particle that one of ours matches
is paired with ours, and the pairs are binned by their IoU: a well-placed edge shows as a min
Feret ratio near 1 in the top bin, a partial merge as a large area ratio in the low bins. Each
bin's contribution is its share of the matched pairs' mean min Feret error.

    python -m benchmarks.outline_error --runs /work/bench/fresh2 --out benchmarks/results/outline_error_quick.md

Results: the Markdown file given by ``--out`` and a ``.json`` beside it.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.workflow_scoring import matched_pair_sizes, outline_error_by_match, read_seed_outputs

logger = logging.getLogger("nanoseg.benchmarks.outline_error")


def score_seed(measure_dir: Path, image_ids: tuple[str, ...]) -> dict[str, Any]:
    """The binned outline error of one seed's ``nanoseg measure`` folder."""
    from nanoseg.labels import label_binary

    t0 = time.perf_counter()
    labels, _ = read_seed_outputs(measure_dir, image_ids, probabilities=False)
    expert = {i: label_binary(common.manual_mask(i) > 0, 1) for i in image_ids}
    expert_kept = {i: common.manual_kept_labels(i) for i in image_ids}
    pairs = matched_pair_sizes(labels, expert, expert_kept)
    bins = outline_error_by_match(pairs)
    logger.info("%s: %d pairs in %.0f s", measure_dir, len(pairs), time.perf_counter() - t0)
    return {"measure_dir": str(measure_dir), "n_pairs": len(pairs), "bins": bins,
            "mean_error": sum(b["contribution"] for b in bins),
            "wall_s": round(time.perf_counter() - t0, 1)}


def render(results: dict[str, Any]) -> str:
    lines = ["# Our outlines of the expert's kept particles, by how well they match", "",
             common.run_folder_header("outline_error.py", results["meta"]) + " Pairs: every particle the expert kept that one "
             "of ours matches at IoU 0.5 on the 30 TiO2 micrographs, particles touching the border left out. "
             "Ratios are ours over the expert's; a bin's contribution is its part of the matched pairs' mean "
             "min Feret error (the contributions add up to it).", "",
             "| seed | IoU | pairs (share) | mean min Feret ratio | median min Feret ratio | median area ratio "
             "| contribution to the mean error |", "|---|---|---|---|---|---|---|"]
    for seed, r in results["seeds"].items():
        for b in r["bins"]:
            lines.append(f"| {seed} | {b['iou_from']:.1f}-{b['iou_to']:.1f} | {b['n']} ({100 * b['share']:.0f} %) "
                         f"| {b['mean_ratio']:.3f} | {b['median_ratio']:.3f} | {b['median_area_ratio']:.3f} "
                         f"| {100 * b['contribution']:+.1f} % |")
        lines.append(f"| {seed} | all | {r['n_pairs']} | | | | {100 * r['mean_error']:+.1f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_run_folder_arguments(parser, "seed<S>/measure")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "outline_error_quick.md")
    parser.add_argument("--note", default="", help="Conditions of the call (which benchmark call made the folders).")
    args = parser.parse_args(argv)
    folders = common.seed_folders(parser, args, "measure", "decisions.csv")
    load = os.getloadavg()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    seeds = {s: score_seed(folder, common.ALL_IDS) for s, folder in folders.items()}
    results = {"meta": common.run_folder_meta(load, args), "seeds": seeds}
    common.save_results(args.out, results, render(results))


if __name__ == "__main__":
    main()
