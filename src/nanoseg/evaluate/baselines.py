"""Baselines of Rühle et al. (2021): training masks made automatically from TSEM images.

The BAM TiO2 data set pairs every SEM image ``sem/<id>.tif`` with a transmission (TSEM,
STEM-in-SEM) image ``tsem/<id+1>.tif`` of the same field. In transmission the particles are
dark on a bright, even background, so a global threshold finds them far more reliably than in
the SEM image -- but the two images are not pixel-registered. Baseline (c) of the paper trains
a UNet on masks made from the TSEM images, which takes three steps:

1. :func:`register_tsem`: align the TSEM image to the SEM image. Both are smoothed, turned
   into gradient-magnitude images (the particle outlines, whatever their contrast sign) and
   tapered with a Hann window; :func:`skimage.registration.phase_cross_correlation` finds the
   translation to 0.1 px. A log-polar step (:func:`estimate_rotation_scale`) checks for a
   rotation or scale difference and corrects it when that makes the outlines agree better.
   On the shared TiO2 pairs the rotation and scale estimates stay at noise level: only the
   translation matters. ``registration.csv`` records the IoU of the TSEM particle mask with the
   manual mask before and after alignment; ``benchmarks/bam_tio2.py`` reports their means.
2. :func:`tsem_to_labels`: automatic threshold (Otsu or Li) of the aligned TSEM image, holes
   filled, small specks removed, and touching particles split by the distance-transform
   watershed of :func:`nanoseg.metrics.paper_watershed` (one-pixel separation lines, particles
   4-connected).
3. :func:`make_tsem_training_set`: for each id, writes ``images/<id>.tif`` (a link to the SEM
   image, which is never modified or copied) and ``masks/<id>_m.tif`` (uint8 0/255, full frame,
   info-bar rows black), the layout :func:`nanoseg.segment.load_pairs` reads, plus
   ``registration.csv`` with the shifts and, where manual masks exist, the IoU before and after
   alignment.

Limits of such masks, which is what the baseline shows: in transmission, touching and
overlapping particles merge into one dark blob, so the watershed separates only part of them
(far fewer particles per image than drawn by hand);
a strip of up to the shift's width along the border has no TSEM data and counts as background.

References
----------
.. [1] B. Rühle, J. F. Krumrey, V.-D. Hodoroaba, Sci. Rep. 11, 4942 (2021).
   doi:10.1038/s41598-021-84287-6
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from scipy import ndimage as ndi

from nanoseg import io
from nanoseg.atomic import atomic_path
from nanoseg.errors import NanosegError
from nanoseg.io import list_images
from nanoseg.labels import label_binary
from nanoseg.metrics import image_iou, labels_to_binary, paper_watershed
from nanoseg.runtime import progress
from nanoseg.segment import overlay

logger = logging.getLogger("nanoseg.baselines")

#: Rotations (deg) and relative scale changes below these are measurement noise of the
#: log-polar estimate and left uncorrected.
ROTATION_TOLERANCE_DEG = 0.3
SCALE_TOLERANCE = 0.005


# --------------------------------------------------------------------------- registration


def _edges(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gradient magnitude of the smoothed image: outlines, independent of contrast sign."""
    from skimage.filters import gaussian, sobel

    return sobel(gaussian(np.asarray(image, np.float32), sigma_px, preserve_range=True))


