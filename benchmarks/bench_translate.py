"""Benchmark of stages 3-4: CycleGAN training iterations per second and training pairs per second.

Uses the ``quick`` profile's sizes (tile, widths, residual blocks, batch, mask tile size) on
synthetic inputs, so it runs without any data. Writes ``benchmarks/results/translate.json``.

    python -m benchmarks.bench_translate [--iterations 20] [--pairs 6] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch

from benchmarks import common
from nanoseg.atomic import write_json
from nanoseg.config import build_config
from nanoseg.tiles import random_tiles
from nanoseg.translate import CycleGAN, FakeMask, GanTranslator, RenderTranslator, generate_pairs, to_net

RESULTS = common.RESULTS / "translate.json"


def disc_tile(rng: np.random.Generator, shape: tuple[int, int], n: int = 120) -> np.ndarray:
    """Instance labels of random, mostly non-overlapping discs (a stand-in for a fake mask)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    inst = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        r = int(rng.integers(8, 20))
        cy, cx = int(rng.integers(shape[0])), int(rng.integers(shape[1]))
        inst[((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & (inst == 0)] = k
    return inst


def bench_cyclegan(cfg, iterations: int, bf16: bool) -> dict:
    cfg = cfg.model_copy(update={"bf16": bf16})
    rng = np.random.default_rng(0)
    masks = [disc_tile(rng, (256, 256), 30) > 0]
    images = [rng.random((256, 256), dtype=np.float32)]
    model = CycleGAN(cfg, "cpu", rng)

    def step() -> None:
        model.train_step(to_net(random_tiles(masks, cfg.batch_size, cfg.tile_size_px, rng, augment=True, small="pad"), "cpu"),
                         to_net(random_tiles(images, cfg.batch_size, cfg.tile_size_px, rng, augment=True, small="pad"), "cpu"))

    for _ in range(3):  # warm-up: allocator, oneDNN kernels
        step()
    t0 = time.perf_counter()
    for _ in range(iterations):
        step()
    seconds = (time.perf_counter() - t0) / iterations
    return {"seconds_per_iteration": round(seconds, 4), "iterations_per_second": round(1 / seconds, 3),
            "estimated_training_minutes": round(cfg.steps * seconds / 60, 1)}


def bench_pairs(translator, fake_masks, n_pairs: int, batch_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        generate_pairs(fake_masks, translator, tmp, 1, batch_size=1)  # warm-up
        t0 = time.perf_counter()
        generate_pairs(fake_masks, translator, tmp, n_pairs, batch_size=batch_size)
        seconds = time.perf_counter() - t0
    return {"pairs": n_pairs, "seconds": round(seconds, 2), "pairs_per_second": round(n_pairs / seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=6)
    # One thread by default: on a CPU shared with other jobs, 2 torch threads spin on each other
    # (measured 6.4 s/iteration with 2 threads vs 0.84 s with 1 at load average 7).
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("NANOSEG_NO_PROGRESS", "1")
    torch.set_num_threads(args.threads)
    config = build_config(profile="quick")
    cfg = config.translate
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__,
                    "python": platform.python_version(), "load_average_1min_before": round(os.getloadavg()[0], 2),
                    "note": "CPU shared with other jobs while measured"},
        "profile": "quick",
        "cyclegan_sizes": {"tile_size_px": cfg.tile_size_px, "generator_width": cfg.generator_width,
                           "discriminator_width": cfg.discriminator_width, "n_res_blocks": cfg.n_res_blocks,
                           "batch_size": cfg.batch_size, "steps": cfg.steps},
    }
    for bf16 in (False, True):
        key = "cyclegan_train_bf16" if bf16 else "cyclegan_train_fp32"
        results[key] = bench_cyclegan(cfg, args.iterations, bf16)
        print(key, results[key], flush=True)

    rng = np.random.default_rng(1)
    shape = tuple(config.masks.tile_size_px)
    fake_masks = [FakeMask(i, disc_tile(rng, shape), frozenset()) for i in range(args.pairs)]
    from nanoseg import nets

    generator = nets.create("resnet_generator", in_channels=1, out_channels=1, width=cfg.generator_width,
                            n_res_blocks=cfg.n_res_blocks, skip=cfg.generator_skip)
    results["mask_tile_px"] = list(shape)
    results["pairs_cyclegan_bf16"] = bench_pairs(GanTranslator(generator, "cpu", bf16=True, batch_size=1), fake_masks,
                                                 args.pairs, 1)
    print("pairs_cyclegan_bf16", results["pairs_cyclegan_bf16"], flush=True)
    from nanoseg.translate.render import RenderParams

    results["pairs_render"] = bench_pairs(RenderTranslator(RenderParams()), fake_masks, args.pairs, 4)
    print("pairs_render", results["pairs_render"], flush=True)
    results["machine"]["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    write_json(RESULTS, results)
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
