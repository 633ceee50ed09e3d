"""Segmentation metrics: pixel, instance, ISBI 2012 and size-distribution agreement.

Every metric is a plain function on numpy arrays. Label images use 0 for background and any
positive integers for instances (they need not be consecutive). Overlaps come from one
contingency table built with :func:`numpy.bincount` / :mod:`scipy.sparse`, so a 1024x768
image with ~150 particles is scored in milliseconds (the warping error, which flips pixels
one layer at a time, takes longer).

Metric families
---------------
- Pixel: :func:`image_iou` (Jaccard index), :func:`youden_index` (max TPR - FPR on the ROC of a
  probability map), :func:`pixel_error` (ISBI 2012: 1 - max pixel F-score over thresholds).
- Instance overlap: :func:`instance_iou` (each predicted particle's best IoU with a ground-truth
  particle, averaged, as in Rühle et al. 2021), and :func:`symmetric_instance_iou` (the mean of
  both directions, so that missed particles count too).
- Detection: :func:`detection_scores` (precision, recall, F1, AP = TP / (TP + FP + FN) as in the
  Data Science Bowl 2018 and StarDist, and the panoptic quality split SQ x RQ = PQ of Kirillov
  et al. 2019) at one IoU threshold, :func:`mean_average_precision` over IoU 0.5:0.95.
- ISBI 2012 (Arganda-Carreras et al. 2015): :func:`rand_scores` / :func:`rand_error`
  (foreground-restricted Rand F-score), :func:`information_scores` / :func:`information_error`
  (foreground-restricted VI F-score), both optionally after :func:`thin_borders`, and
  :func:`warping_error` (Jain et al. 2010), which also counts splits and mergers.
- Sizes: :func:`size_distribution_agreement` (mean, sd, median, relative error and the
  Kolmogorov-Smirnov statistic of each descriptor against the ground truth).

Protocols
---------
:mod:`nanoseg.evaluate` scores a folder of predictions with one of two protocols:

``"paper"`` -- what Rühle et al. (2021) scored (their published scoring scripts), reproduced
for comparison with their Table 1:

1. Each probability map is thresholded at 0.0, 0.1, ..., 1.0 and split by
   :func:`paper_watershed` (Gaussian sigma 1 on the distance transform, ``peak_local_max``
   with ``min_distance=9`` and border peaks excluded, watershed with one-pixel lines, holes
   filled, diagonal-only contacts removed so that the particles are 4-connected). Components
   that get no distance peak are dropped, as in the authors' code.
2. For each of image IoU, instance IoU, area-filtered instance IoU and Youden's index, *one
   global threshold* is the one with the best mean over all images -- tuned on the scored
   images themselves, separately per metric.
3. The ground truth is labelled with 8-connectivity (the authors' OpenCV contours are
   8-connected), so particles that touch only diagonally across a separation line merge.
4. Instance IoU is averaged over the *predicted* particles only (a missed particle costs
   nothing; no predicted particle scores 0); the filtered version ignores predicted particles
   whose outline encloses 9 px^2 or less (:func:`outline_area_px`, the contour area).
5. Youden's index is TPR + TNR - 1 of the post-processed binary mask at each threshold.
6. The ISBI 2012 metrics are computed on the raw probability maps, thresholded and labelled
   with 4-connectivity, with the best threshold chosen *per image and per metric*; the
   warping error counts split and merger pixels only (Fiji's ``SplitsAndMergers`` variant).

Binary masks given as predictions are labelled 4-connected (this project's mask convention)
unless the watershed is asked for; label images are used as they are. Both protocols.

``"strict"`` -- our corrected version:

1. One threshold for all images and all metrics, fixed in advance (default 0.5), never tuned
   on the scored images.
2. The same watershed split, except that every connected component keeps a marker (none is
   dropped) and peaks near the border count.
3. The ground truth is labelled with 4-connectivity, as its one-pixel separation lines intend.
4. Instance scores that also penalise missed particles: IoU in both directions and their
   mean, precision / recall / F1 / AP at IoU 0.5, AP averaged over IoU 0.5:0.95, SQ / RQ / PQ.
5. Youden's index from the full ROC curve of the raw probability map (threshold-free).
6. The ISBI 2012 metrics at that single threshold; the warping error counts every topological
   error pixel (and the split/merger-only fraction is reported beside it).
7. A segmenter with its own instance post-processing (such as this project's three-class
   watershed) is scored on its label images as they are -- every instance and pixel metric --
   with its probability map passed beside them only for Youden's ROC
   (``evaluate_predictions(..., score_maps=...)``, ``nanoseg evaluate --scores``). Re-splitting
   its probabilities with the paper's watershed would score a post-processing it does not use.

Known differences from the authors' tools: particles are pixel-exact connected components, not
filled OpenCV polygons; the diagonal-contact rule is applied to all 2x2 blocks at once (their
script scans them one by one); :func:`thin_borders` thins only the gaps between particles,
where Fiji skeletonises the whole boundary map; the warping error is a re-implementation of
Jain et al.'s algorithm, not Fiji's code. The authors' script also records each best
threshold one step (0.1) too low (an off-by-one in its averaging); the scores are unaffected,
and the thresholds reported here are the ones actually used.

References
----------
.. [1] B. Rühle, J. F. Krumrey, V.-D. Hodoroaba, "Workflow towards automated segmentation of
   agglomerated, non-spherical particles from electron microscopy images using artificial
   neural networks", Sci. Rep. 11, 4942 (2021). doi:10.1038/s41598-021-84287-6
.. [2] I. Arganda-Carreras et al., "Crowdsourcing the creation of image segmentation
   algorithms for connectomics", Front. Neuroanat. 9, 142 (2015). doi:10.3389/fnana.2015.00142
.. [3] V. Jain et al., "Boundary learning by optimization with topological constraints",
   CVPR 2010, 2488-2495. doi:10.1109/CVPR.2010.5539950
.. [4] W. J. Youden, "Index for rating diagnostic tests", Cancer 3, 32-35 (1950).
.. [5] U. Schmidt, M. Weigert, C. Broaddus, G. Myers, "Cell detection with star-convex
   polygons", MICCAI 2018 (StarDist); Kaggle Data Science Bowl 2018 scoring.
.. [6] A. Kirillov et al., "Panoptic segmentation", CVPR 2019.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy import sparse

from nanoseg.errors import NanosegError
from nanoseg.labels import consecutive_labels, cut_touching, label_binary, touching_lines

#: The thresholds the paper swept: 0.0, 0.1, ..., 1.0.
PAPER_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 11), 1))
#: IoU thresholds of the COCO-style average: 0.50, 0.55, ..., 0.95.
AP_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2))

_EIGHT = ndi.generate_binary_structure(2, 2)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def check_same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Raise :class:`NanosegError` naming ``what`` when a prediction's shape differs from its ground truth's."""
    if np.shape(a) != np.shape(b):
        raise NanosegError(f"{what}: prediction shape {np.shape(a)} differs from ground truth shape {np.shape(b)}")


