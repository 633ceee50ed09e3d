"""Training of the segmentation net: tiles, loss, validation, resume, the auto threshold."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg import nets
from nanoseg.atomic import write_json
from nanoseg.checkpoint import fingerprint, load_checkpoint, restore_rng, save_checkpoint
from nanoseg.config import SegmentConfig
from nanoseg.errors import NanosegError
from nanoseg.metrics import detection_scores
from nanoseg.plots import LossPanel, plot_losses
from nanoseg.runtime import autocast, progress
from nanoseg.segment.data import (
    IGNORE,
    Pair,
    TargetKind,
    dihedral,
    foreground_mask,
    make_target,
    n_outputs,
)
from nanoseg.segment.infer import predict_probabilities, probabilities_from_logits
from nanoseg.segment.instances import instances_from_probabilities

logger = logging.getLogger("nanoseg.segment")

_MAX_VAL_PAIRS = 8


# --------------------------------------------------------------------------- training helpers


def random_tile(pair_image: np.ndarray, target: np.ndarray, tile_px: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random training tile of an image and its target, augmented.

    Flips, 90-degree rotations and brightness/contrast/noise jitter; an image smaller than
    ``tile_px`` is padded and its target padded with :data:`IGNORE` (NaN in a float target).
    A (C, H, W) float target is the centre-vote one: its offsets turn with the tile.

    Returns
    -------
    image : (tile_px, tile_px) float32 in [0, 1]
    target : (tile_px, tile_px) or (C, tile_px, tile_px) array of the target's dtype
    """
    h, w = pair_image.shape
    th, tw = min(tile_px, h), min(tile_px, w)
    y = int(rng.integers(0, h - th + 1))
    x = int(rng.integers(0, w - tw + 1))
    img = pair_image[y : y + th, x : x + tw]
    tgt = target[..., y : y + th, x : x + tw]
    if th < tile_px or tw < tile_px:  # small pairs: pad, and let the loss ignore the padding
        pad = ((0, tile_px - th), (0, tile_px - tw))
        img = np.pad(img, pad, mode="reflect" if th > tile_px - th and tw > tile_px - tw else "edge")
        ignore = np.nan if tgt.dtype.kind == "f" else IGNORE
        tgt = np.pad(tgt, ((0, 0),) * (tgt.ndim - 2) + pad, constant_values=ignore)
    k, flip = int(rng.integers(0, 4)), bool(rng.random() < 0.5)
    img, tgt = dihedral(img, k, flip), dihedral(tgt, k, flip, vectors=tgt.ndim == 3)
    contrast = rng.uniform(0.85, 1.15)
    brightness = rng.uniform(-0.08, 0.08)
    img = (img - img.mean()) * contrast + img.mean() + brightness
    img = img + rng.normal(0.0, rng.uniform(0.0, 0.03), img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32), np.ascontiguousarray(tgt)


def class_weights(targets: list[np.ndarray], n_classes: int) -> np.ndarray:
    """Median-frequency class weights (clipped to [0.1, 10]) of the training targets."""
    counts = np.zeros(max(n_classes, 2))
    for t in targets:
        counts += np.bincount(t[t != IGNORE].ravel(), minlength=counts.size)[: counts.size]
    freq = counts / max(counts.sum(), 1.0)
    freq[freq == 0] = np.nan
    weights = np.nanmedian(freq) / freq
    return np.clip(np.nan_to_num(weights, nan=1.0), 0.1, 10.0)


def segmentation_loss(logits: Any, target: Any, weights: Any, kind: TargetKind) -> Any:
    """The training loss: class-weighted cross-entropy (three-class) or BCE (binary).

    Parameters
    ----------
    logits : torch.Tensor, (N, C, H, W)
    target : torch.Tensor, (N, H, W)
        :func:`make_target` values; :data:`IGNORE` pixels do not count.
    weights : torch.Tensor
        :func:`class_weights` (three-class: per class; binary: background, particle; not used
        by the centre-vote target).
    kind : {'three_class', 'binary'}

    Returns
    -------
    torch.Tensor (scalar)
    """
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    if kind == "three_class":
        return F.cross_entropy(logits, target.long(), weight=weights, ignore_index=IGNORE)
    if kind == "centres":
        return _centre_loss(logits, target)
    valid = target != IGNORE
    t = torch.where(valid, target, 0).float().unsqueeze(1)
    # pos_weight balances particle vs background; weights = [w_bg, w_fg].
    pixel_w = torch.where(t > 0, weights[1], weights[0]) * valid.unsqueeze(1)
    return (F.binary_cross_entropy_with_logits(logits, t, reduction="none") * pixel_w).sum() / pixel_w.sum().clamp_min(1)


