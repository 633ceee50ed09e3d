"""napari writer: a Labels layer as OME-TIFF with its pixel size, readable by Fiji and nanoseg."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one label image (int32 when the labels fit, as ``nanoseg segment`` does) and return its path."""
    from nanoseg.io import write_tiff
    from nanoseg.napari_plugin.core import layer_pixel_size_nm

    labels = np.asarray(data)
    if labels.max(initial=0) <= np.iinfo(np.int32).max:
        labels = labels.astype(np.int32, copy=False)
    size = layer_pixel_size_nm(meta.get("metadata"), meta.get("scale", (1.0, 1.0)), meta.get("units"))
    out = Path(path)
    if out.suffix.lower() not in (".tif", ".tiff"):
        out = out.with_suffix(".tif")
    write_tiff(out, labels, pixel_size_nm=size, ome=True)
    return [str(out)]
