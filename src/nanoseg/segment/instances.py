"""Split probability maps into particles: watershed from interior markers or the distance transform."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from nanoseg.config import SegmentConfig
from nanoseg.labels import relabel
from nanoseg.segment.data import INTERIOR, TargetKind, foreground_mask


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


def h_maxima_within(interior: np.ndarray, region: np.ndarray, h: float) -> np.ndarray:
    """``h_maxima(interior, h) & region``, reconstructed only around ``region``.

    The h-maxima come from a grey reconstruction of ``interior - h`` under ``interior``; a pixel
    of ``region`` only feels paths whose lowest value exceeds ``min(interior[region]) - h``. So
    each 8-connected component of the pixels above that floor is reconstructed on its own, in
    its bounding box with everything else set below the floor: the same pixels as over the
    whole image (checked on TiO2 probability maps), at the cost of the components' area
    instead of the image's (a tenth of the time on 1024 x 768 micrographs with 5 % particles).
    """
    from skimage.morphology import h_maxima

    # skimage.morphology.h_maxima has no maxima where h exceeds the image's range
    if not region.any() or h > np.ptp(interior):
        return np.zeros(region.shape, bool)
    floor = float(interior[region].min()) - h - 1e-6
    around, _ = ndi.label(interior > floor, structure=np.ones((3, 3)))
    out = np.zeros(region.shape, bool)
    for k, box in enumerate(ndi.find_objects(around), 1):
        inside = around[box] == k
        if not region[box][inside].any():
            continue
        # the frame keeps a crop's range above h, as the whole image's is
        crop = np.pad(np.where(inside, interior[box], floor - 1.0).astype(np.float64), 1, constant_values=floor - 1.0)
        out[box] |= h_maxima(crop, h)[1:-1, 1:-1].astype(bool) & inside
    return out & region


def expand_within(markers: np.ndarray, foreground: np.ndarray, distance: int) -> np.ndarray:
    """``expand_labels(markers, distance) * foreground``, computed around the foreground only.

    skimage's ``expand_labels`` takes the distance transform of the whole image; a foreground
    pixel within ``distance`` of a marker pixel has that pixel inside its component's bounding
    box grown by ``distance``, so each 8-connected foreground component is expanded in that box
    alone. The crops keep the markers' relative positions, so ties between equidistant markers
    are broken as on the whole image (checked on TiO2 probability maps).
    """
    from skimage.segmentation import expand_labels

    comps, _ = ndi.label(foreground, structure=np.ones((3, 3)))
    out = np.zeros_like(markers)
    h, w = markers.shape
    for k, box in enumerate(ndi.find_objects(comps), 1):
        r0, c0 = max(box[0].start - distance, 0), max(box[1].start - distance, 0)
        r1, c1 = min(box[0].stop + distance, h), min(box[1].stop + distance, w)
        near = markers[r0:r1, c0:c1]
        if not near.any():
            continue
        grown = expand_labels(near, distance=distance)[box[0].start - r0 : box[0].stop - r0,
                                                        box[1].start - c0 : box[1].stop - c0]
        inside = comps[box] == k
        out[box][inside] = grown[inside]
    return out


def interior_markers(interior: np.ndarray, foreground: np.ndarray, threshold: float, h: float) -> np.ndarray:
    """Watershed markers from the interior probability.

    Regions above ``threshold`` are split further at every regional maximum of the interior
    probability at least ``h`` high: a small particle whose interior the network sees only
    faintly, next to a big one, still gets its own marker instead of being merged.
    """
    from skimage.measure import label
    from skimage.segmentation import watershed

    region = (interior > threshold) & foreground
    if h > 0:
        seeds = label(h_maxima_within(interior, region, h), connectivity=2)
        markers = watershed(-interior, seeds, mask=region)
    else:
        markers = label(region, connectivity=1)
    return relabel(markers, 2).astype(np.int32)


def foreground_threshold(config: SegmentConfig, meta: dict[str, Any] | None = None) -> float:
    """The foreground threshold a segmentation uses: ``config.threshold``, or with 'auto' the one
    chosen on the validation pairs and saved in the model's ``meta`` (0.5 without one)."""
    if config.threshold != "auto":
        return float(config.threshold)
    return float((meta or {}).get("threshold", 0.5))


