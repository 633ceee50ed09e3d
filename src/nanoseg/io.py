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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nanoseg.atomic import atomic_path
from nanoseg.errors import NanosegError

logger = logging.getLogger("nanoseg.io")

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
MIN_SIDE_PX = 32

# Length units to nm; keys are lower case, with the spellings ImageJ, OME and RosettaSciIO use.
_UNIT_NM = {
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
    """

    image: np.ndarray
    pixel_size_nm: float | None
    info_bar_rows: int
    path: Path
    full_shape: tuple[int, int]
    pixel_size_source: str = field(default="none")

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


def load_micrographs(data_config: Any) -> list[Micrograph]:
    """Read every micrograph of ``data_config.images`` with the data section's settings.

    Parameters
    ----------
    data_config : nanoseg.config.DataConfig
        Uses ``images``, ``pixel_size_nm``, ``info_bar_rows`` and ``dark_particles`` (images are
        inverted so that particles are always bright).

    Returns
    -------
    list of Micrograph
    """
    if data_config.images is None:
        raise NanosegError("data.images: not set (point it to a folder of micrographs)")
    micrographs = []
    for path in list_images(data_config.images):
        mg = read_micrograph(path, pixel_size_nm=data_config.pixel_size_nm, info_bar_rows=data_config.info_bar_rows)
        if data_config.dark_particles:
            mg.image = (1.0 - mg.image).astype(np.float32)
        micrographs.append(mg)
    sizes = {m.pixel_size_nm for m in micrographs}
    if len(sizes) > 1:
        logger.warning("micrographs in %s have different pixel sizes: %s nm", data_config.images,
                       ", ".join("none" if s is None else f"{s:g}" for s in sorted(sizes, key=lambda s: s or 0)))
    return micrographs


# --------------------------------------------------------------------------- reading


def read_micrograph(
    path: str | Path,
    pixel_size_nm: float | None = None,
    info_bar_rows: int | Literal["auto"] = "auto",
) -> Micrograph:
    """Read a micrograph as float32 in [0, 1], crop its info bar, find its pixel size.

    Parameters
    ----------
    path : path-like
        TIFF, PNG, JPEG or BMP file with one 2-D gray or RGB(A) image.
    pixel_size_nm : float, optional
        Override of the pixel size in nm; default: read from the metadata.
    info_bar_rows : int or 'auto'
        Rows of instrument info bar at the bottom; 'auto' detects it, 0 keeps every row.

    Returns
    -------
    Micrograph

    Raises
    ------
    NanosegError
        If the file is unreadable, not a single 2-D image, or too small.
    """
    path = Path(path)
    raw = _read_raw(path)
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
    image = to_float01(raw[: raw.shape[0] - bar] if bar else raw)
    if pixel_size_nm is not None:
        size, source = float(pixel_size_nm), "override"
    else:
        size, source = _find_pixel_size(path)
        if size is None:
            logger.warning(
                "%s: no pixel size in the metadata; sizes will be reported in px "
                "(set data.pixel_size_nm or pass --pixel-size)", path
            )
    return Micrograph(image=image, pixel_size_nm=size, info_bar_rows=bar, path=path,
                      full_shape=(int(raw.shape[0]), int(raw.shape[1])), pixel_size_source=source)


def read_pixel_size_nm(path: str | Path) -> float | None:
    """Pixel size in nm from the file's metadata, or None (with a logged warning) if it has none."""
    path = Path(path)
    size, _ = _find_pixel_size(path)
    if size is None:
        logger.warning("%s: no pixel size in the metadata; sizes will be reported in px "
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
    raw = _read_raw(path, min_side_px=1)
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
    raw = _read_raw(path, min_side_px=1)
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
            raise NanosegError(f"{path}: label image holds non-integer values; save labels as uint16/uint32")
        raw = raw.astype(np.int64)
    if raw.dtype.kind == "b":
        raw = raw.astype(np.int32)
    if raw.min(initial=0) < 0:
        raise NanosegError(f"{path}: label image holds negative values; save labels as uint16/uint32")
    return raw.astype(np.int64 if raw.max(initial=0) > np.iinfo(np.int32).max else np.int32)


def to_float01(raw: np.ndarray) -> np.ndarray:
    """Scale an image to float32 in [0, 1].

    uint8 is divided by 255. Wider integers are divided by ``2**bits - 1`` for the smallest of
    10, 12, 14, 16, 32 or 64 bits that holds the image's maximum, so that 12-bit detector data in
    a 16-bit container is not nearly black. Signed integers are shifted by their dtype minimum.
    Floats already in [0, 1] are kept; others are scaled from their min-max range.
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
        bits = next((b for b in (10, 12, 14, 16, 32, 64) if top <= 2.0**b - 1), 64)
        return (data / (2.0**bits - 1)).astype(np.float32)
    data = raw.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.all():
        data = np.where(finite, data, np.nanmin(np.where(finite, data, np.nan)) if finite.any() else 0.0)
    lo, hi = float(data.min()), float(data.max())
    if lo >= 0.0 and hi <= 1.0:
        return data.astype(np.float32)
    if hi == lo:
        return np.zeros(data.shape, np.float32)
    return ((data - lo) / (hi - lo)).astype(np.float32)


def _read_raw(path: Path, min_side_px: int = MIN_SIDE_PX) -> np.ndarray:
    """Pixel values as stored, 2-D (RGB(A) converted to gray); palette TIFFs give raw indices."""
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
    return _UNIT_NM.get(key)


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
    root = ET.fromstring(xml_text)
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Pixels" and "PhysicalSizeX" in element.attrib:
            unit = element.attrib.get("PhysicalSizeXUnit", "µm")  # the OME schema's default
            factor = _unit_to_nm(unit)
            if factor is None:
                return None
            return float(element.attrib["PhysicalSizeX"]) * factor
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
