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
from nanoseg.io import read_annotation, read_labels
from nanoseg.labels import consecutive_labels, label_binary
from nanoseg.measure.figures import plot_comparison
from nanoseg.particles import measure_particles
from nanoseg.runtime import progress

logger = logging.getLogger("nanoseg.evaluate")

Protocol = Literal["paper", "strict"]
PROTOCOLS: tuple[str, ...] = ("paper", "strict")
PREDICTION_SUFFIXES = (".tif", ".tiff", ".png", ".npz", ".bmp")
#: Not read as predictions or ground truth: JPEG compression changes mask and label values at every edge.
LOSSY_SUFFIXES = (".jpg", ".jpeg")
#: Name endings removed before pairing files (``1908248_m.tif`` pairs with ``1908248.tif``).
_GT_ENDINGS = ("_m", "_mask", "_gt", "_labels")
_PRED_ENDINGS = ("_prob", "_probability", "_pred", "_labels", "_binary", "_mask", "_m")
#: Largest share of a ground-truth image's height that may be cropped away as info bar.
MAX_INFO_BAR_FRACTION = 1 / 3


# --------------------------------------------------------------------------------------------
# Reading and pairing
# --------------------------------------------------------------------------------------------


def prediction_kind(array: np.ndarray) -> str:
    """Classify a prediction as ``'probability'``, ``'binary'`` or ``'labels'``.

    Floats with fractional values in [0, 1] are probabilities; arrays holding at most two
    values, one of them 0, are binary; other non-negative integers are labels.
    """
    values = np.unique(array)
    if array.dtype.kind == "f" and np.any(values != np.round(values)):
        return "probability"
    if values.size <= 2 and values[0] in (0, values[-1]):
        return "binary"
    return "labels"


def read_prediction(path: str | Path, kind: str = "auto") -> tuple[np.ndarray, str]:
    """Read one prediction file.

    Parameters
    ----------
    path : path
        TIFF, PNG/BMP or ``.npz``.
    kind : {'auto', 'probability', 'binary', 'labels'}
        What the file holds. ``'auto'``: floats with fractional values are probabilities, two
        values (one 0) a binary mask, 8-bit images with more values an 8-bit probability map
        (value / 255, how ImageJ and the paper's scripts save them), wider integers labels.

    Returns
    -------
    array : (H, W) array
        float32 probabilities, bool mask, or int labels.
    kind : {'probability', 'binary', 'labels'}

    Raises
    ------
    NanosegError
        For an unreadable file, a probability map outside [0, 1], or negative labels.
    """
    path = Path(path)
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path) as data:
                keys = list(data.keys())
                key = next((k for k in ("prob", "probability", "labels", "instances", "binary", "mask") if k in keys),
                           keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise NanosegError(f"{path}: .npz holds {keys}; expected a 'prob' or 'labels' array (or a single one)")
                raw = np.asarray(data[key])
        except NanosegError:
            raise
        except Exception as exc:
            raise NanosegError(f"{path}: cannot read .npz ({type(exc).__name__}: {exc}); re-save it with numpy.savez") from None
    elif path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            raw = tifffile.imread(path)
        except Exception as exc:
            raise NanosegError(f"{path}: cannot read TIFF ({type(exc).__name__}); re-export it") from None
    else:
        raw = read_labels(path)
    raw = np.squeeze(raw)
    if raw.ndim != 2:
        raise NanosegError(f"{path}: expected one 2-D image, got shape {raw.shape}")
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):
        raise NanosegError(f"{path}: prediction holds NaN or inf values")
    if kind not in ("auto", "probability", "binary", "labels"):
        raise NanosegError(f"--kind {kind!r}: choose auto, probability, binary or labels")
    if kind == "auto":
        kind = prediction_kind(raw)
        if kind == "labels" and raw.dtype == np.uint8:
            kind = "probability"
    if kind == "probability" and raw.dtype.kind in "ui":
        if raw.dtype == np.uint8 or raw.max() > 1:
            raw = raw / (255.0 if raw.dtype == np.uint8 else float(np.iinfo(raw.dtype).max))
    if kind == "probability":
        if raw.min() < 0 or raw.max() > 1:
            raise NanosegError(f"{path}: probability map has values in [{raw.min():.3g}, {raw.max():.3g}]; "
                               "save probabilities in [0, 1] (or labels as integers)")
        return raw.astype(np.float32), kind
    if raw.min() < 0:
        raise NanosegError(f"{path}: prediction holds negative values; save labels as uint16/uint32")
    if kind == "binary":
        if np.unique(raw).size > 2:
            raise NanosegError(f"{path}: --kind binary but the image holds more than two values")
        return raw != 0, kind
    if raw.dtype.kind == "f" and np.any(raw != np.round(raw)):
        raise NanosegError(f"{path}: --kind labels but the image holds fractional values")
    return raw.astype(np.int64), kind


def read_ground_truth(path: str | Path, kind: str = "auto") -> np.ndarray:
    """Read a ground-truth mask (returned as bool) or label image (int).

    Parameters
    ----------
    path : path
    kind : {'auto', 'mask', 'labels'}
        See :func:`nanoseg.io.read_annotation`.

    Raises
    ------
    NanosegError
        For unreadable files, an ambiguous 8-bit image (auto), negative / fractional values.
    """
    return read_annotation(path, kind)  # type: ignore[arg-type]


