"""Reading and pairing prediction and ground-truth files for scoring (:mod:`nanoseg.evaluate.protocols`).

Prediction files may be probability maps (float TIFF in [0, 1], ``.npz``), binary masks (two
values), 8-bit probability maps or 16/32-bit label images; ground truth is a binary mask with
one-pixel lines between touching particles or a label image. Files pair by name, with the usual
endings (``_m``, ``_pred``, ...) removed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nanoseg.errors import NanosegError
from nanoseg.io import read_annotation, read_labels

logger = logging.getLogger("nanoseg.evaluate")

PREDICTION_SUFFIXES = (".tif", ".tiff", ".png", ".npz", ".bmp")
#: Not read as predictions or ground truth: JPEG compression changes mask and label values at every edge.
LOSSY_SUFFIXES = (".jpg", ".jpeg")
#: Name endings removed before pairing files (``1908248_m.tif`` pairs with ``1908248.tif``).
_GT_ENDINGS = ("_m", "_mask", "_gt", "_labels")
_PRED_ENDINGS = ("_prob", "_probability", "_pred", "_labels", "_binary", "_mask", "_m")
#: Largest share of a ground-truth image's height that may be cropped away as info bar.
MAX_INFO_BAR_FRACTION = 1 / 3


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