#: Weights of the centre-vote loss's heatmap and offset terms against the particle term. On
#: touching discs of radius 10-13 and 5-7 px (tests/test_centres.py) 50 starved the particle
#: channel (its outlines 5-10 % off after 300 steps) where 5 gave both particles' areas within
#: 2 % after 600.
CENTRE_HEATMAP_WEIGHT = 5.0
CENTRE_OFFSET_WEIGHT = 1.0


def _centre_loss(logits: Any, target: Any) -> Any:
    """BCE of the particle channel, squared error of the sigmoid heatmap, and the smooth-L1 error
    of the offsets on particle pixels; NaN target pixels (padding) do not count.

    The particle channel is not class-weighted: weights that favour the rarer particle pixels
    move the 0.5 contour outwards (on the touching discs +4 to +25 % area), and here no boundary
    class pulls it back as in the three-class target.
    """
    import torch
    import torch.nn.functional as F

    valid = ~torch.isnan(target[:, 0])
    t = torch.nan_to_num(target)
    particle = t[:, 0]
    bce = (F.binary_cross_entropy_with_logits(logits[:, 0], particle, reduction="none") * valid).sum()
    bce = bce / valid.sum().clamp_min(1)
    heat = ((torch.sigmoid(logits[:, 1]) - t[:, 1]) ** 2 * valid).sum() / valid.sum().clamp_min(1)
    inside = (particle > 0.5) & valid
    offset = (F.smooth_l1_loss(logits[:, 2:4], t[:, 2:4], reduction="none", beta=0.1).sum(1) * inside).sum()
    offset = offset / inside.sum().clamp_min(1)
    return bce + CENTRE_HEATMAP_WEIGHT * heat + CENTRE_OFFSET_WEIGHT * offset


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


#: The curves of ``training.png``: losses on the left axis, validation IoU on the right.
TRAINING_PLOT = (LossPanel({"train_loss": "train loss", "val_loss": "val loss"}, ylabel="loss",
                           right={"val_iou": "val IoU"}, right_ylabel="foreground IoU", right_ylim=(0.0, 1.0)),)


# --------------------------------------------------------------------------- training


#: Settings that only change how a trained net is applied (post-processing, tiling, TTA), so
#: changing them must not restart a finished training run.
#: The segment keys that act after training (marked in the config): a change keeps the trained net.
INFERENCE_SETTINGS = SegmentConfig.inference_keys()


def training_fingerprint(pairs: list[Pair], config: SegmentConfig, pixel_size_nm: float | None,
                         extra: Sequence[Pair] = (), extra_fraction: float = 0.0,
                         init_from: str | Path | None = None) -> str:
    """Hash of what a training run learns from: the pairs' pixels and the training settings.

    A checkpoint is resumed only under the same fingerprint, so a folder reused for other data
    starts fresh instead of silently continuing another model; more ``steps`` still resume, and
    so does a change of the settings in :data:`INFERENCE_SETTINGS`. ``extra``,
    ``extra_fraction`` and the starting weights ``init_from`` (its bytes) count too.
    """
    settings = config.model_dump(mode="json", exclude={"steps", *INFERENCE_SETTINGS})
    header: list[Any] = [settings, pixel_size_nm]
    if extra or init_from is not None:  # a plain run's fingerprint does not depend on these
        header += [extra_fraction, Path(init_from) if init_from else None]
    return fingerprint("segment", header, [(pair.name, pair.image, pair.instances)
                                           + ((pair.target,) if pair.target is not None else ())
                                           for pair in [*pairs, *extra]])


