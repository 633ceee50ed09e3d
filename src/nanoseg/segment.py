"""Stage 5: train a MultiResUNet/UNet on image/mask pairs, segment micrographs, split particles.

The network predicts either a three-class map (background / particle interior / boundary band,
derived from instance labels so that touching particles are separated by the band) or a plain
binary mask. Instances come from a watershed: grown from interior-probability markers for the
three-class target, or on the smoothed distance transform of the binary mask.

Public functions
----------------
- :func:`make_target`, :func:`load_pairs`: training data.
- :func:`train`: training with validation, best checkpoint, resume and a loss/IoU plot.
- :func:`predict_probabilities`, :func:`particle_probability`, :func:`instances_from_probabilities`,
  :func:`segment_image`, :func:`segment_micrographs`: inference on whole images of any size.
- :func:`export_onnx`, :func:`run_stage`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import ndimage as ndi

from nanoseg.atomic import atomic_path, write_json
from nanoseg.config import SegmentConfig
from nanoseg.errors import NanosegError
from nanoseg.labels import relabel, separated_binary, touching_lines
from nanoseg.plots import LossPanel, plot_losses

logger = logging.getLogger("nanoseg.segment")

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
IGNORE = 255  # target value of padded pixels: no loss there
TargetKind = Literal["three_class", "binary"]
_MAX_VAL_PAIRS = 8


@dataclass
class Pair:
    """One training pair: a micrograph (float32 in [0, 1]) and its instance labels (0 = background)."""

    image: np.ndarray
    instances: np.ndarray
    name: str


# --------------------------------------------------------------------------- targets


def _inner_depth(instances: np.ndarray) -> np.ndarray:
    """Distance in px of each particle pixel from its own particle's edge (1 on the edge)."""
    from skimage.segmentation import find_boundaries

    fg = instances > 0
    edge = find_boundaries(instances, connectivity=1, mode="inner") & fg
    depth = ndi.distance_transform_edt(fg & ~edge) + 1.0
    depth[~fg] = 0.0
    return depth


def make_target(
    instances: np.ndarray, kind: TargetKind = "three_class", boundary_width_px: int = 3
) -> np.ndarray:
    """Training target from an instance label image.

    Parameters
    ----------
    instances : (H, W) int array
        Instance labels, 0 = background. Touching particles may share an edge or be separated
        by a background line.
    kind : {'three_class', 'binary'}
        ``'three_class'``: 0 background, 1 particle interior, 2 boundary band (the outer
        ``boundary_width_px`` px of every particle plus the background lines between touching
        particles). ``'binary'``: 1 particle, 0 background, with a 1-px background line wherever
        two particles touch.
    boundary_width_px : int
        Width of the boundary band in px. Each particle keeps an interior of at least its inner
        half, so that small particles are never all band (they would lose their watershed marker
        and be merged into a neighbour).

    Returns
    -------
    (H, W) uint8 array
    """
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"instances must be 2-D, got shape {instances.shape}")
    fg = instances > 0
    if kind == "binary":
        return (separated_binary(instances) > 0).astype(np.uint8)
    if kind != "three_class":
        raise ValueError(f"unknown target kind {kind!r} (use 'three_class' or 'binary')")
    depth = _inner_depth(instances)
    labels = instances.astype(np.int64)
    n = int(labels.max(initial=0))
    max_depth = np.zeros(n + 1)
    if n:
        max_depth[1:] = ndi.maximum(depth, labels, index=np.arange(1, n + 1))
    # Band ends at boundary_width_px, or earlier for particles too small to keep a core.
    limit = np.minimum(float(boundary_width_px), np.maximum(1.0, np.floor(max_depth / 2.0)))
    band = fg & (depth <= limit[labels])
    target = np.zeros(instances.shape, np.uint8)
    target[fg] = INTERIOR
    target[band | touching_lines(instances)] = BOUNDARY
    return target


# --------------------------------------------------------------------------- pairs


