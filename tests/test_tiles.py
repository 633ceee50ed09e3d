"""Random square crops for the translator's batches and the realism comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from nanoseg.tiles import dihedral, random_tiles


def test_tiles_have_the_size_and_come_from_the_images():
    rng = np.random.default_rng(0)
    images = [np.full((80, 100), 0.2, np.float32), np.full((70, 70), 0.7, np.float32), np.zeros((10, 10))]
    tiles = random_tiles(images, 50, 32, rng)
    assert tiles.shape == (50, 32, 32)
    assert set(np.unique(tiles)) <= {np.float32(0.2), np.float32(0.7)}  # the 10-px image is too small
    with pytest.raises(ValueError, match="at least 200 px"):
        random_tiles(images, 5, 200, rng)


def test_foreground_tiles_hold_particles():
    image = np.zeros((120, 120), np.float32)
    image[20:60, 20:60] = 1.0  # one bright particle; most 32-px crops miss it
    tiles = random_tiles([image], 30, 32, np.random.default_rng(1), min_foreground_fraction=0.2)
    assert (tiles.mean(axis=(1, 2)) >= 0.2).all()


def test_small_images_are_padded_when_asked():
    rng = np.random.default_rng(0)
    tiles = random_tiles([np.arange(100, dtype=np.float32).reshape(10, 10)], 3, 16, rng, small="pad")
    assert tiles.shape == (3, 16, 16)
    assert tiles.min() >= 0 and tiles.max() <= 99  # reflected copies of the image's own pixels


def test_augmented_tiles_are_rotations_or_mirrors_of_crops():
    image = np.arange(64, dtype=np.float32).reshape(8, 8)
    tiles = random_tiles([image], 20, 8, np.random.default_rng(3), augment=True)
    views = [dihedral(image, k, flip) for k in range(4) for flip in (False, True)]
    for tile in tiles:
        assert any(np.array_equal(tile, v) for v in views)
    assert len({t.tobytes() for t in tiles}) > 1