#: Training images whose pixel sizes differ by more than this fraction are not at one scale.
_SAME_PIXEL_SIZE = 0.01


def pairs_pixel_size_nm(pairs: Sequence[Pair]) -> float | None:
    """The one pixel size of training pairs, for the model to store; None when none is known.

    Without it a model never resamples an image of another pixel size, and never warns.

    Raises
    ------
    NanosegError
        If the pairs' pixel sizes differ by more than 1 %: no one scale describes the model.
    """
    known = [(p.name, float(p.pixel_size_nm)) for p in pairs if p.pixel_size_nm is not None]
    if not known:
        logger.warning("segment: the training images have no pixel size, so the model stores none and will not "
                       "rescale images of another pixel size (give the pixel size with --pixel-size)")
        return None
    sizes = [size for _, size in known]
    if max(sizes) > min(sizes) * (1 + _SAME_PIXEL_SIZE):
        examples = ", ".join(f"{name} {size:g} nm" for name, size in
                             (known[int(np.argmin(sizes))], known[int(np.argmax(sizes))]))
        raise NanosegError(f"segment: the training images have different pixel sizes ({examples}); a model is "
                           "trained at one: resample them to one pixel size, train on each size separately, or "
                           "give --pixel-size to state the one to store")
    unknown = [p.name for p in pairs if p.pixel_size_nm is None]
    if unknown:
        logger.warning("segment: %d training image(s) have no pixel size (%s); taken to be at the others' %g nm",
                       len(unknown), ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else ""), sizes[0])
    return float(np.median(sizes))


