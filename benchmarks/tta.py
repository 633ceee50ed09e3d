"""What an inference setting costs and gains, end to end: ``nanoseg measure`` with and without it.

For each seed folder of a finished ``benchmarks/workflow.py`` run, the benchmark's own measure
command (the run's segmentation model after ``adapt``, its classifier and its config) runs twice
on the shared TiO2 micrographs, one after the other on the same machine: as the run's config says
(``plain``) and with ``--set KEY=VALUE`` (default ``segment.tta=true``: probabilities averaged
over the 8 flips and 90-degree rotations; e.g. ``segment.bf16=false``: float32 inference where
the CPU would use bfloat16). Both are scored like the workflow benchmark: strict F1 at IoU 0.5 and image IoU,
the kept particles' count and min Feret errors against the particles the expert kept, and keep
precision/recall. The wall time of each measure process is
recorded; the ratio of the two is what carries over to other machines. The paper protocol (its
threshold sweep over the probability maps takes minutes per seed) is left out: the strict protocol
scores the particles that are measured.

    python -m benchmarks.tta --work-dir benchmarks/work/workflow_quick --seeds 0,1,2
    python -m benchmarks.tta --set segment.bf16=false

Results: ``benchmarks/results/tta_<profile>.json`` and ``.md`` (other settings:
``measure_<key>_<value>_<profile>``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.workflow import nanoseg_cli
from benchmarks.workflow_scoring import expert_truth, headline, read_seed_outputs, score_images
from nanoseg.atomic import write_json, write_text

DEFAULT_SET = "segment.tta=true"
#: (headline key, column title, format) shown per seed and variant.
COLUMNS = (("strict_f1", "strict F1", "{:.3f}"), ("strict_image_iou", "image IoU", "{:.3f}"),
("count_rel_error", "count error", "{:+.1%}"),
           ("min_feret_nm_mean_rel_error", "mean min Feret error", "{:+.1%}"),
           ("min_feret_nm_median_rel_error", "median min Feret error", "{:+.1%}"),
           ("keep_precision", "keep precision", "{:.2f}"), ("keep_recall", "keep recall", "{:.2f}"),
           ("wall_s", "measure s", "{:.0f}"))


def measure_variant(run_dir: Path, out: Path, extra: list[str]) -> dict[str, float]:
    """``nanoseg measure`` as the workflow benchmark runs it, plus ``extra``; returns its time and memory."""
    if out.exists():
        shutil.rmtree(out)
    args = ["measure", str(common.DATA / "sem"), "--model", str(run_dir / "adapt" / "model.pt"),
            "--config", str(run_dir / "config.yaml"), "--out", str(out)]
    if (run_dir / "classify" / "model.pt").is_file():
        args += ["--classifier", str(run_dir / "classify" / "model.pt")]
    return nanoseg_cli(args + extra, out.with_suffix(".log"))


def render(results: dict[str, Any]) -> str:
    setting = results.get("set", DEFAULT_SET)
    title = "Test-time augmentation" if setting == DEFAULT_SET else f"`{setting}`"
    lines = [f"# {title} end to end ({results['profile']} profile)", "",
             f"Made by `benchmarks/tta.py` on {results['date']}, commit {results['commit']}; {results['machine']}; "
             f"load average at start {results['load_at_start']}. Models, classifiers and configs: "
             f"`{results['work_dir']}/seed<S>/run/` of the workflow benchmark; each seed measured with "
             f"`nanoseg measure` plainly and with `--set {setting}`, {len(results['images'])} images, "
             "scored like the workflow benchmark (strict protocol).", "",
             "| seed | variant | " + " | ".join(c[1] for c in COLUMNS) + " |",
             "| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |"]
    for seed, per in results["seeds"].items():
        for name, row in per.items():
            cells = [fmt.format(row[k]) if row.get(k) is not None else "n/a" for k, _, fmt in COLUMNS]
            lines.append(f"| {seed} | {name} | " + " | ".join(cells) + " |")
    name = _variant_name(setting)
    lines += ["", f"Mean over seeds, plain -> {name}:"]
    for k, title, fmt in COLUMNS[:-1]:
        lines.append(f"- {title}: {results['mean']['plain'][k]:{fmt[2:-1]}} -> {results['mean'][name][k]:{fmt[2:-1]}}")
    lines.append(f"- time per measure run: x{results['mean']['time_ratio']:.1f}")
    return "\n".join(lines)


def _variant_name(setting: str) -> str:
    """The variant's name in tables and files: ``tta`` for the default, else the setting as a slug."""
    if setting == DEFAULT_SET:
        return "tta"
    return setting.replace("segment.", "").replace("=", "_").replace(".", "_")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=common.ROOT / "benchmarks" / "work" / "workflow_quick")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", dest="setting", default=DEFAULT_SET, metavar="KEY=VALUE",
                        help=f"The setting compared with the run's own (default {DEFAULT_SET}).")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if "=" not in args.setting:
        raise SystemExit(f"error: --set {args.setting!r}: expected KEY=VALUE, e.g. segment.bf16=false")
    variants = {"plain": [], _variant_name(args.setting): ["--set", args.setting]}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    image_ids = common.ALL_IDS
    truth = expert_truth(image_ids)
    load = os.getloadavg()
    seeds: dict[int, Any] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        run_dir = args.work_dir / f"seed{seed}" / "run"
        if not (run_dir / "adapt" / "model.pt").is_file():
            raise SystemExit(f"error: {run_dir / 'adapt' / 'model.pt'} not found; run benchmarks/workflow.py first")
        seeds[seed] = {}
        for name, extra in variants.items():
            out = args.work_dir / f"seed{seed}" / f"measure_{name}"
            cost = measure_variant(run_dir, out, extra)
            labels, kept = read_seed_outputs(out, image_ids, probabilities=False)
            seeds[seed][name] = {**headline(score_images(labels, None, kept, truth, common.pixel_size_nm())), **cost}
            logging.info("seed %d %s: %s", seed, name, seeds[seed][name])
    mean = {name: {k: float(np.mean([s[name][k] for s in seeds.values()])) for k, _, _ in COLUMNS}
            for name in variants}
    other = _variant_name(args.setting)
    mean["time_ratio"] = float(np.mean([s[other]["wall_s"] / s["plain"]["wall_s"] for s in seeds.values()]))
    results = {"profile": args.profile, "set": args.setting, **common.provenance(load),
               "work_dir": common.shown_path(args.work_dir), "images": list(image_ids), "seeds": seeds, "mean": mean}
    out = args.out or common.RESULTS / (f"tta_{args.profile}.md" if args.setting == DEFAULT_SET
                                        else f"measure_{other}_{args.profile}.md")
    write_json(out.with_suffix(".json"), results)
    write_text(out, render(results) + "\n")
    print(render(results))
    return results


if __name__ == "__main__":
    main()
