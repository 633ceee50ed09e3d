"""Pixel values as stored in a micrograph file, and the instrument's info bar under them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nanoseg.errors import NanosegError
from nanoseg.io._common import quiet as _quiet
from nanoseg.io.vendor import VENDOR_SUFFIXES, is_vendor_file, read_vendor

#: Micrograph files: TIFF, PNG, JPEG, BMP, and the transmission vendors' formats read through
#: RosettaSciIO (:data:`nanoseg.io.vendor.VENDOR_SUFFIXES`: DigitalMicrograph, EMD, TIA, MRC).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp") + VENDOR_SUFFIXES


MIN_SIDE_PX = 32


# A row is "info-bar like" when at least this fraction of its pixels share one exact value:
# sample rows of the TiO2 SEM images reach at most 0.33, their bar rows at least 0.81.
_BAR_ROW_MODE_FRACTION = 0.6


_BAR_ROW_WEAK_FRACTION = 0.4


def read_raw(path: Path, min_side_px: int = MIN_SIDE_PX) -> np.ndarray:
    """Pixel values as stored, 2-D (RGB(A) converted to gray); palette TIFFs give raw indices.

    Vendor files (DigitalMicrograph, EMD, TIA, MRC) give the one image they hold
    (:func:`nanoseg.io.vendor.read_vendor`); a stack, a spectrum or several images is refused.

    No scaling, no info-bar crop (:func:`read_micrograph` does both).

    Raises
    ------
    NanosegError
        If the file is missing, empty, of an unsupported type, unreadable, not one 2-D image,
        or smaller than ``min_side_px`` on a side.
    """
    if not path.is_file():
        raise NanosegError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise NanosegError(f"{path}: unsupported image type '{suffix}' (use TIFF, PNG, JPEG, BMP, "
                           "DigitalMicrograph .dm3/.dm4, EMD, TIA .ser or MRC)")
    if path.stat().st_size == 0:
        raise NanosegError(f"{path}: file is empty; re-export the image")
    try:
        if is_vendor_file(path):
            data = read_vendor(path).data
        elif suffix in (".tif", ".tiff"):
            data = _read_tiff_array(path)
        else:
            data = _read_pil_array(path)
    except NanosegError:
        raise
    except Exception as exc:  # every decoder has its own exception types
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise NanosegError(
            f"{path}: cannot read image ({reason}); check the file is complete or re-export it as TIFF/PNG"
        ) from None
    data = _to_gray(data, path)
    if data.ndim != 2:
        raise NanosegError(
            f"{path}: expected one 2-D image, got an array of shape {data.shape}; save a single gray image per file"
        )
    if min(data.shape) < min_side_px:
        raise NanosegError(
            f"{path}: image is {data.shape[1]}x{data.shape[0]} px, smaller than {min_side_px} px on a side; "
            "use the full-size micrograph"
        )
    return data


def _read_tiff_array(path: Path) -> np.ndarray:
    import tifffile

    with _quiet("tifffile"), tifffile.TiffFile(path) as tif:
        if len(tif.series) == 0 or len(tif.pages) == 0:
            raise NanosegError(f"{path}: TIFF holds no image; re-export it")
        series = tif.series[0]
        if len(tif.pages) > 1 and series.shape != tif.pages[0].shape:
            raise NanosegError(
                f"{path}: TIFF is a stack of shape {series.shape}; save a single 2-D image per file"
            )
        # Pages stored as separate images (frames, detector channels) would silently give the
        # first; a smaller page (a vendor's thumbnail) is no second micrograph and is ignored.
        full = sum(1 for page in tif.pages if page.shape == tif.pages[0].shape)
        if full > 1:
            raise NanosegError(
                f"{path}: TIFF holds {full} images of {tif.pages[0].shape[1]}x{tif.pages[0].shape[0]} px; "
                "save a single 2-D image per file"
            )
        # Page data as stored: palette images give their index values, which is what the
        # gray-palette SEM TIFFs need (a few palette entries are overlay colours).
        data = tif.pages[0].asarray()
    return np.asarray(data)


def _read_pil_array(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.load()
        if getattr(img, "n_frames", 1) > 1:
            raise NanosegError(f"{path}: file holds {img.n_frames} frames; save a single image per file")
        # Cameras and phones store a rotated image with an EXIF orientation: upright, the info bar
        # is at the bottom again, where it is looked for.
        img = ImageOps.exif_transpose(img)
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif img.mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(img).astype(np.uint16)
        elif img.mode == "CMYK":
            img = img.convert("RGB")
        elif img.mode == "LA":
            img = img.convert("L")
        return np.asarray(img)


def _to_gray(data: np.ndarray, path: Path) -> np.ndarray:
    data = np.squeeze(data) if data.ndim > 2 and 1 in data.shape[:-1] else data
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        rgb = data[..., :3].astype(np.float64)
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return data[..., 0]  # gray stored as RGB: keep values (and dtype) exactly
        gray = rgb @ np.array([0.2125, 0.7154, 0.0721])  # ITU-R BT.709, as skimage.color.rgb2gray
        if data.dtype.kind in "ui":
            return np.clip(np.round(gray), 0, np.iinfo(data.dtype).max).astype(data.dtype)
        return gray.astype(np.float32)
    if data.ndim == 3 and data.shape[-1] == 2:  # gray + alpha
        return data[..., 0]
    return data


def detect_info_bar(image: np.ndarray, max_fraction: float = 1 / 3) -> int:
    """Rows of instrument info bar at the bottom of an SEM image (0 if there is none).

    SEM info bars are a band of flat background (black, gray or white) with text, so most pixels
    of each bar row share one exact value, while rows of the noisy sample never do. The bar is the
    run of such rows that reaches the bottom (a few stray rows below it, e.g. a frame, are
    tolerated) and starts with a sharp transition from sample rows. Works on the raw values or on
    any monotone rescaling of them.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        The full image as stored.
    max_fraction : float
        A bar taller than this fraction of the height is not believed (flat regions of the
        sample, e.g. a saturated background); 0 is returned.

    Returns
    -------
    int
        Number of bar rows to crop from the bottom.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"detect_info_bar needs a 2-D image, got shape {image.shape}")
    height = image.shape[0]
    limit = int(height * max_fraction)
    fraction = _row_mode_fraction(image[height - limit - 2:] if limit + 2 < height else image)
    # Hysteresis: rows clearly flat anchor the bar; JPEG ringing around text lowers the fraction
    # of some bar rows, which still count when they join clearly flat ones.
    flat = fraction >= _BAR_ROW_WEAK_FRACTION
    strong = fraction >= _BAR_ROW_MODE_FRACTION
    n = flat.size
    # Allow up to 4 stray (non-flat) rows at the very bottom and gaps of up to 2 rows inside the bar.
    bottom = n
    while bottom > 0 and n - bottom < 4 and not flat[bottom - 1]:
        bottom -= 1
    if bottom == 0 or not flat[bottom - 1]:
        return 0
    top = bottom - 1
    gap = 0
    i = top - 1
    while i >= 0:
        if flat[i]:
            top, gap = i, 0
        else:
            gap += 1
            if gap > 2:
                break
        i -= 1
    rows = n - top
    if strong[top:bottom].sum() < 3 or rows > limit:
        return 0  # too thin to be a bar, or flat far up into the image: sample, not a bar
    return int(rows)


def _row_mode_fraction(image: np.ndarray) -> np.ndarray:
    """Per row, the fraction of pixels equal to the row's most common value."""
    ordered = np.sort(image, axis=1)
    fractions = np.empty(ordered.shape[0])
    width = ordered.shape[1]
    for i, row in enumerate(ordered):
        starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1], True])
        fractions[i] = np.diff(starts).max() / width
    return fractions
