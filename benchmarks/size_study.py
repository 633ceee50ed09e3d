"""The companion BaSO4 study's comparison, on the TiO2 set: manual vs UNet vs MultiResUNet vs threshold.

For each detector (SEM, and the TSEM twins of the same fields) one table of the min Feret
diameter in nm: number of particles, mean +- sd, median, D10 and D90, the relative errors of mean
and median, the two-sample Kolmogorov-Smirnov distance to the manual distribution, and what each
method took. The rows:

``manual``        the expert's kept particles (manual masks and keep/discard classes) measured on
                  the SEM grid, border particles left out: the reference of both tables (the TSEM
                  image shows the same particles, so the same distribution in nm);
``threshold``     what a Fiji user does without a net: Gaussian (1 px), Otsu threshold, holes
                  filled, distance-transform watershed (markers 5 px apart), particles touching
                  the border excluded, every other one counted (there is no keep decision);
                  timed here, read to table;
runs              each ``--runs DETECTOR:NAME=FOLDER`` is a folder with ``seed<S>/run`` folders of
                  ``nanoseg run --profile quick`` (e.g. the workflow or generalization benchmark's
                  work folders); their kept particles (``run/measure/particles.csv``), one row per
                  seed and their mean +- sd; the time is the sum of the run's stage times as its
                  stage markers recorded them (state the machine's load with ``--note``).

``--mrunet-from DETECTOR=FOLDER`` makes the MultiResUNet runs the study compares at the same time
budget: each ``seed<S>/run`` of FOLDER is copied without its segment and later stages and resumed
by ``nanoseg run DATA --out RUN --profile quick --seed S --set segment.architecture=multiresunet
--set segment.steps=N``: the same shapes, masks and training pairs (the run's own stage markers
prove it), another net. ``N`` (``--mrunet-steps``) gives it the UNet's training time: the
MultiResUNet at the quick width takes about 1.8x the UNet's time per step on a CPU
(``benchmarks/bench_segment.py --profiles quick quick+architecture=multiresunet``). The copied
run must come from the same commit's config keys, else every stage runs again.

    python -m benchmarks.size_study --runs "sem:UNet=benchmarks/work/workflow_quick" \\
        --mrunet-from sem=benchmarks/work/workflow_quick --work-dir /tmp/size-study
    python -m benchmarks.size_study --images 3 --out /tmp/size_study.md     # threshold rows only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import common, workflow
from benchmarks.workflow_scoring import mean_sd

logger = logging.getLogger("nanoseg.benchmarks.size_study")

DETECTORS = ("sem", "tsem")
#: The stages a MultiResUNet run takes over from the UNet run it is copied from.
SHARED_STAGES = ("shapes", "masks", "translate", "pairs")
#: MultiResUNet steps with the quick UNet's 1000 steps' training time (1.8x the time per step).
MRUNET_STEPS = 550
COLUMNS = ("n", "mean", "sd", "median", "d10", "d90", "mean_rel_error", "median_rel_error", "ks_statistic")


def manual_table(image_ids: tuple[str, ...]) -> pd.DataFrame:
    """The expert's kept particles in nm (border particles left out)."""
    from benchmarks.generalization import native_sizes

    table = native_sizes(image_ids)
    table.attrs.update(unit="nm", source="manual", path="manual masks + classes")
    return table


def threshold_table(detector: str, image_ids: tuple[str, ...]) -> tuple[pd.DataFrame, float]:
    """Threshold + distance watershed on every micrograph, border particles out; and its seconds."""
    from nanoseg.evaluate.baselines import tsem_path, tsem_to_labels
    from nanoseg.io import read_micrograph
    from nanoseg.particles import measure_particles

    start, tables = time.perf_counter(), []
    for i in image_ids:
        path = tsem_path(common.DATA, i) if detector == "tsem" else common.DATA / "sem" / f"{i}.tif"
        micrograph = read_micrograph(path)
        # The pipeline wants dark particles (as in transmission); SEM particles are bright.
        image = micrograph.image if detector == "tsem" else 1.0 - micrograph.image
        table = measure_particles(tsem_to_labels(image), micrograph.image, micrograph.pixel_size_nm,
                                  exclude_border=True)
        table.insert(0, "image", i)
        tables.append(table)
    out = pd.concat(tables, ignore_index=True)
    out.attrs.update(unit="nm", source="threshold", path="Otsu + distance watershed")
    return out, time.perf_counter() - start


