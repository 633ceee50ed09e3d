"""The centre-vote representation of touching particles: targets from instance labels, and back."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from nanoseg.segment.data import OFFSET_SCALE_PX, centre_target
from nanoseg.segment.instances import instances_from_centres


def _fake_pair_labels(seed: int, shape=(192, 256), n=60):
    """Instance labels as the masks stage draws them (agglomerated, overlapping random polygons),
    grown by a pixel so that touching particles share an edge instead of a background line, as
    in a micrograph's foreground."""
    from skimage.segmentation import expand_labels

    from nanoseg.config import MasksConfig
    from nanoseg.masks import assemble_mask
    from nanoseg.shapes import random_polygons

    shapes = random_polygons(30, 40, np.random.default_rng(seed), mean_area_px=300)
    cfg = MasksConfig(clustering=10, perlin_cell_px=80)
    return expand_labels(assemble_mask(shapes, shape, n, np.random.default_rng(seed), cfg).instances, 1)


def _matched_iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For each true particle, the IoU of the predicted particle that covers most of it."""
    ious = []
    for k in np.unique(truth[truth > 0]):
        mine = truth == k
        covering = np.bincount(pred[mine].ravel())
        covering[0] = 0
        best = covering.argmax()
        if best == 0:
            ious.append(0.0)
            continue
        other = pred == best
        ious.append((mine & other).sum() / (mine | other).sum())
    return np.asarray(ious)


def _decode(target, **kwargs):
    return instances_from_centres(target.foreground, target.heatmap, target.offsets, **kwargs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_gives_back_the_fake_pairs_particles(seed):
    truth = _fake_pair_labels(seed)
    assert len(np.unique(truth)) > 30 and ndi.label(truth > 0, np.ones((3, 3)))[1] < len(np.unique(truth)) - 10  # many touch
    decoded = _decode(centre_target(truth))
    ious = _matched_iou(decoded, truth)
    assert ious.min() > 0.95, np.sort(ious)[:5]
    assert decoded.max() == len(ious)


def test_two_touching_discs_of_different_size_stay_two():
    from skimage.draw import disk

    truth = np.zeros((80, 100), np.int32)
    truth[disk((40, 35), 20, shape=truth.shape)] = 1
    truth[disk((40, 61), 8, shape=truth.shape)] = 2  # pressed against the big one: they share an edge
    assert ndi.label(truth > 0)[1] == 1
    decoded = _decode(centre_target(truth))
    assert decoded.max() == 2
    for k in (1, 2):
        area = np.bincount(decoded[truth == k]).argmax()
        assert (decoded == area).sum() == pytest.approx((truth == k).sum(), rel=0.05)


def test_centres_are_inside_their_particles_even_crescents():
    from skimage.draw import disk

    truth = np.zeros((60, 60), np.int32)
    truth[disk((30, 30), 20, shape=truth.shape)] = 1
    truth[disk((30, 40), 17, shape=truth.shape)] = 2  # covers most of particle 1: a crescent is left
    target = centre_target(truth)
    for k, (r, c) in enumerate(target.centres, 1):
        assert truth[r, c] == k
    assert target.heatmap.max() == pytest.approx(1.0) and target.heatmap[~target.foreground].max() < 1.0
    # offsets of a particle's pixels all point at its centre
    rows, cols = np.nonzero(truth == 1)
    r, c = target.centres[0]
    assert np.allclose(rows + target.offsets[0, rows, cols], r) and np.allclose(cols + target.offsets[1, rows, cols], c)
    assert np.abs(target.offsets).max() / OFFSET_SCALE_PX < 2


def test_votes_tolerate_noise_of_a_pixel():
    """A trained net's offsets are off by a pixel or so and its heatmap is smoother: the split holds."""
    truth = _fake_pair_labels(5)
    target = centre_target(truth)
    rng = np.random.default_rng(0)
    noisy = target.offsets + rng.normal(0, 1.0, target.offsets.shape).astype(np.float32)
    heatmap = ndi.gaussian_filter(target.heatmap, 1.0)
    decoded = instances_from_centres(target.foreground, heatmap / heatmap.max(), noisy, peak_threshold=0.2)
    ious = _matched_iou(decoded, truth)
    assert np.mean(ious > 0.8) > 0.9


def test_empty_and_single_particle_images():
    assert instances_from_centres(np.zeros((8, 8), bool), np.zeros((8, 8)), np.zeros((2, 8, 8))).max() == 0
    one = np.zeros((20, 20), np.int32)
    one[5:15, 5:15] = 3
    target = centre_target(one)
    assert target.centres.tolist() in ([[9, 9]], [[9, 10]], [[10, 9]], [[10, 10]])
    assert np.array_equal(_decode(target) > 0, one > 0) and _decode(target).max() == 1
