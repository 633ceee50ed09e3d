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
  et al. 2019) at one IoU threshold, :func:`mean_average_precision` over IoU 0.5:0.95, and
  :func:`missed_causes` (each missed ground-truth particle: merged with another, not found, or
  outlined too far off).
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

Modules
-------
- :mod:`~nanoseg.metrics.overlap`: shape check, contingency table, IoU matrix.
- :mod:`~nanoseg.metrics.pixel`: image IoU, Youden's index, pixel error.
- :mod:`~nanoseg.metrics.instance`: instance IoU, matching, detection scores, mean AP.
- :mod:`~nanoseg.metrics.clustering`: ISBI Rand and information-theoretic scores, border thinning.
- :mod:`~nanoseg.metrics.warping`: ISBI warping error, split/merge counts, ``labels_to_binary``.
- :mod:`~nanoseg.metrics.postprocess`: the paper protocol's watershed and diagonal-contact rule.
- :mod:`~nanoseg.metrics.sizes`: size-distribution agreement.
"""

from __future__ import annotations

from nanoseg.metrics.clustering import (
    information_error,
    information_scores,
    rand_error,
    rand_scores,
    thin_borders,
)
from nanoseg.metrics.instance import (
    AP_IOU_THRESHOLDS,
    detection_scores,
    instance_iou,
    match_instances,
    mean_average_precision,
    missed_causes,
    outline_area_px,
    symmetric_instance_iou,
)
from nanoseg.metrics.overlap import check_same_shape, contingency_table, iou_matrix
from nanoseg.metrics.pixel import PAPER_THRESHOLDS, image_iou, pixel_error, pixel_f_score, youden_index
from nanoseg.metrics.postprocess import paper_watershed, remove_diagonal_contacts
from nanoseg.metrics.sizes import default_size_columns, size_distribution_agreement
from nanoseg.metrics.warping import (
    NEIGHBOUR_OFFSETS,
    SIMPLE_POINTS,
    WarpingResult,
    labels_to_binary,
    split_merge_counts,
    warping_error,
)

__all__ = [
    "AP_IOU_THRESHOLDS", "NEIGHBOUR_OFFSETS", "PAPER_THRESHOLDS", "SIMPLE_POINTS", "WarpingResult",
    "check_same_shape", "contingency_table", "default_size_columns", "detection_scores", "image_iou",
    "information_error", "information_scores", "instance_iou", "iou_matrix", "labels_to_binary", "match_instances", "missed_causes",
    "mean_average_precision", "outline_area_px", "paper_watershed", "pixel_error", "pixel_f_score", "rand_error",
    "rand_scores", "remove_diagonal_contacts", "size_distribution_agreement", "split_merge_counts",
    "symmetric_instance_iou", "thin_borders", "warping_error", "youden_index",
]
