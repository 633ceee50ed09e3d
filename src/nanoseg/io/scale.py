"""One intensity scale for a series of micrographs: bit depths, robust value ranges, [0, 1] scaling.

A run's images are scaled alike, so that one detector count is one intensity in all of them
(:func:`series_scale` from each image's :class:`FrameStats`); :func:`to_float01` applies a scale.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from nanoseg.errors import NanosegError
from nanoseg.io._common import logger, quiet as _quiet, say_once as _say_once
from nanoseg.io.pixel_size import ome_pixels_with

# Bit depths detectors digitise to; wide unsigned images are scaled by the smallest that fits.
_DETECTOR_BITS = (8, 10, 12, 14, 16, 32, 64)


#: Fraction of an image's values (at least one value) at each end that :func:`robust_range`
#: looks past for its percentiles: 100 pixels of a 1-megapixel micrograph.
OUTLIER_FRACTION = 1e-4


# An extreme value further than this fraction of the percentiles' range beyond them is an outlier
# (a hot or dead pixel, an overflow); closer, it is the image's own tail and bounds the range.
_OUTLIER_TAIL = 0.1


# An image whose values reach less than 1/this of its series' is scaled to look dim: warned about.
_DIM_IN_SERIES = 2.0


@dataclass(frozen=True)
class FrameStats:
    """What the common intensity scale of a series needs from one of its images."""

    path: Path
    dtype: str
    top: float | None  # largest value, for wide unsigned images
    stated_bits: int | None  # bit depth the file states beyond its container
    value_range: tuple[float, float] | None  # robust_range of any but uint8 and bool images
    pixel_size_nm: float | None = None  # as the image will be measured (None: not calibrated)
    bright_fraction: float | None = None  # :func:`bright_fraction` of the stored values (None: blank)


@dataclass(frozen=True)
class SeriesScale:
    """How every image of a series is scaled to [0, 1] (:func:`series_scale`)."""

    bits: int | None  # divisor 2**bits - 1 of wide unsigned images
    value_range: tuple[float, float] | None  # float (outside [0, 1]) and signed images: the series' range
    text: str  # for the log
    warnings: tuple[str, ...] = ()  # what the results should say about the scale (dim images)
    dark_particles: bool = False  # every image is inverted: particles dark on a bright background


def frame_stats(raw: np.ndarray, path: Path) -> FrameStats:
    """The numbers of one image (info bar cropped) that :func:`series_scale` combines."""
    wide = is_wide_unsigned(raw) and raw.size > 0
    value_range = robust_range(raw) if raw.dtype.kind in "uif" and raw.dtype != np.uint8 else None
    sample = np.asarray(raw, np.float32)
    good = np.isfinite(sample)
    if not good.all():  # missing pixels take the lowest value, as when the image is scaled
        sample = np.where(good, sample, sample[good].min() if good.any() else 0.0)
    return FrameStats(path=Path(path), dtype=raw.dtype.str, top=float(raw.max()) if wide else None,
                      stated_bits=_stated_bit_depth(Path(path), raw.dtype) if wide else None,
                      value_range=value_range, bright_fraction=bright_fraction(sample) if good.any() else None)


def robust_range(raw: np.ndarray) -> tuple[float, float] | None:
    """The range of an image's finite values without its outlier pixels; None if it has none.

    Each end is the extreme value, unless that lies beyond the :data:`OUTLIER_FRACTION`
    percentile (taken inward: at least one value is looked past) by more than a tenth of the
    range between the two percentiles: then it is a hot or dead pixel or an overflow (a value of
    400 or 1e30 among values up to 255) and the percentile is the end. A clean image keeps its
    exact minimum and maximum, so scaling it is not changed; values beyond the ends are clipped.

    Parameters
    ----------
    raw : ndarray
        Stored values of any numeric dtype; NaN and inf are left out.

    Returns
    -------
    (float, float) or None
        Low and high end.
    """
    values = raw[np.isfinite(raw)] if raw.dtype.kind == "f" else raw.ravel()
    n = values.size
    if n == 0:
        return None
    k = min(max(1, int(n * OUTLIER_FRACTION)), (n - 1) // 2)
    ordered = np.partition(values, sorted({0, k, n - 1 - k, n - 1}))
    low, p_low, p_high, high = (float(ordered[i]) for i in (0, k, n - 1 - k, n - 1))
    tail = _OUTLIER_TAIL * (p_high - p_low)
    return (low if low >= p_low - tail else p_low), (high if high <= p_high + tail else p_high)


def is_wide_unsigned(raw: np.ndarray) -> bool:
    return raw.dtype.kind == "u" and raw.dtype.itemsize > 1


def scale_bits(raw: np.ndarray, bits: int | None) -> int | None:
    """Bit depth the image was scaled by (None for float and signed images)."""
    if is_wide_unsigned(raw):
        return bits
    if raw.dtype == np.uint8:
        return 8
    return 1 if raw.dtype == np.bool_ else None


def bits_for_max(value: float) -> int:
    """Smallest usual detector bit depth (8, 10, 12, 14, 16, 32 or 64) that holds ``value``."""
    return next((b for b in _DETECTOR_BITS if value <= 2.0**b - 1), 64)


def series_scale(stats: Sequence[FrameStats], bit_depth: int | Literal["auto"] = "auto",
                 dark_particles: bool | Literal["auto"] = False) -> SeriesScale:
    """One intensity scale for a series of images (see :func:`read_micrographs`).

    ``dark_particles`` 'auto': the series is inverted when its median :func:`bright_fraction`
    is above :data:`DARK_BRIGHT_FRACTION` (most of a typical image is bright: the background).

    Raises
    ------
    NanosegError
        If an image holds values above an explicit ``bit_depth``.
    """
    bits, source = _series_bits(stats, bit_depth)
    value_range = _series_value_range(stats)
    for st in stats:
        if st.value_range is not None:
            logger.debug("%s: values %g to %g (without outlier pixels)", st.path, *st.value_range)
    dim = _warn_dim_in_series(stats, bits, value_range)
    dark = bool(dark_particles) if dark_particles != "auto" else _looks_dark(stats)
    return SeriesScale(bits, value_range, _scale_text(stats, bits, source, value_range), (dim,) if dim else (), dark)


#: An image whose :func:`bright_fraction` is above this shows dark particles on a bright background.
#: Particles are a minority of a micrograph; the margin above one half keeps a field without
#: particles (noise: about one half) as it is. TiO2 SEM images: at most 0.26; their TSEM twins: at least 0.74.
DARK_BRIGHT_FRACTION = 0.6


def _looks_dark(stats: Sequence[FrameStats]) -> bool:
    fractions = [st.bright_fraction for st in stats if st.bright_fraction is not None]
    dark = bool(fractions) and float(np.median(fractions)) > DARK_BRIGHT_FRACTION
    if dark:
        _say_once(logging.INFO, "particles look dark on a bright background in %d of %d micrographs (a transmission "
                  "image): inverting the series (data.dark_particles: auto; set it to false to keep them as they are)",
                  sum(f > DARK_BRIGHT_FRACTION for f in fractions), len(stats))
    return dark


def _series_bits(stats: Sequence[FrameStats], bit_depth: int | Literal["auto"]) -> tuple[int | None, str]:
    """One bit depth for the wide unsigned images of a series, and where it came from."""
    wide = [st for st in stats if st.top is not None]
    if not wide:
        return None, "none"
    if bit_depth != "auto":
        bits = int(bit_depth)
        for st in wide:
            top = int(st.top)
            if top > 2**bits - 1:
                raise NanosegError(
                    f"{st.path}: values reach {top}, more than {bits}-bit data can hold; "
                    f"set data.bit_depth to the detector's bit depth (at least {top.bit_length()}) or 'auto'"
                )
        return bits, "data.bit_depth"
    tops = [st.top for st in wide]
    needed = bits_for_max(max(tops))
    stated = [st.stated_bits for st in wide if st.stated_bits is not None]
    if not stated:
        return needed, "largest value" if len(wide) == 1 else "largest value of the series"
    if needed > max(stated):
        _say_once(logging.WARNING, "%s: the metadata states %d-bit data but values reach %g; scaling by %d bits "
                  "instead (set data.bit_depth to choose the scale)", wide[int(np.argmax(tops))].path, max(stated),
                  max(tops), needed)
        return needed, "largest value (the metadata's bit depth is too small)"
    return max(stated), "file metadata"


def _series_value_range(stats: Sequence[FrameStats]) -> tuple[float, float] | None:
    """Common range of a series' images scaled by range (float, signed), unless all lie in [0, 1]."""
    ranges = [st.value_range for st in stats if st.value_range is not None and _scaled_by_range(st.dtype)]
    if not ranges:
        return None
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    return None if lo >= 0.0 and hi <= 1.0 else (lo, hi)


