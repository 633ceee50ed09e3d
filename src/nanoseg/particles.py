"""Per-particle measurements of instance label images.

:func:`measure_particles` measures every particle of one label image, :func:`measure_images` a
set of ``(name, labels, micrograph, pixel size)`` items (:func:`label_items` builds them from a
folder of label images); :mod:`nanoseg.measure` turns the tables into size distributions and
:mod:`nanoseg.classify` decides on each particle from them.

Geometry convention
-------------------
A particle is the union of its pixels, each pixel a unit square centred on its integer
coordinate. Feret (caliper) diameters are measured on the convex hull of the pixel *corners*,
so a particle ``w`` pixels wide has a Feret diameter of exactly ``w`` px in that direction and
a ``a x b`` rectangle has min Feret ``min(a, b)`` and max Feret ``hypot(a, b)``. Both diameters
use the same hull. (scikit-image's ``feret_diameter_max`` uses the 0.5 iso-contour of the
convex image instead, which clips the corners: 13.45 px for a 10 x 10 px square, where the
corner hull gives 14.14 px and a hull of pixel centres 12.73 px.)

Area, centroid, solidity and mean intensity come from :func:`skimage.measure.regionprops`:
area is the pixel count, so the equivalent circular diameter ECD = sqrt(4 area / pi).
The perimeter is the length of the particle's 0.5 iso-contour (marching squares through the
pixel edge midpoints, :func:`skimage.measure.find_contours`; 38.8 px for a 10 x 10 px
square): unlike scikit-image's ``perimeter``, which runs through the boundary pixels' centres
(36 px), it keeps circularity (4 pi area / perimeter^2) below 1 for particles of more than a
few pixels (0.90-0.95 for digital discs, 0.80-0.83 for squares, whose true value is
0.785). Convexity is the same length of the convex image's outline divided by the perimeter.
The inscribed diameter is that of the largest disc inside the particle, on the pixel grid:
twice the Euclidean distance from its deepest pixel centre to the nearest background pixel
centre, minus one pixel, so that a strip ``w`` pixels wide measures ``w`` px (``w - 1`` when
``w`` is even) like its Feret diameter. Pixels of a touching particle count as background.

Angles are in degrees in [0, 180), counter-clockwise from the image x axis (columns to the
right, rows upwards as displayed) and give the direction along which the diameter is measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nanoseg.errors import NanosegError
from nanoseg.io import read_labels

#: Descriptors with a unit; (column stem, power of the length unit).
LENGTH_DESCRIPTORS: dict[str, int] = {
    "centroid_row": 1,
    "centroid_col": 1,
    "area": 2,
    "perimeter": 1,
    "ecd": 1,
    "min_feret": 1,
    "max_feret": 1,
    "inscribed_diameter": 1,
}
_UNITLESS = ("min_feret_angle_deg", "max_feret_angle_deg", "aspect_ratio", "circularity", "solidity", "convexity")


# --------------------------------------------------------------------------------------------
# Feret diameters
# --------------------------------------------------------------------------------------------


def _angle_deg(vec: np.ndarray) -> float:
    """Direction of a (d_row, d_col) vector in degrees [0, 180), counter-clockwise from +x."""
    angle = float(np.degrees(np.arctan2(-vec[0], vec[1]))) % 180.0
    return 0.0 if np.isclose(angle, 180.0) else angle


def feret_diameters(points: np.ndarray) -> dict[str, float]:
    """Exact minimum and maximum caliper (Feret) diameters of a point set.

    The maximum is the largest distance between two convex-hull vertices; the minimum comes
    from rotating calipers: the width of a convex polygon is smallest with one caliper flush
    with a hull edge, so the widths perpendicular to every edge (vectorised over all edges)
    contain the exact minimum.

    Parameters
    ----------
    points : (N, 2) array
        Point coordinates as (row, col), at least three not on one line.

    Returns
    -------
    dict
        ``min_feret``, ``max_feret`` (in the units of ``points``) and ``min_feret_angle_deg``,
        ``max_feret_angle_deg`` (direction of measurement, see the module docstring).
    """
    from scipy.spatial import ConvexHull

    points = np.asarray(points, dtype=float)
    hull = points[ConvexHull(points).vertices]
    # max: all vertex pairs (hulls of pixel particles have tens of vertices)
    diff = hull[:, None, :] - hull[None, :, :]
    dist2 = np.einsum("ijk,ijk->ij", diff, diff)
    i, j = np.unravel_index(np.argmax(dist2), dist2.shape)
    # min: for each edge, the farthest vertex from the edge's line
    edges = np.roll(hull, -1, axis=0) - hull
    unit = edges / np.linalg.norm(edges, axis=1, keepdims=True)
    rel = hull[None, :, :] - hull[:, None, :]  # rel[e, k] = vertex k - start of edge e
    widths = np.abs(unit[:, None, 0] * rel[..., 1] - unit[:, None, 1] * rel[..., 0]).max(axis=1)
    e = int(np.argmin(widths))
    normal = np.array([-unit[e, 1], unit[e, 0]])
    return {
        "min_feret": float(widths[e]),
        "max_feret": float(np.sqrt(dist2[i, j])),
        "min_feret_angle_deg": _angle_deg(normal),
        "max_feret_angle_deg": _angle_deg(diff[i, j]),
    }


def pixel_corner_points(mask: np.ndarray) -> np.ndarray:
    """Corners of the left- and right-most pixel of every row of a binary mask.

    Their convex hull is the convex hull of the union of all pixel squares (the interior
    pixels of a row cannot be hull vertices), at a fraction of the points.

    Parameters
    ----------
    mask : (H, W) bool array

    Returns
    -------
    (4 * rows, 2) float array
        (row, col) coordinates of the corners, relative to the mask's origin.
    """
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    sub = mask[rows]
    first = np.argmax(sub, axis=1)
    last = sub.shape[1] - 1 - np.argmax(sub[:, ::-1], axis=1)
    r = rows.astype(float)
    top, bottom = r - 0.5, r + 0.5
    left, right = first - 0.5, last + 0.5
    return np.concatenate(
        [np.stack([top, left], 1), np.stack([bottom, left], 1), np.stack([top, right], 1), np.stack([bottom, right], 1)]
    )


def outline_length(mask: np.ndarray) -> float:
    """Length in px of the 0.5 iso-contours of a binary mask (outer outline plus holes)."""
    from skimage.measure import find_contours

    contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5, fully_connected="high")
    return float(sum(np.linalg.norm(np.diff(c, axis=0), axis=1).sum() for c in contours))


# --------------------------------------------------------------------------------------------
# Per-particle measurements
# --------------------------------------------------------------------------------------------


def measure_particles(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    pixel_size_nm: float | None = None,
    *,
    exclude_border: bool = True,
) -> pd.DataFrame:
    """Measure every labelled particle.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background (e.g. ``segment/labels/<stem>.tif``). The image's
        last row borders the info bar when that was cropped, so "touching the border"
        includes touching the info bar.
    image : (H, W) float array, optional
        Micrograph for ``mean_intensity`` (NaN when absent).
    pixel_size_nm : float, optional
        Side of a pixel in nm. When given, ``*_nm`` columns (``area_nm2`` for the area) are
        added beside the ``*_px`` ones.
    exclude_border : bool
        Drop particles touching the image border (their size is unknown). Default True.

    Returns
    -------
    pandas.DataFrame
        One row per particle: ``label``, ``centroid_row_px``, ``centroid_col_px``, ``area_px``
        (pixel count), ``perimeter_px``, ``ecd_px``, ``min_feret_px``, ``max_feret_px``,
        ``inscribed_diameter_px``, ``min_feret_angle_deg``, ``max_feret_angle_deg``, ``aspect_ratio`` (min / max Feret,
        ISO 9276-6, in (0, 1]), ``circularity`` (4 pi area / perimeter^2), ``solidity``
        (area / convex area), ``convexity`` (convex perimeter / perimeter), ``mean_intensity``,
        ``touches_border``, and the ``*_nm`` / ``area_nm2`` columns with a pixel size.
    """
    from scipy.ndimage import distance_transform_edt
    from skimage.measure import regionprops

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise NanosegError(f"measure_particles: labels must be a 2-D image, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        labels = labels.astype(np.int64)
    if image is not None and np.shape(image) != labels.shape:
        raise NanosegError(f"measure_particles: image shape {np.shape(image)} differs from labels shape {labels.shape}")
    if pixel_size_nm is not None and not (np.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise NanosegError(f"measure_particles: pixel_size_nm must be a positive number, got {pixel_size_nm!r}")
    height, width = labels.shape
    rows: list[dict[str, Any]] = []
    for rp in regionprops(labels, intensity_image=image):
        r0, c0, r1, c1 = rp.bbox
        touches = r0 == 0 or c0 == 0 or r1 == height or c1 == width
        if touches and exclude_border:
            continue
        feret = feret_diameters(pixel_corner_points(rp.image))
        perim = outline_length(rp.image)
        convex_perim = outline_length(rp.image_convex)
        area = float(rp.area)
        depth = float(distance_transform_edt(np.pad(rp.image, 1)).max())
        row = {
            "label": int(rp.label),
            "centroid_row_px": float(rp.centroid[0]),
            "centroid_col_px": float(rp.centroid[1]),
            "area_px": area,
            "perimeter_px": perim,
            "ecd_px": float(np.sqrt(4.0 * area / np.pi)),
            "min_feret_px": feret["min_feret"],
            "max_feret_px": feret["max_feret"],
            "inscribed_diameter_px": 2.0 * depth - 1.0,
            "min_feret_angle_deg": feret["min_feret_angle_deg"],
            "max_feret_angle_deg": feret["max_feret_angle_deg"],
            "aspect_ratio": feret["min_feret"] / feret["max_feret"],
            "circularity": 4.0 * np.pi * area / perim**2 if perim > 0 else np.nan,
            "solidity": float(rp.solidity),
            "convexity": convex_perim / perim if perim > 0 else np.nan,
            "mean_intensity": float(rp.intensity_mean) if image is not None else np.nan,
            "touches_border": bool(touches),
        }
        rows.append(row)
    df = pd.DataFrame(rows, columns=_base_columns())
    df["label"] = df["label"].astype(np.int64)
    df["touches_border"] = df["touches_border"].astype(bool)
    if pixel_size_nm is not None:
        df = add_nm_columns(df, pixel_size_nm)
    return df


def _base_columns() -> list[str]:
    return (
        ["label"]
        + [f"{stem}_px" for stem in LENGTH_DESCRIPTORS]
        + list(_UNITLESS)
        + ["mean_intensity", "touches_border"]
    )


def nm_column(stem: str) -> str:
    """Name of the calibrated column of a descriptor: ``area`` -> ``area_nm2``, else ``<stem>_nm``."""
    power = LENGTH_DESCRIPTORS[stem]
    return f"{stem}_nm" if power == 1 else f"{stem}_nm{power}"


def add_nm_columns(df: pd.DataFrame, pixel_size_nm: float | Sequence[float] | pd.Series) -> pd.DataFrame:
    """Add calibrated columns (lengths times the pixel size, areas times its square).

    ``pixel_size_nm`` may be one value or one per row (particles from several micrographs).
    """
    df = df.copy()
    size = np.asarray(pixel_size_nm, dtype=float)
    for stem, power in LENGTH_DESCRIPTORS.items():
        df[nm_column(stem)] = df[f"{stem}_px"].to_numpy(dtype=float) * size**power
    return df


def to_other_grid(df: pd.DataFrame, measured_shape: tuple[int, int], shape: tuple[int, int]) -> pd.DataFrame:
    """A particle table measured on an image of ``measured_shape``, in the pixels of the same field
    sampled as ``shape``: lengths and areas scaled, centroids mapped pixel centre to pixel centre,
    ``pixel_size_nm`` (when present) scaled so that the calibrated columns stay as they are."""
    df = df.copy()
    fy, fx = shape[0] / measured_shape[0], shape[1] / measured_shape[1]
    f = float(np.sqrt(fy * fx))
    for stem, power in LENGTH_DESCRIPTORS.items():
        column = f"{stem}_px"
        if stem == "centroid_row":
            df[column] = (df[column] + 0.5) * fy - 0.5
        elif stem == "centroid_col":
            df[column] = (df[column] + 0.5) * fx - 0.5
        else:
            df[column] = df[column] * f**power
    if "pixel_size_nm" in df:
        df["pixel_size_nm"] = df["pixel_size_nm"] / f
        df = add_nm_columns(df, df["pixel_size_nm"].to_numpy())
    return df


# --------------------------------------------------------------------------------------------
# Sets of images
# --------------------------------------------------------------------------------------------


LABEL_SUFFIXES = (".tif", ".tiff", ".png")


def label_file(labels_dir: str | Path, stem: str) -> Path | None:
    """The label image of micrograph ``stem`` in ``labels_dir`` (``<stem>.tif``, .tiff or .png), or None."""
    return next((p for suffix in LABEL_SUFFIXES if (p := Path(labels_dir) / f"{stem}{suffix}").is_file()), None)


def label_items(micrographs: Sequence[Any], labels_dir: str | Path, fix: str) -> list[tuple[str, np.ndarray, np.ndarray, float | None]]:
    """Pair each micrograph with its label image ``<stem>.tif`` (or .tiff/.png) in ``labels_dir``.

    Parameters
    ----------
    micrographs : sequence of Micrograph
    labels_dir : path
    fix : str
        What the error message tells the user to do about a missing or mismatched label image.

    Returns
    -------
    list of (stem, labels, micrograph image, pixel size in nm or None)
        The items :func:`measure_images` and :func:`nanoseg.classify.classify_images` take.

    Raises
    ------
    NanosegError
        For a missing label image, one of another shape than its micrograph, or one that looks
        like a binary mask or a micrograph (:func:`nanoseg.io.read_labels` with ``strict``).
    """
    labels_dir = Path(labels_dir)
    items = []
    for mg in micrographs:
        stem = Path(mg.path).stem
        path = label_file(labels_dir, stem)
        if path is None:
            raise NanosegError(f"{labels_dir / (stem + '.tif')}: no label image for micrograph {mg.path} ({fix})")
        lab = read_labels(path, strict=True)
        if lab.shape != mg.image.shape:
            raise NanosegError(f"{path}: labels shape {lab.shape} differs from the cropped micrograph {mg.path} "
                               f"{mg.image.shape} ({fix})")
        items.append((stem, lab, mg.image, mg.pixel_size_nm))
    return items


def measure_images(
    items: Sequence[tuple[str, np.ndarray, np.ndarray | None, float | None]],
) -> pd.DataFrame:
    """Measure several label images into one table (border particles kept, flagged).

    Parameters
    ----------
    items : sequence of (image name, labels, micrograph or None, pixel size in nm or None)

    Returns
    -------
    pandas.DataFrame
        :func:`measure_particles` columns plus ``image`` and ``pixel_size_nm``; calibrated
        columns are NaN for images without a pixel size.
    """
    frames = []
    for name, labels, image, pixel_size in items:
        df = measure_particles(labels, image, None, exclude_border=False)
        df.insert(0, "image", name)
        df["pixel_size_nm"] = np.nan if pixel_size is None else float(pixel_size)
        frames.append(df)
    if not frames:
        raise NanosegError("measure: no label images to measure")
    out = pd.concat(frames, ignore_index=True)
    return add_nm_columns(out, out["pixel_size_nm"].to_numpy())