def load_pairs(folder: str | Path, *, invert: bool = False, info_bar_rows: int | Literal["auto"] = "auto") -> list[Pair]:
    """Read training pairs from a folder.

    Understood layouts:

    - ``pair_*.npz`` files (stage ``pairs``: keys ``image`` and ``instances``), in the folder or
      its ``pairs/`` subfolder;
    - ``sem/<id>.<ext>`` with ``masks/<id>_m.<ext>`` (the BAM TiO2 layout);
    - ``images/<name>.<ext>`` with ``masks/<name>.<ext>`` or ``masks/<name>_m.<ext>``.

    Masks may be binary (0/255; 4-connected components become the instances, so touching
    particles must be separated by background lines) or instance label images. Images go
    through :func:`nanoseg.io.read_micrograph`, and the mask is cropped by the same info bar.

    Parameters
    ----------
    folder : path-like
    invert : bool
        Invert the images (dark particles on a bright background).
    info_bar_rows : int or 'auto'
        Passed to :func:`nanoseg.io.read_micrograph`.

    Returns
    -------
    list of Pair
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NanosegError(f"{folder}: training-pair folder not found")
    npz = sorted(folder.glob("pair_*.npz")) or sorted((folder / "pairs").glob("pair_*.npz"))
    if npz:
        pairs = [_load_npz_pair(p) for p in npz]
    else:
        pairs = _load_image_mask_pairs(folder, info_bar_rows)
    if not pairs:
        raise NanosegError(
            f"{folder}: no training pairs (expected pair_*.npz, or sem/ + masks/ or images/ + masks/ subfolders)"
        )
    if invert:
        for pair in pairs:
            pair.image = (1.0 - pair.image).astype(np.float32)
    return pairs


def _load_npz_pair(path: Path) -> Pair:
    try:
        with np.load(path) as data:
            image = np.asarray(data["image"], np.float32)
            instances = np.asarray(data["instances"]).astype(np.int32)
    except KeyError as exc:
        raise NanosegError(f"{path}: pair file lacks key {exc} (expected 'image' and 'instances')") from None
    except (OSError, ValueError) as exc:
        raise NanosegError(f"{path}: unreadable pair file ({exc}); regenerate it with `nanoseg translate pairs`") from None
    if image.shape != instances.shape or image.ndim != 2:
        raise NanosegError(f"{path}: image {image.shape} and instances {instances.shape} must be equal 2-D shapes")
    return Pair(image=image, instances=instances, name=path.stem)


def _load_image_mask_pairs(folder: Path, info_bar_rows: int | Literal["auto"]) -> list[Pair]:
    from skimage.measure import label

    from nanoseg import io

    image_dir = next((folder / d for d in ("sem", "images") if (folder / d).is_dir()), None)
    mask_dir = folder / "masks"
    if image_dir is None or not mask_dir.is_dir():
        return []
    masks = {p.stem: p for p in io.list_images(mask_dir)}
    pairs = []
    for path in io.list_images(image_dir):
        mask_path = masks.get(f"{path.stem}_m") or masks.get(path.stem)
        if mask_path is None:
            logger.warning("%s: no mask %s_m.* or %s.* in %s; skipped", path, path.stem, path.stem, mask_dir)
            continue
        micrograph = io.read_micrograph(path, pixel_size_nm=1.0, info_bar_rows=info_bar_rows)
        annotation = io.read_annotation(mask_path)
        if annotation.shape != micrograph.full_shape:
            raise NanosegError(f"{mask_path}: mask shape {annotation.shape} differs from image {path} "
                               f"{micrograph.full_shape}")
        annotation = annotation[: micrograph.image.shape[0]]
        # Binary masks hold instances as 4-connected components.
        instances = label(annotation, connectivity=1) if annotation.dtype == bool else annotation
        pairs.append(Pair(image=micrograph.image, instances=instances.astype(np.int32), name=path.stem))
    return pairs


# --------------------------------------------------------------------------- training helpers


def random_tile(pair_image: np.ndarray, target: np.ndarray, tile_px: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random training tile of an image and its target, augmented.

    Flips, 90-degree rotations and brightness/contrast/noise jitter; an image smaller than
    ``tile_px`` is padded and its target padded with :data:`IGNORE`.

    Returns
    -------
    image : (tile_px, tile_px) float32 in [0, 1]
    target : (tile_px, tile_px) array of the target's dtype
    """
    h, w = pair_image.shape
    th, tw = min(tile_px, h), min(tile_px, w)
    y = int(rng.integers(0, h - th + 1))
    x = int(rng.integers(0, w - tw + 1))
    img = pair_image[y : y + th, x : x + tw]
    tgt = target[y : y + th, x : x + tw]
    if th < tile_px or tw < tile_px:  # small pairs: pad, and let the loss ignore the padding
        pad = ((0, tile_px - th), (0, tile_px - tw))
        img = np.pad(img, pad, mode="reflect" if th > tile_px - th and tw > tile_px - tw else "edge")
        tgt = np.pad(tgt, pad, constant_values=IGNORE)
    k = int(rng.integers(0, 4))
    img, tgt = np.rot90(img, k), np.rot90(tgt, k)
    if rng.random() < 0.5:
        img, tgt = img[:, ::-1], tgt[:, ::-1]
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


