"""Pixel size from an image's metadata, in the order the :mod:`nanoseg.io` docstring lists."""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg.errors import NanosegError
from nanoseg.io._common import logger, quiet as _quiet, say_once as _say_once
from nanoseg.io.vendor import is_vendor_file, vendor_pixel_size, vendor_source
from nanoseg.units import UNIT_NM, check_pixel_size_nm


def read_pixel_size_nm(path: str | Path) -> float | None:
    """Pixel size in nm from the file's metadata, or None (with a logged warning) if it has none.

    Raises
    ------
    NanosegError
        As :func:`pixel_size_with_source`.
    """
    path = Path(path)
    size, _ = pixel_size_with_source(path)
    if size is None:
        _say_once(logging.WARNING, "%s: no pixel size in the metadata; sizes will be reported in px "
                  "(set data.pixel_size_nm or pass --pixel-size)", path)
    return size


def pixel_size_with_source(path: str | Path) -> tuple[float | None, str]:
    """Pixel size in nm and its source (see :class:`Micrograph`), without a warning when unknown.

    The first metadata that holds a pixel size (see :mod:`nanoseg.io`) gives it; that value is
    then checked, so a file with an absurd or non-square calibration fails here, for itself alone.

    Raises
    ------
    NanosegError
        If the pixel size found is implausible (e.g. a print resolution: 72 dpi in centimetre
        tags is 3.5e5 nm) or the pixels are not square (x and y differ by more than
        :data:`SQUARE_TOLERANCE`); the message names the file and says to give the pixel size
        with --pixel-size / data.pixel_size_nm.
    """
    path = Path(path)
    finders: list[Any] = [_pixel_size_sidecar]
    if path.suffix.lower() in (".tif", ".tiff"):
        finders = [_pixel_size_rsciio, _pixel_size_tiff_tags] + finders
    elif is_vendor_file(path):
        finders = [_pixel_size_vendor] + finders
    for finder in finders:
        try:
            found = finder(path)
        except Exception as exc:  # metadata parsers choke on odd files; the image may still be fine
            logger.debug("%s: %s could not parse the metadata: %s", path, finder.__name__, exc)
            continue
        # A zero or NaN entry is an unset field, not a calibration: look further.
        if found is not None and np.isfinite(found[0]) and found[0] > 0:
            return _checked(path, *found)
    return None, "none"


#: Pixels whose x and y sizes differ by more than this fraction are not square: the workflow
#: measures in one size for both axes, so such an image would give wrong lengths along one.
SQUARE_TOLERANCE = 0.01


def _checked(path: Path, x_nm: float, y_nm: float | None, source: str) -> tuple[float, str]:
    """The pixel size a finder found, once plausible and square (see :func:`pixel_size_with_source`)."""
    what = f"{path}: pixel size in the metadata ({source})"
    x_nm = check_pixel_size_nm(x_nm, what)
    if y_nm is not None and y_nm != x_nm:
        y_nm = check_pixel_size_nm(y_nm, what)
        if abs(x_nm - y_nm) > SQUARE_TOLERANCE * min(x_nm, y_nm):
            raise NanosegError(
                f"{path}: pixels are not square (x {x_nm:g} nm, y {y_nm:g} nm, in the {source} metadata): "
                "resample the image to square pixels (e.g. Fiji: Image > Scale) or give --pixel-size / "
                "data.pixel_size_nm to override"
            )
    return x_nm, source


def _unit_to_nm(unit: Any) -> float | None:
    if unit is None:
        return None
    key = str(unit).strip().lower()
    return UNIT_NM.get(key)


# Each finder returns (x size in nm, y size in nm or None where the metadata has one size, source)
# or None when its metadata holds no pixel size.
_Found = tuple[float, float | None, str]


def _pixel_size_rsciio(path: Path) -> _Found | None:
    from rsciio.tiff import file_reader

    with _quiet("rsciio", "tifffile"):
        signals = file_reader(str(path))
    if not signals:
        return None
    # Axes are ordered (..., y, x). Units RosettaSciIO could not determine come back as None and
    # a scale of 1: not a calibration.
    sizes = []
    for axis in signals[0].get("axes", [])[-2:]:
        factor = _unit_to_nm(axis.get("units"))
        sizes.append(float(axis["scale"]) * factor if factor is not None and axis.get("scale") else None)
    if not sizes or sizes[-1] is None:
        return None
    return sizes[-1], sizes[0] if len(sizes) == 2 else None, "rsciio"


def _pixel_size_vendor(path: Path) -> _Found | None:
    """DigitalMicrograph, EMD, TIA, MRC: the image's axes (:func:`nanoseg.io.vendor.vendor_pixel_size`)."""
    found = vendor_pixel_size(path)
    return None if found is None else (found[0], found[1], vendor_source(path))


def _pixel_size_tiff_tags(path: Path) -> _Found | None:
    import tifffile

    with _quiet("tifffile"), tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if tif.is_ome and tif.ome_metadata:
            found = _pixel_size_ome(tif.ome_metadata)
            if found is not None:
                return found
        tags = page.tags
        px_per_unit = [_resolution(tags.get(name)) for name in ("XResolution", "YResolution")]
        if px_per_unit[0] is None:
            return None
        imagej = tif.imagej_metadata or {}
        unit = imagej.get("unit")
        factor = _unit_to_nm(unit.replace("\\u00B5", "µ")) if unit is not None else None
        source = "imagej"
        if factor is None:
            res_unit = tags.get("ResolutionUnit")
            if res_unit is None or int(res_unit.value) != 3:  # only centimetres: inches are print settings
                return None
            factor, source = 1e7, "tiff"
        x_nm = factor / px_per_unit[0]
        return x_nm, factor / px_per_unit[1] if px_per_unit[1] else None, source
    return None


def _resolution(tag: Any) -> float | None:
    """Pixels per unit of a TIFF resolution tag (a rational), or None when absent or not positive."""
    if tag is None:
        return None
    value = tag.value
    if isinstance(value, tuple):
        px_per_unit = value[0] / value[1] if value[1] else 0.0
    else:
        px_per_unit = float(value)
    return px_per_unit if px_per_unit > 0 else None


_LENGTH_WITH_UNIT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Zµμå]+)\s*$")


def _pixel_size_sidecar(path: Path) -> _Found | None:
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
            return float(entries["PIXELSIZE"]), None, "hitachi-txt"
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
            return float(match.group(1)) * factor / bar_px, None, "jeol-txt"
    return None


def _pixel_size_ome(xml_text: str) -> _Found | None:
    pixels = ome_pixels_with(xml_text, "PhysicalSizeX")
    if pixels is None:
        return None
    sizes = []
    for axis in "XY":
        factor = _unit_to_nm(pixels.get(f"PhysicalSize{axis}Unit", "µm"))  # the OME schema's default unit
        value = pixels.get(f"PhysicalSize{axis}")
        sizes.append(None if factor is None or value is None else float(value) * factor)
    return None if sizes[0] is None else (sizes[0], sizes[1], "ome")


def ome_pixels_with(xml_text: str, attribute: str) -> dict[str, str] | None:
    """Attributes of the first OME ``Pixels`` element that has ``attribute``."""
    for element in ET.fromstring(xml_text).iter():
        if element.tag.rsplit("}", 1)[-1] == "Pixels" and attribute in element.attrib:
            return dict(element.attrib)
    return None
