"""Judging segmentations: scoring protocols against ground truth, and the published baselines.

The package's modules: :mod:`nanoseg.evaluate.files` (reading and pairing predictions and
ground truth), :mod:`nanoseg.evaluate.protocols` (the ``"paper"`` and ``"strict"`` protocols of :mod:`nanoseg.metrics`,
:func:`evaluate_folder`, :func:`evaluate_predictions`, :func:`compare_sizes`; everything public
in it is importable from ``nanoseg.evaluate`` itself) and :mod:`nanoseg.evaluate.baselines`
(training masks made from TSEM images, baseline (c) of Rühle et al. 2021; imported as that
module).
:mod:`nanoseg.metrics` holds the metrics alone.
"""

from __future__ import annotations

from nanoseg.evaluate.files import (
    LOSSY_SUFFIXES,
    MAX_INFO_BAR_FRACTION,
    PREDICTION_SUFFIXES,
    align_ground_truth,
    load_pairs,
    load_score_maps,
    pair_files,
    prediction_kind,
    read_ground_truth,
    read_prediction,
)
from nanoseg.evaluate.protocols import (
    PROTOCOLS,
    Protocol,
    binarize,
    compare_sizes,
    evaluate_folder,
    evaluate_predictions,
    ground_truth_labels,
    measure_instances,
    prediction_instances,
    summary_row,
)

__all__ = [
    "LOSSY_SUFFIXES",
    "MAX_INFO_BAR_FRACTION",
    "PREDICTION_SUFFIXES",
    "PROTOCOLS",
    "Protocol",
    "align_ground_truth",
    "binarize",
    "compare_sizes",
    "evaluate_folder",
    "evaluate_predictions",
    "ground_truth_labels",
    "load_pairs",
    "load_score_maps",
    "measure_instances",
    "pair_files",
    "prediction_instances",
    "prediction_kind",
    "read_ground_truth",
    "read_prediction",
    "summary_row",
]