def train(
    pairs: list[Pair],
    config: SegmentConfig,
    out_dir: str | Path,
    *,
    device: Any = "cpu",
    rng: np.random.Generator | None = None,
    pixel_size_nm: float | None = None,
    steps: int | None = None,
    extra: Sequence[Pair] = (),
    extra_fraction: float = 0.0,
    init_from: str | Path | None = None,
    input_scale: float = 1.0,
) -> Path:
    """Train the segmentation network; returns the path of ``out_dir/model.pt``.

    Writes ``checkpoint.pt`` (resume state, every ``config.val_every`` steps), ``best.pt`` (best
    validation IoU), ``history.json`` and ``training.png`` (loss/IoU curves) into ``out_dir``. If
    ``checkpoint.pt`` is there, training resumes from it.

    Parameters
    ----------
    pairs : list of Pair
    config : SegmentConfig
    out_dir : path-like
    device : torch.device or str
    rng : numpy Generator, optional
        Source of the validation split and the tiles.
    pixel_size_nm : float, optional
        Pixel size of the training images (stored in the model; inference rescales images with
        a different pixel size); default: the pairs' own (:attr:`Pair.pixel_size_nm`), when
        they have one.
    steps : int, optional
        Override of ``config.steps`` (tests, benchmarks).
    extra : sequence of Pair
        More training pairs, typically real micrographs with pseudo-labels (``Pair.target``
        with :data:`IGNORE` where nothing is learned); never used for validation.
    extra_fraction : float
        Share of the training tiles drawn from ``extra``.
    init_from : path, optional
        A saved model (same architecture) whose weights training starts from (fine-tuning).
    input_scale : float
        The factor by which the pairs' micrographs were resampled from the user's (the run's
        working grid, :mod:`nanoseg.grid`), recorded for images of unknown pixel size.
    """
    import torch


    if not pairs:
        raise NanosegError("segment: no training pairs")
    if pixel_size_nm is None:
        pixel_size_nm = pairs_pixel_size_nm(pairs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = rng if rng is not None else np.random.default_rng(0)
    total_steps = int(steps or config.steps)
    kind: TargetKind = config.target
    device = torch.device(device)

    order = rng.permutation(len(pairs))
    n_val = 0
    if config.val_fraction > 0 and len(pairs) >= 2:
        n_val = min(len(pairs) - 1, max(1, round(config.val_fraction * len(pairs))))
    val_pairs = [pairs[i] for i in order[:n_val]][:_MAX_VAL_PAIRS]
    train_pairs = [pairs[i] for i in order[n_val:]]
    train_targets = [_target_of(p, kind, config.boundary_width_px) for p in train_pairs]
    val_targets = [_target_of(p, kind, config.boundary_width_px) for p in val_pairs]
    extra = list(extra)
    extra_targets = [_target_of(p, kind, config.boundary_width_px) for p in extra]
    if extra and not 0.0 < extra_fraction < 1.0:
        raise NanosegError(f"segment: extra_fraction {extra_fraction} must be between 0 and 1 with extra pairs")
    # the centre-vote loss weighs no class (see _centre_loss)
    balance = config.class_balance and kind != "centres"
    weights_np = class_weights(train_targets, n_outputs(kind)) if balance else np.ones(max(n_outputs(kind), 2))
    weights = torch.tensor(weights_np, dtype=torch.float32, device=device)

    net = nets.create(config.architecture, in_channels=1, out_channels=n_outputs(kind),
                      base_width=config.base_width, depth=config.depth)
    if init_from is not None:
        start, _ = nets.load(init_from, device, kind="segmenter")
        if start.init_kwargs != net.init_kwargs:
            raise NanosegError(f"{init_from}: another network than segment's settings describe; cannot start from it")
        net.load_state_dict(start.state_dict())
    net.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_decay_every, gamma=config.lr_decay_factor)

    meta = {
        "config": config.model_dump(mode="json"),
        "target": kind,
        "pixel_size_nm": pixel_size_nm,
        "threshold": config.threshold if config.threshold != "auto" else 0.5,
        "class_weights": weights_np.tolist(),
        "train_pairs": [p.name for p in train_pairs],
        "val_pairs": [p.name for p in val_pairs],
    }
    if input_scale != 1.0:
        # the pairs were drawn on micrographs resampled by this factor (nanoseg.grid); with no
        # pixel size, applying the net resamples by it (to_model_scale)
        meta["input_scale"] = input_scale
    if extra:
        meta.update({"extra_pairs": [p.name for p in extra], "extra_fraction": extra_fraction,
                     "init_from": str(init_from) if init_from else None})
    step, history, best_score = 0, [], -np.inf
    ckpt_path = out_dir / "checkpoint.pt"
    fp = training_fingerprint(pairs, config, pixel_size_nm, extra, extra_fraction, init_from)
    state = load_checkpoint(ckpt_path, fp, what="segment", data="pairs", map_location=device)
    if state is not None:
        net.load_state_dict(state["nets"]["net"])
        optimizer.load_state_dict(state["optimizers"]["adam"])
        scheduler.load_state_dict(state["schedulers"]["step_lr"])
        step, history = state["step"], state["extra"]["history"]
        best_score = state["extra"]["best_score"]
        restore_rng(state, rng)
        logger.info("resuming segmentation training at step %d/%d", step, total_steps)

    running, n_running = 0.0, 0
    bar = progress(range(step, total_steps), total=total_steps, desc="segment train", initial=step)
    t0 = time.perf_counter()
    for step in bar:
        net.train()
        chosen = [(train_pairs[j].image, train_targets[j]) for j in rng.integers(0, len(train_pairs), config.batch_size)]
        if extra:  # replace a share of the tiles by extra ones
            use_extra = rng.random(config.batch_size) < extra_fraction
            picks = rng.integers(0, len(extra), config.batch_size)
            chosen = [(extra[k].image, extra_targets[k]) if u else c for c, u, k in zip(chosen, use_extra, picks)]
        tiles = [random_tile(image, target, config.tile_size_px, rng) for image, target in chosen]
        x = torch.from_numpy(np.stack([t[0] for t in tiles])[:, None]).to(device).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(np.stack([t[1] for t in tiles])).to(device)
        with autocast(device, config.bf16):
            logits = net(x)
        loss = segmentation_loss(logits, y, weights, kind)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        running += float(loss.detach())
        n_running += 1
        done = step + 1
        if done % config.val_every == 0 or done == total_steps:
            record = {"step": done, "train_loss": running / max(n_running, 1), "lr": scheduler.get_last_lr()[0],
                      "seconds": round(time.perf_counter() - t0, 1)}
            running, n_running = 0.0, 0
            if val_pairs:
                record.update(_validate(net, val_pairs, val_targets, weights, config, device))
            history.append(record)
            # The lowest held-out loss, not the highest foreground IoU: IoU is blind to the
            # interior/boundary split that separates touching particles (docs/defaults.md).
            score = -record["val_loss"] if "val_loss" in record else -np.inf
            logger.info("step %d/%d  train loss %.4f  val loss %s  val IoU %s", done, total_steps, record["train_loss"],
                        _fmt(record.get("val_loss")), _fmt(record.get("val_iou")))
            if not val_pairs or score > best_score:
                best_score = score
                nets.save(net, out_dir / "best.pt", meta={**meta, "step": done, "val_iou": record.get("val_iou"),
                                                          "val_loss": record.get("val_loss")}, kind="segmenter")
            save_checkpoint(ckpt_path, fingerprint=fp, step=done, nets={"net": net.state_dict()},
                            optimizers={"adam": optimizer.state_dict()}, schedulers={"step_lr": scheduler.state_dict()},
                            rng=rng, extra={"history": history, "best_score": float(best_score)})
            write_json(out_dir / "history.json", history)
            plot_losses(history, out_dir / "training.png", TRAINING_PLOT)

    best, best_meta = nets.load(out_dir / "best.pt", device, kind="segmenter")
    # The training settings are those of best.pt (the fingerprint says so); the inference settings
    # must be this call's: a training resumed after only they changed applies them from now on.
    best_meta["config"] = config.model_dump(mode="json")
    if config.threshold == "auto" and val_pairs:
        best_meta["threshold"] = choose_threshold(best, best_meta, val_pairs, config, device)
        logger.info("threshold chosen on %d validation pairs: %.2f", len(val_pairs), best_meta["threshold"])
    return nets.save(best, out_dir / "model.pt", meta=best_meta, kind="segmenter")


