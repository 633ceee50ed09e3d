"""Score predicted masks, label images or probability maps against ground-truth masks.

:func:`evaluate_folder` pairs the files of two folders by name and scores them with one of the
two protocols described in :mod:`nanoseg.metrics` (``"paper"`` or ``"strict"``);
:func:`evaluate_predictions` does the same on arrays already in memory (the benchmark uses it);
:func:`compare_sizes` measures the particles of both sides with
:func:`nanoseg.particles.measure_particles` and compares their size distributions.

Prediction files may be

- probability maps: float TIFF (values in [0, 1]) or ``.npz`` (key ``prob``/``probability``
  or its only array),
- binary masks: two values, 0 and 1 or 0 and 255 (white = particle),
- 8-bit probability maps (0-255 gray values),
- label images: 16/32-bit integer images with more than two values (0 = background).

``kind=`` (``--kind`` on the command line) overrides the guess, e.g. for 8-bit label images.

Ground truth is a binary mask whose touching particles are separated by one-pixel lines (as the
manual masks of the TiO2 dataset, ``<id>_m.tif``) or a 16/32-bit label image, told apart by
:func:`nanoseg.io.read_annotation`; an 8-bit file with more than two grey values (an
anti-aliased mask, or 8-bit labels) is refused unless ``gt_kind="labels"`` (``--labels``) says
what it is. A ground-truth mask that is taller than the prediction -- it still holds the
microscope's info-bar rows the prediction was cropped of -- is cropped to the prediction's height.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from nanoseg import metrics as M
from nanoseg.errors import NanosegError
from nanoseg.evaluate.files import (
    load_pairs,
    load_score_maps,
    prediction_kind,
)
from nanoseg.labels import consecutive_labels, label_binary
from nanoseg.measure.figures import plot_comparison
from nanoseg.particles import measure_particles
from nanoseg.runtime import progress

logger = logging.getLogger("nanoseg.evaluate")

Protocol = Literal["paper", "strict"]
PROTOCOLS: tuple[str, ...] = ("paper", "strict")


# --------------------------------------------------------------------------------------------
# From a prediction to instances
# --------------------------------------------------------------------------------------------


def ground_truth_labels(gt: np.ndarray, connectivity: int) -> np.ndarray:
    """Instances of a ground truth: labelled components of a mask, or the label image itself."""
    if gt.dtype == bool:
        return label_binary(gt, connectivity)
    return consecutive_labels(gt)


def binarize(pred: np.ndarray, kind: str, threshold: float) -> np.ndarray:
    """Foreground of a prediction: ``prob > threshold``, the mask, or 4-separated labels."""
    if kind == "probability":
        return pred > threshold
    if kind == "binary":
        return np.asarray(pred, dtype=bool)
    return M.labels_to_binary(pred)


def prediction_instances(pred: np.ndarray, kind: str, threshold: float, watershed_binary: bool = False,
                         protocol: str = "strict") -> np.ndarray:
    """Particles of a prediction.

    Probability maps are thresholded and split by :func:`~nanoseg.metrics.paper_watershed`
    (the paper's post-processing; ``protocol="strict"`` keeps components without a distance
    peak). Binary masks follow this project's mask convention -- touching particles separated
    by one-pixel lines -- and are labelled 4-connected, unless ``watershed_binary`` asks for
    the watershed split too. Label images are used as they are.
    """
    if kind == "labels":
        return consecutive_labels(pred)
    if kind == "binary" and not watershed_binary:
        return label_binary(pred, 1)
    strict = protocol == "strict"
    return M.paper_watershed(binarize(pred, kind, threshold), exclude_border=not strict, keep_unmarked=strict)


def _isbi_scores(binary: np.ndarray, gt_binary: np.ndarray, gt_labels4: np.ndarray,
                 gt_thin: np.ndarray) -> dict[str, float]:
    """The ISBI 2012 set for one binary prediction (labelled 4-connected)."""
    pred_labels = label_binary(binary, 1)
    pred_thin = M.thin_borders(pred_labels)
    warp = M.warping_error(binary, gt_binary)
    return {
        "pixel_error": 1.0 - M.pixel_f_score(binary, gt_binary),
        "warping_error": warp.error,
        "split_merge_error": warp.split_merge_error,
        "splits": warp.splits,
        "merges": warp.merges,
        "rand_error": M.rand_scores(pred_labels, gt_labels4)["error"],
        "rand_error_thinned": M.rand_scores(pred_thin, gt_thin)["error"],
        "info_error_thinned": M.information_scores(pred_thin, gt_thin)["error"],
    }


def _score_map(pred: np.ndarray, kind: str) -> np.ndarray:
    # a label image is not a score: its ROC is the single operating point of its mask
    return pred.astype(float) if kind == "probability" else (pred != 0).astype(float)


_ISBI_ERRORS = ("pixel_error", "warping_error", "split_merge_error", "rand_error", "rand_error_thinned",
                "info_error_thinned")


# --------------------------------------------------------------------------------------------
# Protocols
# --------------------------------------------------------------------------------------------


def evaluate_predictions(
    predictions: Mapping[str, np.ndarray],
    ground_truths: Mapping[str, np.ndarray],
    protocol: Protocol = "paper",
    *,
    threshold: float = 0.5,
    thresholds: Sequence[float] = M.PAPER_THRESHOLDS,
    min_area_px: int = 9,
    watershed_binary: bool = False,
    score_maps: Mapping[str, np.ndarray] | None = None,
    instances_out: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> pd.DataFrame:
    """Score predictions against ground truths already in memory.

    Parameters
    ----------
    predictions : mapping of name -> (H, W) array
        Probability maps (float), binary masks (bool / two values) or label images.
    ground_truths : mapping of name -> (H, W) array
        Same names; binary masks with one-pixel separation lines, or label images; already
        cropped to the prediction's shape (see :func:`align_ground_truth`).
    protocol : {'paper', 'strict'}
        See :mod:`nanoseg.metrics` for the differences.
    threshold : float
        Probability threshold of the ``strict`` protocol (ignored by ``paper``, which sweeps).
    thresholds : sequence of float
        Thresholds swept by the ``paper`` protocol.
    min_area_px : int
        ``paper``: the filtered instance IoU ignores predicted particles whose outline encloses
        this many px^2 or less (:func:`~nanoseg.metrics.outline_area_px`).
    watershed_binary : bool
        Split binary masks with the watershed too (default: label them 4-connected; see
        :func:`prediction_instances`). Probability maps are always split.
    score_maps : mapping of name -> (H, W) float array, optional
        ``strict``: the probability maps behind label-image or mask predictions, for the
        ROC-based Youden index (a label image alone has a single operating point). This is
        how a segmenter with its own instance post-processing is scored: its labels for every
        instance and pixel metric, its probabilities for the ROC. Ignored by ``paper``.
    instances_out : dict, optional
        Filled with name -> (predicted instances, ground-truth instances) as scored (``paper``:
        at the instance-IoU threshold).

    Returns
    -------
    pandas.DataFrame
        One row per image (column ``image``). ``df.attrs`` holds ``protocol``, ``threshold``
        (``strict``: the fixed one; ``paper``: the instance-IoU one) and, for ``paper``,
        ``thresholds``: the global threshold of each metric. ``paper`` rows also carry each
        metric's threshold in ``<metric>_threshold`` (per image for the ISBI metrics).
    """
    if protocol not in PROTOCOLS:
        raise NanosegError(f"--protocol {protocol!r}: choose 'paper' or 'strict'")
    missing = sorted(set(predictions) - set(ground_truths))
    if missing:
        raise NanosegError(f"no ground truth for prediction(s) {', '.join(missing)}")
    names = sorted(predictions)
    kinds = {name: prediction_kind(np.asarray(predictions[name])) for name in names}
    for name in names:
        M.check_same_shape(predictions[name], ground_truths[name], f"image {name}")
    if protocol == "paper":
        df, chosen = _evaluate_paper(predictions, ground_truths, names, kinds, thresholds, min_area_px,
                                     watershed_binary, instances_out)
    else:
        if score_maps is not None:
            for name in names:
                if name not in score_maps:
                    raise NanosegError(f"no probability map (score_maps) for prediction {name}")
                M.check_same_shape(score_maps[name], ground_truths[name], f"probability map {name}")
        df, chosen = _evaluate_strict(predictions, ground_truths, names, kinds, threshold, watershed_binary,
                                      score_maps, instances_out)
    df.attrs["protocol"] = protocol
    df.attrs["threshold"] = chosen
    return df


#: Paper metrics whose global threshold is chosen by their best mean (higher is better).
_PAPER_GLOBAL = ("image_iou", "instance_iou", "instance_iou_area_gt9", "youden")


def _paper_scores(inst: np.ndarray, gt8: np.ndarray, gt_binary: np.ndarray, min_area_px: int) -> dict[str, float]:
    binary = inst > 0
    iou = M.instance_iou(inst, gt8)
    iou_filtered = M.instance_iou(inst, gt8, min_area_px=min_area_px, area="outline")
    n_pos = max(int(gt_binary.sum()), 1)
    n_neg = max(int(gt_binary.size - gt_binary.sum()), 1)
    tpr = np.count_nonzero(binary & gt_binary) / n_pos
    fpr = np.count_nonzero(binary & ~gt_binary) / n_neg
    return {
        "image_iou": M.image_iou(binary, gt_binary),
        # the authors' script scores an image without predicted particles 0
        "instance_iou": 0.0 if np.isnan(iou) else iou,
        "instance_iou_area_gt9": 0.0 if np.isnan(iou_filtered) else iou_filtered,
        "youden": tpr - fpr,
        "n_pred": int(inst.max()),
    }


def _warping_thresholds(pred: np.ndarray, kind: str, sweep: Sequence[float]) -> np.ndarray:
    """Thresholds the paper's warping error was minimised over.

    From floor(10 min) / 10 to floor(10 (max - 0.1)) / 10 of the map: an (almost) empty
    prediction has no split or merger at all, so the top of the range is left out.
    """
    if kind != "probability":
        return np.ones(len(sweep), bool)
    low = np.floor(10 * float(pred.min())) / 10
    high = np.floor(10 * (float(pred.max()) - 0.1)) / 10
    t = np.asarray(sweep, dtype=float)
    ok = (t >= low - 1e-9) & (t <= high + 1e-9)
    return ok if ok.any() else np.ones(len(sweep), bool)


def _evaluate_paper(predictions, ground_truths, names, kinds, thresholds, min_area_px, watershed_binary, instances_out):
    gt8 = {n: ground_truth_labels(np.asarray(ground_truths[n]), 2) for n in names}
    gt4 = {n: ground_truth_labels(np.asarray(ground_truths[n]), 1) for n in names}
    gt_bin = {n: np.asarray(ground_truths[n]) != 0 for n in names}
    # 1. post-processed masks at every threshold; one global threshold per metric by best mean
    sweeps: dict[str, list[float]] = {}
    scores: dict[str, list[dict[str, float]]] = {}
    instances: dict[str, list[np.ndarray]] = {}
    for name in progress(names, total=len(names), desc="paper: thresholds"):
        pred, kind = np.asarray(predictions[name]), kinds[name]
        sweeps[name] = list(thresholds) if kind == "probability" else [float("nan")]
        instances[name] = [prediction_instances(pred, kind, t, watershed_binary, "paper") for t in sweeps[name]]
        scores[name] = [_paper_scores(inst, gt8[name], gt_bin[name], min_area_px) for inst in instances[name]]
    prob_names = [n for n in names if kinds[n] == "probability"]
    best_k: dict[str, int] = {}
    chosen: dict[str, float] = {}
    for metric in _PAPER_GLOBAL:
        if prob_names:
            means = [np.mean([scores[n][k][metric] for n in prob_names]) for k in range(len(thresholds))]
            best_k[metric] = int(np.argmax(means))
            chosen[metric] = float(thresholds[best_k[metric]])
        else:
            best_k[metric], chosen[metric] = 0, float("nan")
    records = []
    for name in progress(names, total=len(names), desc="paper: scoring"):
        pred, kind = np.asarray(predictions[name]), kinds[name]
        rec: dict[str, Any] = {"image": name, "kind": kind, "n_gt": int(gt8[name].max())}
        k_inst = best_k["instance_iou"] if kind == "probability" else 0
        rec["n_pred"] = scores[name][k_inst]["n_pred"]
        if instances_out is not None:
            instances_out[name] = (instances[name][k_inst], gt8[name])
        for metric in _PAPER_GLOBAL:
            k = best_k[metric] if kind == "probability" else 0
            rec[metric] = scores[name][k][metric]
            rec[f"{metric}_threshold"] = sweeps[name][k]
        rec[f"instance_iou_area_gt{min_area_px}"] = rec.pop("instance_iou_area_gt9")
        rec[f"instance_iou_area_gt{min_area_px}_threshold"] = rec.pop("instance_iou_area_gt9_threshold")
        # ISBI: raw map, 4-connected labelling, best threshold per image and metric
        gt_thin = M.thin_borders(gt4[name])
        gt_binary = M.labels_to_binary(gt4[name])
        isbi = [_isbi_scores(binarize(pred, kind, t), gt_binary, gt4[name], gt_thin) for t in sweeps[name]]
        warp_ok = _warping_thresholds(pred, kind, sweeps[name])
        for metric in _ISBI_ERRORS:
            allowed = warp_ok if metric in ("warping_error", "split_merge_error") else np.ones(len(isbi), bool)
            values = np.where(allowed, [sc[metric] for sc in isbi], np.inf)
            j = int(np.argmin(values))
            rec[metric] = isbi[j][metric]
            rec[f"{metric}_threshold"] = sweeps[name][j]
            if metric == "split_merge_error":
                rec["splits"], rec["merges"] = isbi[j]["splits"], isbi[j]["merges"]
        records.append(rec)
    df = pd.DataFrame(records)
    df.attrs["thresholds"] = chosen
    return df, chosen["instance_iou"]


def _evaluate_strict(predictions, ground_truths, names, kinds, threshold, watershed_binary, score_maps,
                     instances_out):
    records = []
    for name in progress(names, total=len(names), desc="strict: scoring"):
        pred, kind = np.asarray(predictions[name]), kinds[name]
        gt_raw = np.asarray(ground_truths[name])
        gt4 = ground_truth_labels(gt_raw, 1)
        inst = prediction_instances(pred, kind, threshold, watershed_binary, "strict")
        if instances_out is not None:
            instances_out[name] = (inst, gt4)
        binary = binarize(pred, kind, threshold)
        iou = M.iou_matrix(inst, gt4)
        det = M.detection_scores(inst, gt4, 0.5, iou=iou)
        forward = M.instance_iou(inst, gt4)
        backward = M.instance_iou(gt4, inst)
        rec: dict[str, Any] = {
            "image": name, "kind": kind, "threshold": threshold if kind == "probability" else float("nan"),
            "n_gt": int(gt4.max()), "n_pred": int(inst.max()),
            "image_iou": M.image_iou(binary, gt_raw),
            "instance_iou": forward,
            "instance_iou_gt": backward,
            "symmetric_instance_iou": M.symmetric_instance_iou(inst, gt4),
            "precision": det["precision"], "recall": det["recall"], "f1": det["f1"], "ap50": det["ap"],
            "ap50_95": float(np.mean([M.detection_scores(None, None, t, iou=iou)["ap"] for t in M.AP_IOU_THRESHOLDS])),
            "sq": det["sq"], "rq": det["rq"], "pq": det["pq"],
        }
        roc_map = np.asarray(score_maps[name], float) if score_maps is not None else _score_map(pred, kind)
        rec["youden"], rec["youden_threshold"] = M.youden_index(roc_map, gt_raw)
        rec.update(_isbi_scores(binary, M.labels_to_binary(gt4), gt4, M.thin_borders(gt4)))
        records.append(rec)
    return pd.DataFrame(records), float(threshold)


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------


def evaluate_folder(
    pred_dir: str | Path,
    gt_dir: str | Path,
    protocol: Protocol = "paper",
    *,
    threshold: float = 0.5,
    min_area_px: int = 9,
    watershed_binary: bool = False,
    kind: str = "auto",
    scores_dir: str | Path | None = None,
    gt_kind: str = "auto",
) -> pd.DataFrame:
    """Score every prediction in ``pred_dir`` against its ground truth in ``gt_dir``.

    Parameters
    ----------
    pred_dir : path
        Probability maps (float TIFF / ``.npz``), binary masks (0/255) or label images.
    gt_dir : path
        Ground-truth masks (``<stem>.tif`` or ``<stem>_m.tif``) or label images.
    protocol : {'paper', 'strict'}
        See :mod:`nanoseg.metrics`.
    threshold : float
        Probability threshold of the ``strict`` protocol.
    min_area_px : int
        Area filter of the ``paper`` protocol's second instance IoU.
    watershed_binary : bool
        Split binary masks with the paper's watershed too (probability maps always are).
    kind : {'auto', 'probability', 'binary', 'labels'}
        What the prediction files hold (see :func:`read_prediction`).
    scores_dir : path, optional
        ``strict``: probability maps behind label-image predictions, for Youden's ROC (see
        :func:`load_score_maps`).
    gt_kind : {'auto', 'mask', 'labels'}
        What the ground-truth files hold (see :func:`read_ground_truth`).

    Returns
    -------
    pandas.DataFrame
        One row per image; see :func:`evaluate_predictions`.

    Examples
    --------
    >>> df = evaluate_folder("runs/tio2/segment/binary", "../shared/data/bam-tio2/masks")  # doctest: +SKIP
    >>> df[["image", "image_iou", "instance_iou"]]  # doctest: +SKIP
    """
    predictions, ground_truths = load_pairs(pred_dir, gt_dir, kind, gt_kind)
    score_maps = load_score_maps(scores_dir, predictions) if scores_dir is not None else None
    return evaluate_predictions(predictions, ground_truths, protocol, threshold=threshold, min_area_px=min_area_px,
                                watershed_binary=watershed_binary, score_maps=score_maps)


def summary_row(df: pd.DataFrame) -> dict[str, Any]:
    """Mean of every numeric column over the images (``image`` = 'mean')."""
    numeric = df.select_dtypes("number")
    row: dict[str, Any] = {col: float(numeric[col].mean()) for col in numeric.columns}
    row["image"] = "mean"
    if "kind" in df.columns:
        row["kind"] = ",".join(sorted(df["kind"].unique()))
    return row


# --------------------------------------------------------------------------------------------
# Size distributions
# --------------------------------------------------------------------------------------------


def measure_instances(instances: Mapping[str, tuple[np.ndarray, np.ndarray]], pixel_size_nm: float | None = None
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Measure predicted and ground-truth particles of every image (border particles excluded).

    Returns
    -------
    pred, gt : pandas.DataFrame
        :func:`nanoseg.particles.measure_particles` tables with an ``image`` column.
    """
    tables: tuple[list[pd.DataFrame], list[pd.DataFrame]] = ([], [])
    for name in sorted(instances):
        for side, labels in zip(tables, instances[name]):
            table = measure_particles(labels, pixel_size_nm=pixel_size_nm, exclude_border=True)
            table.insert(0, "image", name)
            side.append(table)
    return (pd.concat(tables[0], ignore_index=True) if tables[0] else pd.DataFrame(),
            pd.concat(tables[1], ignore_index=True) if tables[1] else pd.DataFrame())


