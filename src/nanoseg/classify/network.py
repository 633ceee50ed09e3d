"""The keep/discard network: training (optionally weight-averaged), scoring, threshold calibration."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg import nets
from nanoseg.checkpoint import fingerprint, load_checkpoint, restore_rng, save_checkpoint
from nanoseg.classify.data import Sample, balanced_weights, sample_batch
from nanoseg.errors import NanosegError
from nanoseg.runtime import autocast, progress

logger = logging.getLogger("nanoseg.classify")


def make_classifier(cfg: Any) -> Any:
    """A fresh MultiResUNet with inputs (micrograph, binary mask) and one keep-logit output."""
    return nets.create("multiresunet", in_channels=2, out_channels=1, base_width=cfg.base_width, depth=cfg.depth)


def masked_bce(logits: Any, target: Any, weight: Any, balance: bool = False) -> Any:
    """Binary cross-entropy averaged over the weighted (particle) pixels.

    With ``balance`` the kept and the discarded pixels of the batch get equal total weight, so
    that the large share of kept pixels does not push every score above the threshold.
    """
    import torch.nn.functional as F

    if balance:
        pos = (target * weight).sum()
        neg = ((1 - target) * weight).sum()
        if pos > 0 and neg > 0:
            total = pos + neg
            weight = weight * (target * (0.5 * total / pos) + (1 - target) * (0.5 * total / neg))
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, weight=weight, reduction="sum")
    return loss / weight.sum().clamp(min=1.0)


#: The settings that change what :func:`train_classifier` learns (not ``steps``: more steps resume).
TRAINING_SETTINGS = ("base_width", "depth", "tile_size_px", "batch_size", "learning_rate", "size_balance",
                     "balance_classes", "ema_decay", "bf16")


def training_fingerprint(samples: Sequence[Sample], cfg: Any, seed: int, net: Any = None) -> str:
    """Hash of what :func:`train_classifier` learns from: the samples' pixels, the training
    settings (:data:`TRAINING_SETTINGS`), the seed and the starting weights of ``net``.

    A checkpoint is resumed only under the same fingerprint.
    """
    settings = {k: getattr(cfg, k) for k in TRAINING_SETTINGS}
    start = net.state_dict() if net is not None else None
    return fingerprint("classify", settings, int(seed), [tuple(sample) for sample in samples], start)


def train_classifier(
    samples: Sequence[Sample],
    cfg: Any,
    *,
    device: Any = "cpu",
    checkpoint: str | Path | None = None,
    seed: int = 0,
    steps: int | None = None,
    net: Any = None,
) -> tuple[Any, list[float]]:
    """Train the keep/discard network on samples; resumes from ``checkpoint`` when it exists.

    Parameters
    ----------
    samples : sequence of (image, binary, keep)
        From :func:`load_pair_samples` or :func:`load_manual_samples`.
    cfg : ClassifyConfig
        Uses ``base_width``, ``depth``, ``tile_size_px``, ``batch_size``, ``steps``,
        ``learning_rate``, ``size_balance``,
        ``balance_classes``, ``ema_decay``, ``checkpoint_every``, ``bf16``.
    device : torch.device or str
    checkpoint : path, optional
        Checkpoint file written every ``cfg.checkpoint_every`` steps (atomically) and read on
        start to resume an interrupted training; one made from other samples, settings, seed or
        starting weights (:func:`training_fingerprint`) is not resumed (a warning, a fresh start).
    seed : int
        Seed of the tile sampling.
    steps : int, optional
        Override of ``cfg.steps``.
    net : nn.Module, optional
        Start from this network instead of a fresh one.

    Returns
    -------
    net : nn.Module
        The trained network, in eval mode: with ``cfg.ema_decay`` > 0 the exponential moving
        average of its weights (and batch-norm statistics) over the training steps.
    losses : list of float
        Training loss per step (including the steps before a resume).
    """
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


    if not samples:
        raise NanosegError("classify: no training samples")
    steps = cfg.steps if steps is None else steps
    # Given starting weights count; a fresh net's come from torch's seed, as they always did.
    fp = training_fingerprint(samples, cfg, seed, net) if checkpoint is not None else ""
    net = (net if net is not None else make_classifier(cfg)).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    # The average of the last ~1/(1 - decay) steps' weights: one training run's final weights
    # depend on its last few batches, and so does which particles it keeps.
    average = (AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
               if cfg.ema_decay > 0 else None)
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    start = 0
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    state = load_checkpoint(checkpoint, fp, what="classify", data="samples",
                            map_location=device) if checkpoint is not None else None
    if state is not None:
        net.load_state_dict(state["nets"]["net"])
        optimizer.load_state_dict(state["optimizers"]["adam"])
        if average is not None:
            average.load_state_dict(state["nets"]["average"])
        losses = list(state["extra"]["losses"])
        start = state["step"]
        restore_rng(state, rng)
        logger.info("classify: resuming training from step %d (%s)", start, checkpoint)
    weights = balanced_weights(samples, n_bins=8) if cfg.size_balance else None
    use_bf16 = bool(cfg.bf16)
    net.train()
    for step in progress(range(start, steps), total=steps - start, desc="classify train"):
        batch = sample_batch(samples, cfg.tile_size_px, cfg.batch_size, rng, weights=weights)
        x, y, w = (torch.from_numpy(a).to(device) for a in batch)
        with autocast(device, use_bf16):
            logits = net(x)
        loss = masked_bce(logits, y, w, balance=cfg.balance_classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update_parameters(net)
        losses.append(float(loss.detach()))
        done = step + 1
        if checkpoint is not None and (done % cfg.checkpoint_every == 0) and done < steps:
            save_checkpoint(checkpoint, fingerprint=fp, step=done, nets={"net": net.state_dict(), **(
                {"average": average.state_dict()} if average is not None else {})},
                optimizers={"adam": optimizer.state_dict()}, rng=rng, extra={"losses": losses})
    if average is not None and int(average.n_averaged) > 0:
        net = average.module
    net.eval()
    return net, losses


def predict_keep_probability(net: Any, image: np.ndarray, binary: np.ndarray, *, device: Any = "cpu", bf16: bool = False) -> np.ndarray:
    """Per-pixel keep probability of a whole micrograph (float32, same shape)."""
    import torch


    x = torch.from_numpy(np.stack([image, binary]).astype(np.float32)[None]).to(device)
    net.eval()
    with torch.inference_mode(), autocast(device, bf16):
        logits = net(x)
    return torch.sigmoid(logits.float())[0, 0].cpu().numpy()


def sample_particles(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels of a sample's particles and whether each is to be kept.

    The binary mask separates touching particles by 1-px lines (as the pairs and the manual
    masks do), so its 4-connected components are the particles; a particle is to be kept when
    most of its pixels are in the keep mask.

    Returns
    -------
    labels : (H, W) int32 array
    keep : (n,) bool array, in label order 1..n
    """
    from scipy import ndimage as ndi

    from nanoseg.labels import label_binary

    _, binary, keep = sample
    labels = label_binary(binary > 0, 1)
    n = int(labels.max())
    if n == 0:
        return labels, np.zeros(0, bool)
    return labels, np.asarray(ndi.mean(keep > 0, labels=labels, index=np.arange(1, n + 1))) > 0.5