def _normal_stem(name: str, endings: Sequence[str]) -> str:
    for ending in endings:
        if name.lower().endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)]
    return name


def _listing(folder: Path, endings: Sequence[str], what: str) -> dict[str, Path]:
    """Stem (one ending removed) -> file, for the image files of a folder."""
    if not folder.is_dir():
        raise NanosegError(f"{folder}: no such {what} folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in LOSSY_SUFFIXES:
            logger.warning("%s: JPEG is not read as a %s (compression changes mask and label values); "
                           "save it as TIFF or PNG", path, what)
        if path.is_file() and path.suffix.lower() in PREDICTION_SUFFIXES and not path.name.startswith("."):
            stem = _normal_stem(path.stem, endings)
            if stem in found:
                raise NanosegError(f"{path}: pairs with the same name as {found[stem].name}; keep one file per image")
            found[stem] = path
    return found


def pair_files(pred_dir: str | Path, gt_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """Pair prediction and ground-truth files by name.

    Names are compared after removing one ending such as ``_m`` or ``_mask`` (ground truth) and
    ``_prob`` or ``_labels`` (prediction), so ``1908248_m.tif`` pairs with ``1908248.tif`` or
    ``1908248_prob.npz``.

    Returns
    -------
    list of (stem, prediction path, ground-truth path), sorted by stem.

    Raises
    ------
    NanosegError
        If a folder is missing, or no file pairs up.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    preds = _listing(pred_dir, _PRED_ENDINGS, "prediction")
    gts = _listing(gt_dir, _GT_ENDINGS, "ground-truth")
    stems = sorted(set(preds) & set(gts))
    if not stems:
        lossy = [p for folder in (pred_dir, gt_dir) for p in sorted(folder.iterdir())
                 if p.suffix.lower() in LOSSY_SUFFIXES]
        if lossy:  # the stems may well match: the files are just not read
            raise NanosegError(f"{lossy[0]}: JPEG files are not read as predictions or ground truth (compression "
                               "changes mask and label values at every edge); save them as TIFF or PNG")
        raise NanosegError(
            f"{pred_dir} and {gt_dir}: no file names pair up (e.g. prediction 1908248.tif with ground truth "
            "1908248_m.tif); rename the files so their stems match"
        )
    for stem in sorted(set(preds) - set(gts)):
        logger.warning("%s: no ground truth in %s; skipped", preds[stem].name, gt_dir)
    for stem in sorted(set(gts) - set(preds)):
        logger.warning("%s: no prediction in %s; skipped", gts[stem].name, pred_dir)
    return [(stem, preds[stem], gts[stem]) for stem in stems]


def align_ground_truth(gt: np.ndarray, pred_shape: tuple[int, ...], gt_name: str = "ground truth",
                       pred_name: str = "prediction") -> np.ndarray:
    """Crop the info-bar rows off a ground truth that is taller than the prediction.

    Raises
    ------
    NanosegError
        For any other shape difference (naming both files).
    """
    if gt.shape == tuple(pred_shape):
        return gt
    height, width = pred_shape
    if gt.shape[1] == width and height < gt.shape[0] <= height / (1 - MAX_INFO_BAR_FRACTION):
        return gt[:height]
    raise NanosegError(
        f"{pred_name} is {width}x{height} px but {gt_name} is {gt.shape[1]}x{gt.shape[0]} px; only a ground truth "
        "taller by the info-bar rows is cropped automatically: predict on the same field of view"
    )


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


def load_pairs(pred_dir: str | Path, gt_dir: str | Path, kind: str = "auto", gt_kind: str = "auto"
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read and align every prediction / ground-truth pair of two folders (see :func:`pair_files`;
    ``kind`` as in :func:`read_prediction`, ``gt_kind`` as in :func:`read_ground_truth`)."""
    predictions: dict[str, np.ndarray] = {}
    ground_truths: dict[str, np.ndarray] = {}
    for stem, pred_path, gt_path in pair_files(pred_dir, gt_dir):
        pred, _ = read_prediction(pred_path, kind)
        gt = read_ground_truth(gt_path, gt_kind)
        predictions[stem] = pred
        ground_truths[stem] = align_ground_truth(gt, pred.shape, str(gt_path), str(pred_path))
    return predictions, ground_truths


def load_score_maps(scores_dir: str | Path, predictions: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Read the probability map behind each prediction (paired by name, as :func:`pair_files`).

    ``nanoseg segment predict --probabilities`` writes them to ``probabilities/`` beside
    ``labels/``; the ``strict`` protocol scores the labels and takes Youden's ROC from these.
    """
    scores_dir = Path(scores_dir)
    files = _listing(scores_dir, _PRED_ENDINGS, "probability-map")
    maps: dict[str, np.ndarray] = {}
    for stem, pred in predictions.items():
        if stem not in files:
            raise NanosegError(f"{scores_dir}: no probability map for {stem}; write one per prediction "
                               "(nanoseg segment predict --probabilities) or leave out --scores")
        maps[stem], _ = read_prediction(files[stem], "probability")
        if maps[stem].shape != np.shape(pred):
            raise NanosegError(f"{files[stem]}: shape {maps[stem].shape} differs from its prediction's "
                               f"{np.shape(pred)}; give the map written with that prediction")
    return maps


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
