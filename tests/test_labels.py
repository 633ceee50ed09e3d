"""Label-image geometry: separation lines and their inverse, labelling, renumbering, border labels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from nanoseg.labels import (
    border_labels,
    consecutive_labels,
    cut_touching,
    fill_seams,
    label_binary,
    relabel,
    separated_binary,
    separation_lines,
    touching_lines,
)


def two_squares(dtype=np.int32) -> np.ndarray:
    """Label 1 (cols 1-3) and label 2 (cols 4-6) share the edge between cols 3 and 4."""
    instances = np.zeros((6, 8), dtype)
    instances[1:5, 1:4] = 1
    instances[1:5, 4:7] = 2
    return instances


def no_two_labels_4_adjacent(labels: np.ndarray) -> bool:
    for a, b in ((labels[:-1], labels[1:]), (labels[:, :-1], labels[:, 1:])):
        if np.any((a != b) & (a > 0) & (b > 0)):
            return False
    return True


def random_scene(rng: np.random.Generator, shape=(40, 50), n=25) -> np.ndarray:
    """Overlapping rectangles, later ones on top (higher labels)."""
    labels = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        r, c = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
        labels[r:r + rng.integers(3, 12), c:c + rng.integers(3, 12)] = k
    return labels


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_the_lower_label_gives_up_exactly_the_shared_edge(dtype):
    instances = two_squares(dtype)
    lines = separation_lines(instances)
    expected = np.zeros(instances.shape, bool)
    expected[1:5, 3] = True  # label 1's column next to label 2
    np.testing.assert_array_equal(lines, expected)
    cut = cut_touching(instances)
    assert cut.dtype == instances.dtype
    assert (cut[1:5, 4:7] == 2).all() and (cut[1:5, 1:3] == 1).all() and (cut[1:5, 3] == 0).all()
    assert no_two_labels_4_adjacent(cut)
    binary = separated_binary(instances)
    assert binary.dtype == np.uint8 and set(np.unique(binary)) == {0, 255}
    np.testing.assert_array_equal(binary > 0, cut > 0)
    # 4-connected labelling of the mask gives the two particles back
    components = label_binary(binary > 0, 1)
    assert components.max() == 2
    assert len(set(zip(components[cut > 0].tolist(), cut[cut > 0].tolist()))) == 2


def test_upper_convention_cuts_the_other_side():
    instances = two_squares()
    lines = separation_lines(instances, gives_up="upper")
    assert lines[1:5, 4].all() and lines.sum() == 4
    assert no_two_labels_4_adjacent(cut_touching(instances, gives_up="upper"))
    with pytest.raises(ValueError, match="gives_up"):
        separation_lines(instances, gives_up="left")  # type: ignore[arg-type]


def test_separation_lines_on_random_scenes():
    rng = np.random.default_rng(3)
    for _ in range(20):
        labels = random_scene(rng)
        for side in ("lower", "upper"):
            lines = separation_lines(labels, gives_up=side)
            cut = cut_touching(labels, gives_up=side)
            assert no_two_labels_4_adjacent(cut)
            assert not (lines & (labels == 0)).any()  # only particle pixels are given up
            # a pixel is given up only when it touches a label on the giving side
            higher = ndi.maximum_filter(labels, footprint=ndi.generate_binary_structure(2, 1), mode="constant")
            if side == "lower":
                np.testing.assert_array_equal(lines, (labels > 0) & (higher > labels))
        np.testing.assert_array_equal(separated_binary(labels) > 0, cut_touching(labels) > 0)


def test_touching_lines_are_the_background_lines_between_two_particles():
    cut = cut_touching(two_squares())
    expected = np.zeros(cut.shape, bool)
    expected[1:5, 3] = True
    np.testing.assert_array_equal(touching_lines(cut), expected)
    # a background pixel next to one particle only is no line
    single = np.zeros((5, 5), np.int32)
    single[1:4, 1:4] = 7
    assert not touching_lines(single).any()


def test_fill_seams_undoes_the_cut():
    instances = two_squares()
    np.testing.assert_array_equal(fill_seams(cut_touching(instances)), instances)
    yy, xx = np.mgrid[:60, :90]
    disks = np.zeros((60, 90), np.int32)
    disks[(yy - 30) ** 2 + (xx - 30) ** 2 <= 18**2] = 1
    disks[(yy - 30) ** 2 + (xx - 58) ** 2 <= 18**2] = 2  # on top of the first
    cut = cut_touching(disks)
    line = (cut == 0) & (disks > 0)
    assert line.sum() > 10
    np.testing.assert_array_equal(fill_seams(cut)[line], disks[line])


def test_fill_seams_gives_each_line_pixel_its_lowest_neighbour():
    rng = np.random.default_rng(5)
    for _ in range(10):
        cut = cut_touching(random_scene(rng))
        filled = fill_seams(cut)
        np.testing.assert_array_equal(filled[cut > 0], cut[cut > 0])  # particle pixels never change
        padded = np.pad(cut, 1)
        for r, c in zip(*np.nonzero(cut == 0)):
            near = {int(padded[r + 1 + dr, c + 1 + dc]) for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))} - {0}
            assert filled[r, c] == (min(near) if len(near) >= 2 else 0)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_fill_seams_at_the_image_border(dtype):
    """A line reaching the border is filled there too, and nothing else changes (any dtype)."""
    labels = np.zeros((4, 6), dtype)
    labels[:, 0:3], labels[:, 3:6] = 1, 2
    cut = cut_touching(labels)
    assert (cut[:, 2] == 0).all()
    filled = fill_seams(cut)
    np.testing.assert_array_equal(filled, labels)
    lone = np.zeros((4, 4), dtype)
    lone[0, 1] = 3
    np.testing.assert_array_equal(fill_seams(lone), lone)


def test_relabel_drops_small_particles_and_numbers_consecutively():
    labels = np.zeros((10, 10), np.int32)
    labels[0:4, 0:4] = 7  # 16 px
    labels[5:6, 5:7] = 3  # 2 px: dropped
    labels[6:10, 6:10] = 40  # 16 px
    out = relabel(labels, min_size_px=5)
    assert out.dtype == np.uint16
    assert sorted(np.unique(out).tolist()) == [0, 1, 2]
    assert (out[0:4, 0:4] == 1).all() and (out[6:10, 6:10] == 2).all() and (out[5, 5:7] == 0).all()
    np.testing.assert_array_equal(relabel(labels), consecutive_labels(labels))
    many = np.arange(70000, dtype=np.int64).reshape(280, 250)
    assert relabel(many).dtype == np.uint32


def test_consecutive_labels_keeps_order_and_background():
    labels = np.array([[0, 9, 9], [4, 0, 10**12]])
    np.testing.assert_array_equal(consecutive_labels(labels), [[0, 2, 2], [1, 0, 3]])
    np.testing.assert_array_equal(consecutive_labels(np.array([[5, 8]])), [[1, 2]])  # no background pixel
    np.testing.assert_array_equal(consecutive_labels(np.array([[True, False]])), [[1, 0]])
    assert consecutive_labels(np.zeros((0, 3), int)).shape == (0, 3)


def test_label_binary_connectivity():
    binary = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], bool)
    assert label_binary(binary, 1).max() == 2
    assert label_binary(binary, 2).max() == 1


def test_border_labels():
    labels = np.zeros((6, 6), np.int32)
    labels[0, 2] = 5
    labels[2:4, 2:4] = 3
    labels[5, 5] = 9
    labels[3, 0] = 2
    np.testing.assert_array_equal(border_labels(labels), [2, 5, 9])
    assert border_labels(np.zeros((3, 3), int)).size == 0