def run_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds of each finished stage of a run, as its stage markers recorded them."""
    from nanoseg.pipeline import STAGE_NAMES

    seconds = {}
    for name in STAGE_NAMES:
        marker = run_dir / name / ".done.json"
        if marker.is_file():
            seconds[name] = float(json.loads(marker.read_text()).get("seconds", 0.0))
    return seconds


def seed_runs(folder: Path) -> dict[int, Path]:
    """``seed<S>/run`` folders under ``folder`` that hold a finished measure stage."""
    runs = {}
    for seed_dir in sorted(folder.glob("seed*")):
        run = seed_dir / "run"
        if seed_dir.name[4:].isdigit() and (run / "measure" / "particles.csv").is_file():
            runs[int(seed_dir.name[4:])] = run
    return runs


def make_mrunet_runs(source: Path, work_dir: Path, steps: int, seeds: list[int] | None) -> Path:
    """MultiResUNet runs on the shapes, masks and pairs of ``source``'s runs (see the module doc)."""
    from nanoseg.config import load_config

    made = work_dir / "mrunet"
    for seed, run in seed_runs(source).items():
        if seeds is not None and seed not in seeds:
            continue
        target = made / f"seed{seed}" / "run"
        if not (target / "measure" / "particles.csv").is_file():
            target.mkdir(parents=True, exist_ok=True)
            for stage in SHARED_STAGES:
                if not (target / stage).exists():
                    shutil.copytree(run / stage, target / stage, symlinks=True)
            shutil.copy2(run / "config.yaml", target / "config.yaml")
            data = Path(load_config(run / "config.yaml").data.images).parent
            workflow.nanoseg_cli(["run", str(data), "--out", str(target), "--profile", "quick", "--seed", str(seed),
                                  "--set", "segment.architecture=multiresunet", "--set", f"segment.steps={steps}"],
                                 target.parent / "run.log")
        log = (target.parent / "run.log").read_text() if (target.parent / "run.log").is_file() else ""
        redone = [s for s in SHARED_STAGES if f"{s:<9} up to date" not in log and f"{s} up to date" not in log]
        if redone:
            logger.warning("%s: stages %s ran again (the copied run is from other config keys)", target, redone)
    return made