def contingency_table(pred_labels: np.ndarray, gt_labels: np.ndarray) -> sparse.csr_matrix:
    """Pixel counts of every (ground truth, prediction) label pair.

    Parameters
    ----------
    pred_labels, gt_labels : (H, W) int arrays
        Label images with labels 0..n (consecutive; see :func:`nanoseg.labels.consecutive_labels`).

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n_gt + 1, n_pred + 1)
        ``table[j, i]`` = number of pixels with ground-truth label j and predicted label i;
        row and column 0 are the background.
    """
    pred = np.asarray(pred_labels).ravel()
    gt = np.asarray(gt_labels).ravel()
    shape = (int(gt.max(initial=0)) + 1, int(pred.max(initial=0)) + 1)
    return sparse.coo_matrix((np.ones(gt.size, dtype=np.int64), (gt, pred)), shape=shape).tocsr()


def iou_matrix(pred_labels: np.ndarray, gt_labels: np.ndarray) -> np.ndarray:
    """IoU of every ground-truth particle with every predicted particle.

    Parameters
    ----------
    pred_labels, gt_labels : (H, W) int arrays
        Instance label images, 0 = background (any positive labels).

    Returns
    -------
    (n_gt, n_pred) float array
        ``iou[j, i] = |G_j ∩ P_i| / |G_j ∪ P_i|`` for the particles in order of their labels.
    """
    check_same_shape(pred_labels, gt_labels, "iou_matrix")
    table = contingency_table(consecutive_labels(pred_labels), consecutive_labels(gt_labels))
    gt_area = np.asarray(table.sum(axis=1)).ravel()[1:]
    pred_area = np.asarray(table.sum(axis=0)).ravel()[1:]
    inter = table[1:, 1:].toarray().astype(float)
    union = gt_area[:, None] + pred_area[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


# --------------------------------------------------------------------------------------------
# Pixel metrics
# --------------------------------------------------------------------------------------------


def image_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union (Jaccard index) of two binary masks.

    ``IoU = |P ∩ G| / |P ∪ G|``; 1 when both masks are empty.

    Parameters
    ----------
    pred, gt : (H, W) arrays
        Foreground is every non-zero pixel (so label images work too).

    Returns
    -------
    float
        In [0, 1].

    References
    ----------
    P. Jaccard, "The distribution of the flora in the alpine zone", New Phytol. 11, 37 (1912).

    Examples
    --------
    >>> a = np.zeros((20, 20), bool); a[0:10, 0:10] = True
    >>> b = np.zeros((20, 20), bool); b[0:10, 5:15] = True
    >>> round(image_iou(a, b), 4)  # 50 / 150
    0.3333
    """
    check_same_shape(pred, gt, "image_iou")
    p = np.asarray(pred) != 0
    g = np.asarray(gt) != 0
    union = np.count_nonzero(p | g)
    return 1.0 if union == 0 else np.count_nonzero(p & g) / union


def youden_index(prob: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Youden's index J: the largest TPR - FPR on the ROC curve of a probability map.

    Every distinct probability value is a threshold (a pixel is called foreground when its
    probability is >= the threshold), so the full ROC curve is scanned exactly; J = 1 for a
    perfect separation, 0 for chance.

    Parameters
    ----------
    prob : (H, W) float array
        Foreground probability (a binary mask gives a single operating point).
    gt : (H, W) array
        Ground truth, foreground = non-zero.

    Returns
    -------
    j : float
        ``max_t TPR(t) - FPR(t)``, in [0, 1] (NaN when the ground truth is all one class).
    threshold : float
        The probability threshold where the maximum is reached.

    References
    ----------
    W. J. Youden, "Index for rating diagnostic tests", Cancer 3, 32-35 (1950).
    """
    check_same_shape(prob, gt, "youden_index")
    p = np.asarray(prob, dtype=float).ravel()
    g = np.asarray(gt).ravel() != 0
    n_pos = int(g.sum())
    n_neg = g.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan"), float("nan")
    order = np.argsort(-p, kind="stable")
    p_sorted = p[order]
    tp = np.cumsum(g[order])
    fp = np.cumsum(~g[order])
    # only the last pixel of each run of equal probabilities is an operating point
    last = np.r_[p_sorted[1:] != p_sorted[:-1], True]
    j = tp[last] / n_pos - fp[last] / n_neg
    k = int(np.argmax(j))
    return float(max(j[k], 0.0)), float(p_sorted[last][k])


def pixel_f_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """F-score (Dice) of the foreground pixels: 2 |P ∩ G| / (|P| + |G|); 1 when both are empty."""
    check_same_shape(pred, gt, "pixel_f_score")
    p = np.asarray(pred) != 0
    g = np.asarray(gt) != 0
    denom = np.count_nonzero(p) + np.count_nonzero(g)
    return 1.0 if denom == 0 else 2.0 * np.count_nonzero(p & g) / denom


def pixel_error(prob: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] | None = PAPER_THRESHOLDS) -> tuple[float, float]:
    """ISBI 2012 pixel error: 1 - the maximal F-score of pixel similarity over thresholds.

    Parameters
    ----------
    prob : (H, W) array
        Probability map (thresholded as ``prob > t``) or binary / label image.
    gt : (H, W) array
        Ground truth, foreground = non-zero.
    thresholds : sequence of float, optional
        Thresholds tried; ``None`` scores ``prob != 0`` once (binary or label predictions).

    Returns
    -------
    error : float
        ``1 - max_t F(prob > t, gt)`` in [0, 1].
    threshold : float
        The best threshold (NaN when ``thresholds`` is None).

    References
    ----------
    I. Arganda-Carreras et al., Front. Neuroanat. 9, 142 (2015), section "Pixel error".
    """
    if thresholds is None:
        return 1.0 - pixel_f_score(prob, gt), float("nan")
    scores = [pixel_f_score(np.asarray(prob) > t, gt) for t in thresholds]
    k = int(np.argmax(scores))
    return 1.0 - scores[k], float(thresholds[k])


