"""Metrics against values worked out by hand on tiny images."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk
from skimage.measure import label as sk_label

from nanoseg import metrics as M
from nanoseg.errors import NanosegError


def square(shape, r0, c0, size=10, value=1, out=None):
    out = np.zeros(shape, int) if out is None else out
    out[r0:r0 + size, c0:c0 + size] = value
    return out


# ------------------------------------------------------------------------------ pixel metrics


def test_iou_of_two_squares_offset_by_five_px():
    a = square((20, 20), 0, 0)
    b = square((20, 20), 0, 5)
    # overlap 10x5 = 50 px, union 100 + 100 - 50 = 150 px
    assert M.image_iou(a, b) == pytest.approx(50 / 150)
    assert M.instance_iou(a, b) == pytest.approx(50 / 150)
    assert M.iou_matrix(a, b) == pytest.approx(np.array([[50 / 150]]))


def test_perfect_prediction_scores_perfectly():
    gt = square((30, 40), 2, 2)
    square((30, 40), 15, 20, value=2, out=gt)
    assert M.image_iou(gt, gt) == 1.0
    assert M.instance_iou(gt, gt) == 1.0
    assert M.symmetric_instance_iou(gt, gt) == 1.0
    det = M.detection_scores(gt, gt)
    assert (det["f1"], det["ap"], det["pq"], det["fp"], det["fn"]) == (1.0, 1.0, 1.0, 0, 0)
    assert M.mean_average_precision(gt, gt) == 1.0
    assert M.pixel_error(gt > 0, gt, thresholds=None)[0] == 0.0
    assert M.rand_error(gt, gt) == 0.0
    assert M.rand_error(gt, gt, thin=True) == 0.0
    assert M.information_error(gt, gt) == 0.0
    warp = M.warping_error(gt > 0, gt > 0)
    assert warp.as_dict() == {"warping_error": 0.0, "split_merge_error": 0.0, "splits": 0, "merges": 0,
                              "omissions": 0, "additions": 0}
    assert M.youden_index((gt > 0).astype(float), gt) == (1.0, 1.0)


def test_shape_mismatch_is_a_user_error():
    with pytest.raises(NanosegError, match="differs"):
        M.image_iou(np.zeros((4, 4)), np.zeros((4, 5)))


def test_youden_on_hand_computed_roc():
    prob = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    gt = np.array([1, 1, 0, 1, 0, 1, 0, 0])
    # thresholds >= 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1 give (TPR, FPR) =
    # (.25, 0), (.5, 0), (.5, .25), (.75, .25), (.75, .5), (1, .5), (1, .75), (1, 1)
    # J = .25, .5, .25, .5, .25, .5, .25, 0 -> max 0.5, first reached at 0.8
    j, t = M.youden_index(prob, gt)
    assert j == pytest.approx(0.5)
    assert t == pytest.approx(0.8)
    # ties of probability collapse to one operating point
    j2, _ = M.youden_index(np.array([0.5, 0.5, 0.5, 0.5]), np.array([1, 0, 1, 0]))
    assert j2 == 0.0
    assert math.isnan(M.youden_index(prob, np.zeros(8))[0])


def test_pixel_error_takes_the_best_threshold():
    gt = np.array([1, 1, 0, 0])
    prob = np.array([0.9, 0.4, 0.6, 0.1])
    # > 0.0: all four, F = 4/6; > 0.1 .. 0.3: three, F = 4/5; > 0.4, 0.5: {0.9, 0.6}, F = 1/2;
    # > 0.6 .. 0.8: {0.9}, F = 2/3; > 0.9, 1.0: none, F = 0
    error, t = M.pixel_error(prob, gt)
    assert error == pytest.approx(0.2)
    assert t == pytest.approx(0.1)


# ------------------------------------------------------------------------------ instances


def test_symmetric_iou_charges_missed_particles():
    gt = square((20, 40), 2, 2)
    square((20, 40), 2, 20, value=2, out=gt)
    pred = square((20, 40), 2, 2)  # finds the first particle only, exactly
    assert M.instance_iou(pred, gt) == 1.0
    assert M.instance_iou(gt, pred) == 0.5  # (1 + 0) / 2
    assert M.symmetric_instance_iou(pred, gt) == 0.75


def test_instance_iou_area_filter_drops_specks():
    gt = square((20, 40), 2, 2)
    pred = square((20, 40), 2, 2)
    pred[15, 30] = 2  # 1-px speck, IoU 0
    assert M.instance_iou(pred, gt) == 0.5
    assert M.instance_iou(pred, gt, min_area_px=9) == 1.0


def merge_and_split_case():
    """Four 10x10 particles; the prediction merges B and C and splits D 7:2.

    Ground truth: A (cols 0-9), B (cols 20-29) | one-pixel line (col 30) | C (cols 31-40),
    D (cols 50-59), rows 5-14.
    Prediction: A exact; B and C as one particle (line filled); D cut by a one-pixel line at
    col 57 into a 7-column part (70 px) and a 2-column part (20 px).
    """
    shape = (20, 64)
    gt = np.zeros(shape, int)
    gt[5:15, 0:10] = 1
    gt[5:15, 20:30] = 2
    gt[5:15, 31:41] = 3
    gt[5:15, 50:60] = 4
    pred = np.zeros(shape, int)
    pred[5:15, 0:10] = 1
    pred[5:15, 20:41] = 2
    pred[5:15, 50:57] = 3
    pred[5:15, 58:60] = 4
    return pred, gt


def test_detection_scores_count_a_merge_and_a_split():
    pred, gt = merge_and_split_case()
    det = M.detection_scores(pred, gt, 0.5)
    # matches: A-A (IoU 1) and D-big part (IoU 70/100); B+C merged: IoU 100/210 with B -> FP
    # TP 2, FP 2 (merged, small part), FN 2 (B, C)
    assert (det["tp"], det["fp"], det["fn"]) == (2, 2, 2)
    assert det["precision"] == pytest.approx(0.5)
    assert det["recall"] == pytest.approx(0.5)
    assert det["f1"] == pytest.approx(0.5)
    assert det["ap"] == pytest.approx(2 / 6)
    assert det["sq"] == pytest.approx((1.0 + 0.7) / 2)
    assert det["rq"] == pytest.approx(2 / (2 + 1 + 1))
    assert det["pq"] == pytest.approx(0.85 * 0.5)
    counts = M.split_merge_counts(pred, gt)
    assert counts == {"splits": 1, "merges": 1, "omissions": 0, "additions": 0}


def test_average_precision_over_iou_thresholds():
    gt = square((20, 20), 5, 5)
    pred = np.zeros_like(gt)
    pred[5:15, 5:12] = 1  # 70 px inside the 100 px square: IoU 0.7
    # IoU > t for t = 0.50, 0.55, 0.60, 0.65 only: 4 of 10 thresholds
    assert M.mean_average_precision(pred, gt) == pytest.approx(0.4)


def test_low_threshold_matching_is_one_to_one():
    gt = square((20, 20), 5, 5)
    pred = np.zeros_like(gt)
    pred[5:15, 5:9] = 1   # 40 px: IoU 0.4
    pred[5:15, 10:15] = 2  # 50 px: IoU 0.5
    det = M.detection_scores(pred, gt, 0.3)
    assert (det["tp"], det["fp"], det["fn"]) == (1, 1, 0)
    assert det["sq"] == pytest.approx(0.5)  # the better of the two is matched
    assert M.detection_scores(pred, gt, 0.5)["tp"] == 0  # 0.5 is not > 0.5


# ------------------------------------------------------------------------------ ISBI 2012


def test_rand_and_information_scores_by_hand():
    gt = np.array([[1, 1, 1, 1, 2, 2, 2, 2]])
    pred = np.array([[1, 1, 1, 1, 2, 2, 3, 3]])  # second segment split in halves
    # sum n_ij^2 = 16 + 4 + 4 = 24, sum t^2 = 32, sum s^2 = 24
    rand = M.rand_scores(pred, gt)
    assert rand["split"] == pytest.approx(24 / 32)
    assert rand["merge"] == pytest.approx(1.0)
    assert rand["error"] == pytest.approx(1 - 48 / 56)
    # H(T) = 1 bit, H(S) = 1.5 bits, H(S,T) = H(S): I = 1, V = 2 / 2.5
    info = M.information_scores(pred, gt)
    assert info["split"] == pytest.approx(2 / 3)
    assert info["merge"] == pytest.approx(1.0)
    assert info["error"] == pytest.approx(0.2)
    # a merge: Rand F = 2 * 8 / (16 + 8); no information shared
    merged = M.rand_scores(np.array([[1, 1, 1, 1]]), np.array([[1, 1, 2, 2]]))
    assert merged["fscore"] == pytest.approx(2 / 3)
    assert M.information_scores(np.array([[1, 1, 1, 1]]), np.array([[1, 1, 2, 2]]))["error"] == pytest.approx(1.0)


def test_rand_is_foreground_restricted_with_singletons():
    gt = np.array([[1, 1, 1, 1, 0, 0]])
    pred = np.array([[1, 1, 0, 0, 5, 0]])
    # ground-truth background ignored; the two predicted-background pixels are singletons:
    # sum n^2 = 4 + 1 + 1 = 6, sum s^2 = 6, sum t^2 = 16 -> F = 12 / 22
    assert M.rand_scores(pred, gt)["fscore"] == pytest.approx(12 / 22)
    # information: H(T) = 0 -> merge score 1; H(S) = -(.5 ln .5 + 2 * .25 ln .25) > 0, I = 0
    info = M.information_scores(pred, gt)
    assert info["merge"] == 1.0 and info["split"] == pytest.approx(0.0)


def test_border_thinning_forgives_a_thick_boundary():
    gt = np.zeros((12, 21), int)
    gt[1:11, 0:10], gt[1:11, 11:21] = 1, 2  # one-pixel line at col 10
    pred = np.zeros_like(gt)
    pred[1:11, 0:9], pred[1:11, 12:21] = 1, 2  # three-pixel gap, cols 9-11
    assert np.array_equal(M.thin_borders(pred), gt)
    assert np.array_equal(M.thin_borders(gt), gt)
    assert M.rand_error(pred, gt) > 0.05
    assert M.rand_error(pred, gt, thin=True) == 0.0
    assert M.information_error(pred, gt, thin=False) > 0.05
    assert M.information_error(pred, gt) == 0.0
    # a wide gap is not a border: nothing changes
    far = np.zeros((12, 30), int)
    far[1:11, 0:5], far[1:11, 20:30] = 1, 2
    assert np.array_equal(M.thin_borders(far), far)


def test_warping_error_counts_one_merge_and_one_split():
    pred, gt = merge_and_split_case()
    result = M.warping_error(M.labels_to_binary(pred), M.labels_to_binary(gt))
    assert (result.splits, result.merges, result.omissions, result.additions) == (1, 1, 0, 0)
    # the merge leaves the 10 px of the filled line; the cut can be warped in from one end
    # pixel by pixel until its last pixel, whose removal would split D
    assert result.error * pred.size == pytest.approx(11)
    # all of them split or merge particles: 10 merger pixels, 1 split pixel
    assert result.split_merge_error * pred.size == pytest.approx(11)


def test_warping_error_ignores_boundary_shifts():
    gt = square((30, 30), 10, 10) > 0
    pred = ndi.binary_dilation(gt)  # one px larger all around: no topological change
    result = M.warping_error(pred, gt)
    assert result.error == 0.0
    assert M.pixel_error(pred, gt, thresholds=None)[0] > 0
    # a hole is a topological error that cannot be warped away
    holed = pred.copy()
    holed[15, 15] = False
    holed_result = M.warping_error(holed, gt)
    assert holed_result.error * gt.size == pytest.approx(1)
    assert holed_result.split_merge_error == 0.0  # a hole is neither a split nor a merger


def test_simple_point_table_preserves_topology():
    rng = np.random.default_rng(0)
    four, eight = ndi.generate_binary_structure(2, 1), ndi.generate_binary_structure(2, 2)

    def topology(x):
        x = np.pad(x, 2)
        return ndi.label(x, four)[1], ndi.label(~x, eight)[1]

    for _ in range(300):
        x = rng.random((5, 5)) < 0.5
        code = sum(int(x[2 + dy, 2 + dx]) << k for k, (dy, dx) in enumerate(M.NEIGHBOUR_OFFSETS))
        y = x.copy()
        y[2, 2] = ~y[2, 2]
        assert M.SIMPLE_POINTS[code] == (topology(x) == topology(y))


# ------------------------------------------------------------------------------ watershed


def test_paper_watershed_splits_two_touching_discs_into_four_connected_particles():
    img = np.zeros((60, 90), bool)
    img[disk((30, 30), 15, shape=img.shape)] = True
    img[disk((30, 56), 15, shape=img.shape)] = True  # overlapping discs: one blob
    assert sk_label(img, connectivity=1).max() == 1
    labels = M.paper_watershed(img)
    assert labels.max() == 2
    # 4- and 8-connected labelling of the mask give the same two particles
    assert sk_label(labels > 0, connectivity=1).max() == 2
    assert sk_label(labels > 0, connectivity=2).max() == 2
    for k in (1, 2):
        assert sk_label(labels == k, connectivity=1).max() == 1
    # only the one-pixel line is lost
    assert img.sum() - (labels > 0).sum() < 40
    # a hole inside a particle is filled, a single small disc stays one particle
    small = np.zeros((30, 30), bool)
    small[disk((15, 15), 6)] = True
    small[15, 15] = False
    single = M.paper_watershed(small)
    assert single.max() == 1 and single[15, 15] == 1


def test_diagonal_contacts_are_removed():
    binary = np.zeros((6, 6), bool)
    binary[1:3, 1:3] = True
    binary[3:5, 3:5] = True  # touches the first square only at a corner: [[1, 0], [0, 1]]
    out = M.remove_diagonal_contacts(binary)
    assert sk_label(out, connectivity=2).max() == sk_label(out, connectivity=1).max() == 2
    assert not out[2, 2] and out.sum() == 7  # the upper-left pixel of the block is cleared
    anti = np.zeros((4, 4), bool)
    anti[1, 2] = anti[2, 1] = True  # [[0, 1], [1, 0]]: the lower-left one goes
    assert M.remove_diagonal_contacts(anti).tolist() == (anti & ~np.eye(4, k=-1, dtype=bool)).tolist()


def test_paper_watershed_drops_unmarked_components_unless_asked():
    img = np.zeros((40, 80), bool)
    img[disk((20, 30), 12, shape=img.shape)] = True
    img[18:21, 48:51] = True  # a 3x3 speck 6 px from the big disc: no peak of its own
    assert M.paper_watershed(img).max() == 1
    assert M.paper_watershed(img, keep_unmarked=True).max() == 2


def test_outline_area_follows_picks_theorem():
    labels = np.zeros((8, 8), int)
    labels[1:5, 1:5] = 1  # 4x4 square: outline through the boundary pixel centres is 3x3 = 9
    labels[6, 6] = 2  # single pixel: area 0
    assert M.outline_area_px(labels)[1:].tolist() == [9.0, 0.0]
    gt = np.where(labels == 1, 1, 0)
    assert M.instance_iou(labels, gt) == 0.5  # the speck scores 0
    assert M.instance_iou(labels, gt, min_area_px=9) == 1.0  # 16 px > 9: the square stays
    assert np.isnan(M.instance_iou(labels, gt, min_area_px=9, area="outline"))  # 9 px^2: dropped too


# ------------------------------------------------------------------------------ sizes


def test_size_distribution_agreement_by_hand():
    pred = pd.DataFrame({"ecd_px": [1.0, 2.0, 3.0]})
    gt = pd.DataFrame({"ecd_px": [1.0, 2.0, 3.0, 4.0]})
    row = M.size_distribution_agreement(pred, gt).iloc[0]
    assert row["descriptor"] == "ecd_px"
    assert row["mean_pred"] == 2.0 and row["mean_gt"] == 2.5
    assert row["mean_rel_error"] == pytest.approx(-0.2)
    assert row["median_rel_error"] == pytest.approx(-0.2)
    assert row["sd_pred"] == pytest.approx(1.0)
    # empirical CDFs differ most at 3: 1.0 vs 0.75
    assert row["ks_statistic"] == pytest.approx(0.25)
    assert M.default_size_columns(pred, gt) == ["ecd_px"]
    with pytest.raises(NanosegError, match="missing"):
        M.size_distribution_agreement(pred, gt, ["area_px"])


def test_missed_causes_name_why_each_particle_was_missed():
    from nanoseg.metrics import missed_causes

    gt = np.zeros((40, 80), np.int32)
    gt[2:12, 2:12] = 1  # found exactly
    gt[2:12, 20:30] = 2  # 2 and 3 touch and are found as one particle
    gt[2:12, 30:40] = 3
    gt[25:35, 2:12] = 4  # nothing there in the prediction
    gt[25:35, 40:50] = 5  # found, but shifted too far for IoU > 0.5
    pred = np.zeros_like(gt)
    pred[2:12, 2:12] = 7
    pred[2:12, 20:40] = 9
    pred[25:35, 45:55] = 3
    out = missed_causes(pred, gt)
    assert out == {"n_gt": 5, "matched": 1, "merged": 2, "not_found": 1, "outline": 1}
    assert missed_causes(np.zeros_like(gt), gt) == {"n_gt": 5, "matched": 0, "merged": 0, "not_found": 5,
                                                     "outline": 0}
    assert missed_causes(gt, np.zeros_like(gt))["n_gt"] == 0
