"""Reading and writing micrographs, masks and label images, with their pixel size.

Every micrograph enters the workflow through :func:`read_micrograph`: a 2-D float32 image in
[0, 1] with the instrument's info bar cropped off, plus the pixel size in nm and where it came
from. Formats: TIFF (8/16/32-bit integer, float), PNG, JPEG, BMP; RGB(A) is converted to gray.

Pixel size, first found wins:

1. an explicit override (``data.pixel_size_nm``, ``--pixel-size``);
2. the vendor metadata that RosettaSciIO's TIFF reader understands (Zeiss tag 34118,
   FEI/Thermo Fisher tag 34682, Olympus, JEOL, Hitachi, ImageJ in microns, ...);
3. OME-TIFF ``PhysicalSizeX`` (+ ``PhysicalSizeXUnit``, default µm);
4. ImageJ resolution tags with the ``unit=`` of the ImageJ description (nm, micron, ...);
5. baseline TIFF resolution tags in centimetres;
6. a Hitachi or JEOL text file beside the image (same name, ``.txt``), for any image format.

Inch-based resolution tags are print settings (72 dpi and the like), never a pixel size, and are
ignored. Without any of these a warning is logged and sizes are reported in px.
"""

from __future__ import annotations

import logging
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nanoseg.atomic import atomic_path
from nanoseg.errors import NanosegError

logger = logging.getLogger("nanoseg.io")


def _say_once(level: int, msg: str, *args: Any) -> None:
    # Every stage of a run reads the micrographs again; one warning per stage buries the others.
    from nanoseg.runtime import log_once

    log_once(logger, level, msg, *args)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
MIN_SIDE_PX = 32

