"""Instance metrics: instance IoU (Rühle et al. 2021) and its symmetric mean, one-to-one
matching of particles, detection scores (precision, recall, F1, AP, SQ / RQ / PQ) and the mean
AP over IoU 0.5:0.95.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nanoseg.labels import consecutive_labels
from nanoseg.metrics.overlap import check_same_shape, contingency_table, iou_matrix

#: IoU thresholds of the COCO-style average: 0.50, 0.55, ..., 0.95.
AP_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2))


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


def missed_causes(pred_labels: np.ndarray, gt_labels: np.ndarray, iou_threshold: float = 0.5,
                  covered: float = 0.5, missed: float = 0.3) -> dict[str, int]:
    """Why the ground-truth particles without a match at ``iou_threshold`` were missed.

    Each unmatched ground-truth particle falls in one class, from the predicted particle that
    covers most of it: ``merged`` when that particle covers more than ``covered`` of it and
    more than ``covered`` of another ground-truth particle too (two particles found as one);
    ``not_found`` when no predicted particle covers ``missed`` of it; else ``outline`` (found,
    but split or outlined too far off for the IoU). Unlike :func:`split_merge_counts`, which
    counts every touch, a class here needs most of a particle, so it says what an F1 loses.

    Returns
    -------
    dict
        ``n_gt``, ``matched``, ``merged``, ``not_found``, ``outline`` (the last four sum to
        ``n_gt``).
    """
    check_same_shape(pred_labels, gt_labels, "missed_causes")
    gt, pred = consecutive_labels(gt_labels), consecutive_labels(pred_labels)
    n_gt = int(gt.max(initial=0))
    out = {"n_gt": n_gt, "matched": 0, "merged": 0, "not_found": 0, "outline": 0}
    if n_gt == 0:
        return out
    inter = contingency_table(pred, gt)[1:, 1:].toarray()  # (n_gt, n_pred) pixels in common
    gt_area = np.bincount(gt.ravel(), minlength=n_gt + 1)[1:]
    share = inter / np.maximum(gt_area, 1)[:, None]  # share of each truth particle each prediction covers
    matched = np.zeros(n_gt, bool)
    if share.shape[1]:
        matched[match_instances(iou_matrix(pred, gt), iou_threshold)[0]] = True
    for g in range(n_gt):
        if matched[g]:
            out["matched"] += 1
        elif share.shape[1] == 0 or share[g].max() < missed:
            out["not_found"] += 1
        else:
            best = share[:, share[g].argmax()]
            out["merged" if best[g] > covered and (np.delete(best, g) > covered).any() else "outline"] += 1
    return out


def mean_average_precision(pred_labels: np.ndarray, gt_labels: np.ndarray,
                           iou_thresholds: Sequence[float] = AP_IOU_THRESHOLDS) -> float:
    """AP = TP / (TP + FP + FN) averaged over IoU thresholds 0.5, 0.55, ..., 0.95.

    The Data Science Bowl 2018 score of one image (see :func:`detection_scores`).
    """
    iou = iou_matrix(pred_labels, gt_labels)
    return float(np.mean([detection_scores(None, None, t, iou=iou)["ap"] for t in iou_thresholds]))