def estimate_rotation_scale(moving: np.ndarray, reference: np.ndarray, band_px: tuple[float, float] = (1.0, 8.0)
                            ) -> tuple[float, float]:
    """Rotation and scale of ``moving`` relative to ``reference`` (log-polar Fourier method).

    The magnitudes of the Fourier transforms do not depend on translation; in log-polar
    coordinates a rotation becomes a shift along the angle axis and a scale change a shift
    along the log-radius axis, both found by phase correlation.

    Parameters
    ----------
    moving, reference : (H, W) array
        Same shape, particles of the same contrast sign.
    band_px : (float, float)
        Sigmas of the difference-of-Gaussians band-pass applied first, in px: keeps the
        particle outlines, drops pixel noise and slow background changes.

    Returns
    -------
    angle_deg : float
        Counter-clockwise rotation of ``moving`` relative to ``reference``.
    scale : float
        Size of ``moving`` relative to ``reference``.
    """
    from skimage.filters import difference_of_gaussians, window
    from skimage.registration import phase_cross_correlation
    from skimage.transform import warp_polar

    if np.shape(moving) != np.shape(reference):
        raise ValueError(f"images differ in shape: {np.shape(moving)} vs {np.shape(reference)}")
    spectra = []
    for image in (reference, moving):
        band = difference_of_gaussians(np.asarray(image, np.float32), *band_px)
        spectra.append(np.abs(np.fft.fftshift(np.fft.fft2(band * window("hann", band.shape)))))
    radius = min(spectra[0].shape) // 2
    # The magnitude spectrum is point-symmetric: half the angles hold everything.
    polar = [warp_polar(s, radius=radius, output_shape=(360, radius), scaling="log")[:180] for s in spectra]
    shift, _, _ = phase_cross_correlation(polar[0], polar[1], upsample_factor=20, normalization=None)
    log_base = radius / np.log(radius)
    return float(shift[0]), float(np.exp(shift[1] / log_base))


def rotate_scale(image: np.ndarray, angle_deg: float, scale: float, fill: float, order: int = 1) -> np.ndarray:
    """Rotate (counter-clockwise, in degrees) and scale ``image`` about its centre.

    Bilinear (``order`` 0: nearest, for labels); pixels from outside the image get ``fill``.
    Returns float32 of the same shape (``image``'s dtype with ``order`` 0).
    """
    from skimage.transform import SimilarityTransform, warp

    centre = (np.array(image.shape[::-1]) - 1) / 2.0
    tf = (SimilarityTransform(translation=-centre)
          + SimilarityTransform(rotation=np.deg2rad(-angle_deg), scale=scale)
          + SimilarityTransform(translation=centre))
    out = warp(image, tf.inverse, order=order, mode="constant", cval=fill, preserve_range=True)
    return out.astype(image.dtype) if order == 0 else out.astype(np.float32)


class TsemRegistration(NamedTuple):
    """How a TSEM image was moved onto its SEM twin (:func:`register_tsem`)."""

    #: (rows, columns) translation applied after the rotation/scale correction.
    shift: np.ndarray
    #: The TSEM image on the SEM grid.
    aligned: np.ndarray
    #: Rotation (deg) and scale of the TSEM image relative to the SEM image that were corrected
    #: (0 and 1 when none was).
    angle_deg: float = 0.0
    scale: float = 1.0

    def onto_tsem(self, labels: np.ndarray) -> np.ndarray:
        """Move a label or mask image from the SEM grid onto the TSEM image's (nearest neighbour):
        the inverse of the registration, e.g. to score a segmentation of the TSEM image as it is."""
        moved = ndi.shift(labels, -np.asarray(self.shift), order=0, mode="constant", cval=0)
        if self.angle_deg or self.scale != 1.0:
            moved = rotate_scale(moved, self.angle_deg, self.scale, fill=0, order=0)
        return moved


