"""`nanoseg measure` on a large batch: throughput, latency, memory, and resuming after kill -9.

Makes ``--distinct`` demo micrographs (``--shape``, default 1024x768, `nanoseg.demo`) and copies them to ``--images``
files with their own names, then runs `nanoseg measure` on them (rules only; the segmentation
model of a quick run folder, ``--run``, or else a quick-sized MultiResUNet trained for a few
steps on the demo masks, which segments as slowly as a real one):

- with 1 and with 2 local Dask workers (``--workers``), on the first 10 %, 30 % and all images:
  wall time, images per second, per-image task time percentiles (from the markers) and the peak
  resident memory of the whole process tree (the command and its workers, sampled every 0.2 s),
  so that memory can be seen not to grow with the number of images;
- killed with SIGKILL once half of the images have their marker, then run again: the second call
  must skip exactly the finished images, and every image's particle rows must equal those of the
  uninterrupted run.

    python -m benchmarks.bench_batch --images 1000
    python -m benchmarks.bench_batch --images 60 --distinct 6 --out /tmp/bench_batch.md   # a quick look

Results: ``benchmarks/results/bench_batch.json`` and ``.md``. Measure on a quiet machine; the load
average at the start is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common

NANOSEG = [sys.executable, "-m", "nanoseg"]


def make_images(folder: Path, n_images: int, n_distinct: int, shape: tuple[int, int]) -> list[Path]:
    """``n_images`` micrograph files (``shape``: rows, columns), copies of ``n_distinct`` generated ones."""
    from nanoseg.demo import make_demo_data

    demo = make_demo_data(folder / "demo", n_images=n_distinct, seed=0, shape=shape)
    sources = sorted((demo / "images").glob("*.tif"))
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_images):
        path = images / f"img_{i:05d}.tif"
        shutil.copyfile(sources[i % len(sources)], path)
        paths.append(path)
    return paths


def quick_model(folder: Path, run: Path | None) -> Path:
    """The quick run's model, or a quick-sized net trained briefly on the demo masks."""
    if run is not None and (run / "adapt" / "model.pt").is_file():
        return run / "adapt" / "model.pt"
    from nanoseg.config import build_config
    from nanoseg.segment import load_pairs, train

    cfg = build_config({"segment": {"steps": 30, "val_every": 30}}, profile="quick").segment
    pairs = load_pairs(folder / "demo")
    return train(pairs, cfg, folder / "model", rng=np.random.default_rng(0), pixel_size_nm=None)


def measure_cmd(images: Path, model: Path, out: Path, workers: int | None) -> list[str]:
    cmd = [*NANOSEG, "measure", str(images), "--model", str(model), "--profile", "quick", "--set",
           "classify.method=rules", "--set", "segment.tta=false", "--out", str(out)]
    return cmd + (["--workers", str(workers)] if workers else [])


def markers(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "markers").glob("*.json"))]


def marker_times(out: Path) -> dict[str, int]:
    """When each image's marker was written: a marker written again means the image was measured again."""
    return {p.stem: p.stat().st_mtime_ns for p in (out / "markers").glob("*.json")}


def subset(images: list[Path], n: int, folder: Path) -> Path:
    """A folder with the first ``n`` images (links)."""
    sub = folder / f"first_{n}"
    sub.mkdir(parents=True, exist_ok=True)
    for p in images[:n]:
        if not (sub / p.name).exists():
            (sub / p.name).symlink_to(p)
    return sub