def _target_of(pair: Pair, kind: TargetKind, boundary_width_px: int) -> np.ndarray:
    return pair.target if pair.target is not None else make_target(pair.instances, kind, boundary_width_px)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _validate(net: Any, pairs: list[Pair], targets: list[np.ndarray], weights: Any, config: SegmentConfig, device: Any) -> dict[str, float]:
    import torch


    net.eval()
    losses, ious = [], []
    with torch.no_grad():
        for pair, target in zip(pairs, targets):
            x = torch.from_numpy(pair.image[None, None]).to(device).contiguous(memory_format=torch.channels_last)
            with autocast(device, config.bf16):
                logits = net(x)
            y = torch.from_numpy(target[None]).to(device)
            losses.append(float(segmentation_loss(logits, y, weights, config.target)))
            probs = probabilities_from_logits(logits.float(), config.target)[0].cpu().numpy()
            truth = target[0] > 0.5 if target.ndim == 3 else target > 0
            ious.append(_iou(foreground_mask(probs, config.target, 0.5), truth))
    return {"val_loss": float(np.mean(losses)), "val_iou": float(np.mean(ious))}


def choose_threshold(net: Any, meta: dict[str, Any], pairs: list[Pair], config: SegmentConfig, device: Any = "cpu") -> float:
    """Foreground threshold in 0.05-0.95 maximising the instance F1 at IoU 0.5 on ``pairs``."""
    probs = [predict_probabilities(net, p.image, meta["target"], device=device, bf16=config.bf16) for p in pairs]
    best_t, best_f1 = 0.5, -1.0
    for t in np.round(np.arange(0.05, 0.96, 0.05), 2):
        tp = fp = fn = 0
        for pr, pair in zip(probs, pairs):
            labels = instances_from_probabilities(pr, meta["target"], config, threshold=float(t))
            m = detection_scores(labels, pair.instances, 0.5)
            tp, fp, fn = tp + m["tp"], fp + m["fp"], fn + m["fn"]
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        if f1 > best_f1:
            best_t, best_f1 = float(t), f1
    return best_t


