"""Shape and resolution rules of the keep/discard step, applied to finished workflow runs.

For each seed folder of a ``benchmarks/workflow.py`` run, the particles that ``nanoseg measure``
kept (``SEED/measure/decisions.csv``) are measured again with this checkout's
:func:`nanoseg.particles.measure_particles` and each rule variant is added on top of the run's
own decisions (rules are AND-ed, so this is exactly what the run would have kept with the rule
switched on; the classifier and segmentation stay fixed). Scored like the workflow benchmark:
kept particles against the particles the expert kept (count, mean/median/D10 of min Feret),
keep precision/recall, and the cost of each rule on the expert's own kept particles (the share
of them it would discard from the manual masks).

Variants: ``run`` (the decisions as written), ``thin`` (``classify.min_inscribed_fraction``
0.5: a largest inscribed circle, plus one pixel of grid slack, below half the min Feret diameter;
no convex particle is below 2/3), ``strict_thin`` (the same without the pixel slack), ``min5`` /
``min7`` (min Feret below 5 / 7 px: a resolution floor) and ``thin+min5``.

    python -m benchmarks.keep_rules --runs benchmarks/work/workflow_quick --seeds 0,1,2

Results: ``benchmarks/results/keep_rules_<profile>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from benchmarks import common
from benchmarks.workflow_scoring import (
    expert_truth,
    keep_precision_recall,
    min_feret_row,
    read_seed_outputs,
    size_table,
)
from nanoseg.atomic import write_json, write_text


def _thin(slack_px: float) -> Callable[[pd.DataFrame], np.ndarray]:
    return lambda p: (p["inscribed_diameter_px"] + slack_px < 0.5 * p["min_feret_px"]).to_numpy()


def _floor(px: float) -> Callable[[pd.DataFrame], np.ndarray]:
    return lambda p: (p["min_feret_px"] < px).to_numpy()


#: variant -> which measured particles the extra rule discards
RULES: dict[str, Callable[[pd.DataFrame], np.ndarray] | None] = {
    "run": None,
    "thin": _thin(1.0),
    "strict_thin": _thin(0.0),
    "min5": _floor(5.0),
    "min7": _floor(7.0),
    "thin+min5": lambda p: _thin(1.0)(p) | _floor(5.0)(p),
}


def measured(kept: dict[str, np.ndarray]) -> dict[str, pd.DataFrame]:
    from nanoseg.particles import measure_particles

    return {i: measure_particles(lab, exclude_border=False) for i, lab in kept.items()}


def apply_rule(kept: dict[str, np.ndarray], tables: dict[str, pd.DataFrame], rule) -> dict[str, np.ndarray]:
    if rule is None:
        return kept
    out = {}
    for i, lab in kept.items():
        drop = tables[i]["label"].to_numpy()[rule(tables[i])]
        out[i] = np.where(np.isin(lab, drop), 0, lab)
    return out


def render(results: dict[str, Any]) -> str:
    lines = [f"# Shape and resolution rules on finished workflow runs ({results['profile']} profile)", "",
             f"Made by `benchmarks/keep_rules.py` on {results['date']}, commit {results['commit']}; "
             f"{results['machine']}; load average at start {results['load_at_start']}. Run folders: "
             f"`{results['runs']}/seed<S>` ({len(results['images'])} images); each rule is added to the decisions "
             "that the run's `nanoseg measure` wrote.", "",
             "| seed | variant | kept / expert kept | count error | mean min Feret error | median min Feret error | "
             "D10 min Feret error | keep precision | keep recall |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for seed, by_variant in results["seeds"].items():
        for variant, r in by_variant.items():
            s = min_feret_row(r["sizes"])
            k = r["keep"]
            lines.append(f"| {seed} | {variant} | {s['n_pred']} / {s['n_gt']} | {100 * s['count_rel_error']:+.1f} % | "
                         f"{100 * s['mean_rel_error']:+.1f} % | {100 * s['median_rel_error']:+.1f} % | "
                         f"{100 * s['d10_rel_error']:+.1f} % | {k['precision_matched']:.3f} | "
                         f"{k['recall_matched']:.3f} |")
    lines += ["", "Mean +- sd over seeds, and the share of the expert's own kept particles (manual masks) that the "
              "rule would discard:", "",
              "| variant | count error | mean min Feret error | median min Feret error | worst seed, mean / median | "
              "expert's kept particles discarded |", "| --- | --- | --- | --- | --- | --- |"]
    for variant, m in results["mean"].items():
        lines.append(f"| {variant} | {100 * m['count_rel_error']:+.1f} +- {100 * m['count_rel_error_sd']:.1f} % | "
                     f"{100 * m['mean_rel_error']:+.1f} +- {100 * m['mean_rel_error_sd']:.1f} % | "
                     f"{100 * m['median_rel_error']:+.1f} +- {100 * m['median_rel_error_sd']:.1f} % | "
                     f"{100 * m['worst_mean_rel_error']:+.1f} / {100 * m['worst_median_rel_error']:+.1f} % | "
                     f"{100 * results['expert_cost'][variant]:.2f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_run_folder_arguments(parser, "seed<S>/measure")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    image_ids = common.ALL_IDS
    truth = expert_truth(image_ids)
    load = os.getloadavg()
    expert_kept = {i: np.asarray(truth[i][1]) for i in image_ids}
    expert_tables = measured(expert_kept)
    inside = {i: ~t["touches_border"].to_numpy() for i, t in expert_tables.items()}
    n_expert = sum(int(m.sum()) for m in inside.values())
    expert_cost = {v: 0.0 if rule is None else
                   sum(int((rule(expert_tables[i]) & inside[i]).sum()) for i in image_ids) / n_expert
                   for v, rule in RULES.items()}
    from nanoseg.labels import label_binary

    expert_labels = {i: label_binary(truth[i][0] > 0, 1) for i in image_ids}
    seeds: dict[int, dict[str, Any]] = {}
    for seed in args.seeds:
        labels, kept = read_seed_outputs(args.runs / f"seed{seed}" / "measure", image_ids, probabilities=False)
        tables = measured(kept)
        seeds[seed] = {}
        for variant, rule in RULES.items():
            k = apply_rule(kept, tables, rule)
            seeds[seed][variant] = {"sizes": size_table(k, expert_kept, common.pixel_size_nm()),
                                    "keep": keep_precision_recall(labels, k, expert_labels, expert_kept)}
            size = min_feret_row(seeds[seed][variant]["sizes"])
            print(f"seed {seed} {variant}: kept {size['n_pred']}, mean min Feret {size['mean_rel_error']:+.3f}, "
                  f"median {size['median_rel_error']:+.3f}", flush=True)
    mean = {}
    for variant in RULES:
        sizes = [min_feret_row(seeds[s][variant]["sizes"]) for s in seeds]
        mean[variant] = {}
        for key in ("count_rel_error", "mean_rel_error", "median_rel_error"):
            values = np.array([x[key] for x in sizes], float)
            mean[variant][key] = float(values.mean())
            mean[variant][f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            mean[variant][f"worst_{key}"] = float(values[np.argmax(np.abs(values))])
    results = {"profile": args.profile, **common.provenance(load), "runs": common.shown_path(args.runs), "images": list(image_ids),
               "expert_cost": expert_cost, "seeds": seeds, "mean": mean}
    out = args.out or common.RESULTS / f"keep_rules_{args.profile}.md"
    write_json(out.with_suffix(".json"), json.loads(json.dumps(results, default=float)))
    write_text(out, render(results) + "\n")
    print(render(results))
    return results


if __name__ == "__main__":
    main()