def compare(reference: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> dict[str, dict[str, Any]]:
    """``compare_size_tables`` of each table against the reference, min Feret, as records by name."""
    from nanoseg.measure import compare_size_tables

    frame = compare_size_tables({"manual": reference, **tables}, "min_feret")
    return {row["table"]: {k: row[k] for k in ("n", *COLUMNS[1:])} for row in frame.to_dict(orient="records")}


def study(detector: str, image_ids: tuple[str, ...], runs: dict[str, Path], reference: pd.DataFrame) -> dict[str, Any]:
    """Rows of one detector's table: manual, threshold and each run folder (per seed and mean)."""
    from nanoseg.measure import read_size_table

    threshold, threshold_s = threshold_table(detector, image_ids)
    rows: dict[str, Any] = {}
    base = compare(reference, {"threshold": threshold})
    rows["manual"] = {"stats": base["manual"], "seconds": None, "seeds": {}}
    rows["threshold"] = {"stats": base["threshold"], "seconds": {"total": threshold_s}, "seeds": {}}
    for name, folder in runs.items():
        per_seed = {}
        for seed, run in seed_runs(folder).items():
            particles = run / "measure" / "particles.csv"
            table = read_size_table(particles)
            images = set(pd.read_csv(particles, usecols=["image", "kept"]).query("kept")["image"].astype(str))
            if not images <= set(image_ids):
                # read_size_table keeps no image column: a run on other images cannot be cut down.
                logger.warning("%s: holds images outside the %d compared; left out", run, len(image_ids))
                continue
            stats = compare(reference, {name: table})[name]
            seconds = run_seconds(run)
            per_seed[seed] = {"stats": stats, "seconds": {**seconds, "total": sum(seconds.values())},
                              "run": common.shown_path(run)}
        if not per_seed:
            logger.warning("%s: no seed<S>/run with measure/particles.csv; left out", folder)
            continue
        stats = {k: mean_sd([s["stats"][k] for s in per_seed.values()]) for k in COLUMNS}
        seconds = {k: mean_sd([s["seconds"].get(k) for s in per_seed.values()])
                   for k in ("segment", "total")}
        rows[name] = {"stats": stats, "seconds": seconds, "seeds": per_seed}
    return rows


def _value(cell: Any, fmt: str) -> str:
    if isinstance(cell, dict):
        mean, sd = cell.get("mean"), cell.get("sd")
        if mean is None:
            return "-"
        return fmt.format(mean) + (f" +- {fmt.format(sd).lstrip('+')}" if sd else "")
    return "-" if cell is None or (isinstance(cell, float) and not np.isfinite(cell)) else fmt.format(cell)


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = ["# Size study: manual vs UNet vs MultiResUNet vs threshold (the BaSO4 study's table, on TiO2)", "",
             f"{meta['date']}, commit {meta['commit']}, {meta['machine']}; load at start {meta['load_at_start']}; "
             f"{len(meta['images'])} images.", ""]
    if meta.get("note"):
        lines += [f"Note: {meta['note']}", ""]
    lines += ["Min Feret diameter in nm of the counted particles: for the runs their kept particles, mean +- sd "
              "over seeds; manual: the expert's kept particles on the SEM grid (the reference of both tables); "
              "threshold: Otsu + distance watershed, border particles out, every other particle counted. Time: "
              "the sum of the run's stage times (the threshold pipeline: read, segment and measure here).", ""]
    formats = {"n": "{:.0f}", "mean": "{:.1f}", "sd": "{:.1f}", "median": "{:.1f}", "d10": "{:.1f}", "d90": "{:.1f}",
               "mean_rel_error": "{:+.1%}", "median_rel_error": "{:+.1%}", "ks_statistic": "{:.3f}"}
    for detector, rows in results["detectors"].items():
        lines += [f"## {detector.upper()}", "",
                  "| method | seeds | n | mean (nm) | sd (nm) | median (nm) | D10 | D90 | mean err | median err | KS D | "
                  "segment (min) | time (min) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, row in rows.items():
            seconds = row["seconds"] or {}
            minutes = {k: ({"mean": v["mean"] / 60, "sd": (v["sd"] or 0) / 60} if isinstance(v, dict) and v["mean"]
                           is not None else (v / 60 if isinstance(v, float) else None)) for k, v in seconds.items()}
            cells = [_value(row["stats"][k], formats[k]) for k in COLUMNS]
            lines.append(f"| {name} | {','.join(map(str, row['seeds'])) or '-'} | " + " | ".join(cells)
                         + f" | {_value(minutes.get('segment'), '{:.1f}')} | {_value(minutes.get('total'), '{:.1f}')} |")
        per_seed = [(name, seed, s) for name, row in rows.items() for seed, s in row["seeds"].items()]
        if per_seed:
            lines += ["", "Per seed:", "", "| method | seed | n | mean (nm) | median (nm) | mean err | median err | "
                      "KS D | time (min) | run |", "|---|---|---|---|---|---|---|---|---|---|"]
            for name, seed, s in per_seed:
                st = s["stats"]
                lines.append(f"| {name} | {seed} | {st['n']:.0f} | {st['mean']:.1f} | {st['median']:.1f} | "
                             f"{st['mean_rel_error']:+.1%} | {st['median_rel_error']:+.1%} | {st['ks_statistic']:.3f} | "
                             f"{s['seconds']['total'] / 60:.1f} | {s['run']} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def _named_folder(text: str) -> tuple[str, str, Path]:
    detector, _, rest = text.partition(":")
    name, _, folder = rest.partition("=")
    if detector not in DETECTORS or not name or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: expected DETECTOR:NAME=FOLDER with DETECTOR one of "
                                         f"{', '.join(DETECTORS)}, e.g. 'sem:UNet=benchmarks/work/workflow_quick'")
    return detector, name, Path(folder)


def _detector_folder(text: str) -> tuple[str, Path]:
    detector, _, folder = text.partition("=")
    if detector not in DETECTORS or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: expected DETECTOR=FOLDER, DETECTOR one of {', '.join(DETECTORS)}")
    return detector, Path(folder)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=_named_folder, action="append", default=[], metavar="DETECTOR:NAME=FOLDER")
    parser.add_argument("--mrunet-from", type=_detector_folder, action="append", default=[], metavar="DETECTOR=FOLDER",
                        help="Make MultiResUNet runs from the UNet runs in FOLDER (see the module doc).")
    parser.add_argument("--mrunet-steps", type=int, default=MRUNET_STEPS)
    parser.add_argument("--mrunet-name", default=f"MultiResUNet ({MRUNET_STEPS} steps)")
    parser.add_argument("--seeds", default=None, help="Seeds of the MultiResUNet runs to make (default: all).")
    parser.add_argument("--images", type=int, default=None, help="The first N of the 30 images (default all).")
    parser.add_argument("--detectors", default=",".join(DETECTORS))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/nanoseg-size-study"))
    parser.add_argument("--note", default=None)
    parser.add_argument("--out", type=Path, default=common.RESULTS / "size_study.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not (common.DATA / "masks").is_dir():
        raise SystemExit(f"error: {common.DATA} not found; the study needs the shared TiO2 data")
    image_ids = common.ALL_IDS[: args.images or len(common.ALL_IDS)]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    detectors = [d for d in args.detectors.split(",") if d]
    runs: dict[str, dict[str, Path]] = {d: {} for d in detectors}
    for detector, name, folder in args.runs:
        runs.setdefault(detector, {})[name] = folder
    for detector, folder in args.mrunet_from:
        made = make_mrunet_runs(folder, args.work_dir / detector, args.mrunet_steps, seeds)
        runs.setdefault(detector, {})[args.mrunet_name] = made
    load = os.getloadavg()
    reference = manual_table(image_ids)
    results = {"detectors": {d: study(d, image_ids, runs.get(d, {}), reference) for d in detectors}}
    results["meta"] = {**common.provenance(load), "images": list(image_ids), "note": args.note,
                       "command": "python -m benchmarks.size_study " + " ".join(
                           f"'{a}'" if " " in a else a for a in (argv if argv is not None else sys.argv[1:]))}
    common.save_results(args.out, results, render(results))
    return results


if __name__ == "__main__":
    main()
