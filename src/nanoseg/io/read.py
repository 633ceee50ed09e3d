"""Reading micrographs: listing and loading a run's images, scaling them to [0, 1], info bars."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nanoseg.errors import NanosegError
from nanoseg.io._common import logger, quiet as _quiet, say_once as _say_once
from nanoseg.io.pixel_size import ome_pixels_with, pixel_size_with_source
from nanoseg.io.vendor import VENDOR_SUFFIXES, is_vendor_file, read_vendor
from nanoseg.units import check_pixel_size_nm

#: Micrograph files: TIFF, PNG, JPEG, BMP, and the transmission vendors' formats read through
#: RosettaSciIO (:data:`nanoseg.io.vendor.VENDOR_SUFFIXES`: DigitalMicrograph, EMD, TIA, MRC).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp") + VENDOR_SUFFIXES
MIN_SIDE_PX = 32
# A row is "info-bar like" when at least this fraction of its pixels share one exact value:
# sample rows of the TiO2 SEM images reach at most 0.33, their bar rows at least 0.81.
_BAR_ROW_MODE_FRACTION = 0.6
_BAR_ROW_WEAK_FRACTION = 0.4
# Bit depths detectors digitise to; wide unsigned images are scaled by the smallest that fits.
_DETECTOR_BITS = (8, 10, 12, 14, 16, 32, 64)
#: An image whose [0, 1] intensities vary less than this (standard deviation) is blank.
BLANK_STD = 1e-6
#: Fraction of an image's values (at least one value) at each end that :func:`robust_range`
#: looks past for its percentiles: 100 pixels of a 1-megapixel micrograph.
OUTLIER_FRACTION = 1e-4
# An extreme value further than this fraction of the percentiles' range beyond them is an outlier
# (a hot or dead pixel, an overflow); closer, it is the image's own tail and bounds the range.
_OUTLIER_TAIL = 0.1
# An image whose values reach less than 1/this of its series' is scaled to look dim: warned about.
_DIM_IN_SERIES = 2.0


@dataclass
class Micrograph:
    """One micrograph, ready for the workflow.

    Attributes
    ----------
    image : ndarray of float32, shape (H, W)
        Intensities in [0, 1], info bar cropped off.
    pixel_size_nm : float or None
        Edge length of a pixel in nm; None when unknown (sizes are then in px).
    info_bar_rows : int
        Rows cropped off the bottom of the file's image.
    path : Path
        The file it was read from.
    full_shape : tuple of int
        Shape of the image in the file, before cropping.
    pixel_size_source : str
        Where the pixel size came from: 'override', 'rsciio', 'ome', 'imagej', 'tiff',
        'hitachi-txt', 'jeol-txt', 'dm', 'emd', 'tia', 'mrc' (a vendor file's axes), or 'none'.
    bit_depth : int or None
        Unsigned integer images: the stored values were divided by ``2**bit_depth - 1``. None
        for float and signed integer images, which are scaled by their values' range.
    """

    image: np.ndarray
    pixel_size_nm: float | None
    info_bar_rows: int
    path: Path
    full_shape: tuple[int, int]
    pixel_size_source: str = field(default="none")
    bit_depth: int | None = field(default=None)

    @property
    def stem(self) -> str:
        """File name without suffix: the key of this micrograph in every output folder."""
        return self.path.stem


# --------------------------------------------------------------------------- listing / loading


def list_images(folder: str | Path) -> list[Path]:
    """Micrograph files in ``folder`` (sorted by name), or ``[folder]`` if it is one image file.

    Hidden files (including half-written temporaries of atomic writes) are skipped, and so are
    TIA ``.emi`` files in a folder: the ``.ser`` files beside them hold the images (an ``.emi``
    given by name is read).

    Raises
    ------
    NanosegError
        If ``folder`` does not exist or holds no image.
    """
    folder = Path(folder)
    if folder.is_file():
        if folder.suffix.lower() not in IMAGE_SUFFIXES:
            raise NanosegError(f"{folder}: not an image file (use one of {', '.join(IMAGE_SUFFIXES)})")
        return [folder]
    if not folder.is_dir():
        raise NanosegError(f"{folder}: no such image folder (set data.images to a folder of micrographs)")
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p.suffix.lower() != ".emi"
        and not p.name.startswith(".")
    )
    if not files:
        raise NanosegError(f"{folder}: no images found (expected {', '.join(IMAGE_SUFFIXES)} files)")
    return files


def load_micrographs(data_config: Any, *, strict: bool = False,
                     failures: list[dict[str, str]] | None = None) -> list[Micrograph]:
    """Read every micrograph of ``data_config.images`` as one series (see :func:`read_micrographs`).

    The workflow's stages read their images through here. They leave out a file that cannot be
    read (with a warning) rather than stop: a run that was to stop at it has stopped already,
    before its first stage, in :func:`nanoseg.pipeline.check_inputs`.

    Parameters
    ----------
    data_config : nanoseg.config.DataConfig
    strict : bool
        Raise at the first file that cannot be read instead of leaving it out.
    failures : list, optional
        Receives ``{"image": path, "error": reason}`` for each file left out.

    Returns
    -------
    list of Micrograph
    """
    if data_config.images is None:
        raise NanosegError("data.images: not set (point it to a folder of micrographs)")
    if not strict and failures is None:
        failures = []
    return read_micrographs(list_images(data_config.images), data_config, failures=None if strict else failures)


def read_micrographs(paths: Sequence[str | Path], data_config: Any, *,
                     failures: list[dict[str, str]] | None = None) -> list[Micrograph]:
    """Read micrographs as one series: one intensity scale for all, particles bright.

    Every image of a run is scaled by the same bit depth (``data.bit_depth``; 'auto': the depth
    the files state, else the smallest of 8, 10, 12, 14, 16 or 32 bits that holds the largest
    value of the whole series), so one detector count is one input value in every image. Float
    images outside [0, 1], and signed integer images, are scaled by the series' range likewise
    (:func:`robust_range`: a few outlier pixels do not set it). The scale is logged once, each
    image's range at debug level, and an image that reaches less than half the series' values
    (it then looks dim) is warned about.

    Warns (logging) about images that look like their particles are dark on a bright
    background while ``data.dark_particles`` is false (or bright while it is true), and about
    differing pixel sizes; :func:`read_micrograph`'s warnings (NaN pixels, blank images) too.

    Parameters
    ----------
    paths : sequence of path-like
        Micrograph files, e.g. from :func:`list_images`.
    data_config : nanoseg.config.DataConfig
        Uses ``pixel_size_nm``, ``info_bar_rows``, ``bit_depth`` and ``dark_particles`` (images
        are inverted so that particles are always bright).
    failures : list, optional
        When given, a file that cannot be read is left out with a warning and recorded here as
        ``{"image": path, "error": reason}``, and the series' scale comes from the files that
        can be read; without it the first such file raises.

    Returns
    -------
    list of Micrograph

    Raises
    ------
    NanosegError
        As :func:`read_micrograph` (with ``failures``: only when no file can be read); or if an
        image holds values above an explicit bit depth.
    """
    frames = []
    for p in paths:
        try:
            frames.append(_read_frame(Path(p), data_config.pixel_size_nm, data_config.info_bar_rows))
        except NanosegError as exc:
            skip_or_raise(failures, p, exc)
    if failures and not frames:
        raise nothing_usable(failures)
    scale = series_scale([frame_stats(raw, mg.path) for raw, mg in frames], getattr(data_config, "bit_depth", "auto"))
    micrographs = [_finish(mg, raw, scale, data_config.dark_particles) for raw, mg in frames]
    del frames
    if micrographs:
        _say_once(logging.INFO, "intensity scale for %d micrograph(s): %s", len(micrographs), scale.text)
    _warn_dark_particles(micrographs, bool(data_config.dark_particles))
    sizes = {m.pixel_size_nm for m in micrographs}
    if len(sizes) > 1:
        folder = Path(micrographs[0].path).parent
        _say_once(logging.WARNING, "micrographs in %s have different pixel sizes: %s nm", folder,
                  ", ".join("none" if s is None else f"{s:g}" for s in sorted(sizes, key=lambda s: s or 0)))
    return micrographs


@dataclass(frozen=True)
class FrameStats:
    """What the common intensity scale of a series needs from one of its images."""

    path: Path
    dtype: str
    top: float | None  # largest value, for wide unsigned images
    stated_bits: int | None  # bit depth the file states beyond its container
    value_range: tuple[float, float] | None  # robust_range of any but uint8 and bool images
    pixel_size_nm: float | None = None  # as the image will be measured (None: not calibrated)


@dataclass(frozen=True)
class SeriesScale:
    """How every image of a series is scaled to [0, 1] (:func:`series_scale`)."""

    bits: int | None  # divisor 2**bits - 1 of wide unsigned images
    value_range: tuple[float, float] | None  # float (outside [0, 1]) and signed images: the series' range
    text: str  # for the log
    warnings: tuple[str, ...] = ()  # what the results should say about the scale (dim images)


def frame_stats(raw: np.ndarray, path: Path) -> FrameStats:
    """The numbers of one image (info bar cropped) that :func:`series_scale` combines."""
    wide = _is_wide_unsigned(raw) and raw.size > 0
    value_range = robust_range(raw) if raw.dtype.kind in "uif" and raw.dtype != np.uint8 else None
    return FrameStats(path=Path(path), dtype=raw.dtype.str, top=float(raw.max()) if wide else None,
                      stated_bits=_stated_bit_depth(Path(path), raw.dtype) if wide else None,
                      value_range=value_range)


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


def scan_micrograph(path: str | Path, data_config: Any) -> FrameStats:
    """Read one file of a series for its :class:`FrameStats` only (a batch's first pass).

    Raises
    ------
    NanosegError
        As :func:`read_micrograph`.
    """
    raw, mg = _read_frame(Path(path), data_config.pixel_size_nm, data_config.info_bar_rows, quiet=True)
    return replace(frame_stats(raw, mg.path), pixel_size_nm=mg.pixel_size_nm)


def read_in_series(path: str | Path, data_config: Any, scale: SeriesScale) -> Micrograph:
    """Read one micrograph of a series with the series' scale: the image :func:`read_micrographs`
    gives for it, without the other images in memory (a batch's second pass).

    Raises
    ------
    NanosegError
        As :func:`read_micrograph`.
    """
    raw, mg = _read_frame(Path(path), data_config.pixel_size_nm, data_config.info_bar_rows)
    mg = _finish(mg, raw, scale, data_config.dark_particles)
    _warn_dark_particles([mg], bool(data_config.dark_particles))
    return mg


def skip_or_raise(failures: list[dict[str, str]] | None, path: str | Path, exc: NanosegError) -> None:
    """Record a micrograph a batch leaves out, or re-raise ``exc`` when the batch is strict.

    Call it in the ``except`` clause around the work on one image.

    Parameters
    ----------
    failures : list or None
        The batch's failures; None means strict: ``exc`` is raised.
    path : path-like
        The micrograph.
    exc : NanosegError
        Why it failed; a leading ``"<path>: "`` is dropped from the recorded reason.
    """
    if failures is None:
        raise exc
    reason = str(exc).removeprefix(f"{path}: ")
    logger.warning("%s: left out: %s", path, reason)
    failures.append({"image": str(path), "error": reason})


def nothing_usable(failures: Sequence[dict[str, str]]) -> NanosegError:
    """The one-line error for a batch in which every micrograph failed."""
    first = failures[0]
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    return NanosegError(f"none of the {len(failures)} micrograph(s) could be used: "
                        f"{first['image']}: {first['error']}{more}")


# --------------------------------------------------------------------------- reading


def read_micrograph(
    path: str | Path,
    pixel_size_nm: float | None = None,
    info_bar_rows: int | Literal["auto"] = "auto",
    bit_depth: int | Literal["auto"] = "auto",
) -> Micrograph:
    """Read a micrograph as float32 in [0, 1], crop its info bar, find its pixel size.

    A micrograph read alone is scaled by its own bit depth; read a run's images with
    :func:`read_micrographs` to give them all one scale.

    Parameters
    ----------
    path : path-like
        TIFF, PNG, JPEG or BMP file with one 2-D gray or RGB(A) image, or a DigitalMicrograph
        (.dm3, .dm4), EMD, TIA (.ser, .emi) or MRC file that holds one 2-D image.
    pixel_size_nm : float, optional
        Override of the pixel size in nm; default: read from the metadata.
    info_bar_rows : int or 'auto'
        Rows of instrument info bar at the bottom; 'auto' detects it, 0 keeps every row.
    bit_depth : int or 'auto'
        Unsigned integer images above 8 bits are divided by ``2**bit_depth - 1``. 'auto': the
        depth the file states (OME ``SignificantBits``, TIFF ``MaxSampleValue``), else the
        smallest of 8, 10, 12, 14, 16 or 32 bits that holds the image's largest value.

    Returns
    -------
    Micrograph

    Raises
    ------
    NanosegError
        If the file is unreadable, not a single 2-D image, too small, or holds values above
        ``bit_depth``.
    """
    raw, mg = _read_frame(Path(path), pixel_size_nm, info_bar_rows)
    scale = series_scale([frame_stats(raw, mg.path)], bit_depth)
    # Alone, a float image is taken as stored: there is no series whose range could scale it.
    return _finish(mg, raw, SeriesScale(scale.bits, None, scale.text), dark_particles=False)


def _read_frame(path: Path, pixel_size_nm: float | None, info_bar_rows: int | Literal["auto"], *, quiet: bool = False
                ) -> tuple[np.ndarray, Micrograph]:
    """The stored values without the info bar, and a Micrograph still without its image.

    ``quiet``: no warning about a missing pixel size (a first pass that reads the file again).
    """
    raw = read_raw(path)
    if info_bar_rows == "auto":
        bar = detect_info_bar(raw)
    else:
        bar = int(info_bar_rows)
        if bar < 0 or bar > raw.shape[0] - MIN_SIDE_PX:
            raise NanosegError(
                f"{path}: info_bar_rows={bar} leaves fewer than {MIN_SIDE_PX} rows of a {raw.shape[0]}-row "
                "image (set data.info_bar_rows to 'auto', 0 or the bar's height)"
            )
    if raw.shape[0] - bar < MIN_SIDE_PX:
        raise NanosegError(
            f"{path}: only {raw.shape[0] - bar} rows are left above the {bar}-row info bar; "
            "use the full-size micrograph or set data.info_bar_rows to 0"
        )
    if pixel_size_nm is not None:
        # An override is taken as square: it is how a user measures non-square or absurd metadata anyway.
        size, source = check_pixel_size_nm(pixel_size_nm, "data.pixel_size_nm"), "override"
    else:
        size, source = pixel_size_with_source(path)
        if size is None and not quiet:
            _say_once(logging.WARNING, "%s: no pixel size in the metadata; sizes will be reported in px "
                      "(set data.pixel_size_nm or pass --pixel-size)", path)
    mg = Micrograph(image=np.empty((0, 0), np.float32), pixel_size_nm=size, info_bar_rows=bar, path=path,
                    full_shape=(int(raw.shape[0]), int(raw.shape[1])), pixel_size_source=source)
    return (raw[: raw.shape[0] - bar] if bar else raw), mg


def _finish(mg: Micrograph, raw: np.ndarray, scale: SeriesScale, dark_particles: bool) -> Micrograph:
    """Scale ``raw`` into ``mg.image`` (inverted for dark particles), warning about replaced and blank pixels."""
    bits, value_range = scale.bits, scale.value_range
    if raw.dtype.kind == "f":
        bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
        if bad:
            _say_once(logging.WARNING, "%s: %d of %d pixels are NaN or infinite and were set to the image's lowest "
                      "value; particles there cannot be found (re-export the image without missing data)",
                      mg.path, bad, raw.size)
    mg.image = to_float01(raw, bits if _is_wide_unsigned(raw) else None, value_range)
    mg.bit_depth = _scale_bits(raw, bits)
    if _std(mg.image) < BLANK_STD:
        finite = raw[np.isfinite(raw)] if raw.dtype.kind == "f" else raw
        value = f"{float(np.median(finite)):g}" if finite.size else "NaN"
        _say_once(logging.WARNING, "%s: image is blank (all pixels %s); no particles can be found "
                  "(check the acquisition or leave the file out)", mg.path, value)
    if dark_particles:
        mg.image = (1.0 - mg.image).astype(np.float32)
    return mg


def _std(image: np.ndarray) -> float:
    """Standard deviation of a 2-D image, a few rows at a time (no image-sized temporary)."""
    mean = float(image.mean(dtype=np.float64))
    step = max(1, (1 << 20) // max(1, image.shape[1]))
    squares = sum(float(np.square(image[r : r + step] - mean, dtype=np.float64).sum())
                  for r in range(0, image.shape[0], step))
    return (squares / max(1, image.size)) ** 0.5


def _is_wide_unsigned(raw: np.ndarray) -> bool:
    return raw.dtype.kind == "u" and raw.dtype.itemsize > 1


def _scale_bits(raw: np.ndarray, bits: int | None) -> int | None:
    """Bit depth the image was scaled by (None for float and signed images)."""
    if _is_wide_unsigned(raw):
        return bits
    if raw.dtype == np.uint8:
        return 8
    return 1 if raw.dtype == np.bool_ else None


def bits_for_max(value: float) -> int:
    """Smallest usual detector bit depth (8, 10, 12, 14, 16, 32 or 64) that holds ``value``."""
    return next((b for b in _DETECTOR_BITS if value <= 2.0**b - 1), 64)


def series_scale(stats: Sequence[FrameStats], bit_depth: int | Literal["auto"] = "auto") -> SeriesScale:
    """One intensity scale for a series of images (see :func:`read_micrographs`).

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
    return SeriesScale(bits, value_range, _scale_text(stats, bits, source, value_range), (dim,) if dim else ())


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


def _warn_dark_particles(micrographs: Sequence[Micrograph], dark_particles: bool) -> None:
    """One warning for the images whose particles, as the workflow sees them, look dark."""
    flagged = [mg.path.name for mg in micrographs
               if _std(mg.image) >= BLANK_STD and bright_fraction(mg.image) > 0.5]
    if not flagged:
        return
    names = ", ".join(flagged[:3]) + (", ..." if len(flagged) > 3 else "")
    if dark_particles:
        hint = ("particles look dark on a bright background after inversion; data.dark_particles is probably "
                "wrong for them (set data.dark_particles: false, or --set data.dark_particles=false)")
    else:
        hint = ("particles look dark on a bright background; set data.dark_particles: true "
                "(or --set data.dark_particles=true)")
    _say_once(logging.WARNING, "%d of %d micrographs (%s): %s", len(flagged), len(micrographs), names, hint)


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


# --------------------------------------------------------------------------- info bar


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
