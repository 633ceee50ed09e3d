"""Stage adapt: self-training of the segmentation net on the user's own micrographs.

The segment stage's net learned from fake micrographs only. Here it segments the real ones
under test-time augmentation (the 8 flips and 90-degree rotations), keeps as pseudo-labels
only the particles it is sure of, and is fine-tuned on real tiles with those labels mixed with
the synthetic pairs; 1-3 rounds, each starting from the previous round's net.

A particle is a pseudo-label (:func:`pseudo_labels`) when

- the 8 views agree on its pixels' classes (mean share of agreeing views >= ``min_agreement``),
- it is convex enough (solidity >= ``min_solidity``): merged particles are not, and a merge
  learned as one particle would teach the net to merge more,
- it stays one particle when the post-processing splits more readily (``split_check``): a
  small particle merged into a neighbour often shows as a faint second maximum,
- its area is plausible under the size prior (``area_range`` times the median area of the whole
  particles of the fake masks).

Every other particle, with a margin, is "ignore" (no loss there), as are background pixels the
views disagree on; confident background is learned as background. Resumable: each finished
round leaves ``round<k>/model.pt``, and an interrupted round resumes from its training
checkpoint. With ``rounds: 0`` (the default) the stage hard-links the segment stage's net and
labels (no copies; the binaries and overlays stay in ``segment/``).

Outputs: ``model.pt`` (the net that segmented ``labels/``), ``labels/``, ``binary/``,
``overlays/``, ``rounds.json`` (per round: pseudo-labelled particles, ignored share, training
loss and validation IoU on the synthetic pairs) and ``round<k>/pseudo_labels.png``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from nanoseg import nets
from nanoseg.atomic import atomic_path, write_json
from nanoseg.io import load_micrographs, write_png
from nanoseg.metrics import contingency_table
from nanoseg.runtime import seed_everything
from nanoseg.segment.data import IGNORE, Pair, load_pairs, make_target
from nanoseg.segment.infer import particle_probability, predict_with_agreement, segment_micrographs, to_model_scale
from nanoseg.segment.instances import instances_from_probabilities
from nanoseg.segment.training import train

logger = logging.getLogger("nanoseg.adapt")


def pseudo_labels(
    probs: np.ndarray,
    agreement: np.ndarray,
    target: str,
    segment_cfg: Any,
    adapt_cfg: Any,
    area_range_px: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Confident particles of one real micrograph and the training target made from them.

    Parameters
    ----------
    probs : (C, H, W) float32
        Test-time-augmented class probabilities (:func:`nanoseg.segment.predict_with_agreement`).
    agreement : (H, W) float32
        Share of the 8 views that agree on each pixel's class.
    target : {'three_class', 'binary', 'centres'}
    segment_cfg : SegmentConfig
        Post-processing that splits ``probs`` into particles, and the boundary width.
    adapt_cfg : AdaptConfig
        ``min_agreement``, ``min_solidity``, ``split_check``.
    area_range_px : (float, float), optional
        Plausible particle areas in px; None: any.

    Returns
    -------
    instances : (H, W) int32
        The confident particles, labelled 1..n.
    training_target : (H, W) uint8, or (4, H, W) float32 for 'centres'
        :func:`nanoseg.segment.make_target` of ``instances`` with :data:`nanoseg.segment.IGNORE`
        (NaN for 'centres') on the other particles (dilated by the boundary width) and on
        uncertain background.
    stats : dict
        ``particles``, ``confident``, ``ignored_fraction``.
    """
    from skimage.measure import regionprops
    from skimage.segmentation import relabel_sequential

    labels = instances_from_probabilities(probs, target, segment_cfg)
    nearly_split = _nearly_split(labels, probs, target, segment_cfg, adapt_cfg.split_check)
    confident_ids = []
    for region in regionprops(labels, intensity_image=agreement):
        area_ok = area_range_px is None or area_range_px[0] <= region.area <= area_range_px[1]
        if (area_ok and region.solidity >= adapt_cfg.min_solidity and not nearly_split[region.label]
                and region.intensity_mean >= adapt_cfg.min_agreement):
            confident_ids.append(region.label)
    confident = np.isin(labels, confident_ids)
    instances = relabel_sequential(np.where(confident, labels, 0))[0].astype(np.int32)
    training_target = make_target(instances, target, segment_cfg.boundary_width_px)
    doubtful = (labels > 0) & ~confident
    if doubtful.any():
        doubtful = ndi.binary_dilation(doubtful, iterations=max(1, segment_cfg.boundary_width_px))
    uncertain_background = (instances == 0) & ((agreement < adapt_cfg.min_agreement)
                                               | (particle_probability(probs, target) >= 0.5))
    ignore = (doubtful & (instances == 0)) | uncertain_background
    training_target = training_target.copy()
    if training_target.ndim == 3:  # the centre-vote target: NaN is its ignore value
        training_target[:, ignore] = np.nan
    else:
        training_target[ignore] = IGNORE
    stats = {"particles": int(len(np.unique(labels)) - (1 if (labels == 0).any() else 0)),
             "confident": len(confident_ids), "ignored_fraction": round(float(ignore.mean()), 4)}
    return instances, training_target, stats