def render(results: dict[str, Any]) -> str:
    lines = ["# `nanoseg measure` on a large batch", "",
             f"Made by `benchmarks/bench_batch.py` on {results['date']}, commit {results['commit']}; "
             f"{results['machine']}; load average at start {results['load_at_start']}. {results['n_images']} "
             f"micrographs ({results['shape']}; copies of {results['n_distinct']} generated demo micrographs), model "
             f"{results['model']}, rules only, no TTA.", "",
             "| workers | images | wall s | images / s | task s p50 | task s p90 | task s p99 | peak RSS MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["runs"]:
        where = f"{r['workers']} (LocalCluster)" if r["workers"] else "1 (this process)"
        lines.append(f"| {where} | {r['images']} | {r['wall_s']} | {r['images_per_s']:.2f} | {r['task_s_p50']:.2f} | "
                     f"{r['task_s_p90']:.2f} | {r['task_s_p99']:.2f} | {r['peak_rss_mb']:.0f} |")
    k = results["resume"]
    lines += ["", f"Resume: killed (SIGKILL to the whole process group) when {k['markers_at_kill']} of "
              f"{results['n_images']} images had their marker; the next call skipped {k['skipped']} and measured "
              f"the rest in {k['rerun_wall_s']} s. Images measured twice: {k['measured_twice']}; images lost: "
              f"{k['lost']}; images whose rows differ from an uninterrupted run: {k['rows_differ']}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=20)
    parser.add_argument("--shape", default="1024x768", help="Micrograph width x height in px.")
    parser.add_argument("--workers", default="0,2", help="Comma-separated worker counts; 0: in this process.")
    parser.add_argument("--run", type=Path,
                        default=common.ROOT / "benchmarks" / "work" / "workflow_quick" / "seed0" / "run",
                        help="A finished quick run folder whose adapt/model.pt segments (else a briefly trained net).")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "bench_batch.md")
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.shape.lower().split("x"))
    except ValueError:
        raise SystemExit(f"error: --shape {args.shape!r}: expected WIDTHxHEIGHT in px, e.g. 512x384") from None
    load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        images = make_images(work, args.images, args.distinct, (height, width))
        model = quick_model(work, args.run)
        model_text = str(args.run) if model.is_relative_to(args.run) else None
        runs = []
        sizes = sorted({max(1, args.images // 10), max(1, (3 * args.images) // 10), args.images})
        for workers in (int(w) or None for w in args.workers.split(",")):
            for n in sizes:
                out = work / f"out_w{workers or 0}_{n}"
                r = common.timed_run(measure_cmd(subset(images, n, work), model, out, workers))
                seconds = np.array([m["seconds"] for m in markers(out)])
                percentiles = {f"task_s_p{q}": float(np.percentile(seconds, q)) for q in (50, 90, 99)}
                runs.append({"workers": workers, "images": n, "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"],
                             "images_per_s": n / r["wall_s"], **percentiles})
                print(runs[-1], flush=True)
        # Resume after kill -9, on all images with the last worker setting.
        whole = work / f"out_w{workers or 0}_{args.images}"
        out = work / "out_killed"
        folder = subset(images, args.images, work)
        killed = common.timed_run(measure_cmd(folder, model, out, workers),
                               kill_when=lambda: len(marker_times(out)) >= args.images // 2)
        at_kill = marker_times(out)
        rerun = common.timed_run(measure_cmd(folder, model, out, workers))
        after = marker_times(out)
        skipped = re.search(r"(\d+) of \d+ micrographs were done by an earlier call", rerun["output"])
        a, b = pd.read_csv(out / "particles.csv"), pd.read_csv(whole / "particles.csv")
        differ = [s for s in sorted(set(a["image"]) | set(b["image"]))
                  if not a[a["image"] == s].reset_index(drop=True).equals(b[b["image"] == s].reset_index(drop=True))]
        resume = {"killed": killed["killed"], "markers_at_kill": len(at_kill),
                  "skipped": int(skipped.group(1)) if skipped else 0, "rerun_wall_s": rerun["wall_s"],
                  "measured_twice": sum(after.get(s) != t for s, t in at_kill.items()),
                  "lost": args.images - len(after), "rows_differ": len(differ)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {**common.provenance(load), "n_images": args.images, "n_distinct": args.distinct,
               "shape": f"{width}x{height}", "runs": runs,
               "resume": resume,
               "model": f"`{model_text}`" if model_text else "a quick-sized MultiResUNet trained 30 steps"}
    common.save_results(args.out, results, render(results))
    return results


if __name__ == "__main__":
    main()