# --------------------------------------------------------------------------------------------
# Instance overlap and detection
# --------------------------------------------------------------------------------------------


def outline_area_px(labels: np.ndarray) -> np.ndarray:
    """Area enclosed by the outline through the centres of each particle's boundary pixels.

    This is the polygon area an OpenCV contour of the particle has (the paper's area filter
    used it); by Pick's theorem it is ``n - b / 2 - 1`` for a particle of ``n`` pixels of which
    ``b`` touch the background (or the image border) with an edge.

    Parameters
    ----------
    labels : (H, W) int array

    Returns
    -------
    float array
        Indexed by label (entry 0 unused).
    """
    labels = consecutive_labels(labels)
    padded = np.pad(labels, 1)
    inner = padded[1:-1, 1:-1]
    boundary = np.zeros(labels.shape, bool)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        boundary |= padded[1 + dy: padded.shape[0] - 1 + dy, 1 + dx: padded.shape[1] - 1 + dx] != inner
    boundary &= inner > 0
    n = np.bincount(labels.ravel()).astype(float)
    b = np.bincount(labels.ravel(), weights=boundary.ravel(), minlength=n.size)
    return np.maximum(n - b / 2 - 1, 0.0)


def instance_iou(pred_labels: np.ndarray, gt_labels: np.ndarray, min_area_px: float = 0,
                 area: str = "pixels") -> float:
    """Mean over predicted particles of the best IoU with an intersecting ground-truth particle.

    This is the "instance IoU" of Rühle et al. (2021): for every predicted particle P_i,
    ``max_j |P_i ∩ G_j| / |P_i ∪ G_j|`` over the ground-truth particles G_j it intersects (0 when
    it intersects none), averaged over the predicted particles. Missed ground-truth particles do
    not lower it; swap the arguments for the ground-truth-to-prediction direction, or use
    :func:`symmetric_instance_iou`.

    Parameters
    ----------
    pred_labels, gt_labels : (H, W) int arrays
        Instance label images, 0 = background.
    min_area_px : float
        Predicted particles with this area or less are ignored (the paper reports the score
        both without a filter and with ``min_area_px=9``, i.e. area > 9 px).
    area : {'pixels', 'outline'}
        How the filter measures area: pixel count, or the area inside the outline through the
        boundary pixels' centres (:func:`outline_area_px`; the paper's OpenCV contour area).

    Returns
    -------
    float
        In [0, 1]; NaN when there is no predicted particle (after the filter).

    Examples
    --------
    Two 10x10 squares offset by 5 px overlap in 50 px out of 150:

    >>> a = np.zeros((20, 20), int); a[0:10, 0:10] = 1
    >>> b = np.zeros((20, 20), int); b[0:10, 5:15] = 1
    >>> round(instance_iou(a, b), 4)
    0.3333
    """
    check_same_shape(pred_labels, gt_labels, "instance_iou")
    pred = consecutive_labels(pred_labels)
    if min_area_px > 0:
        areas = np.bincount(pred.ravel()) if area == "pixels" else outline_area_px(pred)
        small = areas <= min_area_px
        small[0] = False
        pred = consecutive_labels(np.where(small[pred], 0, pred))
    iou = iou_matrix(pred, gt_labels)
    if iou.shape[1] == 0:
        return float("nan")
    best = iou.max(axis=0) if iou.shape[0] else np.zeros(iou.shape[1])
    return float(best.mean())


def symmetric_instance_iou(pred_labels: np.ndarray, gt_labels: np.ndarray) -> float:
    """Mean of :func:`instance_iou` in both directions (prediction->truth and truth->prediction).

    A prediction that finds only some of the particles, each perfectly, has a
    prediction-to-truth score of 1; the truth-to-prediction direction charges the missed ones.

    Returns
    -------
    float
        In [0, 1]; with no particle on one side, that direction counts as 0 (1 when both
        images are empty).
    """
    forward = instance_iou(pred_labels, gt_labels)
    backward = instance_iou(gt_labels, pred_labels)
    if np.isnan(forward) and np.isnan(backward):
        return 1.0
    return float((np.nan_to_num(forward) + np.nan_to_num(backward)) / 2)


