"""Training samples of the keep/discard network: fake pairs, manual class masks, balanced tiles."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nanoseg.errors import NanosegError
from nanoseg.io import DARK_BRIGHT_FRACTION, bright_fraction, list_images, read_mask, read_micrograph
from nanoseg.particles import label_file

#: One training sample: micrograph (float32 [0, 1]), binary mask (uint8 0/1), keep target (uint8 0/1).
Sample = tuple[np.ndarray, np.ndarray, np.ndarray]


def load_pair_samples(pairs_dir: str | Path) -> list[Sample]:
    """Training samples from the fake pairs (``pair_*.npz`` with ``image``, ``binary``, ``whole``).

    Raises
    ------
    NanosegError
        If the folder holds no pair or a pair lacks a key.
    """
    pairs_dir = Path(pairs_dir)
    files = sorted(pairs_dir.glob("pair_*.npz"))
    if not files:
        raise NanosegError(f"{pairs_dir}: no pair_*.npz training pairs (run the pairs stage: `nanoseg run ... --to pairs`)")
    samples = []
    for path in files:
        with np.load(path) as data:
            missing = [k for k in ("image", "binary", "whole") if k not in data]
            if missing:
                raise NanosegError(f"{path}: missing key(s) {', '.join(missing)} (regenerate with `nanoseg run ... --from pairs`)")
            binary = (data["binary"] > 0).astype(np.uint8)
            samples.append((data["image"].astype(np.float32), binary, ((data["whole"] > 0) & (binary > 0)).astype(np.uint8)))
    return samples


def load_manual_samples(
    images_dir: str | Path, masks_dir: str | Path, classes_dir: str | Path, *, dark_particles: bool | str = False,
) -> list[Sample]:
    """Training samples from manual masks and keep/discard class masks.

    Files are matched by id: ``<images_dir>/<id>.tif``, ``<masks_dir>/<id>_m.tif`` (binary,
    touching particles separated) and ``<classes_dir>/<id>_cm.tif`` (white = kept particles).
    The class masks may be cropped at the bottom (the TiO2 set's are 704 rows of 768): every
    sample is cropped to the rows all three images have. ``dark_particles`` True inverts every
    image, 'auto' those whose particles look dark (:func:`nanoseg.io.bright_fraction`).

    Returns
    -------
    list of (image, binary, keep)
    """
    images_dir, masks_dir, classes_dir = Path(images_dir), Path(masks_dir), Path(classes_dir)
    samples = []
    for img_path in list_images(images_dir):
        stem = img_path.stem
        mask_path = label_file(masks_dir, f"{stem}_m")
        class_path = label_file(classes_dir, f"{stem}_cm")
        if mask_path is None or class_path is None:
            continue
        mg = read_micrograph(img_path, info_bar_rows=0)
        mask = read_mask(mask_path)
        keep = read_mask(class_path)
        if mask.shape[1] != mg.image.shape[1] or keep.shape[1] != mg.image.shape[1]:
            raise NanosegError(f"{class_path}: width differs from {img_path}; manual masks must match their micrograph")
        rows = min(mg.image.shape[0], mask.shape[0], keep.shape[0])
        image = mg.image[:rows]
        if dark_particles is True or (dark_particles == "auto" and bright_fraction(image) > DARK_BRIGHT_FRACTION):
            image = 1.0 - image
        binary = mask[:rows]
        samples.append((image.astype(np.float32), binary.astype(np.uint8), (keep[:rows] & binary).astype(np.uint8)))
    if not samples:
        raise NanosegError(f"{classes_dir}: no <id>_cm class mask matches an image in {images_dir} and a mask "
                           f"<id>_m in {masks_dir}")
    return samples


def balanced_weights(samples: Sequence[Sample], n_bins: int = 8, *, max_weight: float = 10.0) -> list[np.ndarray]:
    """Per-pixel loss weights under which a particle's size says nothing about keep.

    In fake pairs, occlusion makes most small visible pieces fragments of covered particles, so
    a classifier learns "small means discard" and then drops real small particles that are
    whole (measured: keep recall 0.25 for the smallest fifth of the expert's particles against
    0.88 for the largest, workflow benchmark, quick, seed 0). Here the particles (4-connected
    components of the mask channel) are put into ``n_bins`` equal-count bins of area, and within
    each bin the kept and the discarded pixels get equal total weight (each factor clipped to
    [1/max_weight, max_weight]); every bin keeps its total weight.

    Returns
    -------
    list of (H, W) float32 arrays
        Weight per pixel of each sample, 0 off the particles.
    """
    from scipy import ndimage as ndi

    components = []
    for _, binary, keep in samples:
        labels, n = ndi.label(binary > 0)
        index = np.arange(1, n + 1)
        area = ndi.sum_labels(np.ones_like(labels), labels, index) if n else np.zeros(0)
        kept = ndi.mean(keep > 0, labels, index) > 0.5 if n else np.zeros(0, bool)
        components.append((labels, np.asarray(area, float), np.asarray(kept, bool)))
    areas = np.concatenate([c[1] for c in components]) if components else np.zeros(0)
    edges = np.unique(np.quantile(areas, np.linspace(0, 1, n_bins + 1)[1:-1])) if areas.size else np.zeros(0)

    def bins(area: np.ndarray) -> np.ndarray:
        return np.searchsorted(edges, area, side="right")

    kept_px = np.zeros(edges.size + 1)
    discarded_px = np.zeros_like(kept_px)
    for _, area, kept in components:
        cell = bins(area)
        np.add.at(kept_px, cell[kept], area[kept])
        np.add.at(discarded_px, cell[~kept], area[~kept])
    total = kept_px + discarded_px
    with np.errstate(divide="ignore", invalid="ignore"):
        factor_kept = np.where(kept_px > 0, 0.5 * total / kept_px, 1.0)
        factor_discarded = np.where(discarded_px > 0, 0.5 * total / discarded_px, 1.0)
    one_class = (kept_px == 0) | (discarded_px == 0)
    factor_kept[one_class] = factor_discarded[one_class] = 1.0
    factor_kept = np.clip(factor_kept, 1 / max_weight, max_weight)
    factor_discarded = np.clip(factor_discarded, 1 / max_weight, max_weight)
    weights = []
    for labels, area, kept in components:
        cell = bins(area)
        per_label = np.concatenate([[0.0], np.where(kept, factor_kept[cell], factor_discarded[cell])])
        weights.append(per_label[labels].astype(np.float32))
    return weights


def sample_batch(
    samples: Sequence[Sample],
    tile_px: int,
    batch_size: int,
    rng: np.random.Generator,
    *,
    weights: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random tiles with flips and 90-degree rotations.

    Parameters
    ----------
    samples : sequence of (image, binary, keep)
    tile_px, batch_size : int
    rng : numpy Generator
    weights : sequence of (H, W) float arrays, optional
        Loss weight per pixel of each sample (:func:`balanced_weights`); default 1 on
        particle pixels.

    Returns
    -------
    x : (B, 2, T, T) float32
        Micrograph and binary mask channels.
    y : (B, 1, T, T) float32
        Keep target.
    weight : (B, 1, T, T) float32
        Loss weight: 0 off the particles, so only particle pixels enter the instance score.
    """
    tile = min(tile_px, *(min(s[0].shape) for s in samples))
    xs, ys, ws = [], [], []
    for _ in range(batch_size):
        k = rng.integers(len(samples))
        image, binary, keep = samples[k]
        weight = weights[k] if weights is not None else binary
        r = rng.integers(image.shape[0] - tile + 1)
        c = rng.integers(image.shape[1] - tile + 1)
        window = (slice(r, r + tile), slice(c, c + tile))
        stack = np.stack([image[window], binary[window], keep[window], weight[window]]).astype(np.float32)
        stack = np.rot90(stack, k=int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            stack = stack[:, :, ::-1]
        xs.append(stack[:2])
        ys.append(stack[2:3])
        ws.append(stack[3:4] * (stack[1:2] > 0))
    x = np.ascontiguousarray(np.stack(xs))
    y = np.ascontiguousarray(np.stack(ys))
    return x, y, np.ascontiguousarray(np.stack(ws))
