"""Throughput of stages 1-2 on this machine with the ``quick`` profile.

Measures WGAN-GP training seconds per generator step, shapes sampled per second (generator +
clean-up), random polygons per second, and fake masks assembled per second (TiO2 tile size,
particle count calibrated to 7.2 % foreground). Writes ``benchmarks/results/shapes_masks.json``.

Usage::

    python -m benchmarks.bench_shapes_masks [--train-steps 30] [--n-shapes 1000] [--n-masks 6]
        [--threads 1] [--generator RUN/shapes/generator.pt]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from nanoseg.atomic import write_json
from nanoseg.config import build_config
from nanoseg.io import load_outlines
from nanoseg.masks import assemble_mask, calibrate_particle_count
from nanoseg.runtime import available_cores
from nanoseg.shapes import random_polygons, sample_shapes, train_wgan

OUTLINES = common.DATA / "outlines"
RESULT = common.RESULTS / "shapes_masks.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--n-shapes", type=int, default=1000)
    parser.add_argument("--n-masks", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--generator", type=Path, default=None,
                        help="a trained generator.pt to sample from (default: the briefly trained one, whose "
                        "poor samples are mostly dropped)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads or available_cores())
    config = build_config(profile="quick")
    rng = np.random.default_rng(0)
    if OUTLINES.is_dir():
        outlines = load_outlines(OUTLINES, config.shapes.outline_size_px)
    else:  # no shared data: polygons stand in for the outlines
        outlines = random_polygons(40, config.shapes.outline_size_px, rng, mean_area_px=800)

    cfg = config.shapes.model_copy(update={"steps": args.train_steps})
    t0 = time.perf_counter()
    generator, _ = train_wgan(outlines, cfg, seed=0)
    train_s_per_step = (time.perf_counter() - t0) / args.train_steps

    if args.generator is not None:
        from nanoseg import nets

        generator, _ = nets.load(args.generator)
    t0 = time.perf_counter()
    shapes, dropped = sample_shapes(generator, args.n_shapes, seed=0)
    shapes_per_s = args.n_shapes / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    random_polygons(args.n_shapes, cfg.outline_size_px, rng, mean_area_px=800)
    polygons_per_s = args.n_shapes / (time.perf_counter() - t0)

    masks_cfg = config.masks
    n_particles = calibrate_particle_count(outlines, masks_cfg, 0.072, 0.9, rng)
    t0 = time.perf_counter()
    for _ in range(args.n_masks):
        assemble_mask(outlines, masks_cfg.tile_size_px, n_particles, rng, masks_cfg, size_factor=0.9)
    masks_per_s = args.n_masks / (time.perf_counter() - t0)

    result = {
        "profile": "quick",
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "wgan": {"generator_width": cfg.generator_width, "critic_width": cfg.critic_width,
                 "batch_size": cfg.batch_size, "critic_steps": cfg.critic_steps,
                 "train_seconds_per_step": round(train_s_per_step, 4),
                 "train_seconds_full_profile": round(train_s_per_step * config.shapes.steps, 1)},
        "sampled_from": str(args.generator) if args.generator else f"generator after {args.train_steps} steps",
        "shapes_per_second": round(shapes_per_s, 1),
        "shapes_dropped_fraction": round(dropped / (dropped + args.n_shapes), 4),
        "polygons_per_second": round(polygons_per_s, 1),
        "masks": {"tile_size_px": list(masks_cfg.tile_size_px), "particles_per_mask": n_particles},
        "masks_per_second": round(masks_per_s, 3),
    }
    write_json(RESULT, result)
    print(result)


if __name__ == "__main__":
    main()
