"""Writing images: TIFF with the pixel size as resolution tags, PNG; both atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nanoseg.atomic import atomic_path

# --------------------------------------------------------------------------- writing


def write_tiff(path: str | Path, array: np.ndarray, pixel_size_nm: float | None = None, *, ome: bool = False) -> Path:
    """Write a 2-D array as TIFF, atomically, with the pixel size as resolution tags.

    uint8, uint16 and float32 images are written ImageJ-style (resolution in px per micron,
    ``unit=micron``), so Fiji and :func:`read_pixel_size_nm` read the pixel size back; other
    dtypes get baseline TIFF resolution tags in centimetres. With ``ome=True`` the file is an
    OME-TIFF instead (any integer or float dtype; ``PhysicalSizeX/Y`` in nm in its OME-XML, plus
    the centimetre tags), which Fiji (Bio-Formats), napari's OME readers and QuPath open at the
    right scale: the format for label images, whose int32 ImageJ cannot hold. bool arrays are
    written as uint8 0/255. The data is zlib-compressed (lossless).
    """
    import tifffile

    path = Path(path)
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * np.uint8(255)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    kwargs: dict[str, Any] = {"compression": "zlib"}
    imagej = array.dtype in (np.uint8, np.uint16, np.float32) and array.ndim == 2 and not ome
    if ome:
        kwargs.update(ome=True, metadata={"axes": "YX"})
    if pixel_size_nm is not None:
        if not (np.isfinite(pixel_size_nm) and pixel_size_nm > 0):
            raise ValueError(f"pixel_size_nm must be positive and finite, got {pixel_size_nm}")
        if imagej:
            px_per_um = 1e3 / pixel_size_nm
            kwargs.update(imagej=True, resolution=(px_per_um, px_per_um), metadata={"unit": "micron"})
        else:
            px_per_cm = 1e7 / pixel_size_nm
            kwargs.update(resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER")
        if ome:
            size = float(pixel_size_nm)
            kwargs["metadata"].update(PhysicalSizeX=size, PhysicalSizeXUnit="nm", PhysicalSizeY=size,
                                      PhysicalSizeYUnit="nm")
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