def match_instances(iou: np.ndarray, iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of particles with IoU > ``iou_threshold``.

    For thresholds >= 0.5 a particle can overlap at most one other particle by more than half
    of their union, so matches are unique by construction. For lower thresholds the matching
    is an assignment problem, solved with :func:`scipy.optimize.linear_sum_assignment` to
    maximise the number of matches first and their total IoU second (as StarDist does).

    Parameters
    ----------
    iou : (n_gt, n_pred) float array
        From :func:`iou_matrix`.
    iou_threshold : float

    Returns
    -------
    gt_index, pred_index : int arrays
        Indices (rows, columns of ``iou``) of the matched pairs.
    """
    valid = iou > iou_threshold
    if iou_threshold >= 0.5:
        rows, cols = np.nonzero(valid)
        return rows, cols
    if not valid.any():
        return np.zeros(0, int), np.zeros(0, int)
    from scipy.optimize import linear_sum_assignment

    n_max = max(min(iou.shape), 1)
    # a match is worth 1, plus at most 1/2 in total for the IoUs: count first, then quality
    gain = np.where(valid, 1.0 + iou / (2 * n_max), 0.0)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    keep = valid[rows, cols]
    return rows[keep], cols[keep]


def detection_scores(pred_labels: np.ndarray, gt_labels: np.ndarray, iou_threshold: float = 0.5,
                     iou: np.ndarray | None = None) -> dict[str, float]:
    """Instance detection scores at one IoU threshold.

    A predicted particle is a true positive (TP) when it is matched one-to-one to a ground-truth
    particle with IoU > ``iou_threshold`` (:func:`match_instances`); unmatched predictions are
    false positives (FP), unmatched ground-truth particles false negatives (FN).

    - precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN);
    - AP = TP / (TP + FP + FN): the "average precision" of the Data Science Bowl 2018 and
      StarDist at one threshold (not the area under a precision-recall curve);
    - SQ = mean IoU of the matched pairs, RQ = TP / (TP + FP/2 + FN/2) (= F1), PQ = SQ x RQ
      (panoptic quality, Kirillov et al. 2019).

    Parameters
    ----------
    pred_labels, gt_labels : (H, W) int arrays
        Instance label images, 0 = background.
    iou_threshold : float
    iou : (n_gt, n_pred) array, optional
        A precomputed :func:`iou_matrix` (saves time when sweeping thresholds).

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``, ``ap``, ``sq``, ``rq``,
        ``pq``. Empty prediction and truth score 1 everywhere.
    """
    if iou is None:
        iou = iou_matrix(pred_labels, gt_labels)
    n_gt, n_pred = iou.shape
    rows, cols = match_instances(iou, iou_threshold)
    tp = len(rows)
    fp, fn = n_pred - tp, n_gt - tp
    if n_gt == 0 and n_pred == 0:
        return {"tp": 0, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "ap": 1.0,
                "sq": 1.0, "rq": 1.0, "pq": 1.0}
    sq = float(iou[rows, cols].mean()) if tp else 0.0
    rq = tp / (tp + fp / 2 + fn / 2)
    return {
        "tp": tp, "fp": fp, "fn": fn,
        "precision": tp / n_pred if n_pred else 0.0,
        "recall": tp / n_gt if n_gt else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn),
        "ap": tp / (tp + fp + fn),
        "sq": sq, "rq": rq, "pq": sq * rq,
    }


def mean_average_precision(pred_labels: np.ndarray, gt_labels: np.ndarray,
                           iou_thresholds: Sequence[float] = AP_IOU_THRESHOLDS) -> float:
    """AP = TP / (TP + FP + FN) averaged over IoU thresholds 0.5, 0.55, ..., 0.95.

    The Data Science Bowl 2018 score of one image (see :func:`detection_scores`).
    """
    iou = iou_matrix(pred_labels, gt_labels)
    return float(np.mean([detection_scores(None, None, t, iou=iou)["ap"] for t in iou_thresholds]))


# --------------------------------------------------------------------------------------------
# ISBI 2012: Rand and information-theoretic scores
# --------------------------------------------------------------------------------------------


def _restricted_counts(pred_labels: np.ndarray, gt_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Contingency counts restricted to ground-truth foreground.

    Returns the non-zero joint counts n_ij of (gt > 0, pred > 0) pairs, the row sums (ground
    truth segment sizes, all pixels), the column sums over pred > 0, and the number of
    singleton pixels (predicted background inside ground-truth foreground: each is its own
    segment of size 1, the convention of the ISBI 2012 / SNEMI3D scripts).
    """
    check_same_shape(pred_labels, gt_labels, "rand/information scores")
    gt = consecutive_labels(gt_labels).ravel()
    pred = consecutive_labels(pred_labels).ravel()
    fg = gt > 0
    gt, pred = gt[fg], pred[fg]
    singletons = int(np.count_nonzero(pred == 0))
    table = contingency_table(pred, gt).tocsr()
    gt_sizes = np.asarray(table.sum(axis=1)).ravel()[1:]
    inner = table[1:, 1:].tocoo()
    joint = inner.data.astype(float)
    pred_sizes = np.bincount(inner.col, weights=inner.data, minlength=table.shape[1] - 1).astype(float)
    return joint, gt_sizes.astype(float), pred_sizes[pred_sizes > 0], singletons


def rand_scores(pred_labels: np.ndarray, gt_labels: np.ndarray) -> dict[str, float]:
    """Foreground-restricted Rand split and merge scores and their F-score (ISBI 2012).

    With ``p_ij`` the fraction of ground-truth-foreground pixels in predicted segment i and
    ground-truth segment j, ``s_i = sum_j p_ij`` and ``t_j = sum_i p_ij``:

    - V_split = sum p_ij^2 / sum t_j^2 (1 unless a true segment is split),
    - V_merge = sum p_ij^2 / sum s_i^2 (1 unless true segments are merged),
    - V_Rand = 2 sum p_ij^2 / (sum s_i^2 + sum t_j^2), their harmonic mean.

    Only pixels of ground-truth foreground count; predicted background inside the ground-truth
    foreground counts as singleton segments (one pixel each), as in the ISBI 2012 scripts.

    Parameters
    ----------
    pred_labels, gt_labels : (H, W) int arrays
        Label images, 0 = background.

    Returns
    -------
    dict
        ``split``, ``merge``, ``fscore`` and ``error`` = 1 - fscore.

    References
    ----------
    I. Arganda-Carreras et al., Front. Neuroanat. 9, 142 (2015), eqs. for V^Rand.
    """
    joint, gt_sizes, pred_sizes, singletons = _restricted_counts(pred_labels, gt_labels)
    sum_joint = float(np.sum(joint**2)) + singletons
    sum_gt = float(np.sum(gt_sizes**2))
    sum_pred = float(np.sum(pred_sizes**2)) + singletons
    if sum_gt == 0:
        return {"split": 1.0, "merge": 1.0, "fscore": 1.0, "error": 0.0}
    split = sum_joint / sum_gt
    merge = sum_joint / sum_pred
    fscore = 2 * sum_joint / (sum_gt + sum_pred)
    return {"split": split, "merge": merge, "fscore": fscore, "error": 1.0 - fscore}