def _nearly_split(labels: np.ndarray, probs: np.ndarray, target: str, segment_cfg: Any, fraction: float,
                  min_share: float = 0.1) -> np.ndarray:
    """Per label 0..max: whether a more readily splitting post-processing divides the particle.

    The marker height (three-class) or marker distance (binary) is scaled by ``fraction``; a
    particle counts as split when a second particle of that segmentation covers at least
    ``min_share`` of it (a neighbour's outline shifts by a pixel or two, which is not a split).
    """
    split = np.zeros(int(labels.max()) + 1, bool)
    if fraction >= 1 or split.size < 2:
        return split
    if target == "three_class":
        finer_cfg = segment_cfg.model_copy(update={"marker_h": segment_cfg.marker_h * fraction})
    else:
        finer_cfg = segment_cfg.model_copy(update={"min_distance_px": max(1, round(segment_cfg.min_distance_px * fraction))})
    finer = instances_from_probabilities(probs, target, finer_cfg)
    # pixels of each particle (row) in each particle of the finer split (column), background left out
    overlap = contingency_table(finer, labels)[:, 1:].toarray()
    if overlap.shape[1] < 2:
        return split
    second = np.sort(overlap, axis=1)[:, -2]
    area = np.bincount(labels.ravel(), minlength=split.size)
    split[1:] = second[1:] >= min_share * area[1:]
    return split


def prior_area_range(masks_dir: Path, factors: tuple[float, float]) -> tuple[float, float] | None:
    """``factors`` times the median area of the whole particles of the fake masks, in px."""
    import pandas as pd

    table = masks_dir / "particles.csv"
    if not table.is_file():
        return None
    particles = pd.read_csv(table)
    whole = particles[particles["whole"].astype(bool)] if "whole" in particles else particles
    if whole.empty:
        return None
    median = float(whole["area_px"].median())
    return factors[0] * median, factors[1] * median


def _pseudo_label_sheet(images: list[np.ndarray], targets: list[np.ndarray], path: Path) -> None:
    """Up to 4 micrographs beside their pseudo-labels (white particles, grey ignore)."""
    rows = []
    for image, tgt in list(zip(images, targets))[:4]:
        shown = np.where(tgt == IGNORE, 0.5, np.where((tgt > 0) & (tgt != IGNORE), 1.0, 0.0))
        rows.append(np.hstack([np.clip(image, 0, 1), shown]))
    if rows:
        width = max(r.shape[1] for r in rows)
        sheet = np.vstack([np.pad(r, ((0, 4), (0, width - r.shape[1]))) for r in rows])
        write_png(path, (sheet * 255).astype(np.uint8))


