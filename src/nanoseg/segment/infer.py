"""Inference on whole micrographs of any size: tiled probabilities, TTA, labels and overlays."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg import io, nets
from nanoseg.config import SegmentConfig, segment_settings
from nanoseg.errors import NanosegError
from nanoseg.labels import relabel, separated_binary
from nanoseg.particles import to_other_grid
from nanoseg.plots import in_row_strips
from nanoseg.runtime import autocast, progress
from nanoseg.segment.data import (
    BACKGROUND,
    TargetKind,
    dihedral,
    n_outputs,
    probabilities_from_logits,
    undo_dihedral,
)
from nanoseg.segment.export import OnnxModel
from nanoseg.segment.instances import foreground_threshold, instances_from_probabilities, resize_labels

logger = logging.getLogger("nanoseg.segment")


def particle_probability(probs: np.ndarray, target: TargetKind) -> np.ndarray:
    """Probability that a pixel belongs to any particle, from :func:`predict_probabilities`.

    For the three-class target this is one minus the background probability (interior and
    boundary band both belong to particles): the map the paper's metrics threshold.
    """
    return np.asarray(1.0 - probs[BACKGROUND] if target == "three_class" else probs[0], np.float32)


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


def load_segmenter(path: str | Path, device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """A segmentation model and its meta: a nanoseg ``.pt`` file, or an ``.onnx`` file that
    ``nanoseg segment export`` wrote (run by ONNX Runtime on the CPU)."""
    if Path(path).suffix.lower() == ".onnx":
        from nanoseg.segment.export import load_onnx

        return load_onnx(path)
    return nets.load(path, device, kind="segmenter")


def segmenter_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a segmentation model (:func:`load_segmenter`), without loading its weights."""
    if Path(path).suffix.lower() == ".onnx":
        return load_segmenter(path)[1]
    return nets.load_meta(path, kind="segmenter")


