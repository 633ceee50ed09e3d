"""The rules of the keep/discard stage and the counting rule the report states."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nanoseg.errors import NanosegError

DECISION_COLUMNS = ["image", "label", "score", "kept", "reason"]


#: The classify settings the rules read (:func:`rule_checks`); the rest configure the network.
RULE_SETTINGS = ("exclude_border", "min_area_px", "max_area_px", "min_feret_px", "min_solidity",
                 "min_inscribed_fraction", "intensity_threshold", "min_mean_intensity")


def rule_checks(particles: pd.DataFrame, cfg: Any) -> list[tuple[str, float | None, np.ndarray]]:
    """The rule-based filters that ``cfg`` switches on, each with its threshold and failures.

    This is the one place that decides which rules run, so that the decisions
    (:func:`rule_reasons`) and the report's counting rule (:func:`describe_rules`) cannot
    disagree.

    Parameters
    ----------
    particles : pandas.DataFrame
        Columns ``area_px``, ``solidity``, ``min_feret_px``, ``inscribed_diameter_px``,
        ``touches_border``, ``mean_intensity``, optionally ``image`` and ``image_threshold`` (see
        :func:`rule_reasons`).
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
    if cfg.min_feret_px > 0:
        checks.append(("min_feret_below_min", float(cfg.min_feret_px),
                       particles["min_feret_px"].to_numpy(dtype=float) < cfg.min_feret_px))
    if cfg.min_solidity > 0:
        checks.append(("solidity_below_min", float(cfg.min_solidity),
                       particles["solidity"].to_numpy(dtype=float) < cfg.min_solidity))
    if cfg.min_inscribed_fraction > 0:
        # one pixel of slack: on the pixel grid a convex particle 3 px wide can measure 1 px inscribed
        inscribed = particles["inscribed_diameter_px"].to_numpy(dtype=float) + 1.0
        checks.append(("thin", float(cfg.min_inscribed_fraction),
                       inscribed < cfg.min_inscribed_fraction * particles["min_feret_px"].to_numpy(dtype=float)))
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
        Columns ``area_px``, ``solidity``, ``min_feret_px``, ``inscribed_diameter_px``,
        ``touches_border``, ``mean_intensity`` (as from
        :func:`nanoseg.particles.measure_particles` with ``exclude_border=False``), and
        ``image`` when the rows come from several micrographs.
    cfg : ClassifyConfig
        Uses ``min_area_px``, ``max_area_px``, ``min_feret_px``, ``min_solidity``, ``min_inscribed_fraction``, ``exclude_border``,
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
    "min_feret_below_min": "with a min Feret diameter below {t:g} px (too few pixels across to be sized: one pixel "
                           "is more than 1/{t:g} of it)",
    "solidity_below_min": "with a solidity (area / convex area) below {t:g}",
    "thin": "whose largest inscribed circle, plus one pixel, is narrower than {t:g} times their min Feret diameter "
            "(arcs and slivers: no convex particle is below 2/3)",
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
    columns = {"image": [], "area_px": [], "solidity": [], "min_feret_px": [], "inscribed_diameter_px": [],
               "touches_border": [], "mean_intensity": []}
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
                       "score_thresholds_by_area": ([list(p) for p in cfg.score_thresholds_by_area]
                                                    if classifier_ran and cfg.score_thresholds_by_area else None),
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
        below ``score_threshold`` (with ``score_thresholds_by_area``: the threshold of the
        particle's ``area_px``) add the reason ``score_below_threshold``.
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
            low = ~(score > particle_thresholds(particles, cfg))
            reasons = pd.Series([";".join(filter(None, (r, "score_below_threshold" if lo else "")))
                                 for r, lo in zip(reasons, low)], index=particles.index, dtype=object)
    image = particles["image"].astype(str).to_numpy() if "image" in particles else np.full(n, "")
    return pd.DataFrame({"image": image, "label": particles["label"].to_numpy(dtype=np.int64), "score": score,
                         "kept": (reasons == "").to_numpy(), "reason": reasons.to_numpy()})


def area_thresholds(area_px: np.ndarray, by_area: Sequence[tuple[float, float]]) -> np.ndarray:
    """Each particle's score threshold: that of the last pair (smallest area, threshold) its area reaches."""
    starts = np.array([a for a, _ in by_area], float)
    values = np.array([t for _, t in by_area], float)
    return values[np.maximum(np.searchsorted(starts, np.asarray(area_px, float), side="right") - 1, 0)]


def particle_thresholds(particles: pd.DataFrame, cfg: Any) -> np.ndarray:
    """The score threshold of each particle: by its ``area_px`` when ``cfg.score_thresholds_by_area`` is set."""
    if cfg.score_thresholds_by_area is None:
        return np.full(len(particles), _numeric_threshold(cfg))
    return area_thresholds(particles["area_px"].to_numpy(), cfg.score_thresholds_by_area)


def _numeric_threshold(cfg: Any) -> float:
    if cfg.score_threshold == "auto":
        raise NanosegError("classify.score_threshold is 'auto' but no calibrated threshold was given: load the "
                           "classifier with resolve_threshold() first")
    return float(cfg.score_threshold)
