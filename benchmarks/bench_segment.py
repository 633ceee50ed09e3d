"""Benchmark of the segmentation stage: training steps/s, inference s per 1024x768 image, peak memory.

Runs each model size (the ``demo``, ``quick`` and ``paper`` profiles' segment settings) in a fresh
subprocess, so that each peak resident memory (``resource.getrusage``) belongs to one
configuration. Writes ``benchmarks/results/segment.json``.

Usage::

    python -m benchmarks.bench_segment            # 1 thread and all threads of the machine
    python -m benchmarks.bench_segment --threads 2 --train-steps 5 --repeats 3
    python -m benchmarks.bench_segment --profiles quick quick+architecture=multiresunet
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks import common
from nanoseg.runtime import available_cores

RESULTS = common.RESULTS / "segment.json"
IMAGE_SHAPE = (768, 1024)


def _bench_profile(profile: str, threads: int, train_steps: int, repeats: int) -> dict:
    import torch

    from nanoseg import nets
    from nanoseg.config import build_config
    from nanoseg.segment import Pair, instances_from_probabilities, predict_probabilities

    torch.set_num_threads(threads)
    # "quick+architecture=unet" = the quick profile with segment settings changed.
    name, *changes = profile.split("+")
    overrides = {k: yaml.safe_load(v) for k, v in (c.split("=", 1) for c in changes)}
    cfg = build_config({"segment": overrides}, profile=name).segment
    rng = np.random.default_rng(0)
    out: dict = {"profile": profile, "architecture": cfg.architecture, "base_width": cfg.base_width, "depth": cfg.depth,
                 "target": cfg.target, "tile_size_px": cfg.tile_size_px, "batch_size": cfg.batch_size, "bf16": cfg.bf16}

    # Training: synthetic discs at the real particle size; first step is warm-up.
    from skimage.draw import disk

    inst = np.zeros((512, 512), np.int32)
    for i, (y, x) in enumerate(rng.integers(20, 492, (120, 2)), 1):
        inst[disk((y, x), rng.uniform(8, 16), shape=inst.shape)] = i
    image = np.clip((inst > 0) * 0.5 + 0.2 + rng.normal(0, 0.05, inst.shape), 0, 1).astype(np.float32)
    pairs = [Pair(image, inst, "a"), Pair(image[::-1].copy(), inst[::-1].copy(), "b")]
    # The loop of segment.train without its validation/checkpoint/plot overhead.
    from nanoseg.runtime import autocast
    from nanoseg.segment import class_weights, make_target, random_tile, segmentation_loss

    targets = [make_target(p.instances, cfg.target, cfg.boundary_width_px) for p in pairs]
    n_out = 3 if cfg.target == "three_class" else 1
    weights = torch.tensor(class_weights(targets, n_out), dtype=torch.float32)
    net = nets.create(cfg.architecture, in_channels=1, out_channels=n_out, base_width=cfg.base_width,
                      depth=cfg.depth).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)

    def step() -> None:
        tiles = [random_tile(pairs[j].image, targets[j], cfg.tile_size_px, rng) for j in rng.integers(0, 2, cfg.batch_size)]
        x = torch.from_numpy(np.stack([t[0] for t in tiles])[:, None]).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(np.stack([t[1] for t in tiles]))
        with autocast("cpu", cfg.bf16):
            logits = net(x)
        loss = segmentation_loss(logits, y, weights, cfg.target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(train_steps):
        step()
    out["train_s_per_step"] = round((time.perf_counter() - t0) / train_steps, 3)
    out["train_steps_per_s"] = round(train_steps / (time.perf_counter() - t0), 3)

    net = nets.create(cfg.architecture, in_channels=1, out_channels=3 if cfg.target == "three_class" else 1,
                      base_width=cfg.base_width, depth=cfg.depth).eval()
    test = rng.random(IMAGE_SHAPE).astype(np.float32)
    for label, bf16 in (("fp32", False), ("bf16_channels_last", True)):
        predict_probabilities(net, test[:256, :256], cfg.target, bf16=bf16)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            probs = predict_probabilities(net, test, cfg.target, bf16=bf16, tile_px=cfg.inference_tile_px)
            times.append(time.perf_counter() - t0)
        out[f"inference_s_per_image_{label}"] = round(float(np.median(times)), 3)
    # Post-processing on a synthetic probability map with ~150 particles of the real size.
    big = np.zeros(IMAGE_SHAPE, np.int32)
    for i, (y, x) in enumerate(rng.integers(20, 1000, (150, 2)), 1):
        big[disk((min(y, 740), x), rng.uniform(8, 16), shape=big.shape)] = i
    from nanoseg.segment import make_target

    target = make_target(big, cfg.target, cfg.boundary_width_px)
    probs = (np.stack([target == c for c in range(3)]) if cfg.target == "three_class" else (target[None] > 0)).astype(np.float32)
    t0 = time.perf_counter()
    instances_from_probabilities(probs, cfg.target, cfg)
    out["postprocess_s_per_image"] = round(time.perf_counter() - t0, 3)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _worker(queue, *args) -> None:  # noqa: ANN001
    queue.put(_bench_profile(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, available_cores()],
                        help="Torch thread counts to measure (on a shared machine 1 thread can be much faster).")
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profiles", nargs="+", default=["demo", "quick", "paper"])
    parser.add_argument("--out", type=Path, default=RESULTS, help="Results JSON file.")
    args = parser.parse_args()
    os.environ.setdefault("NANOSEG_NO_PROGRESS", "1")
    ctx = mp.get_context("spawn")
    load_at_start = round(os.getloadavg()[0], 2)
    results = []
    for threads in args.threads:
        for profile in args.profiles:
            queue = ctx.Queue()
            proc = ctx.Process(target=_worker, args=(queue, profile, threads, args.train_steps, args.repeats))
            proc.start()
            row = {"threads": threads, **queue.get()}
            proc.join()
            print(json.dumps(row))
            results.append(row)
    from nanoseg.atomic import write_json

    write_json(args.out, {"benchmark": "segment", "image_shape": list(IMAGE_SHAPE),
                         "load_average_1min_at_start": load_at_start,
                         "machine": f"{platform.machine()} {os.cpu_count()} cores (shared with other jobs)",
                         "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average_1min_at_end": round(os.getloadavg()[0], 2),
                         "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