#: Length units to nm: the one unit table (pixel-size metadata here, ``--pixel-size`` in the CLI).
#: Keys are lower case, with the spellings ImageJ, OME and RosettaSciIO use.
UNIT_NM: dict[str, float] = {
    "m": 1e9, "meter": 1e9, "metre": 1e9,
    "cm": 1e7, "centimeter": 1e7,
    "mm": 1e6, "millimeter": 1e6,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "microns": 1e3, "micrometer": 1e3, "\\u00b5m": 1e3,
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0,
    "a": 0.1, "å": 0.1, "angstrom": 0.1, "ångström": 0.1,
    "pm": 1e-3, "picometer": 1e-3,
}
# A row is "info-bar like" when at least this fraction of its pixels share one exact value:
# sample rows of the TiO2 SEM images reach at most 0.33, their bar rows at least 0.81.
_BAR_ROW_MODE_FRACTION = 0.6
_BAR_ROW_WEAK_FRACTION = 0.4
# Bit depths detectors digitise to; wide unsigned images are scaled by the smallest that fits.
_DETECTOR_BITS = (8, 10, 12, 14, 16, 32, 64)
#: An image whose [0, 1] intensities vary less than this (standard deviation) is blank.
BLANK_STD = 1e-6


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
        'hitachi-txt', 'jeol-txt', or 'none'.
    bit_depth : int or None
        Integer images: the stored values were divided by ``2**bit_depth - 1`` (signed ones
        shifted by their dtype's minimum first). None for float images.
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

    Hidden files (including half-written temporaries of atomic writes) are skipped.

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
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
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
    images outside [0, 1] are scaled by the series' range likewise. The scale is logged once.

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
    bit_depth = getattr(data_config, "bit_depth", "auto")
    frames = []
    for p in paths:
        try:
            frames.append(_read_frame(Path(p), data_config.pixel_size_nm, data_config.info_bar_rows))
        except NanosegError as exc:
            skip_or_raise(failures, p, exc)
    if failures and not frames:
        raise nothing_usable(failures)
    raws = [raw for raw, _ in frames]
    bits, source = _series_bits(raws, [mg.path for _, mg in frames], bit_depth)
    value_range = _series_float_range(raws)
    scale = _scale_text(raws, bits, source, value_range)
    micrographs = []
    for raw, mg in frames:
        _finish(mg, raw, bits, value_range)
        if data_config.dark_particles:
            mg.image = (1.0 - mg.image).astype(np.float32)
        micrographs.append(mg)
    del frames, raws
    if micrographs:
        _say_once(logging.INFO, "intensity scale for %d micrograph(s): %s", len(micrographs), scale)
    _warn_dark_particles(micrographs, bool(data_config.dark_particles))
    sizes = {m.pixel_size_nm for m in micrographs}
    if len(sizes) > 1:
        folder = Path(micrographs[0].path).parent
        _say_once(logging.WARNING, "micrographs in %s have different pixel sizes: %s nm", folder,
                  ", ".join("none" if s is None else f"{s:g}" for s in sorted(sizes, key=lambda s: s or 0)))
    return micrographs


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
        TIFF, PNG, JPEG or BMP file with one 2-D gray or RGB(A) image.
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
    bits, _ = _series_bits([raw], [mg.path], bit_depth)
    return _finish(mg, raw, bits, None)


def _read_frame(path: Path, pixel_size_nm: float | None, info_bar_rows: int | Literal["auto"]
                ) -> tuple[np.ndarray, Micrograph]:
    """The stored values without the info bar, and a Micrograph still without its image."""
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
        size, source = float(pixel_size_nm), "override"
    else:
        size, source = _find_pixel_size(path)
        if size is None:
            _say_once(logging.WARNING, "%s: no pixel size in the metadata; sizes will be reported in px "
                      "(set data.pixel_size_nm or pass --pixel-size)", path)
    mg = Micrograph(image=np.empty((0, 0), np.float32), pixel_size_nm=size, info_bar_rows=bar, path=path,
                    full_shape=(int(raw.shape[0]), int(raw.shape[1])), pixel_size_source=source)
    return (raw[: raw.shape[0] - bar] if bar else raw), mg


def _finish(mg: Micrograph, raw: np.ndarray, bits: int | None,
            value_range: tuple[float, float] | None) -> Micrograph:
    """Scale ``raw`` into ``mg.image``, warning about replaced and blank pixels."""
    if raw.dtype.kind == "f":
        bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
        if bad:
            _say_once(logging.WARNING, "%s: %d of %d pixels are NaN or infinite and were set to the image's lowest "
                      "value; particles there cannot be found (re-export the image without missing data)",
                      mg.path, bad, raw.size)
    mg.image = to_float01(raw, bits if _is_wide_unsigned(raw) else None, value_range)
    mg.bit_depth = _scale_bits(raw, bits)
    if float(mg.image.std()) < BLANK_STD:
        finite = raw[np.isfinite(raw)] if raw.dtype.kind == "f" else raw
        value = f"{float(np.median(finite)):g}" if finite.size else "NaN"
        _say_once(logging.WARNING, "%s: image is blank (all pixels %s); no particles can be found "
                  "(check the acquisition or leave the file out)", mg.path, value)
    return mg


def _is_wide_unsigned(raw: np.ndarray) -> bool:
    return raw.dtype.kind == "u" and raw.dtype.itemsize > 1


def _scale_bits(raw: np.ndarray, bits: int | None) -> int | None:
    """Bit depth the image was scaled by (None for floats)."""
    if _is_wide_unsigned(raw):
        return bits
    if raw.dtype.kind in "ui":
        return raw.dtype.itemsize * 8
    return 1 if raw.dtype == np.bool_ else None


def bits_for_max(value: float) -> int:
    """Smallest usual detector bit depth (8, 10, 12, 14, 16, 32 or 64) that holds ``value``."""
    return next((b for b in _DETECTOR_BITS if value <= 2.0**b - 1), 64)


def _series_bits(raws: Sequence[np.ndarray], paths: Sequence[Path], bit_depth: int | Literal["auto"]
                 ) -> tuple[int | None, str]:
    """One bit depth for the wide unsigned images of a series, and where it came from."""
    wide = [(raw, path) for raw, path in zip(raws, paths) if _is_wide_unsigned(raw) and raw.size]
    if not wide:
        return None, "none"
    if bit_depth != "auto":
        bits = int(bit_depth)
        for raw, path in wide:
            top = int(raw.max())
            if top > 2**bits - 1:
                raise NanosegError(
                    f"{path}: values reach {top}, more than {bits}-bit data can hold; "
                    f"set data.bit_depth to the detector's bit depth (at least {top.bit_length()}) or 'auto'"
                )
        return bits, "data.bit_depth"
    tops = [float(raw.max()) for raw, _ in wide]
    needed = bits_for_max(max(tops))
    stated = [s for s in (_stated_bit_depth(path, raw.dtype) for raw, path in wide) if s is not None]
    if not stated:
        return needed, "largest value" if len(wide) == 1 else "largest value of the series"
    if needed > max(stated):
        _say_once(logging.WARNING, "%s: the metadata states %d-bit data but values reach %g; scaling by %d bits "
                  "instead (set data.bit_depth to choose the scale)", wide[int(np.argmax(tops))][1], max(stated),
                  max(tops), needed)
        return needed, "largest value (the metadata's bit depth is too small)"
    return max(stated), "file metadata"


def _series_float_range(raws: Sequence[np.ndarray]) -> tuple[float, float] | None:
    """Common range of a series' float images, when any of them lies outside [0, 1]."""
    ranges = []
    for raw in raws:
        if raw.dtype.kind != "f":
            continue
        finite = raw[np.isfinite(raw)]
        if finite.size:
            ranges.append((float(finite.min()), float(finite.max())))
    if not ranges:
        return None
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    return None if lo >= 0.0 and hi <= 1.0 else (lo, hi)


def _scale_text(raws: Sequence[np.ndarray], bits: int | None, source: str,
                value_range: tuple[float, float] | None) -> str:
    """How a series' images were scaled to [0, 1], for the log."""
    parts = []
    if bits is not None:
        parts.append(f"{bits}-bit (from the {source}): 16/32-bit values / {2**bits - 1}")
    if any(raw.dtype == np.uint8 for raw in raws):
        parts.append("8-bit values / 255")
    if any(raw.dtype.kind == "i" for raw in raws):
        parts.append("signed values over their dtype's range")
    if value_range is not None:
        parts.append(f"float values from [{value_range[0]:g}, {value_range[1]:g}] (the series' range)")
    elif any(raw.dtype.kind == "f" for raw in raws):
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
            pixels = _ome_pixels_with(tif.ome_metadata, "SignificantBits") if tif.is_ome and tif.ome_metadata else None
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
               if float(mg.image.std()) >= BLANK_STD and bright_fraction(mg.image) > 0.5]
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


