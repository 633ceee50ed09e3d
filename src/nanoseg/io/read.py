"""Reading micrographs: listing and loading a run's images as one series, one at a time or all."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nanoseg.errors import NanosegError
from nanoseg.io._common import logger, say_once as _say_once
from nanoseg.io.pixel_size import pixel_size_with_source
from nanoseg.io.raw import IMAGE_SUFFIXES, MIN_SIDE_PX, detect_info_bar, read_raw
from nanoseg.io.resample import resample
from nanoseg.io.scale import (
    DARK_BRIGHT_FRACTION,
    FrameStats,
    SeriesScale,
    bright_fraction,
    frame_stats,
    is_wide_unsigned,
    scale_bits,
    series_scale,
    to_float01,
)
from nanoseg.units import check_pixel_size_nm

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
        'hitachi-txt', 'jeol-txt', 'dm', 'emd', 'tia', 'mrc' (a vendor file's axes), or 'none'.
    bit_depth : int or None
        Unsigned integer images: the stored values were divided by ``2**bit_depth - 1``. None
        for float and signed integer images, which are scaled by their values' range.
    dark_inverted : bool
        The stored intensities were inverted: the particles are dark on a bright background
        (transmission images), and the workflow sees them bright.
    """

    image: np.ndarray
    pixel_size_nm: float | None
    info_bar_rows: int
    path: Path
    full_shape: tuple[int, int]
    pixel_size_source: str = field(default="none")
    bit_depth: int | None = field(default=None)
    dark_inverted: bool = field(default=False)

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
                     failures: list[dict[str, str]] | None = None, scale: float = 1.0) -> list[Micrograph]:
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
    scale : float
        Resample every micrograph by this factor (:func:`nanoseg.io.resample`), its pixel size
        with it: the run's working grid (:func:`nanoseg.grid.working_scale`).

    Returns
    -------
    list of Micrograph
    """
    if data_config.images is None:
        raise NanosegError("data.images: not set (point it to a folder of micrographs)")
    if not strict and failures is None:
        failures = []
    micrographs = read_micrographs(list_images(data_config.images), data_config, failures=None if strict else failures)
    if scale == 1.0:
        return micrographs
    return [_resampled(mg, scale) for mg in micrographs]


def _resampled(mg: Micrograph, scale: float) -> Micrograph:
    image, factor = resample(mg.image, scale)
    return replace(mg, image=image, pixel_size_nm=mg.pixel_size_nm / factor if mg.pixel_size_nm else None)


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

    With ``data.dark_particles`` 'auto' (the default) a series whose images mostly have dark
    particles on a bright background (transmission images, :func:`bright_fraction`) is inverted
    as a whole. Warns (logging) about images that still look dark after that (an odd image in a
    series, or an explicit setting that does not fit them), and about
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
    scale = series_scale([frame_stats(raw, mg.path) for raw, mg in frames], getattr(data_config, "bit_depth", "auto"),
                         getattr(data_config, "dark_particles", False))
    micrographs = [_finish(mg, raw, scale) for raw, mg in frames]
    del frames
    if micrographs:
        _say_once(logging.INFO, "intensity scale for %d micrograph(s): %s", len(micrographs), scale.text)
    _warn_dark_particles(micrographs, data_config.dark_particles, scale.dark_particles)
    sizes = {m.pixel_size_nm for m in micrographs}
    if len(sizes) > 1:
        folder = Path(micrographs[0].path).parent
        _say_once(logging.WARNING, "micrographs in %s have different pixel sizes: %s nm", folder,
                  ", ".join("none" if s is None else f"{s:g}" for s in sorted(sizes, key=lambda s: s or 0)))
    return micrographs


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
    mg = _finish(mg, raw, scale)
    _warn_dark_particles([mg], data_config.dark_particles, scale.dark_particles)
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
    return _finish(mg, raw, SeriesScale(scale.bits, None, scale.text))


#: Bytes of decoded frames kept for a second read of the same file in this process: a batch reads
#: each micrograph twice (a scan for the series' scale, then its task), a run once per stage.
FRAME_CACHE_BYTES = 256 << 20
_frames: OrderedDict[tuple[Any, ...], tuple[np.ndarray, Micrograph]] = OrderedDict()


def _read_frame(path: Path, pixel_size_nm: float | None, info_bar_rows: int | Literal["auto"], *, quiet: bool = False
                ) -> tuple[np.ndarray, Micrograph]:
    """The stored values without the info bar (read-only), and a Micrograph still without its image.

    ``quiet``: no warning about a missing pixel size (a first pass that reads the file again).
    """
    try:
        st = path.stat()
        # ctime and inode too: a file rewritten with its size and time restored is another file.
        key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
               pixel_size_nm, info_bar_rows)
    except OSError:
        key = None  # read_raw says what is wrong with the path
    frame = _frames.get(key) if key is not None else None
    if frame is None:
        frame = _decode_frame(path, pixel_size_nm, info_bar_rows)
        if key is not None and frame[0].nbytes <= FRAME_CACHE_BYTES:
            _frames[key] = frame
            while sum(raw.nbytes for raw, _ in _frames.values()) > FRAME_CACHE_BYTES:
                _frames.popitem(last=False)
    elif key is not None:
        _frames.move_to_end(key)
    raw, mg = frame
    if mg.pixel_size_nm is None and not quiet:
        _say_once(logging.WARNING, "%s: no pixel size in the metadata; sizes will be reported in px "
                  "(set data.pixel_size_nm or pass --pixel-size)", path)
    return raw, replace(mg, path=path)


def _decode_frame(path: Path, pixel_size_nm: float | None, info_bar_rows: int | Literal["auto"]
                  ) -> tuple[np.ndarray, Micrograph]:
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
    mg = Micrograph(image=np.empty((0, 0), np.float32), pixel_size_nm=size, info_bar_rows=bar, path=path,
                    full_shape=(int(raw.shape[0]), int(raw.shape[1])), pixel_size_source=source)
    raw = raw[: raw.shape[0] - bar] if bar else raw
    raw.flags.writeable = False  # shared by every reader of the cache
    return raw, mg


def _finish(mg: Micrograph, raw: np.ndarray, scale: SeriesScale) -> Micrograph:
    """Scale ``raw`` into ``mg.image`` (inverted for dark particles), warning about replaced and blank pixels."""
    bits, value_range = scale.bits, scale.value_range
    if raw.dtype.kind == "f":
        bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
        if bad:
            _say_once(logging.WARNING, "%s: %d of %d pixels are NaN or infinite and were set to the image's lowest "
                      "value; particles there cannot be found (re-export the image without missing data)",
                      mg.path, bad, raw.size)
    mg.image = to_float01(raw, bits if is_wide_unsigned(raw) else None, value_range)
    mg.bit_depth = scale_bits(raw, bits)
    if _std(mg.image) < BLANK_STD:
        finite = raw[np.isfinite(raw)] if raw.dtype.kind == "f" else raw
        value = f"{float(np.median(finite)):g}" if finite.size else "NaN"
        _say_once(logging.WARNING, "%s: image is blank (all pixels %s); no particles can be found "
                  "(check the acquisition or leave the file out)", mg.path, value)
    if scale.dark_particles:
        mg.image = (1.0 - mg.image).astype(np.float32)
        mg.dark_inverted = True
    return mg


def _std(image: np.ndarray) -> float:
    """Standard deviation of a 2-D image, a few rows at a time (no image-sized temporary)."""
    mean = float(image.mean(dtype=np.float64))
    step = max(1, (1 << 20) // max(1, image.shape[1]))
    squares = sum(float(np.square(image[r : r + step] - mean, dtype=np.float64).sum())
                  for r in range(0, image.shape[0], step))
    return (squares / max(1, image.size)) ** 0.5


def _warn_dark_particles(micrographs: Sequence[Micrograph], setting: bool | str, inverted: bool) -> None:
    """One warning for the images whose particles, as the workflow sees them, look dark."""
    flagged = [mg.path.name for mg in micrographs
               if _std(mg.image) >= BLANK_STD and bright_fraction(mg.image) > DARK_BRIGHT_FRACTION]
    if not flagged:
        return
    names = ", ".join(flagged[:3]) + (", ..." if len(flagged) > 3 else "")
    if setting == "auto":
        series = "dark, so every image was inverted" if inverted else "bright"
        hint = (f"unlike the rest of their series (particles {series}), their particles look dark; measure them "
                "apart, or set data.dark_particles (true: transmission images) for the whole series")
    elif setting:
        hint = ("particles look dark on a bright background after inversion; data.dark_particles is probably "
                "wrong for them (set data.dark_particles: auto or false)")
    else:
        hint = ("particles look dark on a bright background; set data.dark_particles: auto or true "
                "(or --set data.dark_particles=true)")
    _say_once(logging.WARNING, "%d of %d micrographs (%s): %s", len(flagged), len(micrographs), names, hint)


# --------------------------------------------------------------------------- info bar