def run_stage(ctx: Any) -> None:
    """Pipeline stage ``adapt``: self-train on the real micrographs, then segment them again."""
    config, cfg = ctx.config, ctx.config.adapt
    out_dir = Path(ctx.out_dir)
    segment_dir = ctx.stage_dir("segment")
    model = segment_dir / "model.pt"
    rounds: list[dict[str, Any]] = []
    if cfg.rounds == 0:
        # Links, not copies: the later stages and users find the run's final net and labels here
        # whether or not it self-trained, at no cost in disk or time.
        _link(model, out_dir / "model.pt")
        for label_image in sorted((segment_dir / "labels").glob("*")):
            _link(label_image, out_dir / "labels" / label_image.name)
        write_json(out_dir / "rounds.json", {"rounds": rounds, "note": "adapt.rounds is 0: the segment stage's net"})
        ctx.log.info("adapt: off (adapt.rounds 0); linked the segment stage's net and labels into %s", out_dir)
        return
    micrographs = load_micrographs(config.data)
    synthetic = load_pairs(ctx.stage_dir("pairs"))
    area_range = prior_area_range(ctx.stage_dir("masks"), tuple(cfg.area_range))
    seg_cfg = config.segment.model_copy(update={"steps": cfg.steps, "learning_rate": cfg.learning_rate,
                                                "lr_decay_every": max(cfg.steps, 1)})
    for k in range(1, cfg.rounds + 1):
        round_dir = out_dir / f"round{k}"
        round_dir.mkdir(parents=True, exist_ok=True)
        done = round_dir / "round.json"
        if (round_dir / "model.pt").is_file() and done.is_file():
            rounds.append(json.loads(done.read_text()))
            model = round_dir / "model.pt"
            continue
        net, meta = nets.load(model, ctx.device, kind="segmenter")
        pseudo, shown_images, shown_targets, per_image = [], [], [], []
        for mg in micrographs:
            image, _ = to_model_scale(mg.image, mg.pixel_size_nm, meta)
            probs, agreement = predict_with_agreement(net, image, meta["target"], device=ctx.device,
                                                      bf16=config.segment.bf16,
                                                      tile_px=config.segment.inference_tile_px,
                                                      overlap_px=config.segment.tile_overlap_px)
            instances, target, stats = pseudo_labels(probs, agreement, meta["target"], config.segment, cfg,
                                                     area_range)
            per_image.append({"image": Path(mg.path).stem, **stats})
            if stats["confident"]:
                pseudo.append(Pair(image, instances, f"real:{Path(mg.path).stem}", target))
                shown_images.append(image)
                shown_targets.append(target)
        _pseudo_label_sheet(shown_images, shown_targets, round_dir / "pseudo_labels.png")
        n_confident = sum(r["confident"] for r in per_image)
        n_particles = sum(r["particles"] for r in per_image)
        ctx.log.info("adapt round %d: %d of %d particles are pseudo-labels, on %d micrographs", k, n_confident,
                     n_particles, len(pseudo))
        if pseudo:
            train(synthetic, seg_cfg, round_dir, device=ctx.device, rng=seed_everything(config.seed + k),
                  pixel_size_nm=meta.get("pixel_size_nm"), extra=pseudo, extra_fraction=cfg.real_fraction,
                  init_from=model, input_scale=meta.get("input_scale", 1.0))
        else:  # nothing to learn from: the round keeps the net
            _copy(model, round_dir / "model.pt")
        history_json = round_dir / "history.json"
        history = json.loads(history_json.read_text()) if history_json.is_file() else []
        record = {"round": k, "pseudo_labelled": n_confident, "particles": n_particles,
                  "images_used": len(pseudo), "images": per_image,
                  "ignored_fraction": round(float(np.mean([r["ignored_fraction"] for r in per_image])), 4),
                  "final_train_loss": history[-1]["train_loss"] if history else None,
                  "synthetic_val_iou": history[-1].get("val_iou") if history else None}
        write_json(done, record)
        rounds.append(record)
        model = round_dir / "model.pt"
    _copy(model, out_dir / "model.pt")
    summary = segment_micrographs(out_dir / "model.pt", micrographs, out_dir, config.segment, device=ctx.device)
    write_json(out_dir / "rounds.json", {"rounds": rounds, "images": summary,
                                         "area_range_px": list(area_range) if area_range else None})


def _link(source: Path, target: Path) -> None:
    """A hard link to ``source`` at ``target``; a copy where the file system has no hard links."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        _copy(source, target)


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