def instances_from_probabilities(
    probs: np.ndarray, target: TargetKind, config: SegmentConfig, *, threshold: float | None = None
) -> np.ndarray:
    """Split predicted probabilities into particle instances.

    Three-class: markers are regions of interior probability above ``marker_threshold``, split at
    interior-probability maxima of height ``marker_h`` (:func:`interior_markers`); the
    boundary band goes back to the nearest marker, either by growing each marker by at most
    ``boundary_width_px`` inside the foreground (``band_giveback='expand'``) or by a watershed
    over the whole foreground (``'watershed'``). Binary: a watershed on the Gaussian-smoothed
    distance transform from ``peak_local_max(min_distance_px)`` markers. Centres: each pixel
    joins the centre its offset votes for (:func:`instances_from_centres`; centres are where
    the votes gather, ``min_distance_px`` apart). Foreground blobs that got no
    marker become particles of their own; instances below ``min_size_px`` are removed.

    Parameters
    ----------
    probs : (C, H, W) array
        Output of :func:`predict_probabilities`.
    target : {'three_class', 'binary', 'centres'}
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
    from skimage.segmentation import watershed

    if threshold is None:
        threshold = foreground_threshold(config)
    foreground = foreground_mask(probs, target, threshold)
    if target == "three_class":
        markers = interior_markers(probs[INTERIOR], foreground, config.marker_threshold, config.marker_h)
        if config.band_giveback == "expand":
            labels = expand_within(markers, foreground, config.boundary_width_px)
        else:
            labels = watershed(-probs[INTERIOR], markers, mask=foreground)
    elif target == "centres":
        return instances_from_centres(foreground, probs[2:4], min_votes=max(1, config.min_size_px),
                                      min_distance_px=config.min_distance_px, min_size_px=config.min_size_px)
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


#: Centre votes are counted within a Gaussian of this sigma (px) around each pixel.
VOTE_SIGMA_PX = 2.0


def centre_votes(foreground: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Where the particle pixels' offsets point: per pixel, the votes landing near it (a count
    smoothed by a Gaussian of :data:`VOTE_SIGMA_PX`, scaled so that votes landing on one pixel
    count in full there)."""
    rows, cols = np.nonzero(foreground)
    h, w = foreground.shape
    r = np.clip(np.round(rows + offsets[0, rows, cols]).astype(int), 0, h - 1)
    c = np.clip(np.round(cols + offsets[1, rows, cols]).astype(int), 0, w - 1)
    votes = np.bincount(r * w + c, minlength=h * w).reshape(h, w).astype(np.float32)
    return ndi.gaussian_filter(votes, VOTE_SIGMA_PX) * np.float32(2 * np.pi * VOTE_SIGMA_PX**2)


def instances_from_centres(foreground: np.ndarray, offsets: np.ndarray, *, min_votes: float = 1.0,
                           min_distance_px: int = 2, min_size_px: int = 0) -> np.ndarray:
    """Particles from centre votes: each particle pixel joins the centre its offset points at.

    Every foreground pixel votes at its position plus its offset; centres are the maxima of the
    votes (:func:`centre_votes`) inside the foreground with at least ``min_votes``, at least
    ``min_distance_px`` apart. Each foreground pixel then joins the centre nearest to its vote
    within its own 8-connected foreground component, so a particle pressed against a larger one
    keeps the pixels that point at its own centre, however faint the contact line. A component
    with one centre or none becomes one particle.

    Parameters
    ----------
    foreground : (H, W) bool
    offsets : (2, H, W) float
        (rows, columns) from each pixel to its particle's centre, in px.
    min_votes : float
        :func:`nanoseg.segment.instances_from_probabilities` asks for ``min_size_px`` votes: a
        centre fewer pixels point at would make a particle too small to keep. On four TiO2
        micrographs strict F1 stayed at 0.73-0.74 from 10 to 50 votes (0.72 at 100).
    min_distance_px : int
    min_size_px : int
        Particles smaller than this are removed.

    Returns
    -------
    (H, W) label image (:func:`nanoseg.labels.relabel`)
    """
    from scipy.spatial import cKDTree
    from skimage.feature import peak_local_max

    foreground = np.asarray(foreground, bool)
    components, n = ndi.label(foreground, structure=np.ones((3, 3)))
    labels = np.zeros(foreground.shape, np.int64)
    if n == 0:
        return relabel(labels, min_size_px)
    evidence = np.where(foreground, centre_votes(foreground, offsets), 0)
    peaks = peak_local_max(evidence, min_distance=max(1, int(min_distance_px)), threshold_abs=min_votes,
                           exclude_border=False)
    next_label = 1
    peak_component = components[tuple(peaks.T)] if len(peaks) else np.zeros(0, int)
    for k, box in enumerate(ndi.find_objects(components), 1):
        inside = components[box] == k
        own = peaks[peak_component == k]
        if len(own) <= 1:
            labels[box][inside] = next_label
            next_label += 1
            continue
        rows, cols = np.nonzero(inside)
        rows, cols = rows + box[0].start, cols + box[1].start
        votes = np.stack([rows + offsets[0, rows, cols], cols + offsets[1, rows, cols]], 1)
        nearest = cKDTree(own).query(votes)[1]
        labels[rows, cols] = next_label + nearest
        next_label += len(own)
    return relabel(labels, min_size_px)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Labels found at another scale, brought onto a grid of ``shape`` with their sizes kept.

    Each particle covers, on the new grid, the pixels where the linear interpolation of the
    coarse "some particle" indicator is at least one half: the outline a particle's own
    indicator would give, so areas and Feret diameters keep their size in nm up to the new
    grid's pixel (a mask grown over the fine foreground would take in the boundary band and
    pixels no coarse particle had, a size bias of +5 to +15 %). Which particle a covered pixel
    belongs to is decided by the nearest coarse pixel, so touching particles keep their contact
    line; the particles keep their numbers (one too small for the new grid disappears).
    """
    from skimage.segmentation import expand_labels
    from skimage.transform import resize

    shape = (int(shape[0]), int(shape[1]))
    if labels.shape == shape:
        return labels
    factor = max(shape[0] / labels.shape[0], shape[1] / labels.shape[1])
    covered = resize((labels > 0).astype(np.float32), shape, order=1, anti_aliasing=False) >= 0.5
    nearest = resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False).astype(labels.dtype)
    # a covered pixel whose nearest coarse pixel is background lies within one coarse pixel of a particle
    grown = expand_labels(nearest, distance=math.ceil(factor) + 1)
    return np.where(covered, grown, 0).astype(labels.dtype, copy=False)