def read_pixel_size_nm(path: str | Path) -> float | None:
    """Pixel size in nm from the file's metadata, or None (with a logged warning) if it has none."""
    path = Path(path)
    size, _ = _find_pixel_size(path)
    if size is None:
        _say_once(logging.WARNING, "%s: no pixel size in the metadata; sizes will be reported in px "
                  "(set data.pixel_size_nm or pass --pixel-size)", path)
    return size


def pixel_size_with_source(path: str | Path) -> tuple[float | None, str]:
    """Pixel size in nm and its source (see :class:`Micrograph`), without a warning when unknown."""
    return _find_pixel_size(Path(path))


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


def read_labels(path: str | Path) -> np.ndarray:
    """Read an instance label image (0 = background) as an integer array (int32 or int64).

    Raises
    ------
    NanosegError
        If the image is not 2-D or holds negative or non-integer values.
    """
    path = Path(path)
    return _as_label_image(read_raw(path, min_side_px=1), path)


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
            f"{path}: looks like an anti-aliased binary mask ({values.size} grey levels); "
            "threshold it at 128 or pass --labels if it is a label image"
        )
    if raw.dtype.itemsize == 1:
        raise NanosegError(
            f"{path}: 8-bit image with {values.size} grey levels is neither a binary mask nor a 16/32-bit label "
            "image; pass --labels if it is a label image (0 = background), or save the mask with only 0 and 255"
        )
    if raw.dtype.kind == "f" and np.any(values != np.round(values)):
        raise NanosegError(
            f"{path}: annotation holds fractional values (a probability map?); save a 0/255 mask or integer labels"
        )
    return _as_label_image(raw, path)


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
        bit depth to scale every image of a run alike. uint8 is always divided by 255, signed
        integers are shifted by their dtype minimum and divided by the dtype's range.
    value_range : (float, float), optional
        Floats: the (low, high) mapped to 0 and 1, e.g. a series' range; default: floats in
        [0, 1] are kept, others scaled from their own min-max range. NaN and inf are set to the
        lowest finite value.

    Raises
    ------
    ValueError
        If an unsigned integer exceeds ``2**bit_depth - 1``.
    """
    if raw.dtype == np.bool_:
        return raw.astype(np.float32)
    if raw.dtype.kind in "ui":
        if raw.dtype == np.uint8:
            return (raw / np.float32(255)).astype(np.float32)
        data = raw.astype(np.float64)
        if raw.dtype.kind == "i":
            info = np.iinfo(raw.dtype)
            return ((data - info.min) / (float(info.max) - info.min)).astype(np.float32)
        top = float(data.max(initial=0))
        bits = bits_for_max(top) if bit_depth is None else int(bit_depth)
        if top > 2.0**bits - 1:
            raise ValueError(f"values reach {top:g}, more than {bits}-bit data can hold")
        return (data / (2.0**bits - 1)).astype(np.float32)
    data = raw.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.all():
        data = np.where(finite, data, np.nanmin(np.where(finite, data, np.nan)) if finite.any() else 0.0)
    if value_range is None:
        lo, hi = float(data.min()), float(data.max())
        if lo >= 0.0 and hi <= 1.0:
            return data.astype(np.float32)
    else:
        lo, hi = (float(v) for v in value_range)
    if hi <= lo:
        return np.zeros(data.shape, np.float32)
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def read_raw(path: Path, min_side_px: int = MIN_SIDE_PX) -> np.ndarray:
    """Pixel values as stored, 2-D (RGB(A) converted to gray); palette TIFFs give raw indices.

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
        raise NanosegError(f"{path}: unsupported image type '{suffix}' (use TIFF, PNG, JPEG or BMP)")
    if path.stat().st_size == 0:
        raise NanosegError(f"{path}: file is empty; re-export the image")
    try:
        if suffix in (".tif", ".tiff"):
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


