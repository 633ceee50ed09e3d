"""Training data of the segmentation net: pairs and the targets made from their instance labels."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import ndimage as ndi

from nanoseg import io
from nanoseg.errors import NanosegError
from nanoseg.labels import separated_binary, touching_lines

logger = logging.getLogger("nanoseg.segment")

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
IGNORE = 255  # target value of padded pixels: no loss there
TargetKind = Literal["three_class", "binary", "centres"]
#: Channels of the centre-vote target and of the net's output for it: particle, centre heatmap,
#: offset rows and columns (divided by :data:`OFFSET_SCALE_PX` in the target and the logits).
CENTRE_CHANNELS = ("particle", "centre", "offset_rows", "offset_cols")


@dataclass
class Pair:
    """One training pair: a micrograph (float32 in [0, 1]) and its instance labels (0 = background).

    ``target``, when given, is the training target itself (as :func:`make_target` makes it, with
    :data:`IGNORE` where the loss should not look): pseudo-labels of real micrographs.
    ``pixel_size_nm`` is the micrograph's, where known (pairs read from image files).
    """

    image: np.ndarray
    instances: np.ndarray
    name: str
    target: np.ndarray | None = None
    pixel_size_nm: float | None = None


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
    kind : {'three_class', 'binary', 'centres'}
        ``'three_class'``: 0 background, 1 particle interior, 2 boundary band (the outer
        ``boundary_width_px`` px of every particle plus the background lines between touching
        particles). ``'binary'``: 1 particle, 0 background, with a 1-px background line wherever
        two particles touch. ``'centres'``: the four channels of :data:`CENTRE_CHANNELS`
        (:func:`centre_target`, offsets divided by :data:`OFFSET_SCALE_PX`).
    boundary_width_px : int
        Width of the boundary band in px. Each particle keeps an interior of at least its inner
        half, so that small particles are never all band (they would lose their watershed marker
        and be merged into a neighbour).

    Returns
    -------
    (H, W) uint8 array; (4, H, W) float32 for ``'centres'``
    """
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"instances must be 2-D, got shape {instances.shape}")
    fg = instances > 0
    if kind == "centres":
        t = centre_target(instances)
        return np.stack([t.foreground.astype(np.float32), t.heatmap, *(t.offsets / OFFSET_SCALE_PX)])
    if kind == "binary":
        return (separated_binary(instances) > 0).astype(np.uint8)
    if kind != "three_class":
        raise ValueError(f"unknown target kind {kind!r} (use 'three_class', 'binary' or 'centres')")
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


#: Offsets to the centre are given to the net divided by this (px): values of order one for
#: particles the size the defaults expect (the working grid's 32 px).
OFFSET_SCALE_PX = 32.0
#: Width of the centre heatmap's peak as a fraction of the particle's inscribed radius (at least 1 px).
CENTRE_SIGMA_FRACTION = 0.5


@dataclass
class CentreTarget:
    """Targets of the centre-vote representation (Panoptic-DeepLab's centre and offset heads,
    made for touching objects of any size): per pixel, the particle mask, a heatmap peaking at
    each particle's centre, and the vector from the pixel to its own particle's centre.
    Decoding finds the centres where the vectors point
    (:func:`nanoseg.segment.instances_from_centres`); the heatmap is an auxiliary output (the one
    a quick run's pairs taught stayed too flat to find centres by).

    The centre is the particle's innermost pixel (largest distance from its own edge, the edges
    shared with touching neighbours included), inside the particle even when it is occluded
    into a crescent, where a centroid may fall outside.
    """

    #: (H, W) bool: particle pixels.
    foreground: np.ndarray
    #: (H, W) float32 in [0, 1]: a Gaussian around each centre (sigma :data:`CENTRE_SIGMA_FRACTION`
    #: of the inscribed radius), the maximum where two overlap.
    heatmap: np.ndarray
    #: (2, H, W) float32: (rows, columns) from each particle pixel to its centre in px; 0 outside.
    offsets: np.ndarray
    #: (N, 2) int: the centres, in label order.
    centres: np.ndarray