def _entropy(counts: np.ndarray, n: float, singletons: int = 0) -> float:
    p = counts[counts > 0] / n
    h = float(-np.sum(p * np.log(p)))
    if singletons:
        h += singletons * np.log(n) / n  # each singleton: -(1/n) log(1/n)
    return h


def information_scores(pred_labels: np.ndarray, gt_labels: np.ndarray) -> dict[str, float]:
    """Foreground-restricted information-theoretic split and merge scores (ISBI 2012).

    With S the predicted and T the ground-truth segmentation (restricted to ground-truth
    foreground, predicted background as singletons, as in :func:`rand_scores`), H the entropy
    and I(S; T) = H(S) + H(T) - H(S, T) the mutual information:

    - V_split = I(S; T) / H(S), V_merge = I(S; T) / H(T),
    - V_Info = 2 I(S; T) / (H(S) + H(T)), and ``error`` = 1 - V_Info.

    Parameters
    ----------
    pred_labels, gt_labels : (H, W) int arrays

    Returns
    -------
    dict
        ``split``, ``merge``, ``fscore``, ``error`` (and ``vi`` = H(S|T) + H(T|S) in nats, the
        variation of information). A score whose entropy is 0 counts as 1.

    References
    ----------
    I. Arganda-Carreras et al., Front. Neuroanat. 9, 142 (2015); M. Meila, "Comparing
    clusterings - an information based distance", J. Multivariate Anal. 98, 873 (2007).
    """
    joint, gt_sizes, pred_sizes, singletons = _restricted_counts(pred_labels, gt_labels)
    n = float(gt_sizes.sum())
    if n == 0:
        return {"split": 1.0, "merge": 1.0, "fscore": 1.0, "error": 0.0, "vi": 0.0}
    h_t = _entropy(gt_sizes, n)
    h_s = _entropy(pred_sizes, n, singletons)
    h_st = _entropy(joint, n, singletons)
    mutual = max(h_s + h_t - h_st, 0.0)
    split = mutual / h_s if h_s > 0 else 1.0
    merge = mutual / h_t if h_t > 0 else 1.0
    fscore = 2 * mutual / (h_s + h_t) if h_s + h_t > 0 else 1.0
    return {"split": split, "merge": merge, "fscore": fscore, "error": 1.0 - fscore, "vi": 2 * h_st - h_s - h_t}