def segmentation_loss(logits: Any, target: Any, weights: Any, kind: TargetKind, dice_weight: float) -> Any:
    """The training loss: class-weighted cross-entropy (three-class) or BCE (binary), plus soft Dice.

    Parameters
    ----------
    logits : torch.Tensor, (N, C, H, W)
    target : torch.Tensor, (N, H, W)
        :func:`make_target` values; :data:`IGNORE` pixels do not count.
    weights : torch.Tensor
        :func:`class_weights` (three-class: per class; binary: background, particle).
    kind : {'three_class', 'binary'}
    dice_weight : float
        Weight of the soft-Dice term (0: none).

    Returns
    -------
    torch.Tensor (scalar)
    """
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    valid = target != IGNORE
    if kind == "three_class":
        loss = F.cross_entropy(logits, target.long(), weight=weights, ignore_index=IGNORE)
        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(torch.where(valid, target, 0).long(), 3).permute(0, 3, 1, 2).float()
    else:
        t = torch.where(valid, target, 0).float().unsqueeze(1)
        # pos_weight balances particle vs background; weights = [w_bg, w_fg].
        pixel_w = torch.where(t > 0, weights[1], weights[0]) * valid.unsqueeze(1)
        loss = (F.binary_cross_entropy_with_logits(logits, t, reduction="none") * pixel_w).sum() / pixel_w.sum().clamp_min(1)
        probs = torch.sigmoid(logits)
        onehot = t
    if dice_weight > 0:
        m = valid.unsqueeze(1).float()
        inter = (probs * onehot * m).sum(dim=(0, 2, 3))
        denom = ((probs + onehot) * m).sum(dim=(0, 2, 3))
        loss = loss + dice_weight * (1.0 - ((2 * inter + 1) / (denom + 1)).mean())
    return loss


def _n_out(kind: TargetKind) -> int:
    return 3 if kind == "three_class" else 1


def _foreground(probs: np.ndarray, kind: TargetKind, threshold: float) -> np.ndarray:
    return (probs[INTERIOR] + probs[BOUNDARY] if kind == "three_class" else probs[0]) > threshold


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


#: The curves of ``training.png``: losses on the left axis, validation IoU on the right.
TRAINING_PLOT = (LossPanel({"train_loss": "train loss", "val_loss": "val loss"}, ylabel="loss",
                           right={"val_iou": "val IoU"}, right_ylabel="foreground IoU", right_ylim=(0.0, 1.0)),)


# --------------------------------------------------------------------------- training


#: Settings that only change how a trained net is applied (post-processing, tiling, TTA), so
#: changing them must not restart a finished training run.
INFERENCE_SETTINGS = frozenset({"threshold", "min_distance_px", "min_size_px", "band_giveback", "marker_threshold",
                                "marker_h", "smoothing_sigma_px", "inference_tile_px", "tile_overlap_px", "tta"})


