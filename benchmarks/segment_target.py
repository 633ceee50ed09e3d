"""Touching particles: another segment target trained on a finished quick run's own pairs, scored end to end.

For each seed of a workflow benchmark call (``--runs``, holding ``seed<S>/run`` and
``seed<S>/measure``) the user's commands, as subprocesses:

    nanoseg segment train RUN/pairs --out SEG --profile quick --seed S --pixel-size PX --set segment.target=T
    nanoseg measure DATA/sem --model SEG/model.pt --classifier RUN/classify/model.pt --config RUN/config.yaml \\
        --set segment.target=T --probabilities --out M

so the new target learns from exactly the pairs the run's three-class net learned from, with the
same steps, and the run's classifier keeps the particles. Both the run's own measurement
(``seed<S>/measure``) and the new one are scored like the workflow benchmark (strict F1 and image
IoU, the paper's instance IoU, missed manual particles by cause, kept sizes against the expert's
kept particles in nm), so the table shows what the target changes and where.

    python -m benchmarks.segment_target --runs benchmarks/work/workflow_quick --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common, workflow
from benchmarks.workflow_scoring import expert_truth, headline, mean_sd

logger = logging.getLogger("nanoseg.benchmarks.segment_target")

ROWS = (("strict_f1", "strict F1", "{:.3f}"), ("strict_image_iou", "image IoU", "{:.3f}"),
        ("paper_instance_iou", "paper inst. IoU", "{:.3f}"),
        ("min_feret_nm_mean_rel_error", "kept mean min Feret", "{:+.1%}"),
        ("min_feret_nm_median_rel_error", "kept median min Feret", "{:+.1%}"), ("count_rel_error", "count", "{:+.1%}"))
MISSED = ("merged", "not_found", "outline")


def train_and_measure(run_dir: Path, seed: int, target: str, work: Path, sets: list[str]) -> dict[str, Any]:
    """The two commands of the module doc for one seed; their times."""
    seg, measure = work / "segment", work / "measure"
    set_args = [a for s in [f"segment.target={target}", *sets] for a in ("--set", s)]
    times = {"train": workflow.nanoseg_cli(["segment", "train", str(run_dir / "pairs"), "--out", str(seg), "--profile",
                                            "quick", "--seed", str(seed), "--pixel-size", f"{common.pixel_size_nm()}nm",
                                            *set_args], work / "train.log")}
    args = ["measure", str(common.DATA / "sem"), "--model", str(seg / "model.pt"), "--config",
            str(run_dir / "config.yaml"), "--out", str(measure), "--probabilities", *set_args]
    if (run_dir / "classify" / "model.pt").is_file():
        args += ["--classifier", str(run_dir / "classify" / "model.pt")]
    times["measure"] = workflow.nanoseg_cli(args, work / "measure.log")
    return {"times": times, "measure_dir": measure}


def score(measure_dir: Path, image_ids: tuple[str, ...]) -> dict[str, Any]:
    """The workflow benchmark's scores of one measure folder (generalization's native scoring)."""
    from benchmarks.generalization import native_sizes, score_condition

    scored = score_condition(measure_dir, expert_truth(image_ids), common.pixel_size_nm(), native_sizes(image_ids))
    return {"headline": headline(scored), "missed": scored["strict"].get("missed", {})}


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    target = meta["target"]
    names = ("three_class (the run's)", target)
    lines = [f"# Segment target on the runs' own pairs: three_class vs {target}", "",
             f"{meta['date']}, commit {meta['commit']}, {meta['machine']}; load at start {meta['load_at_start']}; "
             f"seeds {', '.join(map(str, meta['seeds']))}; runs: {meta['runs']}.", ""]
    if meta.get("note"):
        lines += [f"Note: {meta['note']}", ""]
    lines += [f"Commands: `{meta['train_command']}`; `{meta['measure_command']}`. Mean +- sd over seeds.", "",
              "| | " + " | ".join(names) + " |", "|---|---|---|"]
    for key, label, fmt in ROWS:
        cells = []
        for which in ("baseline", "target"):
            stats = mean_sd([s[which]["headline"].get(key) for s in results["seeds"].values()])
            cells.append("-" if stats["mean"] is None else fmt.format(stats["mean"])
                         + (f" +- {fmt.format(stats['sd']).lstrip('+')}" if stats["sd"] else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Per seed", "", "| seed | target | strict F1 | image IoU | kept mean / median min Feret | count | "
              "merged | not found | outline off | train (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for seed, s in results["seeds"].items():
        for which, name in (("baseline", names[0]), ("target", names[1])):
            h, m = s[which]["headline"], s[which]["missed"]
            train_s = s[which].get("times", {}).get("train", {}).get("wall_s", "-")
            lines.append(f"| {seed} | {name} | {h['strict_f1']:.3f} | {h['strict_image_iou']:.3f} | "
                         f"{h['min_feret_nm_mean_rel_error']:+.1%} / {h['min_feret_nm_median_rel_error']:+.1%} | "
                         f"{h['count_rel_error']:+.1%} | " + " | ".join(str(m.get(k, "-")) for k in MISSED)
                         + f" | {train_s} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_run_folder_arguments(parser, "seed<S>/run and seed<S>/measure")
    parser.add_argument("--target", default="centres")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "nanoseg-segment-target")
    parser.add_argument("--note", default=None)
    parser.add_argument("--out", type=Path, default=common.RESULTS / "segment_target.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    runs = common.seed_folders(parser, args, "run", "pairs/.done.json")
    load = os.getloadavg()
    image_ids = common.ALL_IDS
    results: dict[str, Any] = {"seeds": {}}
    for seed, run_dir in runs.items():
        baseline = score(args.runs / f"seed{seed}" / "measure", image_ids)
        made = train_and_measure(run_dir, seed, args.target, args.work_dir / f"seed{seed}", args.sets)
        results["seeds"][seed] = {"baseline": baseline, "target": {**score(made["measure_dir"], image_ids),
                                                                   "times": made["times"]}}
        logger.info("seed %d: F1 %.3f -> %.3f", seed, baseline["headline"]["strict_f1"],
                    results["seeds"][seed]["target"]["headline"]["strict_f1"])
    sets = "".join(f" --set {s}" for s in [f"segment.target={args.target}", *args.sets])
    results["meta"] = {**common.run_folder_meta(load, args), "seeds": list(runs), "target": args.target,
                       "train_command": f"nanoseg segment train RUN/pairs --out SEG --profile quick --seed S "
                                        f"--pixel-size {common.pixel_size_nm()}nm{sets}",
                       "measure_command": "nanoseg measure DATA/sem --model SEG/model.pt --classifier "
                                          f"RUN/classify/model.pt --config RUN/config.yaml{sets} --probabilities"}
    common.save_results(args.out, results, render(results))
    return results


if __name__ == "__main__":
    main()
