"""Pipeline stage 5: train on the pairs, segment every micrograph, write labels, binaries and overlays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nanoseg import io
from nanoseg.atomic import write_json
from nanoseg.grid import working_scale
from nanoseg.runtime import seed_everything
from nanoseg.segment.data import load_pairs
from nanoseg.segment.infer import segment_micrographs
from nanoseg.segment.training import train


def run_stage(ctx: Any) -> None:
    """Stage 5: train on ``pairs/``, segment every micrograph, write labels/binary/overlays.

    The net learns on the run's working grid (:mod:`nanoseg.grid`) and segments the micrographs
    as they are: it resamples each to the pixel size it learned at, and writes the labels on the
    micrograph's own pixels.
    """
    config = ctx.config
    out_dir = Path(ctx.out_dir)
    micrographs = io.load_micrographs(config.data)
    scale = working_scale(config)
    sizes = [m.pixel_size_nm for m in micrographs if m.pixel_size_nm]
    pixel_size_nm = float(np.median(sizes)) / scale if sizes else None
    model_path = out_dir / "model.pt"
    if not model_path.is_file():  # an interrupted attempt may have finished training already
        pairs = load_pairs(ctx.stage_dir("pairs"))
        rng = seed_everything(config.seed)
        train(pairs, config.segment, out_dir, device=ctx.device, rng=rng, pixel_size_nm=pixel_size_nm,
              input_scale=scale)
    summary = segment_micrographs(model_path, micrographs, out_dir, config.segment, device=ctx.device)
    write_json(out_dir / "summary.json", {"images": summary, "pixel_size_nm": pixel_size_nm,
                                         "target": config.segment.target})