def register_tsem(
    tsem: np.ndarray,
    sem: np.ndarray,
    *,
    sigma_px: float = 2.0,
    upsample_factor: int = 10,
    correct_rotation_scale: bool = True,
) -> TsemRegistration:
    """Align a TSEM image to the SEM image of the same field.

    Parameters
    ----------
    tsem : (H, W) array
        Transmission image, particles dark on bright (as read, info bar cropped).
    sem : (H, W) array
        SEM image, particles bright (as read, info bar cropped). Same shape as ``tsem``.
    sigma_px : float
        Gaussian smoothing in px before the gradient magnitudes are correlated.
    upsample_factor : int
        Sub-pixel precision of the shift: 1 / ``upsample_factor`` px.
    correct_rotation_scale : bool
        Estimate rotation and scale with :func:`estimate_rotation_scale` and correct them when
        they exceed :data:`ROTATION_TOLERANCE_DEG` / :data:`SCALE_TOLERANCE` (logged).

    Returns
    -------
    TsemRegistration
        ``shift``: (rows, columns) translation applied to ``tsem`` (after any rotation/scale
        correction); ``aligned``: ``tsem`` moved onto ``sem`` as float32, pixels from outside
        the TSEM field set to its median (the bright background, never a particle);
        ``angle_deg``, ``scale``: the rotation and scale corrected.
    """
    from skimage.registration import phase_cross_correlation

    tsem = np.asarray(tsem, np.float32)
    sem = np.asarray(sem, np.float32)
    if tsem.ndim != 2 or tsem.shape != sem.shape:
        raise NanosegError(f"TSEM image {tsem.shape} and SEM image {sem.shape} must be 2-D and of equal shape "
                           "(crop both info bars the same way)")
    from skimage.filters import window

    fill = float(np.median(tsem))
    # A Hann window keeps the image borders (where the fields differ) out of the correlation.
    taper = window("hann", sem.shape)
    reference = _edges(sem, sigma_px) * taper

    def translate(candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        # Particles bright in both images, as in the SEM image.
        moving = _edges(1.0 - candidate, sigma_px) * taper
        shift, _, _ = phase_cross_correlation(reference, moving, upsample_factor=upsample_factor,
                                              normalization=None)
        aligned_edges = ndi.shift(moving, shift, order=1)
        return np.asarray(shift, float), candidate, float(np.corrcoef(reference.ravel(), aligned_edges.ravel())[0, 1])

    shift, tsem_used, score = translate(tsem)
    if correct_rotation_scale:
        total_angle_deg, total_scale = 0.0, 1.0
        for _ in range(3):  # the estimate is less precise far from zero: refine on the corrected image
            angle_deg, scale = estimate_rotation_scale(1.0 - tsem_used, sem)
            if abs(angle_deg) <= ROTATION_TOLERANCE_DEG and abs(scale - 1.0) <= SCALE_TOLERANCE:
                break
            # The estimate is noisy near zero: keep a correction only if it makes the outlines
            # agree better than before.
            candidate = translate(rotate_scale(tsem, -(total_angle_deg + angle_deg), 1.0 / (total_scale * scale), fill))
            if candidate[2] <= score:
                break
            total_angle_deg, total_scale = total_angle_deg + angle_deg, total_scale * scale
            shift, tsem_used, score = candidate
        if total_angle_deg or total_scale != 1.0:
            logger.info("TSEM rotated by %.2f deg and scaled by %.4f relative to SEM; corrected (edge correlation "
                        "%.3f)", total_angle_deg, total_scale, score)
    aligned = ndi.shift(tsem_used, shift, order=1, mode="constant", cval=fill)
    corrected = (total_angle_deg, total_scale) if correct_rotation_scale else (0.0, 1.0)
    return TsemRegistration(shift, aligned.astype(np.float32), *corrected)


# --------------------------------------------------------------------------- masks


def tsem_binary(aligned_tsem: np.ndarray, *, method: Literal["otsu", "li"] = "otsu", sigma_px: float = 1.0,
                min_size_px: int = 10) -> np.ndarray:
    """Particle mask of a TSEM image by an automatic threshold (particles dark).

    Smoothed with a Gaussian (``sigma_px``) against pixel noise, thresholded, holes filled,
    components smaller than ``min_size_px`` removed.
    """
    from skimage.filters import gaussian, threshold_li, threshold_otsu
    from skimage.morphology import remove_small_objects

    thresholds = {"otsu": threshold_otsu, "li": threshold_li}
    if method not in thresholds:
        raise NanosegError(f"threshold method {method!r}: use 'otsu' or 'li'")
    smooth = gaussian(np.asarray(aligned_tsem, np.float32), sigma_px, preserve_range=True) if sigma_px > 0 else aligned_tsem
    binary = ndi.binary_fill_holes(smooth < thresholds[method](smooth))
    if min_size_px > 0:
        binary = remove_small_objects(binary, max_size=min_size_px - 1)
    return binary


def tsem_to_labels(aligned_tsem: np.ndarray, *, method: Literal["otsu", "li"] = "otsu", sigma_px: float = 1.0,
                   min_distance_px: int = 5, min_size_px: int = 10) -> np.ndarray:
    """Instance labels from an (aligned) TSEM image: threshold + distance-transform watershed.

    Parameters
    ----------
    aligned_tsem : (H, W) array
        TSEM image, particles dark on bright.
    method : {'otsu', 'li'}
        Automatic threshold. Otsu is the default: on the TiO2 images Li's threshold falls into
        the background of one image in thirty.
    sigma_px : float
        Gaussian smoothing before thresholding, in px.
    min_distance_px : int
        Minimum distance between watershed markers in px. 5 rather than the paper's 9 for its
        evaluation: in transmission, touching particles merge into one dark blob, and closer
        markers split more of them.
    min_size_px : int
        Particles smaller than this many px are removed.

    Returns
    -------
    (H, W) int32 array
        Labels 1..n, 0 = background; touching particles are separated by one-pixel background
        lines and no two particles touch diagonally, so 4-connected labelling of ``labels > 0``
        gives back the instances.
    """
    binary = tsem_binary(aligned_tsem, method=method, sigma_px=sigma_px, min_size_px=min_size_px)
    # Every component keeps a marker and border particles count: these are training masks.
    labels = paper_watershed(binary, sigma=1.0, min_distance_px=min_distance_px, exclude_border=False,
                             keep_unmarked=True)
    if min_size_px > 0:
        from skimage.morphology import remove_small_objects

        labels = label_binary(remove_small_objects(labels, max_size=min_size_px - 1), 1)
    return labels.astype(np.int32)


# --------------------------------------------------------------------------- training set


@dataclass
class TsemRecord:
    """What :func:`make_tsem_training_set` did with one image."""

    id: str
    shift_rows_px: float
    shift_cols_px: float
    rotation_deg: float
    scale: float
    n_particles: int
    iou_unaligned: float | None = None
    iou_aligned: float | None = None
    residual_shift_px: float | None = None


def tsem_path(data_dir: str | Path, image_id: str) -> Path:
    """``tsem/<id+1>.tif`` of the BAM layout (falls back to ``tsem/<id>.tif``)."""
    data_dir = Path(data_dir)
    candidates = []
    if image_id.isdigit():
        candidates.append(data_dir / "tsem" / f"{int(image_id) + 1}.tif")
    candidates.append(data_dir / "tsem" / f"{image_id}.tif")
    for path in candidates:
        if path.is_file():
            return path
    raise NanosegError(f"{candidates[0]}: TSEM image for SEM image {image_id} not found "
                       "(expected tsem/<id+1>.tif beside sem/<id>.tif)")


def list_ids(data_dir: str | Path) -> list[str]:
    """Ids of the SEM images in ``data_dir/sem``."""
    return [p.stem for p in list_images(Path(data_dir) / "sem")]


def link_file(src: str | Path, dst: str | Path) -> Path:
    """Make ``dst`` a symbolic link to ``src`` (atomically; a copy where links are impossible).

    Training folders point at the original micrographs instead of copying them: the data stay
    unmodified in one place.
    """
    src, dst = Path(src), Path(dst)
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.symlink(src.resolve(), tmp)
        except OSError:
            shutil.copy2(src, tmp)
    return dst


def _residual_shift_px(aligned_binary: np.ndarray, manual: np.ndarray) -> float:
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(manual.astype(np.float32), aligned_binary.astype(np.float32),
                                          upsample_factor=10, normalization=None)
    return float(np.hypot(*shift))


def make_tsem_training_set(
    data_dir: str | Path,
    ids: Sequence[str] | None,
    out_dir: str | Path,
    *,
    method: Literal["otsu", "li"] = "otsu",
    min_distance_px: int = 5,
) -> list[TsemRecord]:
    """Write SEM image / TSEM-derived mask pairs for training a segmentation network.

    Parameters
    ----------
    data_dir : path-like
        Folder with ``sem/<id>.tif`` and ``tsem/<id+1>.tif`` (and optionally manual masks
        ``masks/<id>_m.tif``, used only to report the alignment quality).
    ids : sequence of str, optional
        Image ids; default: every image in ``sem/``.
    out_dir : path-like
        Gets ``images/<id>.tif`` (link to the SEM image), ``masks/<id>_m.tif`` (uint8 0/255,
        the SEM file's full shape, info-bar rows black), ``registration.csv`` (shift, estimated
        rotation and scale, particle count, IoU with the manual mask before and after alignment
        and the residual shift against it) and
        ``overlays/<id>.png`` (the SEM image with the mask outlines). Read it with
        :func:`nanoseg.segment.load_pairs`.
    method : {'otsu', 'li'}
        Threshold of :func:`tsem_to_labels`.
    min_distance_px : int
        Minimum distance between watershed markers.

    Returns
    -------
    list of TsemRecord
    """
    import pandas as pd

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not (data_dir / "sem").is_dir() or not (data_dir / "tsem").is_dir():
        raise NanosegError(f"{data_dir}: needs sem/ and tsem/ subfolders (the BAM TiO2 layout)")
    ids = list(ids) if ids else list_ids(data_dir)
    records = []
    for image_id in progress(ids, total=len(ids), desc="tsem masks"):
        sem_path = data_dir / "sem" / f"{image_id}.tif"
        if not sem_path.is_file():
            raise NanosegError(f"{sem_path}: SEM image for id {image_id} not found")
        sem = io.read_micrograph(sem_path)
        tsem = io.read_micrograph(tsem_path(data_dir, image_id), pixel_size_nm=sem.pixel_size_nm or 1.0)
        rows = min(sem.image.shape[0], tsem.image.shape[0])
        if sem.image.shape[1] != tsem.image.shape[1]:
            raise NanosegError(f"{tsem.path}: width {tsem.image.shape[1]} differs from SEM image {sem_path} "
                               f"({sem.image.shape[1]})")
        tsem_image = np.full(sem.image.shape, float(np.median(tsem.image)), np.float32)
        tsem_image[:rows] = tsem.image[:rows]
        # Recorded for the report; register_tsem corrects them only where that helps.
        angle_deg, scale = estimate_rotation_scale(1.0 - tsem_image, sem.image)
        shift, aligned, *_ = register_tsem(tsem_image, sem.image)
        labels = tsem_to_labels(aligned, method=method, min_distance_px=min_distance_px)
        full = np.zeros(sem.full_shape, np.uint8)
        full[: labels.shape[0]] = labels_to_binary(labels) * np.uint8(255)
        io.write_tiff(out_dir / "masks" / f"{image_id}_m.tif", full)
        link_file(sem_path, out_dir / "images" / f"{image_id}.tif")
        io.write_png(out_dir / "overlays" / f"{image_id}.png", overlay(sem.image, labels))
        record = TsemRecord(id=image_id, shift_rows_px=round(float(shift[0]), 2),
                            shift_cols_px=round(float(shift[1]), 2), rotation_deg=round(angle_deg, 2),
                            scale=round(scale, 4), n_particles=int(labels.max()))
        manual_path = data_dir / "masks" / f"{image_id}_m.tif"
        if manual_path.is_file():
            manual = io.read_mask(manual_path)[: labels.shape[0]]
            record.iou_unaligned = round(image_iou(tsem_binary(tsem_image), manual), 4)
            record.iou_aligned = round(image_iou(labels > 0, manual), 4)
            record.residual_shift_px = round(_residual_shift_px(labels > 0, manual), 2)
        records.append(record)
        logger.info("%s: shift (%.1f, %.1f) px, %d particles, IoU vs manual %s -> %s", image_id, shift[0],
                    shift[1], record.n_particles, record.iou_unaligned, record.iou_aligned)
    with atomic_path(out_dir / "registration.csv") as tmp:
        pd.DataFrame([asdict(r) for r in records]).to_csv(tmp, index=False)
    return records
