"""Applying the classifier to segmented micrographs: per-particle scores, decisions, the pipeline stage."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nanoseg import nets
from nanoseg.atomic import atomic_path
from nanoseg.classify.data import load_pair_samples
from nanoseg.classify.network import fit_classifier, instance_scores, predict_keep_probability, resolve_threshold
from nanoseg.classify.rules import DECISION_COLUMNS, apply_rules
from nanoseg.errors import NanosegError
from nanoseg.particles import measure_images
from nanoseg.runtime import progress

CHECKPOINT_NAME = "checkpoint.pt"


def network_binary(labels: np.ndarray) -> np.ndarray:
    """The network's mask channel for a label image: foreground with 1-px lines between touching
    particles, as in the training pairs and the manual masks (float32 0/1)."""
    from nanoseg.labels import separated_binary

    return (separated_binary(labels) > 0).astype(np.float32)


def classify_images(
    items: Sequence[tuple[str, np.ndarray, np.ndarray | None, float | None]],
    cfg: Any,
    *,
    net: Any = None,
    device: Any = "cpu",
    particles: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Keep/discard decisions for every particle of several label images.

    Every decision depends on its own image only, never on the other items.

    Parameters
    ----------
    items : sequence of (image name, labels, micrograph, pixel size in nm or None)
    cfg : ClassifyConfig
    net : nn.Module, optional
        Keep/discard network; required for ``method='network'``.
    device : torch.device or str
    particles : pandas.DataFrame, optional
        :func:`nanoseg.particles.measure_images` of ``items``, when the caller has it already.

    Returns
    -------
    pandas.DataFrame
        ``image``, ``label``, ``score``, ``kept``, ``reason`` for every particle.
    """
    particles = measure_images(items) if particles is None else particles.copy()
    if cfg.intensity_threshold != "none":
        from nanoseg.translate import artifact_threshold

        thresholds = {name: artifact_threshold(image, cfg.intensity_threshold)
                      for name, _, image, _ in items if image is not None}
        particles["image_threshold"] = particles["image"].map(thresholds).astype(float)
    scores = None
    if cfg.method == "network":
        if net is None:
            raise NanosegError("classify.method is 'network' but no classifier model was given (train one or use 'rules')")
        scores = np.full(len(particles), np.nan)
        for name, labels, image, _ in progress(items, total=len(items), desc="classify score"):
            if image is None:
                raise NanosegError(f"classify: the network needs the micrograph of {name}")
            rows = np.flatnonzero(particles["image"].to_numpy() == name)
            prob = predict_keep_probability(net, image, network_binary(labels), device=device, bf16=cfg.bf16)
            scores[rows] = instance_scores(prob, labels, particles["label"].to_numpy()[rows])
    return apply_rules(particles, cfg, scores)


def write_decisions(decisions: pd.DataFrame, path: str | Path) -> Path:
    """Write ``decisions.csv`` (image, label, score, kept, reason) atomically."""
    with atomic_path(path) as tmp:
        decisions[DECISION_COLUMNS].to_csv(tmp, index=False, float_format="%.5g")
    return Path(path)


def read_decisions(path: str | Path) -> pd.DataFrame | None:
    """Read a ``decisions.csv`` written by :func:`write_decisions`; None when there is no such file.

    Image names stay strings (``'001'`` is not 1), ``kept`` becomes bool and an empty ``score``
    NaN.
    """
    path = Path(path)
    if not path.is_file():
        return None
    dec = pd.read_csv(path, dtype={"image": str}, keep_default_na=False, na_values={"score": ["", "nan", "NaN"]})
    dec["kept"] = dec["kept"].astype(str).str.lower().isin(["true", "1"])
    return dec


def run_stage(ctx: Any) -> None:
    """Pipeline stage 6: train the keep/discard network on the pairs and calibrate its threshold.

    Writes ``model.pt`` (threshold and calibration in its metadata) and nothing else: the
    measure stage decides every particle with it, through the same per-image road as
    ``nanoseg measure``. With ``classify.method='rules'`` there is nothing to train.
    """
    cfg = ctx.config.classify
    model_path = ctx.out_dir / "model.pt"
    if cfg.method != "network":
        ctx.log.info("classify: method '%s': nothing to train; the measure stage keeps particles by the rules",
                     cfg.method)
        return
    if model_path.is_file():  # an interrupted attempt finished training
        return
    samples = load_pair_samples(ctx.stage_dir("pairs"))
    ckpt = ctx.out_dir / CHECKPOINT_NAME
    net, meta = fit_classifier(samples, cfg, device=ctx.device, checkpoint=ckpt, seed=ctx.config.seed)
    # The pairs are drawn at the micrographs' pixel size, which the segment stage recorded.
    meta["pixel_size_nm"] = _recorded_pixel_size(ctx.stage_dir("segment") / "summary.json")
    nets.save(net, model_path, meta={"task": "classify", "trained_on": "pairs", **meta}, kind="classifier")
    ckpt.unlink(missing_ok=True)
    ctx.log.info("classify: trained %d steps on %d pairs, final loss %.4f, score threshold %.3f -> %s", meta["steps"],
                 meta["trained_images"], meta["final_loss"], resolve_threshold(cfg, meta).score_threshold, model_path)


def _recorded_pixel_size(summary_json: Path) -> float | None:
    try:
        return json.loads(summary_json.read_text()).get("pixel_size_nm")
    except (OSError, ValueError):
        return None
