"""Transmission micrographs in their vendors' formats, read through RosettaSciIO.

Gatan DigitalMicrograph (``.dm3``, ``.dm4``), EMD (Thermo Fisher Velox and Berkeley/NCEM,
``.emd``), FEI/Thermo Fisher TIA (``.ser``; ``.emi`` given by name) and MRC (``.mrc``) files
are micrographs like TIFFs: :func:`read_vendor` gives the one 2-D image a file holds and its
pixel size from the signal's calibrated axes. A file that holds something else (a stack, a
spectrum, a spectrum image, several images) is refused with one error that says what it holds.

One read gives both the data and the calibration; :func:`vendor_pixel_size` takes the
calibration a recent :func:`read_vendor` of the unchanged file found, so that reading a
micrograph (its pixels, then its pixel size) parses the file once.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg.errors import NanosegError
from nanoseg.io._common import logger, quiet
from nanoseg.units import UNIT_NM

#: Vendor suffix -> the pixel-size source a :class:`~nanoseg.io.Micrograph` from it names.
VENDOR_FORMATS: dict[str, str] = {".dm3": "dm", ".dm4": "dm", ".emd": "emd", ".ser": "tia", ".emi": "tia",
                                  ".mrc": "mrc"}
VENDOR_SUFFIXES: tuple[str, ...] = tuple(VENDOR_FORMATS)
_FORMAT_NAMES = {"dm": "DigitalMicrograph", "emd": "EMD", "tia": "TIA", "mrc": "MRC"}
# Calibrations of recently read files: (path, mtime_ns, size) -> (x nm, y nm) or None. Small
# numbers only; the image itself is not kept.
_CALIBRATIONS: OrderedDict[tuple[str, int, int], tuple[float, float | None] | None] = OrderedDict()
_CALIBRATIONS_KEPT = 256
_SPECTRAL_NAMES = ("Energy", "Energy loss", "Wavelength")


@dataclass(frozen=True)
class VendorImage:
    """The 2-D image of a vendor file and its calibration."""

    data: np.ndarray
    pixel_size_nm: tuple[float, float | None] | None  # (x, y) in nm; None when the axes are not lengths
    title: str


def is_vendor_file(path: str | Path) -> bool:
    """Whether ``path`` has a suffix of :data:`VENDOR_SUFFIXES`."""
    return Path(path).suffix.lower() in VENDOR_FORMATS


def vendor_source(path: str | Path) -> str:
    """Pixel-size source of a vendor file: 'dm', 'emd', 'tia' or 'mrc'."""
    return VENDOR_FORMATS[Path(path).suffix.lower()]


def read_vendor(path: str | Path) -> VendorImage:
    """The one 2-D image of a vendor file and its pixel size from the signal's axes.

    Raises
    ------
    NanosegError
        If the file cannot be read, or holds no image, a stack, a spectrum (image), 4-D data or
        several images; the message says what it holds and what to do.
    """
    path = Path(path)
    source = vendor_source(path)
    signals = _signals(path, source)
    images = [i for i, s in enumerate(signals) if _describe(s) is None]  # indices of the 2-D images
    if not signals:
        raise NanosegError(f"{path}: the {_FORMAT_NAMES[source]} file holds no image; re-export it")
    if len(images) == 1 and len(signals) > 1:
        # One micrograph beside spectra or other non-image data: it is the one to measure.
        others = "; ".join(f"{_title(s, i)}: {_describe(s)}" for i, s in enumerate(signals) if i != images[0])
        logger.info("%s: reading the image %r; the file's other signals are not images (%s)",
                    path, _title(signals[images[0]], images[0]), others)
    elif len(signals) > 1:
        listed = ", ".join(f"{_title(s, i)} ({_describe(s) or 'an image'})" for i, s in enumerate(signals))
        raise NanosegError(
            f"{path}: holds {len(signals)} signals ({listed}); nanoseg reads one image per file: export the "
            "image to measure as a single file (e.g. TIFF from Velox or DigitalMicrograph) and measure that"
        )
    elif not images:
        raise NanosegError(
            f"{path}: holds {_describe(signals[0])}, not one 2-D micrograph; export a single image "
            "(e.g. one frame as TIFF) and measure that"
        )
    signal = signals[images[0]]
    data = _as_plain_array(np.asarray(signal["data"]), path)
    sized = [a for a in signal.get("axes", []) if int(a.get("size", 0)) != 1]
    data = np.squeeze(data) if data.ndim > 2 else data
    calibration = _calibration(sized[-2:]) if len(sized) >= 2 else None
    _remember(path, calibration)
    return VendorImage(data=data, pixel_size_nm=calibration, title=_title(signal, images[0]))


def vendor_pixel_size(path: str | Path) -> tuple[float, float | None] | None:
    """(x, y) pixel size in nm from a vendor file's axes, or None when they are not calibrated.

    Reads the file unless :func:`read_vendor` just read it, unchanged.

    Raises
    ------
    NanosegError
        As :func:`read_vendor`.
    """
    path = Path(path)
    key = _key(path)
    if key is not None and key in _CALIBRATIONS:
        _CALIBRATIONS.move_to_end(key)
        return _CALIBRATIONS[key]
    return read_vendor(path).pixel_size_nm


def _key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return str(path.resolve()), st.st_mtime_ns, st.st_size


def _remember(path: Path, calibration: tuple[float, float | None] | None) -> None:
    key = _key(path)
    if key is None:
        return
    _CALIBRATIONS[key] = calibration
    _CALIBRATIONS.move_to_end(key)
    while len(_CALIBRATIONS) > _CALIBRATIONS_KEPT:
        _CALIBRATIONS.popitem(last=False)


def _signals(path: Path, source: str) -> list[dict[str, Any]]:
    """RosettaSciIO's signal dictionaries of the file."""
    try:
        with quiet("rsciio", "h5py"):
            if source == "dm":
                from rsciio.digitalmicrograph import file_reader

                signals = file_reader(str(path))
            elif source == "emd":
                from rsciio.emd import file_reader

                # Velox: images only; a spectrum image beside them is no micrograph, and reading
                # its stream is slow and needs the optional 'sparse' package.
                signals = file_reader(str(path), select_type="images")
            elif source == "tia":
                from rsciio.tia import file_reader

                signals = file_reader(str(path))
            else:
                from rsciio.mrc import file_reader

                signals = file_reader(str(path))
    except ModuleNotFoundError as exc:
        raise NanosegError(
            f"{path}: reading {_FORMAT_NAMES[source]} files needs the Python package '{exc.name}' "
            f"(pip install {exc.name})"
        ) from None
    except Exception as exc:  # every format parser has its own exception types
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise NanosegError(
            f"{path}: cannot read the {_FORMAT_NAMES[source]} file ({reason}); check the file is complete or "
            "export the image as TIFF"
        ) from None
    return list(signals or [])