def training_fingerprint(pairs: list[Pair], config: SegmentConfig, pixel_size_nm: float | None) -> str:
    """Hash of what a training run learns from: the pairs' pixels and the training settings.

    A checkpoint is resumed only under the same fingerprint, so a folder reused for other data
    starts fresh instead of silently continuing another model; more ``steps`` still resume, and
    so does a change of the settings in :data:`INFERENCE_SETTINGS`.
    """
    digest = hashlib.sha256()
    settings = config.model_dump(mode="json", exclude={"steps", *INFERENCE_SETTINGS})
    digest.update(json.dumps([settings, pixel_size_nm], sort_keys=True).encode())
    for pair in pairs:
        digest.update(pair.name.encode())
        for array in (pair.image, pair.instances):
            digest.update(str((array.shape, array.dtype.str)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def train(
    pairs: list[Pair],
    config: SegmentConfig,
    out_dir: str | Path,
    *,
    device: Any = "cpu",
    rng: np.random.Generator | None = None,
    pixel_size_nm: float | None = None,
    steps: int | None = None,
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
        a different pixel size).
    steps : int, optional
        Override of ``config.steps`` (tests, benchmarks).
    """
    import torch

    from nanoseg import nets
    from nanoseg.runtime import autocast, progress

    if not pairs:
        raise NanosegError("segment: no training pairs")
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
    train_targets = [make_target(p.instances, kind, config.boundary_width_px) for p in train_pairs]
    val_targets = [make_target(p.instances, kind, config.boundary_width_px) for p in val_pairs]
    weights_np = class_weights(train_targets, _n_out(kind)) if config.class_balance else np.ones(max(_n_out(kind), 2))
    weights = torch.tensor(weights_np, dtype=torch.float32, device=device)

    net = nets.create(config.architecture, in_channels=1, out_channels=_n_out(kind),
                      base_width=config.base_width, depth=config.depth)
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
    step, history, best_iou = 0, [], -1.0
    ckpt_path = out_dir / "checkpoint.pt"
    fingerprint = training_fingerprint(pairs, config, pixel_size_nm)
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        stored = state.get("fingerprint")
        if stored is not None and stored != fingerprint:
            logger.warning("segment: %s was trained on other pairs or settings; starting fresh (it will be "
                           "overwritten; use another output folder to keep it)", ckpt_path)
        elif state.get("kwargs") != net.init_kwargs or state.get("target") != kind:
            logger.warning("segment: %s holds another network; starting fresh", ckpt_path)
        else:
            if stored is None:  # written before checkpoints carried a fingerprint
                logger.warning("segment: %s cannot be checked against the data (old format); resuming it", ckpt_path)
            net.load_state_dict(state["net"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step, history, best_iou = state["step"], state["history"], state["best_iou"]
            rng.bit_generator.state = state["rng"]
            logger.info("resuming segmentation training at step %d/%d", step, total_steps)

    running, n_running = 0.0, 0
    bar = progress(range(step, total_steps), total=total_steps, desc="segment train", initial=step)
    t0 = time.perf_counter()
    for step in bar:
        net.train()
        tiles = [random_tile(train_pairs[j].image, train_targets[j], config.tile_size_px, rng)
                 for j in rng.integers(0, len(train_pairs), config.batch_size)]
        x = torch.from_numpy(np.stack([t[0] for t in tiles])[:, None]).to(device).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(np.stack([t[1] for t in tiles])).to(device)
        with autocast(device, config.bf16):
            logits = net(x)
        loss = segmentation_loss(logits, y, weights, kind, config.dice_weight)
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
            iou = record.get("val_iou", 0.0)
            logger.info("step %d/%d  train loss %.4f  val loss %s  val IoU %s", done, total_steps, record["train_loss"],
                        _fmt(record.get("val_loss")), _fmt(record.get("val_iou")))
            if not val_pairs or iou > best_iou:
                best_iou = iou
                nets.save(net, out_dir / "best.pt", meta={**meta, "step": done, "val_iou": iou})
            with atomic_path(ckpt_path) as tmp:
                torch.save({"kwargs": net.init_kwargs, "target": kind, "fingerprint": fingerprint, "net": net.state_dict(),
                            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "step": done, "history": history, "best_iou": best_iou,
                            "rng": rng.bit_generator.state}, tmp)
            write_json(out_dir / "history.json", history)
            plot_losses(history, out_dir / "training.png", TRAINING_PLOT)

    best, best_meta = nets.load(out_dir / "best.pt", device)
    if config.threshold == "auto" and val_pairs:
        best_meta["threshold"] = choose_threshold(best, best_meta, val_pairs, config, device)
        logger.info("threshold chosen on %d validation pairs: %.2f", len(val_pairs), best_meta["threshold"])
    return nets.save(best, out_dir / "model.pt", meta=best_meta)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _validate(net: Any, pairs: list[Pair], targets: list[np.ndarray], weights: Any, config: SegmentConfig, device: Any) -> dict[str, float]:
    import torch

    from nanoseg.runtime import autocast

    net.eval()
    losses, ious = [], []
    with torch.no_grad():
        for pair, target in zip(pairs, targets):
            x = torch.from_numpy(pair.image[None, None]).to(device).contiguous(memory_format=torch.channels_last)
            with autocast(device, config.bf16):
                logits = net(x)
            y = torch.from_numpy(target[None]).to(device)
            losses.append(float(segmentation_loss(logits, y, weights, config.target, config.dice_weight)))
            probs = _probabilities(logits.float(), config.target)[0].cpu().numpy()
            ious.append(_iou(_foreground(probs, config.target, 0.5), target > 0))
    return {"val_loss": float(np.mean(losses)), "val_iou": float(np.mean(ious))}


def choose_threshold(net: Any, meta: dict[str, Any], pairs: list[Pair], config: SegmentConfig, device: Any = "cpu") -> float:
    """Foreground threshold in 0.05-0.95 maximising the instance F1 at IoU 0.5 on ``pairs``."""
    from nanoseg.metrics import detection_scores

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


# --------------------------------------------------------------------------- inference


def particle_probability(probs: np.ndarray, target: TargetKind) -> np.ndarray:
    """Probability that a pixel belongs to any particle, from :func:`predict_probabilities`.

    For the three-class target this is one minus the background probability (interior and
    boundary band both belong to particles): the map the paper's metrics threshold.
    """
    return np.asarray(probs[0] if target == "binary" else 1.0 - probs[BACKGROUND], np.float32)


def _probabilities(logits: Any, kind: TargetKind) -> Any:
    import torch

    return torch.softmax(logits, dim=1) if kind == "three_class" else torch.sigmoid(logits)


def _blend_window(h: int, w: int, overlap_px: int) -> np.ndarray:
    """Weights rising linearly over ``overlap_px`` from each tile edge: seams blend smoothly."""

    def ramp(n: int) -> np.ndarray:
        r = np.ones(n, np.float32)
        k = min(overlap_px, n // 2)
        if k > 0:
            edge = (np.arange(k, dtype=np.float32) + 1) / (k + 1)
            r[:k] = edge
            r[n - k :] = edge[::-1]
        return r

    return np.outer(ramp(h), ramp(w))


def _tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    stride = max(1, tile - overlap)
    count = math.ceil((n - tile) / stride) + 1
    return sorted({min(i * stride, n - tile) for i in range(count)})


def predict_probabilities(
    net: Any,
    image: np.ndarray,
    target: TargetKind,
    *,
    device: Any = "cpu",
    bf16: bool = True,
    tile_px: int = 1024,
    overlap_px: int = 64,
    tta: bool = False,
) -> np.ndarray:
    """Class probabilities of a whole image of any size.

    Images with both sides <= ``tile_px`` go through the network in one piece; larger ones in
    overlapping ``tile_px`` tiles blended with linear ramps. With ``tta`` every piece goes
    through the network in its 8 flips and 90-degree rotations and the probabilities, turned
    back, are averaged: a particle's outline then does not depend on its orientation.

    Returns
    -------
    (C, H, W) float32 array
        Three-class: background, interior, boundary probabilities. Binary: the particle
        probability (C = 1).
    """
    import torch

    from nanoseg.runtime import autocast

    image = np.asarray(image, np.float32)
    h, w = image.shape
    net.eval()
    net.to(memory_format=torch.channels_last)

    def once(tile: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(tile)[None, None]).to(device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(device, bf16):
            logits = net(x)
        return _probabilities(logits.float(), target)[0].cpu().numpy()

    def run(tile: np.ndarray) -> np.ndarray:
        if not tta:
            return once(tile)
        total = np.zeros((_n_out(target), *tile.shape), np.float32)
        for k in range(4):
            for flip in (False, True):
                view = np.rot90(tile, k)
                probs = once(view[:, ::-1] if flip else view)
                total += np.rot90(probs[:, :, ::-1] if flip else probs, -k, axes=(1, 2))
        return total / 8.0

    if h <= tile_px and w <= tile_px:
        return run(image)
    n_out = _n_out(target)
    acc = np.zeros((n_out, h, w), np.float32)
    norm = np.zeros((h, w), np.float32)
    th, tw = min(tile_px, h), min(tile_px, w)
    window = _blend_window(th, tw, overlap_px)
    for y in _tile_starts(h, tile_px, overlap_px):
        for x in _tile_starts(w, tile_px, overlap_px):
            acc[:, y : y + th, x : x + tw] += run(image[y : y + th, x : x + tw]) * window
            norm[y : y + th, x : x + tw] += window
    return acc / norm


def _add_orphans(labels: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Give foreground blobs that no marker reached (and that touch no instance) their own label."""
    from skimage.measure import label

    orphans = label(foreground & (labels == 0), connectivity=1)
    if orphans.max() == 0:
        return labels
    near = ndi.binary_dilation(labels > 0)
    touching = np.unique(orphans[near & (orphans > 0)])
    keep = np.ones(orphans.max() + 1, bool)
    keep[0] = False
    keep[touching] = False
    orphans = np.where(keep[orphans], orphans + labels.max(), 0)
    return np.where(orphans > 0, orphans, labels)


def interior_markers(interior: np.ndarray, foreground: np.ndarray, threshold: float, h: float) -> np.ndarray:
    """Watershed markers from the interior probability.

    Regions above ``threshold`` are split further at every regional maximum of the interior
    probability at least ``h`` high: a small particle whose interior the network sees only
    faintly, next to a big one, still gets its own marker instead of being merged.
    """
    from skimage.measure import label
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    region = (interior > threshold) & foreground
    if h > 0:
        seeds = label(h_maxima(interior.astype(np.float64), h) & region, connectivity=2)
        markers = watershed(-interior, seeds, mask=region)
    else:
        markers = label(region, connectivity=1)
    return relabel(markers, 2).astype(np.int32)


def instances_from_probabilities(
    probs: np.ndarray, target: TargetKind, config: SegmentConfig, *, threshold: float | None = None
) -> np.ndarray:
    """Split predicted probabilities into particle instances.

    Three-class: markers are regions of interior probability above ``marker_threshold``, split at
    interior-probability maxima of height ``marker_h`` (:func:`interior_markers`); the
    boundary band goes back to the nearest marker, either by growing each marker by at most
    ``boundary_width_px`` inside the foreground (``band_giveback='expand'``) or by a watershed
    over the whole foreground (``'watershed'``). Binary: a watershed on the Gaussian-smoothed
    distance transform from ``peak_local_max(min_distance_px)`` markers. Foreground blobs that
    got no marker become particles of their own; instances below ``min_size_px`` are removed.

    Parameters
    ----------
    probs : (C, H, W) array
        Output of :func:`predict_probabilities`.
    target : {'three_class', 'binary'}
    config : SegmentConfig
        ``threshold``, ``boundary_width_px``, ``band_giveback``, ``marker_threshold``, ``marker_h``, ``min_distance_px``,
        ``smoothing_sigma_px``, ``min_size_px``.
    threshold : float, optional
        Foreground threshold; default ``config.threshold`` (0.5 when that is 'auto').

    Returns
    -------
    (H, W) uint16 or uint32 label image
    """
    from skimage.feature import peak_local_max
    from skimage.measure import label
    from skimage.segmentation import expand_labels, watershed

    if threshold is None:
        threshold = config.threshold if config.threshold != "auto" else 0.5
    foreground = _foreground(probs, target, threshold)
    if target == "three_class":
        markers = interior_markers(probs[INTERIOR], foreground, config.marker_threshold, config.marker_h)
        if config.band_giveback == "expand":
            labels = expand_labels(markers, distance=config.boundary_width_px) * foreground
        else:
            labels = watershed(-probs[INTERIOR], markers, mask=foreground)
    elif target == "binary":
        distance = ndi.distance_transform_edt(foreground)
        if config.smoothing_sigma_px > 0:
            distance = ndi.gaussian_filter(distance, config.smoothing_sigma_px)
        components = label(foreground, connectivity=1)
        peaks = peak_local_max(distance, min_distance=config.min_distance_px, labels=components, exclude_border=False)
        markers = np.zeros(foreground.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-distance, markers, mask=foreground)
    else:
        raise ValueError(f"unknown target kind {target!r}")
    return relabel(_add_orphans(labels, foreground), config.min_size_px)


def segment_image(
    net: Any,
    meta: dict[str, Any],
    image: np.ndarray,
    config: SegmentConfig,
    *,
    pixel_size_nm: float | None = None,
    device: Any = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels and probabilities of one image at its own size.

    If the image's and the model's training pixel sizes are both known and differ by more than
    5 %, the image is rescaled to the training pixel size for the network, the probabilities are
    split into particles at that scale (so every ``*_px`` post-processing setting means what it
    meant in training) and the labels and probabilities are resized back.

    Returns
    -------
    labels : (H, W) uint16/uint32
    probs : (C, H, W) float32
    """
    from skimage.transform import resize

    kind = meta["target"]
    train_px = meta.get("pixel_size_nm")
    scale = 1.0
    if pixel_size_nm and train_px and abs(pixel_size_nm / train_px - 1) > 0.05:
        scale = pixel_size_nm / train_px
    work = image
    if scale != 1.0:
        shape = (max(16, round(image.shape[0] * scale)), max(16, round(image.shape[1] * scale)))
        work = resize(image, shape, order=1, preserve_range=True, anti_aliasing=scale < 1).astype(np.float32)
    probs = predict_probabilities(net, work, kind, device=device, bf16=config.bf16,
                                  tile_px=config.inference_tile_px, overlap_px=config.tile_overlap_px, tta=config.tta)
    threshold = config.threshold if config.threshold != "auto" else float(meta.get("threshold", 0.5))
    labels = instances_from_probabilities(probs, kind, config, threshold=threshold)
    if scale == 1.0:
        return labels, probs
    probs = resize(probs, (probs.shape[0], *image.shape), order=1, preserve_range=True).astype(np.float32)
    return resize_labels(labels, _foreground(probs, kind, threshold)), probs


def resize_labels(labels: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Labels found at another scale, brought onto ``foreground``'s grid.

    Nearest-neighbour resizing alone would give staircase outlines when enlarging; instead each
    label is carried over by nearest neighbour, then grown over the full-resolution foreground
    by up to one coarse pixel, so outlines follow the fine probability map.
    """
    from skimage.segmentation import expand_labels
    from skimage.transform import resize

    factor = max(foreground.shape[0] / labels.shape[0], foreground.shape[1] / labels.shape[1])
    coarse = resize(labels, foreground.shape, order=0, preserve_range=True, anti_aliasing=False).astype(labels.dtype)
    grown = expand_labels(coarse, distance=math.ceil(factor) + 1)
    return relabel(np.where(foreground, grown, 0), 0)


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB uint8: the micrograph with tinted particles and yellow outlines."""
    from skimage.color import label2rgb
    from skimage.segmentation import find_boundaries

    rgb = label2rgb(labels, image=np.clip(image, 0, 1), alpha=0.2, bg_label=0, image_alpha=1.0)
    rgb[find_boundaries(labels, mode="inner")] = (1.0, 0.9, 0.0)
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def segment_micrographs(
    model_path: str | Path,
    micrographs: list[Any],
    out_dir: str | Path,
    config: SegmentConfig | None = None,
    *,
    device: Any = "cpu",
    probabilities: bool = False,
    failures: list[dict[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Segment micrographs and write ``labels/``, ``binary/`` and ``overlays/`` into ``out_dir``.

    Parameters
    ----------
    model_path : path-like
        A model written by :func:`train`.
    micrographs : list of nanoseg.io.Micrograph
    out_dir : path-like
    config : SegmentConfig, optional
        Post-processing settings; default: the config stored in the model.
    probabilities : bool
        Also write ``probabilities/<stem>.tif``: the particle probability
        (:func:`particle_probability`, float32), what ``nanoseg evaluate`` needs for the
        paper protocol and for Youden's index.
    failures : list, optional
        When given, an image that cannot be segmented (a :class:`NanosegError`) is left out with
        a warning and recorded here as ``{"image": path, "error": reason}``; without it, it raises.

    Returns
    -------
    list of dict
        Per image segmented: name, number of particles, seconds.
    """
    from nanoseg import io, nets
    from nanoseg.runtime import progress

    net, meta = nets.load(model_path, device)
    if config is None:
        config = SegmentConfig.model_validate(meta["config"])
    out_dir = Path(out_dir)
    summary = []
    for mg in progress(micrographs, total=len(micrographs), desc="segment"):
        t0 = time.perf_counter()
        try:
            labels, probs = segment_image(net, meta, mg.image, config, pixel_size_nm=mg.pixel_size_nm, device=device)
        except NanosegError as exc:
            io.skip_or_raise(failures, mg.path, exc)
            continue
        stem = Path(mg.path).stem
        if probabilities:
            io.write_tiff(out_dir / "probabilities" / f"{stem}.tif", particle_probability(probs, meta["target"]),
                          pixel_size_nm=mg.pixel_size_nm)
        io.write_tiff(out_dir / "labels" / f"{stem}.tif", labels, pixel_size_nm=mg.pixel_size_nm)
        io.write_tiff(out_dir / "binary" / f"{stem}.tif", separated_binary(labels), pixel_size_nm=mg.pixel_size_nm)
        io.write_png(out_dir / "overlays" / f"{stem}.png", overlay(mg.image, labels))
        seconds = time.perf_counter() - t0
        summary.append({"image": stem, "particles": int(labels.max()), "seconds": round(seconds, 2)})
        logger.info("%s: %d particles (%.1f s)", stem, labels.max(), seconds)
    if failures and not summary:
        raise io.nothing_usable(failures)
    return summary


# --------------------------------------------------------------------------- evaluation


# --------------------------------------------------------------------------- export


def export_onnx(model_path: str | Path, onnx_path: str | Path, opset: int = 18) -> Path:
    """Export a model to ONNX with input ``image`` (N, 1, H, W) and output ``probabilities``.

    Batch, height and width are dynamic (sides of at least the network's multiple,
    ``2**depth`` px); the graph includes the reflect padding to that multiple and the softmax
    (three-class) or sigmoid (binary).
    """
    import warnings

    import torch

    from nanoseg import nets

    net, meta = nets.load(model_path, "cpu")
    wrapper = _ProbabilityModule(net, meta["target"]).eval()
    multiple = net.multiple
    # Odd sides, so that the traced graph contains the padding.
    example = torch.rand(1, 1, 3 * multiple + 5, 4 * multiple + 3)
    onnx_path = Path(onnx_path)
    axes = {0: "batch", 2: "height", 3: "width"}
    with atomic_path(onnx_path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # The TorchScript exporter traces the padding arithmetic on dynamic sizes and
            # takes about a second; the dynamo exporter takes ~30 s for the same graph.
            torch.onnx.export(wrapper, (example,), str(tmp), dynamo=False, input_names=["image"],
                              output_names=["probabilities"], opset_version=opset,
                              dynamic_axes={"image": axes, "probabilities": axes})
        except Exception as exc:  # noqa: BLE001 - the legacy exporter may be gone in later torch
            logger.warning("segment export: the TorchScript ONNX exporter failed (%s); using the dynamo exporter (slower, same model)", exc)
            dims = {0: torch.export.Dim("batch", min=1, max=1024),
                    2: torch.export.Dim("height", min=multiple + 1, max=16384),
                    3: torch.export.Dim("width", min=multiple + 1, max=16384)}
            program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=["image"],
                                        output_names=["probabilities"], dynamic_shapes={"x": dims},
                                        opset_version=opset, verbose=False)
            program.save(str(tmp))
    return onnx_path


def _probability_module_class() -> type:
    import torch

    class ProbabilityModule(torch.nn.Module):
        def __init__(self, net: torch.nn.Module, target: str) -> None:
            super().__init__()
            self.net = net
            self.target = target

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = self.net(x)
            return torch.softmax(logits, dim=1) if self.target == "three_class" else torch.sigmoid(logits)

    return ProbabilityModule


def _ProbabilityModule(net: Any, target: str) -> Any:  # noqa: N802 - factory named like the class it builds
    return _probability_module_class()(net, target)


# --------------------------------------------------------------------------- stage


def run_stage(ctx: Any) -> None:
    """Stage 5: train on ``pairs/``, segment every micrograph, write labels/binary/overlays."""
    from nanoseg import io
    from nanoseg.runtime import seed_everything

    config = ctx.config
    out_dir = Path(ctx.out_dir)
    micrographs = io.load_micrographs(config.data)
    sizes = [m.pixel_size_nm for m in micrographs if m.pixel_size_nm]
    pixel_size_nm = float(np.median(sizes)) if sizes else None
    model_path = out_dir / "model.pt"
    if not model_path.is_file():  # an interrupted attempt may have finished training already
        pairs = load_pairs(ctx.stage_dir("pairs"))
        rng = seed_everything(config.seed)
        train(pairs, config.segment, out_dir, device=ctx.device, rng=rng, pixel_size_nm=pixel_size_nm)
    summary = segment_micrographs(model_path, micrographs, out_dir, config.segment, device=ctx.device)
    write_json(out_dir / "summary.json", {"images": summary, "pixel_size_nm": pixel_size_nm,
                                         "target": config.segment.target})