def centre_target(instances: np.ndarray) -> CentreTarget:
    """The centre-vote targets of an instance label image (see :class:`CentreTarget`)."""
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"instances must be 2-D, got shape {instances.shape}")
    labels = instances.astype(np.int64)
    ids = np.unique(labels[labels > 0])
    shape = labels.shape
    heatmap = np.zeros(shape, np.float32)
    offsets = np.zeros((2, *shape), np.float32)
    if ids.size == 0:
        return CentreTarget(labels > 0, heatmap, offsets, np.zeros((0, 2), int))
    depth = _inner_depth(labels)
    centres = np.asarray(ndi.maximum_position(depth, labels, index=ids), int).reshape(-1, 2)
    radii = np.asarray(ndi.maximum(depth, labels, index=ids), float).reshape(-1)
    lookup = np.zeros(int(labels.max()) + 1, int)
    lookup[ids] = np.arange(ids.size)
    rows, cols = np.nonzero(labels > 0)
    own = lookup[labels[rows, cols]]
    offsets[0, rows, cols] = centres[own, 0] - rows
    offsets[1, rows, cols] = centres[own, 1] - cols
    for (r, c), radius in zip(centres, radii):
        sigma = max(1.0, CENTRE_SIGMA_FRACTION * radius)
        half = int(np.ceil(3 * sigma))
        r0, r1, c0, c1 = max(r - half, 0), min(r + half + 1, shape[0]), max(c - half, 0), min(c + half + 1, shape[1])
        yy, xx = np.ogrid[r0 - r: r1 - r, c0 - c: c1 - c]
        np.maximum(heatmap[r0:r1, c0:c1], np.exp(-(yy**2 + xx**2) / (2 * sigma**2)).astype(np.float32),
                   out=heatmap[r0:r1, c0:c1])
    return CentreTarget(labels > 0, heatmap, offsets, centres)


# --------------------------------------------------------------------------- pairs


def load_pairs(folder: str | Path, *, invert: bool = False, info_bar_rows: int | Literal["auto"] = "auto",
               pixel_size_nm: float | None = None) -> list[Pair]:
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
    pixel_size_nm : float, optional
        Override of the images' pixel size (passed to :func:`nanoseg.io.read_micrograph`);
        default: each image's metadata, kept in :attr:`Pair.pixel_size_nm`.

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
        pairs = _load_image_mask_pairs(folder, info_bar_rows, pixel_size_nm)
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


def _load_image_mask_pairs(folder: Path, info_bar_rows: int | Literal["auto"], pixel_size_nm: float | None
                           ) -> list[Pair]:
    from skimage.measure import label


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
        micrograph = io.read_micrograph(path, pixel_size_nm=pixel_size_nm, info_bar_rows=info_bar_rows)
        annotation = io.read_annotation(mask_path)
        if annotation.shape != micrograph.full_shape:
            raise NanosegError(f"{mask_path}: mask shape {annotation.shape} differs from image {path} "
                               f"{micrograph.full_shape}")
        annotation = annotation[: micrograph.image.shape[0]]
        # Binary masks hold instances as 4-connected components.
        instances = label(annotation, connectivity=1) if annotation.dtype == bool else annotation
        pairs.append(Pair(image=micrograph.image, instances=instances.astype(np.int32), name=path.stem,
                          pixel_size_nm=micrograph.pixel_size_nm))
    return pairs


def n_outputs(kind: TargetKind) -> int:
    """Output channels of the net for a target kind."""
    return {"three_class": 3, "binary": 1, "centres": len(CENTRE_CHANNELS)}[kind]


def foreground_mask(probs: np.ndarray, kind: TargetKind, threshold: float) -> np.ndarray:
    """Particle pixels of a probability map (C, H, W) at ``threshold``."""
    return (probs[INTERIOR] + probs[BOUNDARY] if kind == "three_class" else probs[0]) > threshold


def probabilities_from_logits(logits: Any, kind: TargetKind) -> Any:
    """The net's logits (torch, (N, C, H, W)) as :func:`nanoseg.segment.predict_probabilities`
    gives them: class probabilities, or for the centre-vote target the particle and centre
    probabilities and the offsets in px."""
    import torch

    if kind == "three_class":
        return torch.softmax(logits, dim=1)
    if kind == "centres":
        return torch.cat([torch.sigmoid(logits[:, :2]), logits[:, 2:] * OFFSET_SCALE_PX], dim=1)
    return torch.sigmoid(logits)


def dihedral(array: np.ndarray, k: int, flip: bool, vectors: bool = False) -> np.ndarray:
    """``array`` (H, W) or (C, H, W) turned ``k`` quarter turns counter-clockwise (``np.rot90``),
    then mirrored left-right if ``flip``. With ``vectors`` the last two channels are (rows,
    columns) displacements and turn with the image, so that they still point where they did."""
    axes = (0, 1) if array.ndim == 2 else (1, 2)
    out = np.rot90(array, k, axes=axes)
    if vectors:
        out = out.copy()
        for _ in range(k % 4):  # a quarter turn takes (rows, columns) to (-columns, rows)
            out[-2], out[-1] = -out[-1], out[-2].copy()
    if flip:
        out = out[..., ::-1]
        if vectors:
            out = out.copy()
            out[-1] = -out[-1]
    return out


def undo_dihedral(array: np.ndarray, k: int, flip: bool, vectors: bool = False) -> np.ndarray:
    """The inverse of :func:`dihedral` with the same ``k`` and ``flip``."""
    if flip:
        array = dihedral(array, 0, True, vectors)
    return dihedral(array, -k % 4, False, vectors)