def _scaled_by_range(dtype: str | np.dtype) -> bool:
    """Float and signed integer images have no detector bit depth: their values' range scales them."""
    return np.dtype(dtype).kind in "fi"


def _warn_dim_in_series(stats: Sequence[FrameStats], bits: int | None,
                        value_range: tuple[float, float] | None) -> str | None:
    """One warning (logged and returned) for the images that reach less than half their series'
    values (:data:`_DIM_IN_SERIES`).

    One scale for a series keeps a detector count one intensity in every image, but an image from
    another detector or bit depth (values up to 1020 among 12-bit ones) then looks dim, and the
    segmenter may find few or no particles in it.
    """
    dim = []
    wide = [st for st in stats if st.top is not None and st.value_range is not None]
    if bits is not None and len(wide) > 1:
        top = max(st.value_range[1] for st in wide)
        dim += [f"{st.path.name} reaches {st.value_range[1]:g} of the series' {top:g}, scaled / {2**bits - 1}"
                for st in wide if st.value_range[1] * _DIM_IN_SERIES < top]
    if value_range is not None:
        lo, hi = value_range
        dim += [f"{st.path.name} spans {st.value_range[0]:g} to {st.value_range[1]:g} of the series' {lo:g} to {hi:g}"
                for st in stats if st.value_range is not None and _scaled_by_range(st.dtype)
                and (st.value_range[1] - st.value_range[0]) * _DIM_IN_SERIES < hi - lo]
    if not dim:
        return None
    text = (f"{len(dim)} micrograph(s) use less than half the intensity range of their series "
            f"({'; '.join(dim[:3]) + ('; ...' if len(dim) > 3 else '')}): scaled with the series they look dim and "
            "may give few or no particles; if they come from another detector or bit depth, measure them "
            "separately (or set data.bit_depth)")
    _say_once(logging.WARNING, "%s", text)
    return text


