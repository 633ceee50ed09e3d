"""Training samples of the keep/discard network: fake pairs, manual class masks, balanced tiles."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nanoseg.errors import NanosegError

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
    images_dir: str | Path, masks_dir: str | Path, classes_dir: str | Path, *, dark_particles: bool = False,
) -> list[Sample]:
    """Training samples from manual masks and keep/discard class masks.

    Files are matched by id: ``<images_dir>/<id>.tif``, ``<masks_dir>/<id>_m.tif`` (binary,
    touching particles separated) and ``<classes_dir>/<id>_cm.tif`` (white = kept particles).
    The class masks may be cropped at the bottom (the TiO2 set's are 704 rows of 768): every
    sample is cropped to the rows all three images have.

    Returns
    -------
    list of (image, binary, keep)
    """
    from nanoseg.io import list_images, read_mask, read_micrograph

    images_dir, masks_dir, classes_dir = Path(images_dir), Path(masks_dir), Path(classes_dir)
    samples = []
    for img_path in list_images(images_dir):
        stem = img_path.stem
        mask_path = _find(masks_dir, f"{stem}_m")
        class_path = _find(classes_dir, f"{stem}_cm")
        if mask_path is None or class_path is None:
            continue
        mg = read_micrograph(img_path, info_bar_rows=0)
        mask = read_mask(mask_path)
        keep = read_mask(class_path)
        if mask.shape[1] != mg.image.shape[1] or keep.shape[1] != mg.image.shape[1]:
            raise NanosegError(f"{class_path}: width differs from {img_path}; manual masks must match their micrograph")
        rows = min(mg.image.shape[0], mask.shape[0], keep.shape[0])
        image = mg.image[:rows]
        if dark_particles:
            image = 1.0 - image
        binary = mask[:rows]
        samples.append((image.astype(np.float32), binary.astype(np.uint8), (keep[:rows] & binary).astype(np.uint8)))
    if not samples:
        raise NanosegError(f"{classes_dir}: no <id>_cm class mask matches an image in {images_dir} and a mask "
                           f"<id>_m in {masks_dir}")
    return samples


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".tif", ".tiff", ".png"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def balanced_weights(samples: Sequence[Sample], n_bins: int = 8, *, by_contact: bool = False,
                     max_weight: float = 10.0) -> list[np.ndarray]:
    """Per-pixel loss weights under which a particle's size (and contact) says nothing about keep.

    In fake pairs, occlusion makes most small visible pieces fragments of covered particles, so
    a classifier learns "small means discard" and then drops real small particles that are
    whole (measured: keep recall 0.25 for the smallest fifth of the expert's particles against
    0.88 for the largest, workflow benchmark, quick, seed 0). Likewise most particles that touch
    another one are covered in the fakes, and the classifier learns "in contact means discard"
    (keep recall 0.80 for isolated particles against 0.60-0.64 for particles in contact, same
    run). Here the particles (4-connected components of the mask channel) are put into
    ``n_bins`` equal-count bins of area, each split in two by contact when ``by_contact``
    (another particle within 2 px), and within each cell the kept and the discarded pixels get
    equal total weight (each factor clipped to [1/max_weight, max_weight]); every cell keeps
    its total weight.

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
        touching = _touching(labels, n) if by_contact else np.zeros(n, bool)
        components.append((labels, np.asarray(area, float), np.asarray(kept, bool), touching))
    areas = np.concatenate([c[1] for c in components]) if components else np.zeros(0)
    edges = np.unique(np.quantile(areas, np.linspace(0, 1, n_bins + 1)[1:-1])) if areas.size else np.zeros(0)

    def cells(area: np.ndarray, touching: np.ndarray) -> np.ndarray:
        return 2 * np.searchsorted(edges, area, side="right") + touching

    kept_px = np.zeros(2 * (edges.size + 1))
    discarded_px = np.zeros_like(kept_px)
    for _, area, kept, touching in components:
        cell = cells(area, touching)
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
    for labels, area, kept, touching in components:
        cell = cells(area, touching)
        per_label = np.concatenate([[0.0], np.where(kept, factor_kept[cell], factor_discarded[cell])])
        weights.append(per_label[labels].astype(np.float32))
    return weights


def _touching(labels: np.ndarray, n: int, gap_px: int = 2) -> np.ndarray:
    """Per label 1..n: whether another label lies within ``gap_px`` (separation lines are 1 px)."""
    from scipy import ndimage as ndi

    if n == 0:
        return np.zeros(0, bool)
    size = 2 * gap_px + 1
    # A pixel sees two labels within the window when the window's max and min label differ.
    upper = ndi.maximum_filter(labels, size=size)
    lower = ndi.minimum_filter(np.where(labels > 0, labels, n + 1), size=size)
    meets = (labels > 0) & ((upper != labels) | (lower != labels))
    hit = np.zeros(n + 1, bool)
    hit[labels[meets]] = True
    return hit[1:]


def _zoomed(stack: np.ndarray, tile: int) -> np.ndarray:
    """``stack`` (image, binary, keep, weight) resized to ``tile`` x ``tile``.

    The mask is relabelled and its separation lines redrawn after resizing, since resampling
    a 1-px line between touching particles would merge them.
    """
    from scipy import ndimage as ndi
    from skimage.transform import resize

    from nanoseg.labels import separated_binary

    shape = (tile, tile)
    shrink = stack.shape[1] > tile
    image = resize(stack[0], shape, order=1, anti_aliasing=shrink, preserve_range=True)
    labels = resize(ndi.label(stack[1] > 0)[0], shape, order=0, anti_aliasing=False, preserve_range=True)
    binary = separated_binary(labels.astype(np.int32)) > 0
    rest = [resize(a, shape, order=0, anti_aliasing=False, preserve_range=True) for a in stack[2:]]
    return np.stack([image, binary, *(r * binary for r in rest)]).astype(np.float32)


def split_whole(binary: np.ndarray, keep: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cut a random ``fraction`` of the whole particles in two along a chord; the pieces are discarded.

    A segmentation net that over-splits cuts a whole particle with a 1-px line through its
    interior, and each piece looks, in the mask channel, like a particle partly covered by its
    neighbour. Fake pairs hold covered particles but never such pieces of a visible one, so a
    classifier trained on them alone keeps the pieces (measured: the failing seed of the
    workflow benchmark kept a D10 of min Feret 31 % below the expert's). The image shows what
    tells them apart: no edge, no bright rim along the cut.

    Parameters
    ----------
    binary, keep : (H, W) arrays
        Mask (1-px lines between touching particles) and keep target of one tile.
    fraction : float
        Chance that each whole particle (a 4-connected component kept by majority) is cut.
    rng : numpy Generator

    Returns
    -------
    binary, keep : (H, W) arrays
        Copies with the cut drawn as a 1-px background line and both pieces' keep target 0.
    """
    from scipy import ndimage as ndi

    if fraction <= 0:
        return binary, keep
    labels, n = ndi.label(binary > 0)
    if n == 0:
        return binary, keep
    binary, keep = binary.copy(), keep.copy()
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None or rng.random() >= fraction:
            continue
        inside = labels[box] == index
        if keep[box][inside].mean() <= 0.5:
            continue
        depth = ndi.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
        # through the interior, so that neither piece is a sliver of a few pixels
        rows, cols = np.nonzero(depth >= max(2.0, 0.3 * depth.max()))
        if rows.size == 0:
            continue
        pick = rng.integers(rows.size)
        angle = rng.uniform(0, np.pi)
        rr, cc = np.mgrid[:inside.shape[0], :inside.shape[1]]
        distance = (rr - rows[pick]) * np.cos(angle) - (cc - cols[pick]) * np.sin(angle)
        binary[box][inside & (np.abs(distance) <= 0.5)] = 0
        keep[box][inside] = 0
    return binary, keep


def sample_batch(
    samples: Sequence[Sample],
    tile_px: int,
    batch_size: int,
    rng: np.random.Generator,
    *,
    weights: Sequence[np.ndarray] | None = None,
    zoom_range: tuple[float, float] = (1.0, 1.0),
    fragment_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random tiles with flips, 90-degree rotations and (optionally) a random zoom.

    Parameters
    ----------
    samples : sequence of (image, binary, keep)
    tile_px, batch_size : int
    rng : numpy Generator
    weights : sequence of (H, W) float arrays, optional
        Loss weight per pixel of each sample (:func:`balanced_weights`); default 1 on
        particle pixels.
    zoom_range : (float, float)
        Each tile is magnified by a factor drawn log-uniformly from this range (below 1: the
        particles shrink), so that particle size in pixels stops being a cue.
    fragment_fraction : float
        Share of each tile's whole particles cut in two and labelled discard
        (:func:`split_whole`); 0 leaves the tiles as they are and draws nothing from ``rng``.

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
    lo, hi = zoom_range
    xs, ys, ws = [], [], []
    for _ in range(batch_size):
        k = rng.integers(len(samples))
        image, binary, keep = samples[k]
        weight = weights[k] if weights is not None else binary
        side = tile
        if hi > lo or lo != 1.0:
            zoom = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else lo
            side = int(min(round(tile / zoom), *image.shape))
        r = rng.integers(image.shape[0] - side + 1)
        c = rng.integers(image.shape[1] - side + 1)
        window = (slice(r, r + side), slice(c, c + side))
        tile_binary, tile_keep = binary[window], keep[window]
        if fragment_fraction > 0:
            tile_binary, tile_keep = split_whole(tile_binary, tile_keep, fragment_fraction, rng)
        stack = np.stack([image[window], tile_binary, tile_keep, weight[window]]).astype(np.float32)
        if side != tile:
            stack = _zoomed(stack, tile)
        stack = np.rot90(stack, k=int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            stack = stack[:, :, ::-1]
        xs.append(stack[:2])
        ys.append(stack[2:3])
        ws.append(stack[3:4] * (stack[1:2] > 0))
    x = np.ascontiguousarray(np.stack(xs))
    y = np.ascontiguousarray(np.stack(ys))
    return x, y, np.ascontiguousarray(np.stack(ws))