def compare_sizes(instances: Mapping[str, tuple[np.ndarray, np.ndarray]], pixel_size_nm: float | None = None,
                  plot_stem: str | Path | None = None, bins: int = 30) -> pd.DataFrame:
    """Size-distribution agreement of predicted vs ground-truth particles, pooled over images.

    Parameters
    ----------
    instances : mapping of name -> (predicted labels, ground-truth labels)
        E.g. filled by ``evaluate_predictions(..., instances_out=...)``.
    pixel_size_nm : float, optional
        Pixel size; the comparison is in nm when given, else in px.
    plot_stem : path, optional
        When given, overlaid histograms are written to ``<plot_stem>_<descriptor>.png`` (and
        ``.svg``).
    bins : int
        Histogram bins.

    Returns
    -------
    pandas.DataFrame
        :func:`nanoseg.metrics.size_distribution_agreement` table, one row per descriptor.
    """
    pred, gt = measure_instances(instances, pixel_size_nm)
    if pred.empty or gt.empty:
        raise NanosegError("size comparison: no whole particle (away from the image border) on one side")
    table = M.size_distribution_agreement(pred, gt)
    if plot_stem is not None:
        for row in table.itertuples():
            col = row.descriptor
            plot_comparison(pred[col].to_numpy(float), gt[col].to_numpy(float), Path(f"{plot_stem}_{col}"),
                            names=("prediction", "ground truth"), xlabel=_axis_label(col), bins=bins,
                            ks={"ks_statistic": row.ks_statistic, "p_value": row.ks_p_value})
    return table


def _axis_label(col: str) -> str:
    match = re.fullmatch(r"(.+)_(px|nm2|nm)", col)
    if not match:
        return col
    stem, unit = match.groups()
    unit = {"nm2": "nm²"}.get(unit, unit)
    return f"{stem.replace('_', ' ')} ({unit})"
