"""Benchmark of image I/O, the SEM renderer and demo-data generation.

Times reading micrographs (the shared TiO2 SEM images when present, else demo images), rendering
a 720x1024 scene and a batch of 128x128 tiles, fitting the renderer, and making the 6-image demo
data set. Writes ``benchmarks/results/io.json``.

    python -m benchmarks.bench_io [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from nanoseg.atomic import write_json
from nanoseg.demo import make_demo_data, place_agglomerates
from nanoseg.io import list_images, read_micrograph
from nanoseg.translate.render import RenderParams, render_sem
from nanoseg.translate.render_fit import fit_render_params

RESULTS = common.RESULTS / "io.json"
SHARED_SEM = common.DATA / "sem"


def best_of(fn, repeats: int) -> float:
    """Fastest of ``repeats`` runs in seconds (the machine is shared; the minimum is the signal)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict = {"machine": platform.platform(), "cpus": os.cpu_count(), "repeats": args.repeats}

    with tempfile.TemporaryDirectory() as tmp:
        demo_seconds = best_of(lambda: make_demo_data(Path(tmp) / "demo", n_images=6, seed=0), args.repeats)
        results["make_demo_data_6_images_s"] = round(demo_seconds, 3)
        files = list_images(SHARED_SEM) if SHARED_SEM.is_dir() else list_images(Path(tmp) / "demo" / "images")
        results["read_source"] = "shared TiO2 SEM" if SHARED_SEM.is_dir() else "demo"
        read_seconds = best_of(lambda: [read_micrograph(p) for p in files], args.repeats)
        results["read_micrograph_ms_per_image"] = round(1e3 * read_seconds / len(files), 2)
        images = [read_micrograph(p).image for p in files[:6]]

    rng = np.random.default_rng(0)
    scene = place_agglomerates((720, 1024), 120, rng)
    results["render_720x1024_s"] = round(best_of(lambda: render_sem(scene, RenderParams(), 1), args.repeats), 3)
    tiles = [place_agglomerates((128, 128), 6, rng) for _ in range(32)]
    tile_seconds = best_of(lambda: [render_sem(t, RenderParams(), 2) for t in tiles], args.repeats)
    results["render_128x128_tiles_per_s"] = round(len(tiles) / tile_seconds, 1)
    results["fit_render_params_6_images_s"] = round(best_of(lambda: fit_render_params(images), 1), 2)

    write_json(RESULTS, results)
    print(results)


if __name__ == "__main__":
    main()