@contextmanager
def _quiet(*logger_names: str) -> Iterator[None]:
    """Silence third-party loggers that report, on stderr, what we raise as one clear error."""
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


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
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if getattr(img, "n_frames", 1) > 1:
            raise NanosegError(f"{path}: file holds {img.n_frames} frames; save a single image per file")
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


# --------------------------------------------------------------------------- pixel size


def _find_pixel_size(path: Path) -> tuple[float | None, str]:
    finders: list[tuple[Any, str | None]] = [(_pixel_size_sidecar, None)]
    if path.suffix.lower() in (".tif", ".tiff"):
        finders = [(_pixel_size_rsciio, "rsciio"), (_pixel_size_tiff_tags, None)] + finders
    for finder, source in finders:
        try:
            found = finder(path)
        except Exception as exc:  # metadata parsers choke on odd files; the image may still be fine
            logger.debug("%s: %s could not parse the metadata: %s", path, finder.__name__, exc)
            continue
        if found is not None:
            size, src = found if isinstance(found, tuple) else (found, source)
            if np.isfinite(size) and size > 0:
                return float(size), src
    return None, "none"


def _unit_to_nm(unit: Any) -> float | None:
    if unit is None:
        return None
    key = str(unit).strip().lower()
    return UNIT_NM.get(key)


def _pixel_size_rsciio(path: Path) -> float | None:
    from rsciio.tiff import file_reader

    with _quiet("rsciio", "tifffile"):
        signals = file_reader(str(path))
    if not signals:
        return None
    axes = signals[0].get("axes", [])
    # The last axis is x (width). Units RosettaSciIO could not determine come back as None and
    # a scale of 1: not a calibration.
    for axis in reversed(axes):
        factor = _unit_to_nm(axis.get("units"))
        if factor is not None and axis.get("scale"):
            return float(axis["scale"]) * factor
    return None


def _pixel_size_tiff_tags(path: Path) -> tuple[float, str] | None:
    import tifffile

    with _quiet("tifffile"), tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if tif.is_ome and tif.ome_metadata:
            size = _pixel_size_ome(tif.ome_metadata)
            if size is not None:
                return size, "ome"
        tags = page.tags
        xres = tags.get("XResolution")
        if xres is None:
            return None
        value = xres.value
        px_per_unit = value[0] / value[1] if isinstance(value, tuple) else float(value)
        if not px_per_unit > 0:
            return None
        imagej = tif.imagej_metadata or {}
        unit = imagej.get("unit")
        if unit is not None and _unit_to_nm(unit.replace("\\u00B5", "µ")) is not None:
            return _unit_to_nm(unit.replace("\\u00B5", "µ")) / px_per_unit, "imagej"
        res_unit = tags.get("ResolutionUnit")
        if res_unit is not None and int(res_unit.value) == 3:  # centimetre
            return 1e7 / px_per_unit, "tiff"
    return None