def _net_runner(net: Any, target: TargetKind, device: Any, bf16: bool) -> Any:
    """A function: one (H, W) float32 piece -> its (C, H, W) class probabilities."""
    if isinstance(net, OnnxModel):
        return net.probabilities
    import torch


    net.eval()
    net.to(memory_format=torch.channels_last)

    def once(tile: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(tile)[None, None]).to(device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(device, bf16):
            logits = net(x)
        return probabilities_from_logits(logits.float(), target)[0].cpu().numpy()

    return once


def _dihedral_views(once: Any, tile: np.ndarray, vectors: bool = False) -> list[np.ndarray]:
    """Probabilities of the 8 flips and 90-degree rotations of ``tile``, each turned back (with
    ``vectors``, the centre-vote offsets in the last two channels too)."""
    return [undo_dihedral(once(dihedral(tile, k, flip)), k, flip, vectors)
            for k in range(4) for flip in (False, True)]


def _tiled(run: Any, image: np.ndarray, n_channels: int, tile_px: int, overlap_px: int) -> np.ndarray:
    """``run`` (piece -> (n_channels, h, w)) over a whole image, in overlapping blended tiles if large."""
    h, w = image.shape
    if h <= tile_px and w <= tile_px:
        return run(image)
    acc = np.zeros((n_channels, h, w), np.float32)
    norm = np.zeros((h, w), np.float32)
    th, tw = min(tile_px, h), min(tile_px, w)
    window = _blend_window(th, tw, overlap_px)
    for y in _tile_starts(h, tile_px, overlap_px):
        for x in _tile_starts(w, tile_px, overlap_px):
            acc[:, y : y + th, x : x + tw] += run(image[y : y + th, x : x + tw]) * window
            norm[y : y + th, x : x + tw] += window
    return acc / norm


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
        probability (C = 1). Centres: particle and centre probabilities, then the offsets to the
        centre in px (rows, columns).
    """
    once = _net_runner(net, target, device, bf16)

    def run(tile: np.ndarray) -> np.ndarray:
        return np.mean(_dihedral_views(once, tile, target == "centres"), axis=0) if tta else once(tile)

    return _tiled(run, np.asarray(image, np.float32), n_outputs(target), tile_px, overlap_px)


def predict_with_agreement(
    net: Any,
    image: np.ndarray,
    target: TargetKind,
    *,
    device: Any = "cpu",
    bf16: bool = True,
    tile_px: int = 1024,
    overlap_px: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Test-time-augmented probabilities and how much the 8 views agree, per pixel.

    Returns
    -------
    probs : (C, H, W) float32
        As :func:`predict_probabilities` with ``tta=True``.
    agreement : (H, W) float32 in [0.5, 1] (binary) or [1/3, 1] (three-class)
        Share of the views whose most probable class is the most common one: 1 where every
        orientation of the image gives the same answer.
    """
    once = _net_runner(net, target, device, bf16)
    n_out = n_outputs(target)

    def run(tile: np.ndarray) -> np.ndarray:
        views = np.stack(_dihedral_views(once, tile, target == "centres"))
        if target != "three_class":  # the particle channel's two classes
            votes = (views[:, 0] > 0.5).mean(axis=0)
            share = np.maximum(votes, 1.0 - votes)
        else:
            winners = views.argmax(axis=1)
            share = np.max([(winners == c).mean(axis=0) for c in range(n_out)], axis=0)
        return np.concatenate([views.mean(axis=0), share[None].astype(np.float32)])

    out = _tiled(run, np.asarray(image, np.float32), n_out + 1, tile_px, overlap_px)
    return out[:n_out], out[n_out]


#: Pixel sizes closer than this (relative) to the model's are taken as the model's: no resampling.
SAME_SCALE = 0.01
#: The most an image is resampled to reach the model's pixel size, either way: beyond it the pixel
#: size is wrong (a unit typo, a print resolution) or the model was trained for other particles.
MAX_RESAMPLING = 8.0


def to_model_scale(image: np.ndarray, pixel_size_nm: float | None, meta: dict[str, Any]) -> tuple[np.ndarray, float]:
    """``image`` resampled to the pixel size the model was trained at, and the factor used.

    Unchanged (factor 1) when the pixel sizes differ by at most :data:`SAME_SCALE`, or when
    either is unknown: then a model that learned on resampled micrographs of unknown pixel size
    (its ``input_scale``, the run's working grid: :mod:`nanoseg.grid`) resamples by that factor,
    taking the image to be at the magnification of those micrographs.

    Raises
    ------
    NanosegError
        If reaching the model's pixel size takes more than :data:`MAX_RESAMPLING` times.
    """
    train_px = meta.get("pixel_size_nm")
    if pixel_size_nm and train_px:
        scale = pixel_size_nm / train_px
    elif train_px is None:
        scale = float(meta.get("input_scale") or 1.0)
    else:
        scale = 1.0
    if abs(scale - 1) <= SAME_SCALE:
        return image, 1.0
    if not 1 / MAX_RESAMPLING <= scale <= MAX_RESAMPLING:
        raise NanosegError(
            f"pixel size {pixel_size_nm:g} nm is {scale:.4g} times the {train_px:g} nm the model was trained at "
            f"(at most {MAX_RESAMPLING:g}x either way): check the pixel size (--pixel-size, data.pixel_size_nm) "
            "or train a model at this magnification"
        )
    return io.resample(image, scale)[0], scale


@dataclass
class ModelScaleSegmentation:
    """A micrograph segmented on the grid of the model's pixel size (:func:`segment_at_model_scale`).

    Sizes are measured here, where the network drew the outlines: resampling the labels to the
    micrograph's grid first would add the coarser grid's digitisation to every particle.

    Attributes
    ----------
    labels : (h, w) int array
        Instances on the model's grid.
    probability : (h, w) float32
        :func:`particle_probability` on the model's grid.
    image : (h, w) float32
        The micrograph resampled to the model's grid (the micrograph itself when not resampled).
    pixel_size_nm : float or None
        Pixel size of that grid.
    image_shape : (H, W)
        Shape of the micrograph.
    """

    labels: np.ndarray
    probability: np.ndarray
    image: np.ndarray
    pixel_size_nm: float | None
    image_shape: tuple[int, int]

    @property
    def resampled(self) -> bool:
        return self.labels.shape != tuple(self.image_shape)

    def on_image_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Labels (same numbers) and particle probability on the micrograph's grid."""
        from skimage.transform import resize

        if not self.resampled:
            return self.labels, self.probability
        prob = resize(self.probability, self.image_shape, order=1, preserve_range=True).astype(np.float32)
        return resize_labels(self.labels, self.image_shape), prob

    def table_on_image_grid(self, particles: Any) -> Any:
        """A particle table measured on this grid with its ``*_px`` columns (and ``pixel_size_nm``)
        in the micrograph's pixels; the ``*_nm`` columns stay as measured."""
        if not self.resampled:
            return particles
        return to_other_grid(particles, self.labels.shape, self.image_shape)


def segment_at_model_scale(
    net: Any,
    meta: dict[str, Any],
    image: np.ndarray,
    config: SegmentConfig,
    *,
    pixel_size_nm: float | None = None,
    device: Any = "cpu",
) -> ModelScaleSegmentation:
    """Instances of one micrograph on the grid of the model's training pixel size.

    The micrograph is resampled to the model's pixel size when both are known and differ by more
    than :data:`SAME_SCALE` (:func:`to_model_scale`), so that every ``*_px`` post-processing
    setting means what it meant in training; an image with a side larger than
    ``config.block_px`` is then segmented piece by piece (:func:`_segment_blocks`).
    """
    work, scale = to_model_scale(image, pixel_size_nm, meta)
    if max(work.shape) > config.block_px:
        labels, prob = _segment_blocks(net, meta, work, config, device=device)
    else:
        labels, prob = _segment_piece(net, meta, work, config, device=device)
    work_px = pixel_size_nm
    if pixel_size_nm is not None and scale != 1.0:
        # the grid's actual pitch: the resampled shape is rounded to whole pixels
        work_px = pixel_size_nm * float(np.sqrt(image.shape[0] * image.shape[1] / (work.shape[0] * work.shape[1])))
    return ModelScaleSegmentation(labels, prob, work, work_px, (int(image.shape[0]), int(image.shape[1])))


def segment_image(
    net: Any,
    meta: dict[str, Any],
    image: np.ndarray,
    config: SegmentConfig,
    *,
    pixel_size_nm: float | None = None,
    device: Any = "cpu",
    probability: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Instance labels and particle probability of one image at its own size.

    Segmented on the model's grid (:func:`segment_at_model_scale`), then brought back onto the
    image's grid with sizes kept (:func:`nanoseg.segment.instances.resize_labels`). To measure
    particles, measure them on the model's grid instead.

    Returns
    -------
    labels : (H, W) uint16/uint32
    probability : (H, W) float32, or None unless ``probability``
        :func:`particle_probability`.
    """
    labels, prob = segment_at_model_scale(net, meta, image, config, pixel_size_nm=pixel_size_nm,
                                          device=device).on_image_grid()
    return labels, prob if probability else None


def _segment_piece(net: Any, meta: dict[str, Any], image: np.ndarray, config: SegmentConfig, *,
                   device: Any) -> tuple[np.ndarray, np.ndarray]:
    kind = meta["target"]
    probs = predict_probabilities(net, image, kind, device=device, bf16=config.bf16,
                                  tile_px=config.inference_tile_px, overlap_px=config.tile_overlap_px, tta=config.tta)
    labels = instances_from_probabilities(probs, kind, config, threshold=foreground_threshold(config, meta))
    return labels, particle_probability(probs, kind)


def _segment_blocks(net: Any, meta: dict[str, Any], image: np.ndarray, config: SegmentConfig, *,
                    device: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`segment_at_model_scale` of a large image, one ``block_px`` piece at a time.

    The image is cut into cores of ``block_px - 2 * block_margin_px``; each core is segmented
    with ``block_margin_px`` of its surroundings, and of the particles found there it keeps
    those whose centre lies in the core, whole (margin included), on pixels no earlier piece
    claimed. A particle is thus found once, in the piece of its centre, with the context a
    whole-image run gives it, as long as it is smaller than the margin.
    """
    from skimage.measure import regionprops

    h, w = image.shape
    margin = config.block_margin_px
    block = config.block_px - 2 * margin
    labels = np.zeros((h, w), np.uint32)
    prob_map = np.zeros((h, w), np.float32)
    n, cut = 0, 0
    for y0 in range(0, h, block):
        for x0 in range(0, w, block):
            y1, x1 = min(y0 + block, h), min(x0 + block, w)
            py0, px0, py1, px1 = max(0, y0 - margin), max(0, x0 - margin), min(h, y1 + margin), min(w, x1 + margin)
            piece, prob = _segment_piece(net, meta, image[py0:py1, px0:px1], config, device=device)
            prob_map[y0:y1, x0:x1] = prob[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0]
            del prob
            target = labels[py0:py1, px0:px1]
            for region in regionprops(piece):
                cy, cx = region.centroid
                if not (y0 <= py0 + cy < y1 and x0 <= px0 + cx < x1):
                    continue
                r0, c0, r1, c1 = region.bbox
                # Cut by the margin's outer edge (not the image's): larger than the margin.
                cut += (r0 == 0 < py0) or (c0 == 0 < px0) or (r1 == piece.shape[0] and py1 < h) \
                    or (c1 == piece.shape[1] and px1 < w)
                window = target[r0:r1, c0:c1]
                free = region.image & (window == 0)
                if free.any():
                    n += 1
                    window[free] = n
    if cut:
        logger.warning("%d particle(s) reached the edge of their %d px block margin and may be cut: set "
                       "segment.block_margin_px above the largest particle's extent in px", cut, margin)
    return relabel(labels, config.min_size_px), prob_map


# Tints of the particles (by label number, so that strips of one image agree).
_TINTS = np.array([(1, 0, 0), (0, 0, 1), (0, 0.5, 0), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 0.65, 0), (0.5, 0, 0.5)],
                  np.float32)


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB uint8: the micrograph with tinted particles and yellow outlines."""
    return in_row_strips(_draw_overlay, image, labels)


def _draw_overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    rgb = np.repeat(np.clip(np.asarray(image, np.float32), 0, 1)[..., None], 3, axis=2)
    inside = labels > 0
    rgb[inside] = 0.8 * rgb[inside] + 0.2 * _TINTS[(labels[inside] - 1) % len(_TINTS)]
    rgb[find_boundaries(labels, mode="inner")] = (1.0, 0.9, 0.0)
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def write_segmentation(out_dir: str | Path, mg: Any, labels: np.ndarray,
                       probability: np.ndarray | None = None) -> list[Path]:
    """Write one micrograph's ``labels/``, ``binary/``, ``overlays/`` (and, given its particle
    ``probability``, ``probabilities/``) files into ``out_dir``; returns their paths."""
    out_dir, stem = Path(out_dir), Path(mg.path).stem
    written = []
    if probability is not None:
        written.append(io.write_tiff(out_dir / "probabilities" / f"{stem}.tif", probability,
                                     pixel_size_nm=mg.pixel_size_nm))
    written.append(io.write_tiff(out_dir / "labels" / f"{stem}.tif", labels, pixel_size_nm=mg.pixel_size_nm, ome=True))
    written.append(io.write_tiff(out_dir / "binary" / f"{stem}.tif", separated_binary(labels),
                                 pixel_size_nm=mg.pixel_size_nm))
    written.append(io.write_png(out_dir / "overlays" / f"{stem}.png", overlay(mg.image, labels)))
    return written


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
        A model written by :func:`train`, or its ONNX export (:func:`load_segmenter`).
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
    net, meta = load_segmenter(model_path, device)
    if config is None:
        config = segment_settings(meta["config"], str(model_path))
    out_dir = Path(out_dir)
    summary = []
    for mg in progress(micrographs, total=len(micrographs), desc="segment"):
        t0 = time.perf_counter()
        try:
            labels, probability = segment_image(net, meta, mg.image, config, pixel_size_nm=mg.pixel_size_nm,
                                                device=device, probability=probabilities)
        except NanosegError as exc:
            io.skip_or_raise(failures, mg.path, exc)
            continue
        stem = Path(mg.path).stem
        write_segmentation(out_dir, mg, labels, probability)
        seconds = time.perf_counter() - t0
        summary.append({"image": stem, "particles": int(labels.max()), "seconds": round(seconds, 2)})
        logger.info("%s: %d particles (%.1f s)", stem, labels.max(), seconds)
    if failures and not summary:
        raise io.nothing_usable(failures)
    return summary


