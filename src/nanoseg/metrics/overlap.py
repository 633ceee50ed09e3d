"""Shared ground of the metrics: the shape check and the label-overlap tables.

:func:`contingency_table` counts the pixels of every (ground truth, prediction) label pair in
one :mod:`scipy.sparse` table; :func:`iou_matrix` turns it into the IoU of every pair of
particles. The instance, detection and ISBI scores are built on them.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from nanoseg.errors import NanosegError
from nanoseg.labels import consecutive_labels


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