def _scale_text(stats: Sequence[FrameStats], bits: int | None, source: str,
                value_range: tuple[float, float] | None) -> str:
    """How a series' images were scaled to [0, 1], for the log."""
    kinds = {np.dtype(st.dtype) for st in stats}
    parts = []
    if bits is not None:
        parts.append(f"{bits}-bit (from the {source}): 16/32-bit values / {2**bits - 1}")
    if np.dtype(np.uint8) in kinds:
        parts.append("8-bit values / 255")
    if value_range is not None:
        parts.append(f"float and signed values from [{value_range[0]:g}, {value_range[1]:g}] (the series' range "
                     "without outlier pixels; values beyond it clipped)")
    elif any(k.kind == "f" for k in kinds):
        parts.append("float values as stored in [0, 1]")
    return "; ".join(parts) or "binary images as 0 and 1"


def _stated_bit_depth(path: Path, dtype: np.dtype) -> int | None:
    """Bit depth a TIFF states beyond its container: OME ``SignificantBits`` or ``MaxSampleValue``.

    ``BitsPerSample`` is only the container (12-bit detectors write 16); ``MaxSampleValue`` is
    believed only below the container's maximum, as writers that set it at all mostly copy it.
    Vendor tags are not read for it: the Zeiss tags of the TiO2 images, for one, state none.
    """
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    container = np.dtype(dtype).itemsize * 8
    try:
        with _quiet("tifffile"), tifffile.TiffFile(path) as tif:
            pixels = ome_pixels_with(tif.ome_metadata, "SignificantBits") if tif.is_ome and tif.ome_metadata else None
            if pixels is not None and 1 <= int(pixels["SignificantBits"]) < container:
                return int(pixels["SignificantBits"])
            tag = tif.pages[0].tags.get("MaxSampleValue")
            if tag is not None:
                top = int(np.max(tag.value))
                if 0 < top < 2**container - 1:
                    return int(top).bit_length()
    except Exception as exc:  # metadata parsers choke on odd files; the image may still be fine
        logger.debug("%s: could not read a bit depth from the metadata: %s", path, exc)
    return None