_LENGTH_WITH_UNIT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Zµμå]+)\s*$")


def _pixel_size_sidecar(path: Path) -> tuple[float, str] | None:
    """Hitachi and JEOL SEMs write the metadata to a text file beside the image (same stem, .txt).

    Hitachi: ``PixelSize=<nm>``. JEOL: ``$$SM_MICRON_BAR <px>`` and ``$$SM_MICRON_MARKER <length>``
    (e.g. ``500nm``): the scale bar's length in px and in physical units.
    """
    sidecar = next((c for c in (path.with_suffix(".txt"), path.with_suffix(".TXT")) if c.is_file()), None)
    if sidecar is None or sidecar.stat().st_size > 1_000_000:
        return None
    entries: dict[str, str] = {}
    for line in sidecar.read_text(errors="replace").splitlines():
        line = line.strip()
        if "=" in line and not line.startswith("$"):
            key, _, value = line.partition("=")
        else:
            key, _, value = line.partition(" ")
        entries.setdefault(key.strip().lstrip("$").upper(), value.strip())
    if "PIXELSIZE" in entries:
        try:
            return float(entries["PIXELSIZE"]), "hitachi-txt"
        except ValueError:
            pass
    bar, marker = entries.get("SM_MICRON_BAR"), entries.get("SM_MICRON_MARKER")
    if bar and marker:
        match = _LENGTH_WITH_UNIT.match(marker)
        factor = _unit_to_nm(match.group(2)) if match else None
        try:
            bar_px = float(bar.split()[0])
        except ValueError:
            return None
        if factor is not None and bar_px > 0:
            return float(match.group(1)) * factor / bar_px, "jeol-txt"
    return None


def _pixel_size_ome(xml_text: str) -> float | None:
    pixels = _ome_pixels_with(xml_text, "PhysicalSizeX")
    if pixels is None:
        return None
    factor = _unit_to_nm(pixels.get("PhysicalSizeXUnit", "µm"))  # the OME schema's default unit
    return None if factor is None else float(pixels["PhysicalSizeX"]) * factor


def _ome_pixels_with(xml_text: str, attribute: str) -> dict[str, str] | None:
    """Attributes of the first OME ``Pixels`` element that has ``attribute``."""
    for element in ET.fromstring(xml_text).iter():
        if element.tag.rsplit("}", 1)[-1] == "Pixels" and attribute in element.attrib:
            return dict(element.attrib)
    return None


# --------------------------------------------------------------------------- writing


def write_tiff(path: str | Path, array: np.ndarray, pixel_size_nm: float | None = None) -> Path:
    """Write a 2-D array as TIFF, atomically, with the pixel size as resolution tags.

    uint8, uint16 and float32 images are written ImageJ-style (resolution in px per micron,
    ``unit=micron``), so Fiji and :func:`read_pixel_size_nm` read the pixel size back; other
    dtypes get baseline TIFF resolution tags in centimetres. bool arrays are written as uint8 0/255.
    The data is zlib-compressed (lossless).
    """
    import tifffile

    path = Path(path)
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * np.uint8(255)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    kwargs: dict[str, Any] = {"compression": "zlib"}
    imagej = array.dtype in (np.uint8, np.uint16, np.float32) and array.ndim == 2
    if pixel_size_nm is not None:
        if not (np.isfinite(pixel_size_nm) and pixel_size_nm > 0):
            raise ValueError(f"pixel_size_nm must be positive and finite, got {pixel_size_nm}")
        if imagej:
            px_per_um = 1e3 / pixel_size_nm
            kwargs.update(imagej=True, resolution=(px_per_um, px_per_um), metadata={"unit": "micron"})
        else:
            px_per_cm = 1e7 / pixel_size_nm
            kwargs.update(resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER")
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, **kwargs)
    return path


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 gray (H, W) or RGB(A) (H, W, 3|4) image as PNG, atomically.

    bool arrays become 0/255; float arrays are taken as [0, 1] and scaled to 0-255.
    """
    from PIL import Image

    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * np.uint8(255)
    elif array.dtype.kind == "f":
        array = np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"write_png needs uint8, bool or float [0, 1] data, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ValueError(f"write_png needs a (H, W) or (H, W, 3|4) array, got shape {array.shape}")
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path
