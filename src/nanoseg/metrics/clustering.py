"""ISBI 2012 Rand and information-theoretic scores, restricted to ground-truth foreground.

:func:`rand_scores` / :func:`rand_error` (V_Rand) and :func:`information_scores` /
:func:`information_error` (V_Info) compare two label images as clusterings of the
ground-truth foreground pixels, optionally after :func:`thin_borders` of the gaps between
particles (Arganda-Carreras et al. 2015).
"""

from __future__ import annotations

import numpy as np

from nanoseg.labels import consecutive_labels, cut_touching
from nanoseg.metrics.overlap import check_same_shape, contingency_table


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