def bright_fraction(image: np.ndarray) -> float:
    """Fraction of an image above its automatic threshold (the smaller of Li's and Otsu's).

    Particles are a minority of a micrograph, so a bright part that covers more than half of
    the image is the background: the particles are dark. On the TiO2 SEM images it is at most
    0.26, on their transmission (dark-particle) twins at least 0.74.
    """
    from skimage.filters import threshold_li, threshold_otsu

    # every other row and column: the thresholds barely move, at a quarter of the cost
    sample = np.asarray(image, np.float32)[::2, ::2]
    if float(sample.max()) <= float(sample.min()):
        return 0.0
    return min(float(np.mean(sample > threshold_li(sample))), float(np.mean(sample > threshold_otsu(sample))))


def to_float01(raw: np.ndarray, bit_depth: int | None = None,
               value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Scale an image to float32 in [0, 1].

    Parameters
    ----------
    raw : ndarray
        Stored values.
    bit_depth : int, optional
        Unsigned integers wider than 8 bits are divided by ``2**bit_depth - 1``; default: by
        the smallest of 8, 10, 12, 14, 16, 32 or 64 bits that holds this image's maximum, so
        that 12-bit detector data in a 16-bit container is not nearly black. Give the series'
        bit depth to scale every image of a run alike. uint8 is always divided by 255.
    value_range : (float, float), optional
        Floats and signed integers: the (low, high) mapped to 0 and 1, e.g. a series' range;
        default: the image's own :func:`robust_range`, or values as stored when that lies in
        [0, 1]. Values beyond are clipped; NaN and inf are set to the image's own low end.
        Signed integers are scaled by range, not by their dtype's: they are offset-corrected
        counts (e.g. a TEM camera's, small and partly negative), and the dtype's 65536 levels
        would squeeze them into a flat gray.

    Raises
    ------
    ValueError
        If an unsigned integer exceeds ``2**bit_depth - 1``.
    """
    if raw.dtype == np.bool_:
        return raw.astype(np.float32)
    if raw.dtype == np.uint8:
        return (raw / np.float32(255)).astype(np.float32, copy=False)
    if raw.dtype.kind == "u":
        # float32 holds 16-bit values exactly and divides them correctly rounded, as float64 then
        # rounding would: half the memory on large micrographs.
        data = raw.astype(np.float32 if raw.dtype.itemsize <= 2 else np.float64)
        top = float(data.max(initial=0))
        bits = bits_for_max(top) if bit_depth is None else int(bit_depth)
        if top > 2.0**bits - 1:
            raise ValueError(f"values reach {top:g}, more than {bits}-bit data can hold")
        return (data / (2.0**bits - 1)).astype(np.float32, copy=False)
    data = raw.astype(np.float64)
    finite = np.isfinite(data)
    own = robust_range(data) if value_range is None or not finite.all() else None
    if not finite.all():
        data = np.where(finite, data, own[0] if own else 0.0)
    if value_range is None:
        lo, hi = own or (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            return np.clip(data, 0.0, 1.0).astype(np.float32)
    else:
        lo, hi = (float(v) for v in value_range)
    if hi <= lo:
        return np.zeros(data.shape, np.float32)
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
