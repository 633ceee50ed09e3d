"""napari reader: a micrograph at its pixel size in nm, info bar hidden."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

#: TIFF and the transmission vendors' formats (DigitalMicrograph, EMD, TIA, MRC); the manifest's
#: filename patterns list the same.
SUFFIXES = (".tif", ".tiff", ".dm3", ".dm4", ".emd", ".ser", ".emi", ".mrc")


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """The reader for one TIFF or vendor-format micrograph, or None for anything else (napari then asks others)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if Path(path).suffix.lower() not in SUFFIXES or not Path(path).is_file():
        return None
    return read_micrograph


def read_micrograph(path: str | list[str]) -> list[tuple]:
    """Layer data of a micrograph: :func:`nanoseg.napari_plugin.core.micrograph_layer`."""
    from nanoseg.napari_plugin.core import micrograph_layer

    paths = path if isinstance(path, list) else [path]
    return [micrograph_layer(p) for p in paths]
