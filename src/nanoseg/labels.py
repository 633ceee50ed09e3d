"""Label-image geometry: plain functions on instance label images and binary masks.

An instance label image is a 2-D integer array: 0 is background, every particle one positive
label. A binary mask is the foreground of such an image, with touching particles kept apart by
one-pixel background lines so that 4-connected labelling gives the particles back.

What belongs here: operations on label images and masks that several modules need and that
know nothing of files, configurations, networks or pipeline stages -- the separation lines
between touching particles and their inverse, labelling a binary mask, renumbering labels,
which particles touch the image border. Masks, segment, classify, metrics, render, translate,
evaluate and the demo data all take them from here, so each convention is written down once.
Per-particle measurements (sizes, Feret diameters) are in :mod:`nanoseg.particles`.

Separation lines
----------------
Where two different particles are 4-adjacent, a binary mask makes the pixel of one of them
background (:func:`separation_lines`, :func:`cut_touching`, :func:`separated_binary`). The
convention is ``gives_up="lower"``: the **lower label gives up its pixel**. Labels are stacking
order (higher labels lie on top: the fake masks, the renderer), so the particle on top stays
whole and the one underneath loses its edge. The fake masks, the segmenter's training targets
and output masks and the classifier's mask channel all follow it, and :func:`fill_seams` undoes
it (each line pixel goes back to the lowest label beside it).

``gives_up="upper"`` clears the higher label's pixel instead. It is kept for two callers whose
results must stay what they were: :mod:`nanoseg.metrics` (``labels_to_binary`` and
``thin_borders``, whose tie rule gives a gap's middle pixel to the higher label so that the
line lands where the ground truth's is; the recorded benchmark scores depend on the side) and
:func:`nanoseg.demo.separate_instances` (its ground truth cuts the upper particle). A label
image of 4-connected components has no touching labels, so there the two conventions agree.

:func:`touching_lines` is the other direction: the background pixels of a mask that already
*are* such lines (a background pixel with two different particles among its 4 neighbours).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage as ndi

GivesUp = Literal["lower", "upper"]

_FOUR = ndi.generate_binary_structure(2, 1)
_EIGHT = ndi.generate_binary_structure(2, 2)
_NONE = np.iinfo(np.int64).max


# --------------------------------------------------------------------------------------------
# Separation lines
# --------------------------------------------------------------------------------------------


def separation_lines(instances: np.ndarray, *, gives_up: GivesUp = "lower") -> np.ndarray:
    """Particle pixels that a binary mask gives to the background between touching particles.

    Parameters
    ----------
    instances : (H, W) int array
        Instance labels, 0 = background.
    gives_up : {'lower', 'upper'}
        Which of two 4-adjacent labels loses its pixel: ``'lower'`` (the project's convention,
        see the module docstring) or ``'upper'`` (metrics and demo ground truth only).

    Returns
    -------
    (H, W) bool array
        True on every pixel of a particle that is 4-adjacent to a particle with a higher
        (``'lower'``) or lower (``'upper'``) label. Clearing them leaves no two different
        labels 4-adjacent.
    """
    if gives_up not in ("lower", "upper"):
        raise ValueError(f"gives_up must be 'lower' or 'upper', got {gives_up!r}")
    labels = np.asarray(instances)
    if labels.ndim != 2:
        raise ValueError(f"instances must be 2-D, got shape {labels.shape}")
    lines = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        a = np.swapaxes(labels, 0, axis)
        out = np.swapaxes(lines, 0, axis)  # a view: writes land in ``lines``
        first, second = a[:-1], a[1:]
        touch = (first != second) & (first > 0) & (second > 0)
        first_cut = first < second if gives_up == "lower" else first > second
        out[:-1] |= touch & first_cut
        out[1:] |= touch & ~first_cut
    return lines


def cut_touching(instances: np.ndarray, *, gives_up: GivesUp = "lower") -> np.ndarray:
    """The label image with its :func:`separation_lines` set to background (same dtype)."""
    labels = np.array(instances, copy=True)
    labels[separation_lines(labels, gives_up=gives_up)] = 0
    return labels


def separated_binary(instances: np.ndarray, *, gives_up: GivesUp = "lower") -> np.ndarray:
    """Binary mask of a label image with 1-px background lines between touching particles.

    Parameters
    ----------
    instances : (H, W) int array
        Instance labels, 0 = background; touching particles may share an edge.
    gives_up : {'lower', 'upper'}
        See :func:`separation_lines`.

    Returns
    -------
    (H, W) uint8 array
        255 on particles, 0 on background and on the separation lines, as mask files store
        it (compare with ``> 0`` for a bool mask). 4-connected labelling of it gives one
        component per particle, unless a line cuts a particle in two.
    """
    labels = np.asarray(instances)
    keep = (labels > 0) & ~separation_lines(labels, gives_up=gives_up)
    return keep.astype(np.uint8) * np.uint8(255)


def _neighbour_range(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int64 labels, and per pixel the highest and the lowest particle label among itself and its
    4 neighbours (0 and ``_NONE`` where there is none; outside the image is background).

    Shifted maxima and minima, not ``ndimage`` rank filters: those pass integers through
    float64 at the image border, where a sentinel like the largest int64 wraps to the most
    negative one.
    """
    wide = labels.astype(np.int64)
    particle = np.where(wide > 0, wide, _NONE)
    highest, lowest = wide.copy(), particle.copy()
    head, tail, whole = slice(None, -1), slice(1, None), slice(None)
    # (pixels, their neighbours): from above, from below, from the left, from the right
    for dst, src in (((tail, whole), (head, whole)), ((head, whole), (tail, whole)),
                     ((whole, tail), (whole, head)), ((whole, head), (whole, tail))):
        np.maximum(highest[dst], wide[src], out=highest[dst])
        np.minimum(lowest[dst], particle[src], out=lowest[dst])
    return wide, highest, lowest