def thin_borders(labels: np.ndarray, max_gap_px: int = 4) -> np.ndarray:
    """Thin the background gaps between neighbouring particles to one-pixel lines.

    The ISBI 2012 scripts skeletonise the boundary map before labelling, so that a thick
    predicted membrane is not charged for its thickness. Skeletonising the whole background
    of a sparse particle image would instead turn the background into particles, so this
    adaptation thins only *gaps*: a background pixel belongs to a gap when, along a row, a
    column or a diagonal, the nearest particles on its two sides are different particles and
    the run of background between them is at most ``max_gap_px`` px long. Gap pixels go to
    the nearer of the two particles (the larger label on a tie); then a one-pixel line is put
    back wherever two particles touch (on the pixel of the larger label), so the result stays
    4-separated. Background elsewhere is unchanged; a one-pixel line stays where it is.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background.
    max_gap_px : int
        Widest gap (in px along the line through it) that is thinned.

    Returns
    -------
    (H, W) int64 array
        Labels with thinned separation lines.
    """
    labels = consecutive_labels(labels)
    padded = np.pad(labels, max_gap_px)
    height, width = labels.shape
    best_dist = np.full(labels.shape, max_gap_px + 1)
    best_label = np.zeros_like(labels)
    background = labels == 0

    def nearest(dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
        dist = np.full(labels.shape, max_gap_px + 1)
        found = np.zeros_like(labels)
        for k in range(max_gap_px, 0, -1):  # nearest last, so it wins
            y0, x0 = max_gap_px + k * dy, max_gap_px + k * dx
            shifted = padded[y0: y0 + height, x0: x0 + width]
            hit = shifted > 0
            dist[hit], found[hit] = k, shifted[hit]
        return dist, found

    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        d_plus, l_plus = nearest(dy, dx)
        d_minus, l_minus = nearest(-dy, -dx)
        gap = background & (l_plus > 0) & (l_minus > 0) & (l_plus != l_minus) & (d_plus + d_minus - 1 <= max_gap_px)
        near = np.minimum(d_plus, d_minus)
        label = np.where(d_plus < d_minus, l_plus, np.where(d_minus < d_plus, l_minus, np.maximum(l_plus, l_minus)))
        better = gap & (near < best_dist)
        best_dist[better], best_label[better] = near[better], label[better]
    out = np.where(best_label > 0, best_label, labels)
    # the tie rule above gives a gap's middle pixel to the larger label, so the larger one gives it up
    return cut_touching(out, gives_up="upper")


def rand_error(pred_labels: np.ndarray, gt_labels: np.ndarray, thin: bool = False, max_gap_px: int = 4) -> float:
    """Foreground-restricted Rand error, 1 - V_Rand (:func:`rand_scores`), optionally after
    :func:`thin_borders` of both label images."""
    if thin:
        pred_labels, gt_labels = thin_borders(pred_labels, max_gap_px), thin_borders(gt_labels, max_gap_px)
    return rand_scores(pred_labels, gt_labels)["error"]


def information_error(pred_labels: np.ndarray, gt_labels: np.ndarray, thin: bool = True, max_gap_px: int = 4) -> float:
    """Foreground-restricted information-theoretic error, 1 - V_Info (:func:`information_scores`),
    after :func:`thin_borders` of both label images by default (as in ISBI 2012)."""
    if thin:
        pred_labels, gt_labels = thin_borders(pred_labels, max_gap_px), thin_borders(gt_labels, max_gap_px)
    return information_scores(pred_labels, gt_labels)["error"]


# --------------------------------------------------------------------------------------------
# ISBI 2012: warping error
# --------------------------------------------------------------------------------------------

#: The 8 neighbours of a pixel as (row, col) offsets, clockwise from the upper left: bit k of a
#: :data:`SIMPLE_POINTS` index is neighbour ``NEIGHBOUR_OFFSETS[k]``.
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def _simple_point_table() -> np.ndarray:
    """Look-up table: is a pixel simple, given its 8 neighbours (bit k = NEIGHBOUR_OFFSETS[k])?

    Digital topology with 4-connected foreground and 8-connected background (the particles'
    convention). A pixel is simple -- flipping it changes neither the number of foreground
    nor of background components, nor creates or fills holes -- iff the topological numbers
    T4(x, X) = 1 and T8(x, X̄) = 1 (Bertrand 1994): T4 counts the 4-components of the
    foreground neighbours 4-adjacent to x within the geodesic 4-neighbourhood, T8 the
    8-components of the background neighbours.
    """
    table = np.zeros(256, bool)
    pos = {off: k for k, off in enumerate(NEIGHBOUR_OFFSETS)}
    four = [(-1, 0), (0, 1), (1, 0), (0, -1)]
    for code in range(256):
        on = {off for off, k in pos.items() if code >> k & 1}
        # T4 on the geodesic neighbourhood: 4-neighbours in X, plus diagonal neighbours in X
        # 4-adjacent to one of those
        seeds = {o for o in four if o in on}
        geo = set(seeds)
        for o in on - seeds:
            if any(abs(o[0] - s[0]) + abs(o[1] - s[1]) == 1 for s in seeds):
                geo.add(o)
        t4 = _count_components(geo, diagonal=False)
        background = set(NEIGHBOUR_OFFSETS) - on
        t8 = _count_components(background, diagonal=True)
        table[code] = t4 == 1 and t8 == 1
    return table


def _count_components(points: set[tuple[int, int]], diagonal: bool) -> int:
    points = set(points)
    count = 0
    while points:
        count += 1
        stack = [points.pop()]
        while stack:
            r, c = stack.pop()
            for q in list(points):
                dr, dc = abs(q[0] - r), abs(q[1] - c)
                if (dr + dc == 1) or (diagonal and dr == 1 and dc == 1):
                    points.remove(q)
                    stack.append(q)
    return count


#: ``SIMPLE_POINTS[code]``: is a pixel simple (4-connected foreground, 8-connected background)
#: given its neighbours, ``code`` having bit k set when ``NEIGHBOUR_OFFSETS[k]`` is foreground.
SIMPLE_POINTS = _simple_point_table()


@dataclass
class WarpingResult:
    """Outcome of :func:`warping_error`.

    Attributes
    ----------
    error : float
        Fraction of pixels where the warped ground truth still differs from the prediction
        (every topological error: splits, mergers, added or missed particles and holes).
    split_merge_error : float
        Fraction of pixels of those that split or merge particles only: leftover pixels
        between two different particles of the prediction (splits) or of the warped truth
        (mergers). Fiji's "splits and mergers" warping error, which the paper reports.
    splits : int
        Ground-truth particles (after warping) that the prediction divides: each particle
        overlapped by k > 1 predicted particles counts k - 1.
    merges : int
        Predicted particles joining k > 1 warped ground-truth particles count k - 1.
    omissions : int
        Warped ground-truth particles the prediction misses entirely.
    additions : int
        Predicted particles with no ground-truth overlap.
    warped : (H, W) bool array
        The warped ground truth.
    """

    error: float
    split_merge_error: float
    splits: int
    merges: int
    omissions: int
    additions: int
    warped: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        return {"warping_error": self.error, "split_merge_error": self.split_merge_error,
                "splits": self.splits, "merges": self.merges,
                "omissions": self.omissions, "additions": self.additions}


def warping_error(pred: np.ndarray, gt: np.ndarray, max_passes: int = 100) -> WarpingResult:
    """Warping error (Jain et al. 2010): pixel disagreement left after a topology-preserving warp.

    The ground truth is warped towards the prediction by flipping, one at a time, pixels where
    the two disagree *and* whose flip preserves the ground truth's topology (simple points,
    4-connected foreground / 8-connected background). What is left are the pixels whose
    correction would split, merge, create or delete a particle or a hole: topological errors.
    The error is their number divided by the number of pixels.

    The flips are done in parallel on the 9 interleaved sub-grids ``(row % 3, col % 3)``: two
    pixels of one sub-grid are never in each other's 3x3 neighbourhood, so flipping them
    together equals flipping them in sequence. Disagreements farther than ``max_passes`` pixels
    from the ground truth's boundary stay unwarped (an upper bound; only thresholds far from
    any sensible one are that wrong).

    Splits, mergers, omissions and additions are counted from the overlaps of the 4-connected
    components of the warped ground truth and the prediction (a simplification of Jain et al.'s
    per-pixel classification that counts one split and one merger as one each).

    Parameters
    ----------
    pred : (H, W) array
        Binary prediction (non-zero = particle). Touching particles must be separated by
        background (use ``labels_to_binary`` for label images).
    gt : (H, W) array
        Binary ground truth, same convention.
    max_passes : int
        Maximal number of passes over the 9 sub-grids.

    Returns
    -------
    WarpingResult

    References
    ----------
    V. Jain, B. Bollmann, M. Richardson, et al., "Boundary learning by optimization with
    topological constraints", CVPR 2010. G. Bertrand, "Simple points, topological numbers and
    geodesic neighborhoods in cubic grids", Pattern Recognit. Lett. 15, 1003 (1994).
    """
    check_same_shape(pred, gt, "warping_error")
    target = np.asarray(pred) != 0
    warped = np.pad(np.asarray(gt) != 0, 1)
    height, width = target.shape
    target_p = np.pad(target, 1)
    weights = (1 << np.arange(8)).astype(np.uint8)
    for _ in range(max_passes):
        flipped = 0
        for dy in range(3):
            for dx in range(3):
                sub_w = warped[1 + dy: height + 1: 3, 1 + dx: width + 1: 3]
                sub_t = target_p[1 + dy: height + 1: 3, 1 + dx: width + 1: 3]
                rr, cc = np.nonzero(sub_w != sub_t)
                if rr.size == 0:
                    continue
                rows = 1 + dy + 3 * rr
                cols = 1 + dx + 3 * cc
                code = np.zeros(rows.size, np.uint8)
                for k, (oy, ox) in enumerate(NEIGHBOUR_OFFSETS):
                    code |= warped[rows + oy, cols + ox].astype(np.uint8) * weights[k]
                simple = SIMPLE_POINTS[code]
                if simple.any():
                    warped[rows[simple], cols[simple]] = ~warped[rows[simple], cols[simple]]
                    flipped += int(simple.sum())
        if flipped == 0:
            break
    warped = warped[1:-1, 1:-1]
    pred_labels, warped_labels = label_binary(target, 1), label_binary(warped, 1)
    counts = split_merge_counts(pred_labels, warped_labels)
    # a leftover pixel is a split pixel when the prediction's particles on its sides differ,
    # a merger pixel when the warped truth's particles on its sides differ
    split_px = (warped & ~target) & touching_lines(pred_labels)
    merge_px = (target & ~warped) & touching_lines(warped_labels)
    return WarpingResult(
        error=float(np.count_nonzero(warped != target)) / target.size,
        split_merge_error=float(np.count_nonzero(split_px | merge_px)) / target.size,
        splits=counts["splits"], merges=counts["merges"],
        omissions=counts["omissions"], additions=counts["additions"], warped=warped,
    )


def split_merge_counts(pred_labels: np.ndarray, gt_labels: np.ndarray) -> dict[str, int]:
    """Count splits, mergers, omissions and additions from the overlap of two label images.

    A ground-truth particle overlapped by k > 1 predicted particles adds k - 1 splits; a
    predicted particle overlapping k > 1 ground-truth particles adds k - 1 mergers; a
    ground-truth particle with no overlap is an omission, a predicted one an addition.

    Returns
    -------
    dict
        ``splits``, ``merges``, ``omissions``, ``additions``.
    """
    table = contingency_table(consecutive_labels(pred_labels), consecutive_labels(gt_labels))
    inner = (table[1:, 1:] > 0).tocsr()
    per_gt = np.asarray(inner.sum(axis=1)).ravel()
    per_pred = np.asarray(inner.sum(axis=0)).ravel()
    return {
        "splits": int(np.sum(np.maximum(per_gt - 1, 0))),
        "merges": int(np.sum(np.maximum(per_pred - 1, 0))),
        "omissions": int(np.sum(per_gt == 0)),
        "additions": int(np.sum(per_pred == 0)),
    }


def labels_to_binary(labels: np.ndarray) -> np.ndarray:
    """Binary mask of a label image with touching particles 4-separated by background.

    Where two different labels are 4-adjacent, the pixel of the larger label is cleared
    (:func:`nanoseg.labels.separation_lines` with ``gives_up="upper"``; see there why not the
    masks' convention), so 4-connected labelling of the result gives back one component per
    particle.
    """
    return cut_touching(consecutive_labels(labels), gives_up="upper") > 0


# --------------------------------------------------------------------------------------------
# Post-processing of the paper protocol
# --------------------------------------------------------------------------------------------


def paper_watershed(binary: np.ndarray, sigma: float = 1.0, min_distance_px: int = 9, *,
                    exclude_border: bool = True, keep_unmarked: bool = False) -> np.ndarray:
    """Split a binary prediction into particles the way Rühle et al. (2021) scored it.

    Steps, as in the authors' scoring script: Euclidean distance transform smoothed with a
    Gaussian (``sigma``); markers at the local maxima of
    :func:`skimage.feature.peak_local_max` (``min_distance=min_distance_px``, searched over the
    whole image, touching maxima forming one marker); watershed of the negated distance within
    the mask with one-pixel watershed lines; holes filled; diagonal-only contacts removed (in
    every 2x2 block holding a diagonal pair of particle pixels and a diagonal pair of background
    pixels, one particle pixel is cleared) so that 4- and 8-connected labelling agree; the
    particles are the 4-connected components of the result.

    With the defaults, as in the paper, peaks within ``min_distance_px`` of the image border
    are not markers (scikit-image's former ``exclude_border=True`` default) and a connected
    component without a marker -- a small particle within ``min_distance_px`` of a larger one
    or of the border -- is dropped. ``keep_unmarked=True`` gives each such component a marker
    at its distance maximum instead (the strict protocol's choice).

    This is the evaluation protocol's fixed post-processing, separate from the segmentation
    stage's own (configurable) one.

    Parameters
    ----------
    binary : (H, W) array
        Foreground = non-zero.
    sigma : float
        Gaussian sigma in px applied to the distance transform.
    min_distance_px : int
        Minimal distance between two markers in px.
    exclude_border : bool
        Ignore distance maxima within ``min_distance_px`` of the image border.
    keep_unmarked : bool
        Keep components that received no marker (one marker at their distance maximum).

    Returns
    -------
    (H, W) int32 array
        Instance labels 1..n (4-connected), 0 = background.
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    mask = np.asarray(binary) != 0
    if mask.all() or not mask.any():
        return label_binary(mask, 1)
    distance = ndi.gaussian_filter(ndi.distance_transform_edt(mask), sigma)
    peaks = peak_local_max(distance, min_distance=min_distance_px,
                           exclude_border=min_distance_px if exclude_border else False)
    peak_mask = np.zeros(mask.shape, bool)
    peak_mask[tuple(peaks.T)] = True
    markers, n_markers = ndi.label(peak_mask, structure=_EIGHT)
    if keep_unmarked:
        components, n = ndi.label(mask, structure=_EIGHT)
        has_marker = np.zeros(n + 1, bool)
        has_marker[components[markers > 0]] = True
        missing = np.flatnonzero(~has_marker[1:]) + 1
        if missing.size:
            where = np.array(ndi.maximum_position(distance, components, missing)).reshape(-1, 2)
            markers[tuple(where.T)] = n_markers + 1 + np.arange(missing.size)
    labels = watershed(-distance, markers, mask=mask, watershed_line=True)
    filled = ndi.binary_fill_holes(labels > 0, structure=_EIGHT)
    return label_binary(remove_diagonal_contacts(filled), 1).astype(np.int32)


def remove_diagonal_contacts(binary: np.ndarray) -> np.ndarray:
    """Clear pixels so that no two particle pixels touch only diagonally.

    In each 2x2 block ``[[0, 1], [1, 0]]`` the lower-left particle pixel is cleared, in each
    ``[[1, 0], [0, 1]]`` the upper-left one (the rule of the paper's scoring script, applied
    to all blocks at once and repeated until none is left). Afterwards 4- and 8-connected
    labelling give the same components.

    Parameters
    ----------
    binary : (H, W) array

    Returns
    -------
    (H, W) bool array
    """
    out = np.asarray(binary) != 0
    while True:
        tl, tr, bl, br = out[:-1, :-1], out[:-1, 1:], out[1:, :-1], out[1:, 1:]
        anti = ~tl & ~br & tr & bl  # [[0, 1], [1, 0]]
        main = tl & br & ~tr & ~bl  # [[1, 0], [0, 1]]
        if not (anti.any() or main.any()):
            return out
        out[1:, :-1][anti] = False
        out[:-1, :-1][main] = False


# --------------------------------------------------------------------------------------------
# Size distributions
# --------------------------------------------------------------------------------------------


def size_distribution_agreement(pred: pd.DataFrame, gt: pd.DataFrame, descriptors: Sequence[str] | None = None) -> pd.DataFrame:
    """Compare the size distributions of predicted and ground-truth particles.

    For each descriptor: number of particles, mean, standard deviation (ddof 1), median, D10
    and D90 (10th and 90th percentiles) of both samples, the relative error of each of these
    ``(pred - gt) / gt``, and the two-sample Kolmogorov-Smirnov statistic D (largest distance
    between the empirical CDFs, :func:`scipy.stats.ks_2samp`) with its p-value.

    Parameters
    ----------
    pred, gt : pandas.DataFrame
        Per-particle tables, e.g. from :func:`nanoseg.particles.measure_particles`.
    descriptors : sequence of str, optional
        Column names; default: the calibrated (``*_nm``) columns of ECD, min/max Feret and
        area when both tables have them, else the ``*_px`` ones.

    Returns
    -------
    pandas.DataFrame
        One row per descriptor.

    References
    ----------
    F. J. Massey, "The Kolmogorov-Smirnov test for goodness of fit", JASA 46, 68 (1951).
    """
    from scipy import stats

    if descriptors is None:
        descriptors = default_size_columns(pred, gt)
    rows = []
    for col in descriptors:
        if col not in pred.columns or col not in gt.columns:
            raise NanosegError(f"size_distribution_agreement: column '{col}' missing from one of the tables")
        p = pred[col].to_numpy(dtype=float)
        g = gt[col].to_numpy(dtype=float)
        p, g = p[np.isfinite(p)], g[np.isfinite(g)]
        row: dict[str, Any] = {"descriptor": col, "n_pred": p.size, "n_gt": g.size}
        for name, fn in (("mean", np.mean), ("sd", lambda x: np.std(x, ddof=1) if x.size > 1 else np.nan),
                         ("median", np.median), ("d10", lambda x: np.percentile(x, 10)),
                         ("d90", lambda x: np.percentile(x, 90))):
            vp = float(fn(p)) if p.size else np.nan
            vg = float(fn(g)) if g.size else np.nan
            row[f"{name}_pred"], row[f"{name}_gt"] = vp, vg
            row[f"{name}_rel_error"] = (vp - vg) / vg if vg not in (0.0,) and np.isfinite(vg) else np.nan
        if p.size and g.size:
            res = stats.ks_2samp(p, g)
            row["ks_statistic"], row["ks_p_value"] = float(res.statistic), float(res.pvalue)
        else:
            row["ks_statistic"], row["ks_p_value"] = np.nan, np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def default_size_columns(*tables: pd.DataFrame) -> list[str]:
    """ECD, min Feret, max Feret and area columns, in nm where every table has them, else px."""
    stems = (("ecd_nm", "ecd_px"), ("min_feret_nm", "min_feret_px"), ("max_feret_nm", "max_feret_px"),
             ("area_nm2", "area_px"))
    cols = []
    for nm, px in stems:
        if all(nm in t.columns and t[nm].notna().all() for t in tables):
            cols.append(nm)
        elif all(px in t.columns for t in tables):
            cols.append(px)
    return cols
