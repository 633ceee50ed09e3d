"""Figures the stages share: headless pyplot, atomic saving, training-loss curves, label overlays,
contact sheets.

matplotlib is imported only when a figure is drawn, so importing a stage stays cheap.
Stage-specific figures (size histograms, sample grids) stay in their stage's module and use
:func:`pyplot` and :func:`save_figure` from here; every training loop (shapes' WGAN-GP,
translate's CycleGAN, segment's network) draws its curves with :func:`plot_losses`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg.atomic import atomic_path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def contact_sheet(images: np.ndarray, n_cols: int | None = None, max_images: int = 100) -> np.ndarray:
    """Tile up to ``max_images`` masks/images into one uint8 picture with gray 1-px separators."""
    images = np.asarray(images)[:max_images].astype(np.float32)
    if images.size and images.max() > 1:
        images = images / 255.0
    n = len(images)
    n_cols = n_cols or int(np.ceil(np.sqrt(max(n, 1))))
    n_rows = int(np.ceil(max(n, 1) / n_cols))
    h, w = images.shape[1:3] if n else (8, 8)
    sheet = np.full((n_rows * (h + 1) + 1, n_cols * (w + 1) + 1), 0.5, np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, n_cols)
        sheet[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = image
    return (sheet * 255).round().astype(np.uint8)


def in_row_strips(draw: Any, image: np.ndarray, labels: np.ndarray, rows: int = 512) -> np.ndarray:
    """RGB uint8 overlay ``draw(image, labels)`` made strip by strip with a one-row halo.

    ``draw`` works on float copies and boundary maps several times the image's size; strips
    keep that bounded on large micrographs. Its result must depend on each pixel's direct
    neighbours at most (outlines do), so that the strips join without seams.
    """
    h, w = labels.shape
    out = np.empty((h, w, 3), np.uint8)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        a, b = max(0, r0 - 1), min(h, r1 + 1)
        out[r0:r1] = draw(image[a:b], labels[a:b])[r0 - a : r1 - a]
    return out


def save_figure(fig: Any, paths: Sequence[str | Path], **savefig_kwargs: Any) -> None:
    """Save ``fig`` to every path atomically, in the format its suffix names (``.png``, ``.svg``).

    ``savefig_kwargs`` go to :meth:`matplotlib.figure.Figure.savefig` (``dpi``, ``bbox_inches``).
    The figure stays open; close it with ``pyplot().close(fig)``.
    """
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip("."), **savefig_kwargs)


@dataclass(frozen=True)
class LossPanel:
    """One panel of :func:`plot_losses`.

    Attributes
    ----------
    series : mapping of str to str
        Row key -> legend label of the curves on the left axis.
    title, ylabel : str
        Panel title and left-axis label.
    right : mapping of str to str
        Curves on a second, right-hand axis (e.g. a validation score beside the losses).
    right_ylabel : str
    right_ylim : (float, float), optional
        Limits of the right axis (e.g. (0, 1) for an IoU).
    """

    series: Mapping[str, str]
    title: str = ""
    ylabel: str = ""
    right: Mapping[str, str] = field(default_factory=dict)
    right_ylabel: str = ""
    right_ylim: tuple[float, float] | None = None


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start), NaNs skipped."""
    values = np.asarray(values, dtype=float)
    if window <= 1:
        return values
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    end = np.arange(1, values.size + 1)
    start = np.maximum(end - window, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums[end] - sums[start]) / (counts[end] - counts[start])


def plot_losses(rows: Sequence[Mapping[str, Any]], path: str | Path, panels: Sequence[LossPanel], *,
                xlabel: str = "step", smooth: bool = False) -> None:
    """Training curves against ``row['step']``, one panel per :class:`LossPanel`, as one PNG.

    Parameters
    ----------
    rows : sequence of mapping
        One record per logged step: ``step`` and the values the panels name (None or missing
        = not logged then; a series never logged is left out).
    path : path-like
        The PNG, written atomically. Nothing is written when ``rows`` is empty.
    panels : sequence of LossPanel
    xlabel : str
    smooth : bool
        Plot the running mean over ~2 % of the rows (:func:`running_mean`), so the trend of a
        noisy adversarial loss is visible.
    """
    if not rows:
        return
    plt = pyplot()
    steps = np.array([row["step"] for row in rows], dtype=float)
    window = max(1, len(rows) // 50) if smooth else 1
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, 4.4 * len(panels)), 3.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        lines = []
        sides = [(ax, panel.series, panel.ylabel)]
        if panel.right:
            sides.append((ax.twinx(), panel.right, panel.right_ylabel))
        for side, series, ylabel in sides:
            for key, label in series.items():
                values = np.array([np.nan if row.get(key) is None else row[key] for row in rows], dtype=float)
                if np.isnan(values).all():
                    continue
                (line,) = side.plot(steps, running_mean(values, window), label=label, lw=1.2,
                                    color=colors[len(lines) % len(colors)])
                lines.append(line)
            side.set_ylabel(ylabel)
        if panel.right and panel.right_ylim is not None:
            sides[1][0].set_ylim(*panel.right_ylim)
        ax.set_title(panel.title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(lines, [line.get_label() for line in lines], fontsize=8)
    fig.tight_layout()
    save_figure(fig, [path], dpi=100)
    plt.close(fig)
