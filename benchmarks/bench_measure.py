"""Where the time of `nanoseg measure` goes, per 1024x768 micrograph, step by step.

For each shared TiO2 micrograph (or the first ``--images``) the steps of one batch task
(:func:`nanoseg.measure.batch.measure_one`) are timed one by one with the quick model of a run
folder: reading (with the series' scale), the network (with and without test-time augmentation,
and exported to ONNX Runtime when the ``onnx`` extra is installed),
the post-processing (threshold, markers, watershed), the keep/discard rules, the measurements and
the writes every task makes (labels TIFF, Parquet rows) and the overlay PNG (drawn only with
``--overlays`` and for the report's first images, so not part of a plain task). Then `nanoseg
measure` itself is timed end to end on all 30 images (``--command-images``; rules only, as the
issue's target states it), with and without TTA, in a fresh process: wall time per image including
start-up, and the median time of one image's task as its marker records it. Last, large
micrographs (``--large``, default 4096 and 8192 px square, a shared micrograph mirrored to that
size) go through the same command, one each: wall time and the peak resident memory of the process.

    python -m benchmarks.bench_measure --run benchmarks/work/workflow_quick/seed0/run --images 10

Results: ``benchmarks/results/bench_measure.json`` and ``.md``. Measure on a quiet machine; the
load average at the start is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common

STEPS = ("read", "network", "network_tta", "network_onnx", "post_processing", "rules", "measure", "write", "overlay")
#: Alternatives to a step, or optional work: not part of a plain task (with what the table says instead of a share).
_SHARE = {"network_tta": "(instead of network)", "network_onnx": "(instead of network)",
          "overlay": "(only with --overlays)"}
ALTERNATIVES = tuple(_SHARE)


def time_steps(paths: list[Path], model: Path, config: Any) -> dict[str, list[float]]:
    """Seconds per image of each step, one image at a time."""
    from nanoseg import io, nets
    from nanoseg.classify import classify_images
    from nanoseg.measure.figures import overlay_kept
    from nanoseg.particles import measure_images
    from nanoseg.segment import (
        foreground_threshold,
        instances_from_probabilities,
        predict_probabilities,
        to_model_scale,
    )

    net, meta = nets.load(model)
    seg = config.segment
    out = Path(tempfile.mkdtemp(prefix="bench_measure_"))
    onnx = None
    try:
        from nanoseg.segment import export_onnx, load_onnx

        onnx = load_onnx(export_onnx(model, out / "model.onnx"))[0]
    except ImportError:  # onnxruntime is an extra
        pass
    rules = config.classify.model_copy(update={"method": "rules"})
    scale = io.series_scale([io.scan_micrograph(p, config.data) for p in paths], config.data.bit_depth)
    times: dict[str, list[float]] = {s: [] for s in STEPS}
    try:
        for path in paths:
            t = time.perf_counter()
            mg = io.read_in_series(path, config.data, scale)
            times["read"].append(time.perf_counter() - t)
            work, _ = to_model_scale(mg.image, mg.pixel_size_nm, meta)
            for step, tta, runner in (("network_onnx", False, onnx), ("network_tta", True, net), ("network", False, net)):
                if runner is None:
                    times[step].append(float("nan"))
                    continue
                t = time.perf_counter()
                probs = predict_probabilities(runner, work, meta["target"], bf16=seg.bf16,
                                              tile_px=seg.inference_tile_px, overlap_px=seg.tile_overlap_px, tta=tta)
                times[step].append(time.perf_counter() - t)
            t = time.perf_counter()
            threshold = foreground_threshold(seg, meta)
            labels = instances_from_probabilities(probs, meta["target"], seg, threshold=threshold)
            times["post_processing"].append(time.perf_counter() - t)
            items = [(path.stem, labels, mg.image, mg.pixel_size_nm)]
            t = time.perf_counter()
            particles = measure_images(items)
            times["measure"].append(time.perf_counter() - t)
            t = time.perf_counter()
            decisions = classify_images(items, rules, particles=particles)
            times["rules"].append(time.perf_counter() - t)
            t = time.perf_counter()
            io.write_tiff(out / f"{path.stem}.tif", labels, pixel_size_nm=mg.pixel_size_nm, ome=True)
            particles.assign(kept=decisions["kept"].to_numpy()).to_parquet(out / f"{path.stem}.parquet")
            times["write"].append(time.perf_counter() - t)
            t = time.perf_counter()
            kept = decisions.loc[decisions["kept"], "label"]
            io.write_png(out / f"{path.stem}.png", overlay_kept(mg.image, labels, kept))
            times["overlay"].append(time.perf_counter() - t)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return times


def time_command(paths: list[Path], model: Path, config_file: Path, tta: bool) -> dict[str, float]:
    """One `nanoseg measure` process on ``paths`` (rules only): its wall seconds, and the median
    seconds of one image's task (read to marker, as the markers record it: no start-up), apart for
    the tasks that drew the overlay the report shows (the first ``measure.report_overlays``) and
    the others, which are what a large batch is made of."""
    with tempfile.TemporaryDirectory(prefix="bench_measure_") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for p in paths:
            (folder / p.name).symlink_to(p)
        cmd = [sys.executable, "-c", "from nanoseg.cli import main; main()", "measure", str(folder),
               "--model", str(model), "--config", str(config_file), "--set", "classify.method=rules",
               "--set", f"segment.tta={str(tta).lower()}",
               "--out", str(Path(tmp) / "out")]
        env = dict(os.environ, NANOSEG_NO_PROGRESS="1")
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        wall = time.perf_counter() - t
        markers = [json.loads(m.read_text()) for m in (Path(tmp) / "out" / "markers").glob("*.json")]
        drew = [any(o.startswith("overlays/") for o in m["outputs"]) for m in markers]
        plain = [m["seconds"] for m, d in zip(markers, drew) if not d]
        overlay = [m["seconds"] for m, d in zip(markers, drew) if d]
        return {"wall_s": wall, "n_images": len(markers),
                "task_s_median": float(np.median(plain)) if plain else None,
                "task_overlay_s_median": float(np.median(overlay)) if overlay else None}


def large_micrograph(path: Path, side: int) -> Path:
    """A ``side`` x ``side`` micrograph: the first shared one (info bar cut) mirrored to that size."""
    from nanoseg import io

    mg = io.read_micrograph(common.DATA / "sem" / f"{common.ALL_IDS[0]}.tif")
    raw = np.round(mg.image * 255).astype(np.uint8)
    tiled = np.pad(raw, ((0, max(0, side - raw.shape[0])), (0, max(0, side - raw.shape[1]))), mode="symmetric")
    return io.write_tiff(path, tiled[:side, :side], pixel_size_nm=mg.pixel_size_nm, ome=True)


def time_large(sides: list[int], model: Path, config_file: Path) -> list[dict[str, Any]]:
    """Wall time and peak memory of `nanoseg measure` on one large micrograph per side."""
    rows = []
    for side in sides:
        with tempfile.TemporaryDirectory(prefix="bench_measure_large_") as tmp:
            image = large_micrograph(Path(tmp) / "images" / f"large_{side}.tif", side)
            cmd = [sys.executable, "-c", "from nanoseg.cli import main; main()", "measure", str(image.parent),
                   "--model", str(model), "--config", str(config_file), "--set", "classify.method=rules",
                   "--set", "segment.tta=false", "--set", "data.info_bar_rows=0", "--out", str(Path(tmp) / "out")]
            r = common.timed_run(cmd)
            n = sum(1 for _ in open(Path(tmp) / "out" / "particles.csv")) - 1
        rows.append({"side_px": side, "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"], "particles": n})
        print(rows[-1], flush=True)
    return rows


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render(results: dict[str, Any]) -> str:
    lines = ["# Where the time of `nanoseg measure` goes (quick model, per 1024x768 micrograph)", "",
             f"Made by `benchmarks/bench_measure.py` on {results['date']}, commit {results['commit']}; "
             f"{results['machine']}; load average at start {results['load_at_start']}. Model: `{results['model']}`; "
             f"{results['n_images']} shared TiO2 micrographs, one at a time in one process, "
             f"{results.get('torch_threads', '?')} torch threads."]
    if "median_s" in results:
        lines += ["", "| step | median s / image | share of a plain task |", "| --- | --- | --- |"]
        med = results["median_s"]
        plain = sum(v for k, v in med.items() if k not in ALTERNATIVES)
        for step in STEPS:
            share = _SHARE.get(step) or f"{100 * med[step] / plain:.0f} %"
            lines.append(f"| {step.replace('_', ' ')} | {med[step]:.3f} | {share} |")
        lines += [f"| **plain task (without TTA)** | **{plain:.3f}** | 100 % |", "",
                  "`nanoseg measure` end to end (a fresh process, rules only, start-up included):", "",
                  "| segment.tta | images | wall s | wall s / image | one image's task, median s (its marker) | "
                  "the same, tasks that drew the report's overlay |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for key, rec in results["command_s"].items():
            n = rec.get("n_images", results["n_images"])
            lines.append(f"| {key} | {n} | {rec['wall_s']:.1f} | {rec['wall_s'] / n:.2f} | "
                         f"{_seconds(rec.get('task_s_median'))} | {_seconds(rec.get('task_overlay_s_median'))} |")
    if results.get("large"):
        lines += ["", "Large micrographs, one per `nanoseg measure` process (rules only, no TTA, "
                  f"segment.block_px {results['block_px']}): peak resident memory of the process.", "",
                  "| side px | wall s | peak RSS MiB | particles |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['side_px']} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['particles']} |"
                  for r in results["large"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_run = common.ROOT / "benchmarks" / "work" / "workflow_quick" / "seed0" / "run"
    parser.add_argument("--run", type=Path, default=default_run,
                        help="A finished quick run folder (its adapt/model.pt and config.yaml are used).")
    parser.add_argument("--images", type=int, default=10, help="Micrographs whose steps are timed (default 10).")
    parser.add_argument("--command-images", type=int, default=30, help="Micrographs of the end-to-end command "
                        "(default 30: more than the report's 12 overlays, so most tasks draw none).")
    parser.add_argument("--large", default="4096,8192", help="Sides in px of large micrographs to measure ('' for none).")
    parser.add_argument("--only-large", action="store_true", help="Measure only the large micrographs.")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "bench_measure.md")
    args = parser.parse_args(argv)
    if not common.DATA.is_dir():
        raise SystemExit(f"error: {common.DATA} not found; the benchmark needs the shared TiO2 data")
    model, config_file = args.run / "adapt" / "model.pt", args.run / "config.yaml"
    if not model.is_file():
        raise SystemExit(f"error: {model} not found; give --run a finished quick run folder")
    import torch

    from nanoseg.config import load_config
    from nanoseg.runtime import configure_torch

    configure_torch(None)
    config = load_config(config_file)
    paths = [common.DATA / "sem" / f"{i}.tif" for i in common.ALL_IDS[:args.images]]
    load = os.getloadavg()
    results = {**common.provenance(load),
               "model": common.shown_path(model),
               "n_images": len(paths), "block_px": config.segment.block_px, "torch_threads": torch.get_num_threads()}
    if not args.only_large:
        times = time_steps(paths, model, config)
        command_paths = [common.DATA / "sem" / f"{i}.tif" for i in common.ALL_IDS[:args.command_images]]
        command = {tta: time_command(command_paths, model, config_file, tta == "on") for tta in ("off", "on")}
        results.update(seconds=times, median_s={k: float(np.median(v)) for k, v in times.items()}, command_s=command)
    results["large"] = time_large([int(v) for v in args.large.split(",") if v.strip()], model, config_file)
    common.save_results(args.out, results, render(results))
    return results


if __name__ == "__main__":
    main()
