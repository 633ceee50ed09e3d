"""Stage 6: decide which segmented particles are whole and unoccluded, so they can be measured.

Two complementary methods:

- **Rules** (:func:`apply_rules`): area range, fragments far smaller than the median particle
  of their image (off by default), solidity, contact with the image border or info bar, mean
  intensity. Every rule a particle fails is recorded as a reason; :func:`counting_rule`
  states which rules ran, for the report.
- **Network**: a MultiResUNet with two input channels (micrograph, binary mask) predicts per
  pixel whether the particle under it should be kept; a particle's score is the mean over its
  pixels, and it is kept when the score is above ``classify.score_threshold`` (by default the
  threshold that best separates whole from partial particles on held-out fake pairs,
  :func:`calibrate_threshold`, saved with the model). Trained either
  self-supervised from the fake training pairs (their ``whole`` masks mark the particles that
  are not occluded and do not touch the border: no annotation needed) or from manual
  keep/discard masks (white = kept particles), see :func:`load_manual_samples`.

With ``method='network'`` the rules are applied as well.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nanoseg.errors import NanosegError

logger = logging.getLogger("nanoseg.classify")

#: One training sample: micrograph (float32 [0, 1]), binary mask (uint8 0/1), keep target (uint8 0/1).
Sample = tuple[np.ndarray, np.ndarray, np.ndarray]

DECISION_COLUMNS = ["image", "label", "score", "kept", "reason"]
#: The classify settings the rules read (:func:`rule_checks`); the rest configure the network.
RULE_SETTINGS = ("exclude_border", "min_area_px", "max_area_px", "min_ecd_fraction", "min_solidity",
                 "intensity_threshold", "min_mean_intensity")
CHECKPOINT_NAME = "checkpoint.pt"


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


def rule_checks(particles: pd.DataFrame, cfg: Any) -> list[tuple[str, float | None, np.ndarray]]:
    """The rule-based filters that ``cfg`` switches on, each with its threshold and failures.

    This is the one place that decides which rules run, so that the decisions
    (:func:`rule_reasons`) and the report's counting rule (:func:`describe_rules`) cannot
    disagree.

    Parameters
    ----------
    particles : pandas.DataFrame
        Columns ``area_px``, ``solidity``, ``touches_border``, ``mean_intensity``, optionally
        ``image`` and ``image_threshold`` (see :func:`rule_reasons`).
    cfg : ClassifyConfig

    Returns
    -------
    list of (name, threshold, failed)
        ``failed`` is a bool array over the rows; ``threshold`` is None for rules without one.
    """
    checks: list[tuple[str, float | None, np.ndarray]] = []
    if cfg.exclude_border:
        checks.append(("touches_border", None, particles["touches_border"].to_numpy(dtype=bool)))
    area = particles["area_px"].to_numpy(dtype=float)
    if cfg.min_area_px:
        checks.append(("area_below_min", float(cfg.min_area_px), area < cfg.min_area_px))
    if cfg.max_area_px is not None:
        checks.append(("area_above_max", float(cfg.max_area_px), area > cfg.max_area_px))
    if cfg.min_ecd_fraction > 0:
        # Per image, never over the batch: one image's decisions must not depend on which
        # other images were classified with it. ECD scales with sqrt(area), so compare areas
        # with the squared fraction of the image's median area.
        image = particles["image"].astype(str).to_numpy() if "image" in particles else np.zeros(len(area), dtype=int)
        median_area = pd.Series(area).groupby(image).transform("median").to_numpy(dtype=float)
        checks.append(("fragment", float(cfg.min_ecd_fraction), area < cfg.min_ecd_fraction**2 * median_area))
    if cfg.min_solidity > 0:
        checks.append(("solidity_below_min", float(cfg.min_solidity),
                       particles["solidity"].to_numpy(dtype=float) < cfg.min_solidity))
    if cfg.intensity_threshold != "none" and "image_threshold" in particles:
        below = particles["mean_intensity"].to_numpy(dtype=float) <= particles["image_threshold"].to_numpy(dtype=float)
        checks.append((f"intensity_below_{cfg.intensity_threshold}", None, below))
    if cfg.min_mean_intensity is not None:
        intensity = particles["mean_intensity"].to_numpy(dtype=float)
        # NaN (no image) passes: the rule cannot be evaluated
        checks.append(("intensity_below_min", float(cfg.min_mean_intensity), intensity < cfg.min_mean_intensity))
    return checks


def rule_reasons(particles: pd.DataFrame, cfg: Any) -> pd.Series:
    """Why each particle fails the rule-based filters ('' when it passes them all).

    Parameters
    ----------
    particles : pandas.DataFrame
        Columns ``area_px``, ``solidity``, ``touches_border``, ``mean_intensity`` (as from
        :func:`nanoseg.particles.measure_particles` with ``exclude_border=False``), and
        ``image`` when the rows come from several micrographs.
    cfg : ClassifyConfig
        Uses ``min_area_px``, ``max_area_px``, ``min_ecd_fraction`` (against the median ECD of
        the rows of the same ``image``), ``min_solidity``, ``exclude_border``,
        ``min_mean_intensity`` and ``intensity_threshold`` (compared with the column
        ``image_threshold``, the automatic threshold of each particle's micrograph, when present).

    Returns
    -------
    pandas.Series of str
        Failed rules joined by ';', e.g. ``'touches_border;area_below_min'``.
    """
    reasons = [[] for _ in range(len(particles))]
    for name, _, failed in rule_checks(particles, cfg):
        for i in np.flatnonzero(failed):
            reasons[i].append(name)
    return pd.Series([";".join(r) for r in reasons], index=particles.index, dtype=object)


#: What each rule discards, in words; ``{t}`` is its threshold.
_RULE_PHRASES = {
    "touches_border": "touching the image border or the info bar (their size is unknown)",
    "area_below_min": "smaller than {t:g} px",
    "area_above_max": "larger than {t:g} px",
    "fragment": "with an ECD below {t:g} times the median ECD of the particles of the same image (taken for fragments)",
    "solidity_below_min": "with a solidity (area / convex area) below {t:g}",
    "intensity_below_min": "with a mean intensity (0-1) below {t:g}",
    "score_below_threshold": "with a classifier keep score at or below {t:g} (judged partly covered, cut or "
                             "otherwise not whole)",
}


def _rule_phrase(name: str, threshold: float | None) -> str:
    """Plain-English description of the particles a rule discards."""
    if name in _RULE_PHRASES:
        return _RULE_PHRASES[name].format(t=threshold)
    method = name.removeprefix("intensity_below_")
    return f"with a mean intensity at or below the automatic '{method}' threshold of their micrograph (background texture)"


def describe_rules(cfg: Any, *, with_micrographs: bool = True, classifier_ran: bool = False) -> list[dict[str, Any]]:
    """The keep/discard rules that ``cfg`` applies, for ``summary.json`` and the report.

    Parameters
    ----------
    cfg : ClassifyConfig
    with_micrographs : bool
        Whether the micrographs were available (the automatic intensity rule needs them).
    classifier_ran : bool
        Whether classifier scores entered the decisions (adds ``score_below_threshold``).

    Returns
    -------
    list of dict
        ``name`` (the reason recorded for a discarded particle), ``threshold`` (None when the
        rule has none) and ``discards`` (a phrase: which particles it discards); empty for
        ``method='none'``.
    """
    if cfg.method == "none":
        return []
    columns = {"image": [], "area_px": [], "solidity": [], "touches_border": [], "mean_intensity": []}
    if with_micrographs:
        columns["image_threshold"] = []
    checks = [(name, threshold) for name, threshold, _ in rule_checks(pd.DataFrame(columns), cfg)]
    if classifier_ran:
        checks.append(("score_below_threshold", _numeric_threshold(cfg)))
    return [{"name": name, "threshold": threshold, "discards": _rule_phrase(name, threshold)}
            for name, threshold in checks]


def counting_rule(
    cfg: Any,
    *,
    classifier_model: str | Path | None = None,
    with_micrographs: bool = True,
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Which particles were counted: the rules and the classifier that decided, as data.

    Parameters
    ----------
    cfg : ClassifyConfig
        The configuration the decisions were made with, its ``method`` being what actually ran
        (``'network'`` only when classifier scores entered the decisions).
    classifier_model : path, optional
        The classifier's model file (stated in the report).
    with_micrographs : bool
        Whether the micrographs were available to the rules.
    calibration : dict, optional
        How the classifier's score threshold was calibrated (:func:`fit_classifier`'s meta),
        when it was.

    Returns
    -------
    dict
        ``method``, ``rules`` (see :func:`describe_rules`), ``classifier`` (``ran``, ``model``,
        ``score_threshold``, ``threshold_source``), ``edge_particles_excluded``, ``partly_covered_excluded`` and
        ``partly_covered_excluded_by`` (what detects them, or None).
    """
    classifier_ran = cfg.method == "network"
    rules = describe_rules(cfg, with_micrographs=with_micrographs, classifier_ran=classifier_ran)
    names = {rule["name"] for rule in rules}
    return {
        "method": cfg.method,
        "rules": rules,
        "classifier": {"ran": classifier_ran, "model": str(classifier_model) if classifier_model else None,
                       "score_threshold": _numeric_threshold(cfg) if classifier_ran else None,
                       "threshold_source": _threshold_source(calibration) if classifier_ran else None},
        "edge_particles_excluded": "touches_border" in names,
        # no rule sees occlusion; only the classifier was trained to recognise partly covered particles
        "partly_covered_excluded": classifier_ran,
        "partly_covered_excluded_by": "classifier" if classifier_ran else None,
    }


def _threshold_source(calibration: dict[str, Any] | None) -> str:
    if not calibration:
        return "set in the configuration"
    if calibration.get("youden_j") is None:
        return "0.5: the calibration particles were all of one kind"
    where = "held-out fake pairs" if calibration.get("held_out") else "its training images"
    return (f"calibrated on {calibration['n_particles']} particles of {calibration['n_images']} {where}, "
            f"Youden's J {calibration['youden_j']:.3f}")


def apply_rules(particles: pd.DataFrame, cfg: Any, scores: np.ndarray | None = None) -> pd.DataFrame:
    """Keep/discard decisions from the rules and, when given, the network scores.

    Parameters
    ----------
    particles : pandas.DataFrame
        Measured particles with ``image`` and ``label`` (see :func:`rule_reasons`).
    cfg : ClassifyConfig
        ``method='none'`` keeps everything; otherwise rules are applied and scores at or
        below ``score_threshold`` add the reason ``score_below_threshold``.
    scores : array, optional
        Network keep score per particle (same order as ``particles``).

    Returns
    -------
    pandas.DataFrame
        Columns ``image``, ``label``, ``score``, ``kept``, ``reason``.
    """
    n = len(particles)
    score = np.full(n, np.nan) if scores is None else np.asarray(scores, dtype=float)
    if cfg.method == "none":
        reasons = pd.Series([""] * n, index=particles.index, dtype=object)
    else:
        reasons = rule_reasons(particles, cfg)
        if scores is not None:
            low = ~(score > _numeric_threshold(cfg))
            reasons = pd.Series([";".join(filter(None, (r, "score_below_threshold" if lo else "")))
                                 for r, lo in zip(reasons, low)], index=particles.index, dtype=object)
    image = particles["image"].astype(str).to_numpy() if "image" in particles else np.full(n, "")
    return pd.DataFrame({"image": image, "label": particles["label"].to_numpy(dtype=np.int64), "score": score,
                         "kept": (reasons == "").to_numpy(), "reason": reasons.to_numpy()})


# --------------------------------------------------------------------------------------------
# Training data
# --------------------------------------------------------------------------------------------


def load_pair_samples(pairs_dir: str | Path) -> list[Sample]:
    """Training samples from the fake pairs (``pair_*.npz`` with ``image``, ``binary``, ``whole``).

    Raises
    ------
    NanosegError
        If the folder holds no pair or a pair lacks a key.
    """
    pairs_dir = Path(pairs_dir)
    files = sorted(pairs_dir.glob("pair_*.npz"))
    if not files:
        raise NanosegError(f"{pairs_dir}: no pair_*.npz training pairs (run the pairs stage: `nanoseg run ... --to pairs`)")
    samples = []
    for path in files:
        with np.load(path) as data:
            missing = [k for k in ("image", "binary", "whole") if k not in data]
            if missing:
                raise NanosegError(f"{path}: missing key(s) {', '.join(missing)} (regenerate with `nanoseg run ... --from pairs`)")
            binary = (data["binary"] > 0).astype(np.uint8)
            samples.append((data["image"].astype(np.float32), binary, ((data["whole"] > 0) & (binary > 0)).astype(np.uint8)))
    return samples


def load_manual_samples(
    images_dir: str | Path, masks_dir: str | Path, classes_dir: str | Path, *, dark_particles: bool = False,
) -> list[Sample]:
    """Training samples from manual masks and keep/discard class masks.

    Files are matched by id: ``<images_dir>/<id>.tif``, ``<masks_dir>/<id>_m.tif`` (binary,
    touching particles separated) and ``<classes_dir>/<id>_cm.tif`` (white = kept particles).
    The class masks may be cropped at the bottom (the TiO2 set's are 704 rows of 768): every
    sample is cropped to the rows all three images have.

    Returns
    -------
    list of (image, binary, keep)
    """
    from nanoseg.io import list_images, read_mask, read_micrograph

    images_dir, masks_dir, classes_dir = Path(images_dir), Path(masks_dir), Path(classes_dir)
    samples = []
    for img_path in list_images(images_dir):
        stem = img_path.stem
        mask_path = _find(masks_dir, f"{stem}_m")
        class_path = _find(classes_dir, f"{stem}_cm")
        if mask_path is None or class_path is None:
            continue
        mg = read_micrograph(img_path, info_bar_rows=0)
        mask = read_mask(mask_path)
        keep = read_mask(class_path)
        if mask.shape[1] != mg.image.shape[1] or keep.shape[1] != mg.image.shape[1]:
            raise NanosegError(f"{class_path}: width differs from {img_path}; manual masks must match their micrograph")
        rows = min(mg.image.shape[0], mask.shape[0], keep.shape[0])
        image = mg.image[:rows]
        if dark_particles:
            image = 1.0 - image
        binary = mask[:rows]
        samples.append((image.astype(np.float32), binary.astype(np.uint8), (keep[:rows] & binary).astype(np.uint8)))
    if not samples:
        raise NanosegError(f"{classes_dir}: no <id>_cm class mask matches an image in {images_dir} and a mask "
                           f"<id>_m in {masks_dir}")
    return samples


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".tif", ".tiff", ".png"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def balanced_weights(samples: Sequence[Sample], n_bins: int = 8, *, by_contact: bool = False,
                     max_weight: float = 10.0) -> list[np.ndarray]:
    """Per-pixel loss weights under which a particle's size (and contact) says nothing about keep.

    In fake pairs, occlusion makes most small visible pieces fragments of covered particles, so
    a classifier learns "small means discard" and then drops real small particles that are
    whole (measured: keep recall 0.25 for the smallest fifth of the expert's particles against
    0.88 for the largest, workflow benchmark, quick, seed 0). Likewise most particles that touch
    another one are covered in the fakes, and the classifier learns "in contact means discard"
    (keep recall 0.80 for isolated particles against 0.60-0.64 for particles in contact, same
    run). Here the particles (4-connected components of the mask channel) are put into
    ``n_bins`` equal-count bins of area, each split in two by contact when ``by_contact``
    (another particle within 2 px), and within each cell the kept and the discarded pixels get
    equal total weight (each factor clipped to [1/max_weight, max_weight]); every cell keeps
    its total weight.

    Returns
    -------
    list of (H, W) float32 arrays
        Weight per pixel of each sample, 0 off the particles.
    """
    from scipy import ndimage as ndi

    components = []
    for _, binary, keep in samples:
        labels, n = ndi.label(binary > 0)
        index = np.arange(1, n + 1)
        area = ndi.sum_labels(np.ones_like(labels), labels, index) if n else np.zeros(0)
        kept = ndi.mean(keep > 0, labels, index) > 0.5 if n else np.zeros(0, bool)
        touching = _touching(labels, n) if by_contact else np.zeros(n, bool)
        components.append((labels, np.asarray(area, float), np.asarray(kept, bool), touching))
    areas = np.concatenate([c[1] for c in components]) if components else np.zeros(0)
    edges = np.unique(np.quantile(areas, np.linspace(0, 1, n_bins + 1)[1:-1])) if areas.size else np.zeros(0)

    def cells(area: np.ndarray, touching: np.ndarray) -> np.ndarray:
        return 2 * np.searchsorted(edges, area, side="right") + touching

    kept_px = np.zeros(2 * (edges.size + 1))
    discarded_px = np.zeros_like(kept_px)
    for _, area, kept, touching in components:
        cell = cells(area, touching)
        np.add.at(kept_px, cell[kept], area[kept])
        np.add.at(discarded_px, cell[~kept], area[~kept])
    total = kept_px + discarded_px
    with np.errstate(divide="ignore", invalid="ignore"):
        factor_kept = np.where(kept_px > 0, 0.5 * total / kept_px, 1.0)
        factor_discarded = np.where(discarded_px > 0, 0.5 * total / discarded_px, 1.0)
    one_class = (kept_px == 0) | (discarded_px == 0)
    factor_kept[one_class] = factor_discarded[one_class] = 1.0
    factor_kept = np.clip(factor_kept, 1 / max_weight, max_weight)
    factor_discarded = np.clip(factor_discarded, 1 / max_weight, max_weight)
    weights = []
    for labels, area, kept, touching in components:
        cell = cells(area, touching)
        per_label = np.concatenate([[0.0], np.where(kept, factor_kept[cell], factor_discarded[cell])])
        weights.append(per_label[labels].astype(np.float32))
    return weights


def _touching(labels: np.ndarray, n: int, gap_px: int = 2) -> np.ndarray:
    """Per label 1..n: whether another label lies within ``gap_px`` (separation lines are 1 px)."""
    from scipy import ndimage as ndi

    if n == 0:
        return np.zeros(0, bool)
    size = 2 * gap_px + 1
    # A pixel sees two labels within the window when the window's max and min label differ.
    upper = ndi.maximum_filter(labels, size=size)
    lower = ndi.minimum_filter(np.where(labels > 0, labels, n + 1), size=size)
    meets = (labels > 0) & ((upper != labels) | (lower != labels))
    hit = np.zeros(n + 1, bool)
    hit[labels[meets]] = True
    return hit[1:]


def _zoomed(stack: np.ndarray, tile: int) -> np.ndarray:
    """``stack`` (image, binary, keep, weight) resized to ``tile`` x ``tile``.

    The mask is relabelled and its separation lines redrawn after resizing, since resampling
    a 1-px line between touching particles would merge them.
    """
    from scipy import ndimage as ndi
    from skimage.transform import resize

    from nanoseg.labels import separated_binary

    shape = (tile, tile)
    shrink = stack.shape[1] > tile
    image = resize(stack[0], shape, order=1, anti_aliasing=shrink, preserve_range=True)
    labels = resize(ndi.label(stack[1] > 0)[0], shape, order=0, anti_aliasing=False, preserve_range=True)
    binary = separated_binary(labels.astype(np.int32)) > 0
    rest = [resize(a, shape, order=0, anti_aliasing=False, preserve_range=True) for a in stack[2:]]
    return np.stack([image, binary, *(r * binary for r in rest)]).astype(np.float32)


def sample_batch(
    samples: Sequence[Sample],
    tile_px: int,
    batch_size: int,
    rng: np.random.Generator,
    *,
    weights: Sequence[np.ndarray] | None = None,
    zoom_range: tuple[float, float] = (1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random tiles with flips, 90-degree rotations and (optionally) a random zoom.

    Parameters
    ----------
    samples : sequence of (image, binary, keep)
    tile_px, batch_size : int
    rng : numpy Generator
    weights : sequence of (H, W) float arrays, optional
        Loss weight per pixel of each sample (:func:`balanced_weights`); default 1 on
        particle pixels.
    zoom_range : (float, float)
        Each tile is magnified by a factor drawn log-uniformly from this range (below 1: the
        particles shrink), so that particle size in pixels stops being a cue.

    Returns
    -------
    x : (B, 2, T, T) float32
        Micrograph and binary mask channels.
    y : (B, 1, T, T) float32
        Keep target.
    weight : (B, 1, T, T) float32
        Loss weight: 0 off the particles, so only particle pixels enter the instance score.
    """
    tile = min(tile_px, *(min(s[0].shape) for s in samples))
    lo, hi = zoom_range
    xs, ys, ws = [], [], []
    for _ in range(batch_size):
        k = rng.integers(len(samples))
        image, binary, keep = samples[k]
        weight = weights[k] if weights is not None else binary
        side = tile
        if hi > lo or lo != 1.0:
            zoom = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else lo
            side = int(min(round(tile / zoom), *image.shape))
        r = rng.integers(image.shape[0] - side + 1)
        c = rng.integers(image.shape[1] - side + 1)
        window = (slice(r, r + side), slice(c, c + side))
        stack = np.stack([image[window], binary[window], keep[window], weight[window]]).astype(np.float32)
        if side != tile:
            stack = _zoomed(stack, tile)
        stack = np.rot90(stack, k=int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            stack = stack[:, :, ::-1]
        xs.append(stack[:2])
        ys.append(stack[2:3])
        ws.append(stack[3:4] * (stack[1:2] > 0))
    x = np.ascontiguousarray(np.stack(xs))
    y = np.ascontiguousarray(np.stack(ys))
    return x, y, np.ascontiguousarray(np.stack(ws))


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


def make_classifier(cfg: Any) -> Any:
    """A fresh MultiResUNet with inputs (micrograph, binary mask) and one keep-logit output."""
    from nanoseg import nets

    return nets.create("multiresunet", in_channels=2, out_channels=1, base_width=cfg.base_width, depth=cfg.depth)


def masked_bce(logits: Any, target: Any, weight: Any, balance: bool = False) -> Any:
    """Binary cross-entropy averaged over the weighted (particle) pixels.

    With ``balance`` the kept and the discarded pixels of the batch get equal total weight, so
    that the large share of kept pixels does not push every score above the threshold.
    """
    import torch.nn.functional as F

    if balance:
        pos = (target * weight).sum()
        neg = ((1 - target) * weight).sum()
        if pos > 0 and neg > 0:
            total = pos + neg
            weight = weight * (target * (0.5 * total / pos) + (1 - target) * (0.5 * total / neg))
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, weight=weight, reduction="sum")
    return loss / weight.sum().clamp(min=1.0)


def train_classifier(
    samples: Sequence[Sample],
    cfg: Any,
    *,
    device: Any = "cpu",
    checkpoint: str | Path | None = None,
    seed: int = 0,
    steps: int | None = None,
    net: Any = None,
) -> tuple[Any, list[float]]:
    """Train the keep/discard network on samples; resumes from ``checkpoint`` when it exists.

    Parameters
    ----------
    samples : sequence of (image, binary, keep)
        From :func:`load_pair_samples` or :func:`load_manual_samples`.
    cfg : ClassifyConfig
        Uses ``base_width``, ``depth``, ``tile_size_px``, ``batch_size``, ``steps``,
        ``learning_rate``, ``size_balance``, ``contact_balance``, ``zoom_range``, ``balance_classes``,
        ``ema_decay``, ``checkpoint_every``, ``bf16``.
    device : torch.device or str
    checkpoint : path, optional
        Checkpoint file written every ``cfg.checkpoint_every`` steps (atomically) and read on
        start to resume an interrupted training.
    seed : int
        Seed of the tile sampling.
    steps : int, optional
        Override of ``cfg.steps``.
    net : nn.Module, optional
        Start from this network instead of a fresh one.

    Returns
    -------
    net : nn.Module
        The trained network, in eval mode: with ``cfg.ema_decay`` > 0 the exponential moving
        average of its weights (and batch-norm statistics) over the training steps.
    losses : list of float
        Training loss per step (including the steps before a resume).
    """
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from nanoseg.atomic import atomic_path
    from nanoseg.runtime import autocast, progress

    if not samples:
        raise NanosegError("classify: no training samples")
    steps = cfg.steps if steps is None else steps
    net = (net if net is not None else make_classifier(cfg)).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    # The average of the last ~1/(1 - decay) steps' weights: one training run's final weights
    # depend on its last few batches, and so does which particles it keeps.
    average = (AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
               if cfg.ema_decay > 0 else None)
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    start = 0
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        losses = list(state["losses"])
        start = int(state["step"])
        if average is not None and state.get("average") is not None:
            average.load_state_dict(state["average"])
        elif average is not None and start:
            logger.warning("classify: %s holds no weight average; averaging from step %d on", checkpoint, start)
        logger.info("classify: resuming training from step %d (%s)", start, checkpoint)
    weights = (balanced_weights(samples, n_bins=8 if cfg.size_balance else 1, by_contact=cfg.contact_balance)
               if cfg.size_balance or cfg.contact_balance else None)
    use_bf16 = bool(cfg.bf16)
    net.train()
    for step in progress(range(start, steps), total=steps - start, desc="classify train"):
        batch = sample_batch(samples, cfg.tile_size_px, cfg.batch_size, rng, weights=weights,
                             zoom_range=tuple(cfg.zoom_range))
        x, y, w = (torch.from_numpy(a).to(device) for a in batch)
        with autocast(device, use_bf16):
            logits = net(x)
        loss = masked_bce(logits, y, w, balance=cfg.balance_classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update_parameters(net)
        losses.append(float(loss.detach()))
        done = step + 1
        if checkpoint is not None and (done % cfg.checkpoint_every == 0) and done < steps:
            with atomic_path(checkpoint) as tmp:
                torch.save({"net": net.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng.bit_generator.state,
                            "losses": losses, "step": done,
                            "average": average.state_dict() if average is not None else None}, tmp)
    if average is not None and int(average.n_averaged) > 0:
        net = average.module
    net.eval()
    return net, losses


def predict_keep_probability(net: Any, image: np.ndarray, binary: np.ndarray, *, device: Any = "cpu", bf16: bool = False) -> np.ndarray:
    """Per-pixel keep probability of a whole micrograph (float32, same shape)."""
    import torch

    from nanoseg.runtime import autocast

    x = torch.from_numpy(np.stack([image, binary]).astype(np.float32)[None]).to(device)
    net.eval()
    with torch.inference_mode(), autocast(device, bf16):
        logits = net(x)
    return torch.sigmoid(logits.float())[0, 0].cpu().numpy()


def _numeric_threshold(cfg: Any) -> float:
    if cfg.score_threshold == "auto":
        raise NanosegError("classify.score_threshold is 'auto' but no calibrated threshold was given: load the "
                           "classifier with resolve_threshold() first")
    return float(cfg.score_threshold)


def sample_particles(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels of a sample's particles and whether each is to be kept.

    The binary mask separates touching particles by 1-px lines (as the pairs and the manual
    masks do), so its 4-connected components are the particles; a particle is to be kept when
    most of its pixels are in the keep mask.

    Returns
    -------
    labels : (H, W) int32 array
    keep : (n,) bool array, in label order 1..n
    """
    from scipy import ndimage as ndi

    from nanoseg.labels import label_binary

    _, binary, keep = sample
    labels = label_binary(binary > 0, 1)
    n = int(labels.max())
    if n == 0:
        return labels, np.zeros(0, bool)
    return labels, np.asarray(ndi.mean(keep > 0, labels=labels, index=np.arange(1, n + 1))) > 0.5


def calibrate_threshold(net: Any, samples: Sequence[Sample], *, device: Any = "cpu", bf16: bool = False) -> dict[str, Any]:
    """The keep-score threshold that best separates whole from partial particles of ``samples``.

    Every particle of every sample is scored like a segmented particle (mean keep probability
    over its pixels); the threshold maximises Youden's J = sensitivity + specificity - 1 of
    "keep" over those particles. It lies halfway between the lowest score still kept and the
    next lower one, so ``score > threshold`` reproduces the optimum.

    Parameters
    ----------
    net : nn.Module
        Trained keep/discard network.
    samples : sequence of (image, binary, keep)
        Samples the network was not trained on.

    Returns
    -------
    dict
        ``threshold``, ``youden_j``, ``sensitivity``, ``specificity``, ``n_particles``,
        ``n_images``. When the samples hold only one class of particle, J is undefined: the
        threshold is 0.5 and ``youden_j`` is None.
    """
    from nanoseg.metrics import youden_index

    scores, targets = [], []
    for sample in samples:
        labels, keep = sample_particles(sample)
        if keep.size == 0:
            continue
        prob = predict_keep_probability(net, sample[0], (sample[1] > 0).astype(np.float32), device=device, bf16=bf16)
        scores.append(instance_scores(prob, labels, np.arange(1, keep.size + 1)))
        targets.append(keep)
    score = np.concatenate(scores) if scores else np.zeros(0)
    target = np.concatenate(targets) if targets else np.zeros(0, bool)
    out: dict[str, Any] = {"n_particles": int(score.size), "n_images": len(samples)}
    if target.all() or not target.any():
        return {**out, "threshold": 0.5, "youden_j": None, "sensitivity": None, "specificity": None}
    j, best = youden_index(score, target)
    below = score[score < best]
    threshold = float((best + below.max()) / 2) if below.size else float(best) / 2
    kept = score > threshold
    return {**out, "threshold": threshold, "youden_j": float(j), "sensitivity": float(kept[target].mean()),
            "specificity": float((~kept[~target]).mean())}


def fit_classifier(
    samples: Sequence[Sample],
    cfg: Any,
    *,
    device: Any = "cpu",
    checkpoint: str | Path | None = None,
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Train the keep/discard network and settle its score threshold; what the model file keeps.

    With ``cfg.score_threshold='auto'`` the last ``calibration_fraction`` of the samples (at
    least one) are held out of training and the threshold is calibrated on them
    (:func:`calibrate_threshold`); with fewer than two samples, or a fraction of 0, on the
    training samples. A number in ``cfg.score_threshold`` is used as it is.

    Returns
    -------
    net : nn.Module
    meta : dict
        ``steps``, ``final_loss``, ``score_threshold`` (a number) and, when calibrated,
        ``calibration`` (see :func:`calibrate_threshold`, plus ``held_out``).
    """
    auto = cfg.score_threshold == "auto"
    n_held = max(1, round(cfg.calibration_fraction * len(samples))) if auto and cfg.calibration_fraction > 0 else 0
    if len(samples) - n_held < 1:
        n_held = 0
    train_samples = list(samples[:len(samples) - n_held])
    net, losses = train_classifier(train_samples, cfg, device=device, checkpoint=checkpoint, seed=seed)
    tail = losses[-max(1, len(losses) // 10):]
    meta: dict[str, Any] = {"steps": len(losses), "final_loss": float(np.mean(tail)), "trained_images": len(train_samples)}
    if not auto:
        return net, {**meta, "score_threshold": float(cfg.score_threshold)}
    held = list(samples[len(samples) - n_held:]) if n_held else train_samples
    calibration = calibrate_threshold(net, held, device=device, bf16=cfg.bf16)
    calibration["held_out"] = bool(n_held)
    if calibration["youden_j"] is None:
        logger.warning("classify: the calibration pairs hold particles of one kind only (all whole or all "
                       "partial); score threshold 0.5")
    else:
        logger.info("classify: score threshold %.3f from %d %s particles (Youden's J %.3f, sensitivity %.3f, "
                    "specificity %.3f)", calibration["threshold"], calibration["n_particles"],
                    "held-out" if n_held else "training", calibration["youden_j"], calibration["sensitivity"],
                    calibration["specificity"])
    return net, {**meta, "score_threshold": calibration["threshold"], "calibration": calibration}


def resolve_threshold(cfg: Any, meta: dict[str, Any] | None) -> Any:
    """``cfg`` with a numeric ``score_threshold``: 'auto' becomes the threshold saved with the model.

    A number in the configuration wins over the model's; a model saved without a threshold
    (trained before calibration existed) gets 0.5.
    """
    if cfg.score_threshold != "auto":
        return cfg
    saved = (meta or {}).get("score_threshold")
    if not isinstance(saved, (int, float)):
        logger.warning("classify: the classifier model records no calibrated score threshold (an older nanoseg "
                       "trained it, or the model file is missing); using 0.5")
        saved = 0.5
    return cfg.model_copy(update={"score_threshold": float(saved)})


def network_binary(labels: np.ndarray) -> np.ndarray:
    """The network's mask channel for a label image: foreground with 1-px lines between touching
    particles, as in the training pairs and the manual masks (float32 0/1)."""
    from nanoseg.labels import separated_binary

    return (separated_binary(labels) > 0).astype(np.float32)


def instance_scores(probability: np.ndarray, labels: np.ndarray, label_ids: Sequence[int] | None = None) -> np.ndarray:
    """Mean probability over each instance's pixels (in the order of ``label_ids``)."""
    from scipy import ndimage as ndi

    if label_ids is None:
        label_ids = np.unique(labels[labels > 0])
    if len(label_ids) == 0:
        return np.zeros(0)
    return np.asarray(ndi.mean(probability, labels=labels, index=np.asarray(label_ids)), dtype=float)


def classify_images(
    items: Sequence[tuple[str, np.ndarray, np.ndarray | None, float | None]],
    cfg: Any,
    *,
    net: Any = None,
    device: Any = "cpu",
    particles: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Keep/discard decisions for every particle of several label images.

    Every decision depends on its own image only, never on the other items.

    Parameters
    ----------
    items : sequence of (image name, labels, micrograph, pixel size in nm or None)
    cfg : ClassifyConfig
    net : nn.Module, optional
        Keep/discard network; required for ``method='network'``.
    device : torch.device or str
    particles : pandas.DataFrame, optional
        :func:`nanoseg.particles.measure_images` of ``items``, when the caller has it already.

    Returns
    -------
    pandas.DataFrame
        ``image``, ``label``, ``score``, ``kept``, ``reason`` for every particle.
    """
    from nanoseg.particles import measure_images
    from nanoseg.runtime import progress

    particles = measure_images(items) if particles is None else particles.copy()
    if cfg.intensity_threshold != "none":
        from nanoseg.translate import artifact_threshold

        thresholds = {name: artifact_threshold(image, cfg.intensity_threshold)
                      for name, _, image, _ in items if image is not None}
        particles["image_threshold"] = particles["image"].map(thresholds).astype(float)
    scores = None
    if cfg.method == "network":
        if net is None:
            raise NanosegError("classify.method is 'network' but no classifier model was given (train one or use 'rules')")
        scores = np.full(len(particles), np.nan)
        for name, labels, image, _ in progress(items, total=len(items), desc="classify score"):
            if image is None:
                raise NanosegError(f"classify: the network needs the micrograph of {name}")
            rows = np.flatnonzero(particles["image"].to_numpy() == name)
            prob = predict_keep_probability(net, image, network_binary(labels), device=device, bf16=cfg.bf16)
            scores[rows] = instance_scores(prob, labels, particles["label"].to_numpy()[rows])
    return apply_rules(particles, cfg, scores)


def write_decisions(decisions: pd.DataFrame, path: str | Path) -> Path:
    """Write ``decisions.csv`` (image, label, score, kept, reason) atomically."""
    from nanoseg.atomic import atomic_path

    with atomic_path(path) as tmp:
        decisions[DECISION_COLUMNS].to_csv(tmp, index=False, float_format="%.5g")
    return Path(path)


def read_decisions(path: str | Path) -> pd.DataFrame | None:
    """Read a ``decisions.csv`` written by :func:`write_decisions`; None when there is no such file.

    Image names stay strings (``'001'`` is not 1), ``kept`` becomes bool and an empty ``score``
    NaN.
    """
    path = Path(path)
    if not path.is_file():
        return None
    dec = pd.read_csv(path, dtype={"image": str}, keep_default_na=False, na_values={"score": ["", "nan", "NaN"]})
    dec["kept"] = dec["kept"].astype(str).str.lower().isin(["true", "1"])
    return dec


def run_stage(ctx: Any) -> None:
    """Pipeline stage 6: train on the pairs (network), score the segmented particles, apply rules."""
    from nanoseg import nets
    from nanoseg.io import load_micrographs
    from nanoseg.particles import label_items

    cfg = ctx.config.classify
    net = None
    model_path = ctx.out_dir / "model.pt"
    if cfg.method == "network" and model_path.is_file():  # an interrupted attempt finished training
        net, meta = nets.load(model_path, ctx.device)
        cfg = resolve_threshold(cfg, meta)
    elif cfg.method == "network":
        samples = load_pair_samples(ctx.stage_dir("pairs"))
        ckpt = ctx.out_dir / CHECKPOINT_NAME
        net, meta = fit_classifier(samples, cfg, device=ctx.device, checkpoint=ckpt, seed=ctx.config.seed)
        nets.save(net, model_path, meta={"task": "classify", "trained_on": "pairs", **meta})
        ckpt.unlink(missing_ok=True)
        cfg = resolve_threshold(cfg, meta)
        ctx.log.info("classify: trained %d steps on %d pairs, final loss %.4f, score threshold %.3f", meta["steps"],
                     meta["trained_images"], meta["final_loss"], cfg.score_threshold)
    items = label_items(load_micrographs(ctx.config.data), ctx.stage_dir("adapt") / "labels",
                        fix="rerun with --from segment")
    decisions = classify_images(items, cfg, net=net, device=ctx.device)
    write_decisions(decisions, ctx.out_dir / "decisions.csv")
    ctx.log.info("classify: kept %d of %d particles", int(decisions["kept"].sum()), len(decisions))