def touching_lines(instances: np.ndarray) -> np.ndarray:
    """Background pixels with two different particles among their 4 neighbours.

    These are the separation lines a mask already has (as opposed to :func:`separation_lines`,
    the particle pixels a mask *would* give up).

    Parameters
    ----------
    instances : (H, W) int array
        Instance labels, 0 = background.

    Returns
    -------
    (H, W) bool array
    """
    wide, highest, lowest = _neighbour_range(np.asarray(instances))
    return (wide == 0) & (lowest < highest)


def fill_seams(instances: np.ndarray) -> np.ndarray:
    """Give the 1-px separation lines between touching particles back to the particle underneath.

    Every :func:`touching_lines` pixel gets the lowest label among its 4 neighbours: the label
    that gave the pixel up under the ``'lower'`` convention of :func:`separation_lines`, so
    touching particles meet without a gap again. Other background pixels that touch two
    particles (a notch where two outlines meet) are filled the same way.

    Parameters
    ----------
    instances : (H, W) int array

    Returns
    -------
    (H, W) array of the input's dtype
    """
    labels = np.asarray(instances)
    if labels.size == 0 or labels.max(initial=0) == 0:
        return labels
    wide, highest, lowest = _neighbour_range(labels)
    seam = (wide == 0) & (lowest < highest)
    return np.where(seam, lowest, wide).astype(labels.dtype)


# --------------------------------------------------------------------------------------------
# Labelling and renumbering
# --------------------------------------------------------------------------------------------


def label_binary(binary: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Connected components of a binary mask.

    Parameters
    ----------
    binary : (H, W) bool array
    connectivity : {1, 2}
        1 = 4-connectivity (the masks' convention: touching particles are separated by a
        one-pixel line), 2 = 8-connectivity.

    Returns
    -------
    (H, W) int32 array
        Labels 1..n, 0 = background.
    """
    structure = _FOUR if connectivity == 1 else _EIGHT
    labels, _ = ndi.label(np.asarray(binary, dtype=bool), structure=structure)
    return labels


def consecutive_labels(labels: np.ndarray) -> np.ndarray:
    """The same particles numbered 1..n in the order of their labels, as int64 (0 stays background).

    bool masks become 0/1 and float images are truncated to integers. Without a background
    pixel, all labels are shifted up by one so that 0 still means background.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool or labels.size == 0:
        return labels.astype(np.int64)
    if labels.dtype.kind == "f":
        labels = labels.astype(np.int64)
    if labels.size and labels.min() >= 0 and labels.max() < 4 * labels.size + 1024:
        # a look-up table from bincount: linear time, no sort
        present = np.bincount(labels.ravel()) > 0
        present[0] = True
        lut = np.cumsum(present) - 1
        return lut[labels].astype(np.int64)
    values, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if values[0] != 0:  # no background pixel: shift so that label 0 stays "background"
        inverse = inverse + 1
    return inverse.astype(np.int64)


def relabel(labels: np.ndarray, min_size_px: int = 0) -> np.ndarray:
    """Drop particles smaller than ``min_size_px`` px, then number the rest 1..n in label order.

    Parameters
    ----------
    labels : (H, W) non-negative int array
    min_size_px : int
        Particles with fewer pixels become background; 0 keeps all.

    Returns
    -------
    (H, W) uint16 array (uint32 when there are 65535 particles or more)
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui" or (labels.size and labels.min() < 0):
        labels = consecutive_labels(labels)  # non-negative, in the same order
    # A look-up table applied in strips of rows, so that a large micrograph's labels are never
    # copied whole into int64 (numpy's index type).
    rows = np.atleast_1d(labels)
    n = int(rows.max(initial=0))
    step = max(1, (1 << 22) // max(1, rows.size // max(1, len(rows))))
    areas = np.zeros(n + 1, np.int64)
    for r0 in range(0, len(rows), step):
        areas += np.bincount(rows[r0 : r0 + step].ravel(), minlength=n + 1)
    keep = areas >= max(1, min_size_px)
    keep[0] = False
    count = int(keep.sum())
    lut = np.zeros(n + 1, np.uint16 if count < np.iinfo(np.uint16).max else np.uint32)
    lut[keep] = np.arange(1, count + 1)
    out = np.empty(rows.shape, lut.dtype)
    for r0 in range(0, len(rows), step):
        out[r0 : r0 + step] = lut[rows[r0 : r0 + step]]
    return out.reshape(labels.shape)


def border_labels(instances: np.ndarray) -> np.ndarray:
    """Sorted labels of the particles that touch the image border (a 1-D array)."""
    instances = np.asarray(instances)
    edges = np.concatenate([instances[0], instances[-1], instances[:, 0], instances[:, -1]])
    return np.unique(edges[edges != 0])
