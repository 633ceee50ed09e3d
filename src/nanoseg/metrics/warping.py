"""ISBI 2012 warping error (Jain et al. 2010) and the topology it rests on.

:func:`warping_error` warps the ground truth towards the prediction by flipping simple points
only (:data:`SIMPLE_POINTS`) and counts what is left; :func:`split_merge_counts` counts splits,
mergers, omissions and additions from two label images; :func:`labels_to_binary` makes a
binary mask of a label image with touching particles separated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nanoseg.labels import consecutive_labels, cut_touching, label_binary, touching_lines
from nanoseg.metrics.overlap import check_same_shape, contingency_table

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
