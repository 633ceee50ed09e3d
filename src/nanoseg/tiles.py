"""Random square crops of images: training batches of the translator and realism comparisons."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np


def dihedral(tile: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """``tile`` rotated by ``k`` quarter turns and, if ``flip``, mirrored left-right (contiguous copy)."""
    tile = np.rot90(tile, k)
    return np.ascontiguousarray(tile[:, ::-1] if flip else tile)


def random_tiles(images: Sequence[np.ndarray], n_tiles: int, tile_px: int, rng: np.random.Generator, *,
                 augment: bool = False, min_foreground_fraction: float = 0.0,
                 small: Literal["pad", "skip"] = "skip") -> np.ndarray:
    """``n_tiles`` square crops at random positions of randomly chosen images.

    Parameters
    ----------
    images : sequence of 2-D arrays
    n_tiles, tile_px : int
    rng : numpy Generator
    augment : bool
        Also rotate each crop by a random multiple of 90 degrees and mirror it at random.
    min_foreground_fraction : float
        Take only crops in which at least this fraction of pixels lies above the image's Li
        threshold (up to 50 tries per crop, then any): particles, not bare substrate.
    small : {'skip', 'pad'}
        Images smaller than a tile are left out, or reflection-padded to the tile size.

    Returns
    -------
    (n_tiles, tile_px, tile_px) float32 array

    Raises
    ------
    ValueError
        If ``small='skip'`` and no image is at least ``tile_px`` on each side.
    """
    from skimage.filters import threshold_li

    usable = []
    for image in images:
        image = np.asarray(image, np.float32)
        pad_y, pad_x = max(0, tile_px - image.shape[0]), max(0, tile_px - image.shape[1])
        if pad_y or pad_x:
            if small == "skip":
                continue
            image = np.pad(image, ((0, pad_y), (0, pad_x)), mode="reflect" if min(image.shape) > 1 else "edge")
        usable.append(image)
    if not usable:
        raise ValueError(f"no image is at least {tile_px} px on each side")
    foreground = [im > threshold_li(im) if min_foreground_fraction > 0 else None for im in usable]
    tiles = np.empty((n_tiles, tile_px, tile_px), np.float32)
    for k in range(n_tiles):
        for _ in range(50):
            pick = int(rng.integers(len(usable)))
            image = usable[pick]
            y = int(rng.integers(image.shape[0] - tile_px + 1))
            x = int(rng.integers(image.shape[1] - tile_px + 1))
            fg = foreground[pick]
            if fg is None or fg[y:y + tile_px, x:x + tile_px].mean() >= min_foreground_fraction:
                break
        crop = image[y:y + tile_px, x:x + tile_px]
        tiles[k] = dihedral(crop, int(rng.integers(4)), bool(rng.integers(2))) if augment else crop
    return tiles
