"""Stages 3 (``translate``) and 4 (``pairs``): their entry points and what they run.

:func:`train_translator` trains the CycleGAN or fits the SEM renderer (``translate.method``),
:func:`make_pairs` writes the training pairs and, when asked, scores how real the fake
micrographs look (:func:`write_realism`, :mod:`nanoseg.translate.realism`). :func:`run_train_stage` and
:func:`run_pairs_stage` are what the pipeline calls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg.atomic import write_json
from nanoseg.errors import NanosegError
from nanoseg.grid import working_scale
from nanoseg.io import load_micrographs
from nanoseg.runtime import seed_everything
from nanoseg.translate.cyclegan import train_cyclegan
from nanoseg.translate.fakemasks import load_fake_masks
from nanoseg.translate.pairs import generate_pairs
from nanoseg.translate.realism import realism_scores
from nanoseg.translate.translators import fit_renderer, load_renderer, load_translator

logger = logging.getLogger("nanoseg.translate")

MAX_TRAIN_MASKS = 64  # fake-mask tiles held in memory for CycleGAN training crops


def _median_pixel_size(micrographs: Sequence[Any]) -> float | None:
    sizes = [m.pixel_size_nm for m in micrographs if m.pixel_size_nm is not None]
    return float(np.median(sizes)) if sizes else None


def train_translator(config: Any, masks_dir: str | Path, out_dir: str | Path, device: Any = "cpu") -> None:
    """Train the CycleGAN, fit the SEM renderer, or both (per ``config.translate.method``) into ``out_dir``.

    Parameters
    ----------
    config : nanoseg.config.Config
        Uses ``data`` (the real micrographs), ``translate`` and ``seed``.
    masks_dir : path
        Output folder of the masks stage (``mask_*.tif``).
    out_dir : path
        Gets the generators (or ``renderer.json``), checkpoints, loss log, plots and samples.
    device : torch.device or str
    """
    cfg = config.translate
    rng = seed_everything(config.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    micrographs = load_micrographs(config.data, scale=working_scale(config))
    if not micrographs:
        raise NanosegError(f"data.images: no micrographs found in {config.data.images}")
    fake_masks = load_fake_masks(masks_dir)
    images = [m.image for m in micrographs]
    if cfg.method in ("render", "refine"):
        contrast = cfg.contrast
        if contrast == "auto":
            contrast = "transmission" if any(m.dark_inverted for m in micrographs) else "se"
        fit_renderer(images, fake_masks, out_dir, seed=config.seed, substrate=cfg.substrate, contrast=contrast)
        if cfg.method == "render":
            return
    meta = {"pixel_size_nm": _median_pixel_size(micrographs), "dark_particles_inverted": any(m.dark_inverted for m in micrographs)}
    # A random subset of the tiles gives enough variety for random crops and bounds the memory.
    chosen = np.sort(rng.choice(len(fake_masks), size=min(len(fake_masks), MAX_TRAIN_MASKS), replace=False))
    if cfg.method == "refine":
        # Domain A is the renderer's output: the generator (with a skip) learns only the residual realism.
        render = load_renderer(out_dir, cfg)
        domain_a = render([fake_masks[int(i)].instances for i in chosen],
                          [np.random.default_rng([config.seed, int(i)]) for i in chosen])
        train_cyclegan(domain_a, images, cfg.model_copy(update={"generator_skip": True}), out_dir, device, rng,
                       {**meta, "renderer": "renderer.json"}, binary_a=False)
        return
    masks = [fake_masks[int(i)].instances > 0 for i in chosen]
    train_cyclegan(masks, images, cfg, out_dir, device, rng, meta)


def make_pairs(config: Any, masks_dir: str | Path, translate_dir: str | Path, out_dir: str | Path, device: Any = "cpu",
               n_pairs: int | None = None) -> dict[str, Any]:
    """Translate the fake masks of ``masks_dir`` with the translator in ``translate_dir``; write pairs.

    Returns the artifact-filter summary (also written to ``out_dir/filter.json``).
    """
    cfg = config.translate
    fake_masks = load_fake_masks(masks_dir)
    translator = load_translator(translate_dir, cfg, device)
    summary = generate_pairs(fake_masks, translator, out_dir, n_pairs or cfg.n_pairs, seed=config.seed,
                             method=cfg.artifact_threshold, fmt=cfg.pair_format, batch_size=max(1, cfg.batch_size))
    if cfg.realism_steps > 0 and config.data.images is not None:
        write_realism(config, out_dir, device)
    return summary


#: Fake micrographs compared with the real ones by :func:`write_realism` (more add little).
_REALISM_MAX_PAIRS = 40


def write_realism(config: Any, pairs_dir: str | Path, device: Any = "cpu") -> dict[str, Any] | None:
    """Score how real the written pairs' micrographs look (:mod:`nanoseg.translate.realism`); ``realism.json``.

    Returns None (and writes nothing) when the micrographs or pairs are too small for the tiles.
    """
    pairs_dir = Path(pairs_dir)
    real = [mg.image for mg in load_micrographs(config.data, scale=working_scale(config))]
    fakes = []
    for path in sorted(pairs_dir.glob("pair_*.npz"))[:_REALISM_MAX_PAIRS]:
        with np.load(path) as pair:
            fakes.append(pair["image"])
    tile_px = min(64, *(min(im.shape) for im in real + fakes)) if real and fakes else 0
    if tile_px < 16:
        logger.warning("pairs: micrographs too small to score the fakes' realism; skipped")
        return None
    scores = realism_scores(real, fakes, tile_px=tile_px, steps=config.translate.realism_steps, seed=config.seed,
                            device=device)
    scores["translator"] = config.translate.method
    write_json(pairs_dir / "realism.json", scores)
    return scores


def run_train_stage(ctx: Any) -> None:
    """Stage ``translate``: train the CycleGAN or fit the SEM renderer (per ``translate.method``)."""
    train_translator(ctx.config, ctx.stage_dir("masks"), ctx.out_dir, ctx.device)


def run_pairs_stage(ctx: Any) -> None:
    """Stage ``pairs``: translate every fake mask, filter artifacts, write the training pairs."""
    make_pairs(ctx.config, ctx.stage_dir("masks"), ctx.stage_dir("translate"), ctx.out_dir, ctx.device)