def _title(signal: dict[str, Any], index: int) -> str:
    title = ((signal.get("metadata") or {}).get("General") or {}).get("title")
    return str(title) if title else f"signal {index + 1}"


def _describe(signal: dict[str, Any]) -> str | None:
    """What a signal holds when it is not one 2-D image (None when it is one)."""
    data = signal.get("data")
    shape = tuple(int(n) for n in np.shape(data))
    axes = signal.get("axes") or [{} for _ in shape]
    kept = [(n, a) for n, a in zip(shape, axes) if n != 1]
    navigate = [bool(a.get("navigate", False)) for _, a in kept]
    # DigitalMicrograph marks no spectral axis as such before HyperSpy's post-processing: its
    # units (eV, keV) or name tell it.
    spectral = [str(a.get("units") or "").strip() in ("eV", "keV") or a.get("name") in _SPECTRAL_NAMES
                for _, a in kept]
    dims = [n for n, _ in kept]
    if len(dims) == 2 and not any(navigate) and not any(spectral):
        if np.iscomplexobj(data):
            return f"a complex {dims[1]}x{dims[0]} image (an FFT or phase image)"
        return None
    if len(dims) == 0:
        return "a single value"
    if len(dims) == 1:
        return f"a spectrum of {dims[0]} channels"
    if len(dims) == 2:
        return f"a line scan of {dims[spectral.index(False) if any(spectral) else navigate.index(True)]} spectra"
    if len(dims) == 3 and (any(spectral) or navigate == [True, True, False]):
        xy = [n for n, s in zip(dims, spectral) if not s][:2] if any(spectral) else dims[:2]
        return f"a spectrum image of {xy[-1]}x{xy[0]} spectra"
    if len(dims) == 3:
        return f"{dims[0]} images (a stack of {dims[2]}x{dims[1]} px frames)"
    return f"{len(dims)}-D data of shape {'x'.join(map(str, dims))} (e.g. 4D-STEM)"


def _calibration(axes: list[dict[str, Any]]) -> tuple[float, float | None] | None:
    """(x, y) pixel size in nm of an image's (y, x) axes; None unless the x axis is a length."""
    sizes = []
    for axis in axes:
        unit = axis.get("units")
        factor = UNIT_NM.get(str(unit).strip().lower().replace(" ", "")) if unit else None
        scale = axis.get("scale")
        sizes.append(float(scale) * factor if factor is not None and scale else None)
    y_nm, x_nm = sizes
    return None if x_nm is None else (x_nm, y_nm)


def _as_plain_array(data: np.ndarray, path: Path) -> np.ndarray:
    """Data as a plain numeric array: DigitalMicrograph's RGBA records become (H, W, 4) uint8."""
    if data.dtype.names:
        names = [n for n in ("R", "G", "B", "A") if n in data.dtype.names]
        if not names:
            raise NanosegError(f"{path}: image has record data ({', '.join(data.dtype.names)}), not pixel values")
        data = np.stack([data[n] for n in names], axis=-1)
    return np.ascontiguousarray(data)
