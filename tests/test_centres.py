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
    return instances_from_centres(target.foreground, target.offsets, **kwargs)


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
    """A trained net's offsets are off by a pixel or so: the votes still gather, the split holds."""
    truth = _fake_pair_labels(5)
    target = centre_target(truth)
    rng = np.random.default_rng(0)
    noisy = target.offsets + rng.normal(0, 1.0, target.offsets.shape).astype(np.float32)
    decoded = instances_from_centres(target.foreground, noisy, min_votes=10, min_distance_px=3)
    ious = _matched_iou(decoded, truth)
    assert np.mean(ious > 0.8) > 0.9


def test_empty_and_single_particle_images():
    assert instances_from_centres(np.zeros((8, 8), bool), np.zeros((2, 8, 8))).max() == 0
    one = np.zeros((20, 20), np.int32)
    one[5:15, 5:15] = 3
    target = centre_target(one)
    assert target.centres.tolist() in ([[9, 9]], [[9, 10]], [[10, 9]], [[10, 10]])
    assert np.array_equal(_decode(target) > 0, one > 0) and _decode(target).max() == 1


def _discs(shape, discs):
    from skimage.draw import disk

    labels = np.zeros(shape, np.int32)
    for k, (r, c, radius) in enumerate(discs, 1):
        labels[disk((r, c), radius, shape=shape)] = k
    return labels


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flip", [False, True])
def test_offsets_turn_with_the_image(k, flip):
    """The target of a turned image is the turned target: what augmentation and TTA rely on."""
    from nanoseg.segment.data import dihedral, make_target, undo_dihedral

    labels = _discs((48, 64), [(15, 15, 9), (15, 33, 9), (34, 45, 6)])  # discs on whole pixels: one centre each
    target = make_target(labels, "centres")
    assert target.shape == (4, 48, 64) and target.dtype == np.float32
    turned = make_target(dihedral(labels, k, flip), "centres")
    np.testing.assert_allclose(dihedral(target, k, flip, vectors=True), turned, atol=1e-6)
    np.testing.assert_array_equal(undo_dihedral(dihedral(target, k, flip, vectors=True), k, flip, vectors=True),
                                  target)


def _touching_pair_image(rng, shape=(64, 64)):
    """A big and a small bright disc pressed together at a random place, on a noisy background."""
    big = rng.uniform(10, 13)
    r, c = rng.uniform(18, shape[0] - 18), rng.uniform(18, shape[1] - 30)
    small = rng.uniform(5, 7)
    angle = rng.uniform(0, 2 * np.pi)
    labels = _discs(shape, [(r, c, big)])
    rr, cc = r + (big + small - 1) * np.sin(angle), c + (big + small - 1) * np.cos(angle)
    labels[(_discs(shape, [(rr, cc, small)]) > 0) & (labels == 0)] = 2
    image = np.where(labels == 1, 0.7, np.where(labels == 2, 0.6, 0.2)) + rng.normal(0, 0.03, shape)
    return np.clip(image, 0, 1).astype(np.float32), labels


def test_a_trained_net_splits_a_small_particle_from_a_large_one(tmp_path, one_torch_thread):
    import torch

    from nanoseg.config import build_config
    from nanoseg.segment import Pair, segment_image, train

    # The net's initial weights, else whatever the tests before left in torch's generator. Training
    # does not converge from every start: after 600 steps torch seeds 0 and 1 left the particle
    # channel below 0.5 (no particle found), after 1000 steps seed 1 still did (issue 38).
    torch.manual_seed(0)

    rng = np.random.default_rng(0)
    pairs = [Pair(*_touching_pair_image(rng), f"p{i}") for i in range(12)]
    cfg = build_config({"segment": {"architecture": "unet", "base_width": 8, "depth": 2, "tile_size_px": 64,
                                    "batch_size": 4, "val_every": 100, "bf16": False, "target": "centres",
                                    "min_distance_px": 4, "min_size_px": 5}}).segment
    model = train(pairs, cfg, tmp_path, steps=1000, rng=np.random.default_rng(1), pixel_size_nm=1.0)
    from nanoseg import nets

    net, meta = nets.load(model)
    assert meta["target"] == "centres"
    good = 0
    for seed in range(10, 16):  # on these six, a three-class net of the same size after 600 steps gives the small one +4-8 %
        image, truth = _touching_pair_image(np.random.default_rng(seed))
        labels = segment_image(net, meta, image, cfg, probability=False)[0]
        ious = _matched_iou(labels, truth)
        areas_ok = all(abs((labels == np.bincount(labels[truth == k]).argmax()).sum() / (truth == k).sum() - 1) < 0.05
                       for k in (1, 2))
        good += int(labels.max() == 2 and ious.min() > 0.8 and areas_ok)
    assert good >= 5, good
