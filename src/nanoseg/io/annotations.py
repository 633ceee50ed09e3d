"""Ground-truth annotations: binary masks and instance label images."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from nanoseg.errors import NanosegError
from nanoseg.io.raw import read_raw


def read_mask(path: str | Path) -> np.ndarray:
    """Read a binary mask (0/1, 0/255, bool; white = particle) as a bool array.

    Raises
    ------
    NanosegError
        If the image holds more than two values or is not 2-D.
    """
    path = Path(path)
    raw = read_raw(path, min_side_px=1)
    values = np.unique(raw)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        raise NanosegError(
            f"{path}: not a binary mask ({values.size} distinct values); save it with only 0 and 255 (or 0 and 1)"
        )
    return raw > 0


def read_labels(path: str | Path, *, strict: bool = False) -> np.ndarray:
    """Read an instance label image (0 = background) as an integer array (int32 or int64).

    Parameters
    ----------
    path : path-like
    strict : bool
        Also refuse an image that looks like a binary mask or a micrograph rather than instance
        labels (:func:`label_image_doubt`): for label images a user points at, where either
        would be measured without complaint as one huge particle or thousands of specks.

    Raises
    ------
    NanosegError
        If the image is not 2-D or holds negative or non-integer values, or (``strict``) does not
        look like a label image.
    """
    path = Path(path)
    labels = _as_label_image(read_raw(path, min_side_px=1), path)
    doubt = label_image_doubt(labels) if strict else None
    if doubt is not None:
        fix = ("label its particles first (e.g. skimage.measure.label)" if "mask" in doubt else
               "check that the labels folder is not the micrographs' folder")
        raise NanosegError(f"{path}: looks like {doubt}, not a label image; give the label images `nanoseg segment "
                           f"predict` writes (its labels/ folder), or {fix}")
    return labels


def label_image_doubt(labels: np.ndarray) -> str | None:
    """What an image read as instance labels looks like instead ('a binary mask', ...), or None.

    A label image gives each particle a value of its own, so each value lies in one patch (in
    two, rarely, where resampling cuts a thin particle); more than twice as many patches as
    values is something else. A binary mask has one value in many patches; a micrograph's grey
    levels are scattered over thousands of patches. An anti-aliased mask is recognised as
    :func:`read_annotation` recognises it.
    """
    from skimage.measure import label

    labels = np.asarray(labels)
    n_values = int(np.count_nonzero(np.unique(labels)))
    if n_values == 0:
        return None
    if n_values > 1 and looks_antialiased(labels):
        return "an anti-aliased binary mask"
    patches = int(label(labels, background=0, connectivity=2).max())
    if patches <= 2 * n_values:
        return None
    if n_values == 1:
        return f"a binary mask (one value in {patches} separate particles)"
    return f"a micrograph ({n_values} grey levels scattered over {patches} patches)"


def _as_label_image(raw: np.ndarray, path: Path) -> np.ndarray:
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
            raise NanosegError(f"{path}: label image holds non-integer values; save labels as uint16/uint32")
        raw = raw.astype(np.int64)
    if raw.dtype.kind == "b":
        raw = raw.astype(np.int32)
    if raw.min(initial=0) < 0:
        raise NanosegError(f"{path}: label image holds negative values; save labels as uint16/uint32")
    return raw.astype(np.int64 if raw.max(initial=0) > np.iinfo(np.int32).max else np.int32)


AnnotationKind = Literal["auto", "mask", "labels"]
ANNOTATION_KINDS: tuple[str, ...] = ("auto", "mask", "labels")


def read_annotation(path: str | Path, kind: AnnotationKind = "auto") -> np.ndarray:
    """Read a ground-truth annotation: a binary mask (bool) or an instance label image (int).

    Parameters
    ----------
    path : path-like
        Image file (TIFF, PNG, BMP, ...).
    kind : {'auto', 'mask', 'labels'}
        'auto': two values (or bool) are a binary mask, its higher value the particles;
        16/32-bit or signed integers (and integer-valued floats) with more values are labels
        (0 = background). An 8-bit image with more than two values is ambiguous -- an
        anti-aliased or JPEG-compressed mask, or 8-bit labels -- and raises rather than being
        misread. 'labels': read as labels whatever the values. 'mask': particles are the
        higher of two values, pixels of 128 or more in an 8-bit image, 0.5 or more in a
        float image in [0, 1], anything above 0 otherwise.

    Returns
    -------
    ndarray, shape (H, W)
        bool for a mask, int32 or int64 for labels.

    Raises
    ------
    NanosegError
        One line naming the file and the fix: an ambiguous 8-bit image, fractional or
        non-finite values, negative labels, or an unreadable file.
    """
    path = Path(path)
    if kind not in ANNOTATION_KINDS:
        raise NanosegError(f"{path}: annotation kind {kind!r} unknown; choose auto, mask or labels")
    raw = read_raw(path, min_side_px=1)
    if kind == "labels":
        return _as_label_image(raw, path)
    if raw.dtype == np.bool_:
        return raw
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):
        raise NanosegError(f"{path}: annotation holds NaN or inf values; re-export it as a 0/255 mask or labels")
    values = np.unique(raw)
    if values.size <= 2:
        return raw > values[0] if values.size == 2 else raw > 0
    if kind == "mask":
        if raw.dtype == np.uint8:
            return raw >= 128
        if raw.dtype.kind == "f" and values[0] >= 0 and values[-1] <= 1:
            return raw >= 0.5
        return raw > 0
    if looks_antialiased(raw):
        raise NanosegError(
            f"{path}: looks like an anti-aliased binary mask ({values.size} grey levels); threshold it at 128 "
            f"(only 0 and 255), or if it is a label image save it as 16-bit {_EIGHT_BIT_LABELS}"
        )
    if raw.dtype.itemsize == 1:
        raise NanosegError(
            f"{path}: 8-bit image with {values.size} grey levels is neither a binary mask nor a 16/32-bit label "
            f"image; save a mask with only 0 and 255, or labels as a 16-bit image (0 = background) "
            f"{_EIGHT_BIT_LABELS}"
        )
    if raw.dtype.kind == "f" and np.any(values != np.round(values)):
        raise NanosegError(
            f"{path}: annotation holds fractional values (a probability map?); save a 0/255 mask or integer labels"
        )
    return _as_label_image(raw, path)


# Only `evaluate` has an option to read 8-bit files as labels; `segment train` and the API callers
# (kind='labels') must not be told to pass an option they do not have.
_EIGHT_BIT_LABELS = "(`nanoseg evaluate --labels` also reads 8-bit labels)"


def looks_antialiased(raw: np.ndarray) -> bool:
    """Whether an image looks like a 0/255 mask with grey edges (anti-aliased or JPEG-compressed).

    Nearly every pixel is near 0 or near 255, and a good part of the non-black pixels near 255
    (particle interiors). 8-bit label images fail the second test: their values spread over the
    labels, and few labels lie near 255.
    """
    raw = np.asarray(raw)
    if raw.size == 0 or raw.dtype.kind not in "uif" or not 240 <= float(raw.max()) <= 255:
        return False
    low = float(np.mean(raw <= 15))
    high = float(np.mean(raw >= 240))
    return low + high >= 0.8 and high >= 0.3 * (1.0 - low)
