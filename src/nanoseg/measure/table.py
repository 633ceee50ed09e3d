"""The particle table of a set of images: measured, classified and joined with the decisions.

What both the pipeline stage (:mod:`nanoseg.measure.stage`) and the per-image tasks of a batch
(:mod:`nanoseg.measure.batch`) build their results from: :func:`measure_and_decide` with the
keep/discard settings and network of :func:`load_classifier`, and :class:`ParticleTable`, what
the summary and the report need of a table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nanoseg import nets
from nanoseg.classify import classify_images, resolve_threshold
from nanoseg.measure.distributions import MAIN_DESCRIPTORS
from nanoseg.particles import measure_images, nm_column

logger = logging.getLogger("nanoseg.measure")


def join_decisions(particles: pd.DataFrame, decisions: pd.DataFrame | None) -> pd.DataFrame:
    """Add ``score``, ``kept`` and ``reason`` from classify decisions (image, label, ...).

    Particles without a decision are kept with reason ``''``; without any decisions every
    particle is kept.
    """
    df = particles.copy()
    if decisions is None or decisions.empty:
        df["score"] = np.nan
        df["kept"] = True
        df["reason"] = ""
        return df
    dec = decisions[["image", "label", "score", "kept", "reason"]].copy()
    dec["image"] = dec["image"].astype(str)
    dec["label"] = dec["label"].astype(np.int64)
    df["image"] = df["image"].astype(str)
    df = df.merge(dec, on=["image", "label"], how="left")
    missing = df["kept"].isna()
    if missing.any():
        logger.warning("%d particles have no classify decision; keeping them", int(missing.sum()))
    df["kept"] = df["kept"].where(~missing, True).astype(bool)
    df["reason"] = df["reason"].fillna("").astype(str)
    return df


#: Columns of the kept particles that the summary, histograms and comparison use.
KEPT_COLUMNS: tuple[str, ...] = ("image", "label", *(c for stem in MAIN_DESCRIPTORS
                                                     for c in (f"{stem}_px", nm_column(stem))))


@dataclass(frozen=True)
class ParticleTable:
    """What the summary and the report need of a particle table, without every row of it.

    A batch of thousands of micrographs builds it image by image
    (:func:`nanoseg.measure.batch.pooled_table`), so that memory grows with the kept particles'
    few size columns only; :meth:`of` makes it from a whole table.
    """

    kept: pd.DataFrame  # the kept particles, KEPT_COLUMNS
    head: pd.DataFrame  # the first rows of the table, every column (the report lists them)
    n_particles: int
    n_images: int
    reasons: dict[str, int]  # discard reason -> particles
    pixel_sizes: list[float]  # the distinct pixel sizes, nm

    @classmethod
    def of(cls, particles: pd.DataFrame, head_rows: int) -> ParticleTable:
        kept = particles[particles["kept"]]
        sizes = particles["pixel_size_nm"].dropna() if "pixel_size_nm" in particles else []
        return cls(kept=kept[[c for c in KEPT_COLUMNS if c in kept.columns]], head=particles.head(head_rows),
                   n_particles=len(particles), n_images=int(particles["image"].nunique()),
                   reasons={str(k): int(v) for k, v in particles.loc[~particles["kept"], "reason"].value_counts().items()},
                   pixel_sizes=sorted({float(v) for v in sizes}))

    @classmethod
    def combine(cls, tables: Sequence[ParticleTable], head_rows: int) -> ParticleTable:
        """The table of several tables' rows, in their order (e.g. one per image of a batch)."""
        reasons: dict[str, int] = {}
        for t in tables:
            for reason, count in t.reasons.items():
                reasons[reason] = reasons.get(reason, 0) + count
        return cls(kept=pd.concat([t.kept for t in tables], ignore_index=True),
                   head=pd.concat([t.head for t in tables], ignore_index=True).head(head_rows),
                   n_particles=sum(t.n_particles for t in tables), n_images=sum(t.n_images for t in tables),
                   reasons=dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
                   pixel_sizes=sorted({v for t in tables for v in t.pixel_sizes}))


def classifier_settings(classifier: str | Path | None, cls_cfg: Any, *, option: str = "--classifier"
                        ) -> tuple[Any, dict[str, Any] | None, list[str]]:
    """The classify settings to decide with, read from the keep/discard model's metadata only.

    ``option`` names, in the warning, what the user leaves out to get no classifier.

    Returns
    -------
    cls_cfg : ClassifyConfig
        ``method`` 'network' with the model's calibrated threshold when a classifier is given;
        'rules' (with a warning) when the settings ask for a network but none is given.
    calibration : dict or None
        How the threshold was calibrated, for :func:`nanoseg.classify.counting_rule`.
    warnings : list of str
    """
    return _settings(nets.load_meta(classifier, kind="classifier") if classifier is not None else None, cls_cfg, option)


def _settings(meta: dict[str, Any] | None, cls_cfg: Any, option: str) -> tuple[Any, dict[str, Any] | None, list[str]]:
    if meta is not None:
        calibration = meta.get("calibration") if cls_cfg.score_threshold == "auto" else None
        return resolve_threshold(cls_cfg.model_copy(update={"method": "network"}), meta), calibration, []
    if cls_cfg.method == "network":
        text = (f"classify.method is 'network' but no {option} was given: particles were kept by the rules "
                "alone, so partly covered particles were not excluded")
        logger.warning(text)
        return cls_cfg.model_copy(update={"method": "rules"}), None, [text]
    return cls_cfg, None, []


def load_classifier(classifier: str | Path | None, cls_cfg: Any, device: Any = "cpu", *, option: str = "--classifier"
                    ) -> tuple[Any, Any, dict[str, Any] | None, list[str]]:
    """The keep/discard network (None without ``classifier``) and :func:`classifier_settings`."""
    net = meta = None
    if classifier is not None:
        net, meta = nets.load(classifier, device, kind="classifier")
    return (net, *_settings(meta, cls_cfg, option))


def measure_and_decide(items: Sequence[tuple[str, np.ndarray, np.ndarray | None, float | None]], cls_cfg: Any, *,
                       net: Any = None, device: Any = "cpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Measure label images and decide which particles count: the particle table and the decisions.

    Parameters
    ----------
    items : sequence of (image name, labels, micrograph or None, pixel size in nm or None)
    cls_cfg : ClassifyConfig
        With a numeric score threshold when ``net`` is given (:func:`load_classifier`).

    Returns
    -------
    particles : pandas.DataFrame
        :func:`nanoseg.particles.measure_images` joined with ``score``, ``kept`` and ``reason``.
    decisions : pandas.DataFrame
    """
    particles = measure_images(items)
    decisions = classify_images(items, cls_cfg, net=net, device=device, particles=particles)
    return join_decisions(particles, decisions), decisions