def _youden_threshold(score: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(threshold, J): the score threshold maximising Youden's J, halfway between the lowest score
    still kept and the next lower one, so that ``score > threshold`` reproduces the optimum."""
    from nanoseg.metrics import youden_index

    j, best = youden_index(score, target)
    below = score[score < best]
    return (float((best + below.max()) / 2) if below.size else float(best) / 2), float(j)


#: Fewest whole and fewest partial particles a calibration area bin needs for a threshold of its own.
MIN_PARTICLES_PER_BIN = 10


def calibrate_threshold(net: Any, samples: Sequence[Sample], *, device: Any = "cpu", bf16: bool = False,
                        n_bins: int = 1) -> dict[str, Any]:
    """The keep-score threshold that best separates whole from partial particles of ``samples``.

    Every particle of every sample is scored like a segmented particle (mean keep probability
    over its pixels); the threshold maximises Youden's J = sensitivity + specificity - 1 of
    "keep" over those particles. It lies halfway between the lowest score still kept and the
    next lower one, so ``score > threshold`` reproduces the optimum.

    With ``n_bins`` > 1 the particles are also split into that many equal-count bins of area and
    each bin gets the threshold that maximises J within it, where that is lower than the overall
    one: a network that scores small whole particles lower than large ones (small whole
    particles are rare in the fake pairs, small fragments common) keeps them at about the rate
    it keeps large ones. A bin with fewer than :data:`MIN_PARTICLES_PER_BIN` whole or partial
    particles takes the overall threshold.

    Parameters
    ----------
    net : nn.Module
        Trained keep/discard network.
    samples : sequence of (image, binary, keep)
        Samples the network was not trained on.
    n_bins : int
        Area bins with a threshold of their own (1: one threshold for all sizes).

    Returns
    -------
    dict
        ``threshold``, ``youden_j``, ``sensitivity``, ``specificity``, ``n_particles``,
        ``n_images`` and, with ``n_bins`` > 1, ``by_area``: pairs (smallest area in px,
        threshold) as ``classify.score_thresholds_by_area`` takes them. When the samples hold only
        one class of particle, J is undefined: the threshold is 0.5 and ``youden_j`` is None.
    """
    scores, targets, areas = [], [], []
    for sample in samples:
        labels, keep = sample_particles(sample)
        if keep.size == 0:
            continue
        prob = predict_keep_probability(net, sample[0], (sample[1] > 0).astype(np.float32), device=device, bf16=bf16)
        scores.append(instance_scores(prob, labels, np.arange(1, keep.size + 1)))
        targets.append(keep)
        areas.append(np.bincount(labels.ravel(), minlength=keep.size + 1)[1:])
    score = np.concatenate(scores) if scores else np.zeros(0)
    target = np.concatenate(targets) if targets else np.zeros(0, bool)
    area = np.concatenate(areas) if areas else np.zeros(0)
    out: dict[str, Any] = {"n_particles": int(score.size), "n_images": len(samples)}
    if target.all() or not target.any():
        return {**out, "threshold": 0.5, "youden_j": None, "sensitivity": None, "specificity": None}
    threshold, j = _youden_threshold(score, target)
    kept = score > threshold
    out.update(threshold=threshold, youden_j=j, sensitivity=float(kept[target].mean()),
               specificity=float((~kept[~target]).mean()))
    if n_bins > 1:
        starts = np.unique(np.concatenate([[0.0], np.quantile(area, np.linspace(0, 1, n_bins + 1)[1:-1])]))
        bins = np.searchsorted(starts, area, side="right") - 1
        by_area = []
        for k, start in enumerate(starts):
            inside = bins == k
            n_whole = int(target[inside].sum())
            enough = min(n_whole, int(inside.sum()) - n_whole) >= MIN_PARTICLES_PER_BIN
            # a bin may only lower the threshold: the bins exist to keep small whole particles that the
            # overall threshold loses; raised, they cost recall where partial particles are too few in
            # the fakes to set a threshold (measured: count -13 / +1 / -20 % became -18 / -7 / -24 %)
            own = _youden_threshold(score[inside], target[inside])[0] if enough else threshold
            by_area.append((float(start), min(own, threshold)))
        out["by_area"] = by_area
    return out


def fit_classifier(
    samples: Sequence[Sample],
    cfg: Any,
    *,
    device: Any = "cpu",
    checkpoint: str | Path | None = None,
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Train the keep/discard network and settle its score threshold; what the model file keeps.

    With ``cfg.score_threshold='auto'`` the last ``calibration_fraction`` of the samples (at
    least one) are held out of training and the threshold is calibrated on them
    (:func:`calibrate_threshold`); with fewer than two samples, or a fraction of 0, on the
    training samples. A number in ``cfg.score_threshold`` is used as it is.

    Returns
    -------
    net : nn.Module
    meta : dict
        ``steps``, ``final_loss``, ``score_threshold`` (a number) and, when calibrated,
        ``calibration`` (see :func:`calibrate_threshold`, plus ``held_out``).
    """
    auto = cfg.score_threshold == "auto"
    n_held = max(1, round(cfg.calibration_fraction * len(samples))) if auto and cfg.calibration_fraction > 0 else 0
    if len(samples) - n_held < 1:
        n_held = 0
    train_samples = list(samples[:len(samples) - n_held])
    net, losses = train_classifier(train_samples, cfg, device=device, checkpoint=checkpoint, seed=seed)
    tail = losses[-max(1, len(losses) // 10):]
    meta: dict[str, Any] = {"steps": len(losses), "final_loss": float(np.mean(tail)), "trained_images": len(train_samples)}
    if not auto:
        return net, {**meta, "score_threshold": float(cfg.score_threshold)}
    held = list(samples[len(samples) - n_held:]) if n_held else train_samples
    calibration = calibrate_threshold(net, held, device=device, bf16=cfg.bf16, n_bins=cfg.calibration_bins)
    calibration["held_out"] = bool(n_held)
    if calibration["youden_j"] is None:
        logger.warning("classify: the calibration pairs hold particles of one kind only (all whole or all "
                       "partial); score threshold 0.5")
    else:
        logger.info("classify: score threshold %.3f from %d %s particles (Youden's J %.3f, sensitivity %.3f, "
                    "specificity %.3f)", calibration["threshold"], calibration["n_particles"],
                    "held-out" if n_held else "training", calibration["youden_j"], calibration["sensitivity"],
                    calibration["specificity"])
        if calibration.get("by_area"):
            logger.info("classify: score thresholds by particle area: %s", ", ".join(
                f"{t:.3f} from {a:.0f} px" for a, t in calibration["by_area"]))
    return net, {**meta, "score_threshold": calibration["threshold"], "calibration": calibration}


def resolve_threshold(cfg: Any, meta: dict[str, Any] | None) -> Any:
    """``cfg`` with a numeric ``score_threshold``: 'auto' becomes the threshold saved with the model.

    With 'auto', the model's thresholds by particle area (``calibration['by_area']``) fill
    ``score_thresholds_by_area`` unless the configuration sets them. A number in the
    configuration wins over the model's; a model saved without a threshold (trained before
    calibration existed) gets 0.5.
    """
    if cfg.score_threshold != "auto":
        return cfg
    saved = (meta or {}).get("score_threshold")
    if not isinstance(saved, (int, float)):
        logger.warning("classify: the classifier model records no calibrated score threshold (an older nanoseg "
                       "trained it, or the model file is missing); using 0.5")
        saved = 0.5
    update: dict[str, Any] = {"score_threshold": float(saved)}
    by_area = ((meta or {}).get("calibration") or {}).get("by_area")
    if cfg.score_thresholds_by_area is None and by_area:
        update["score_thresholds_by_area"] = [(float(a), float(t)) for a, t in by_area]
    return cfg.model_copy(update=update)


def instance_scores(probability: np.ndarray, labels: np.ndarray, label_ids: Sequence[int] | None = None) -> np.ndarray:
    """Mean probability over each instance's pixels (in the order of ``label_ids``)."""
    from scipy import ndimage as ndi

    if label_ids is None:
        label_ids = np.unique(labels[labels > 0])
    if len(label_ids) == 0:
        return np.zeros(0)
    return np.asarray(ndi.mean(probability, labels=labels, index=np.asarray(label_ids)), dtype=float)
