"""Pixel size from an image's metadata, in the order the :mod:`nanoseg.io` docstring lists."""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg.io._common import _quiet, _say_once, logger
from nanoseg.units import UNIT_NM


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
