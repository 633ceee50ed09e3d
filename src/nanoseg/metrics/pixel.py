"""Pixel metrics: image IoU, Youden's index on the ROC of a probability map, ISBI pixel error."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nanoseg.metrics.overlap import check_same_shape

#: The thresholds the paper swept: 0.0, 0.1, ..., 1.0.
PAPER_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 11), 1))


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
