"""Figures of the size distributions and overlays of the kept and discarded particles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nanoseg.plots import in_row_strips, pyplot, save_figure

# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

#: Names of the size descriptors, for figure titles and axes.
DESCRIPTOR_LABELS = {"ecd": "equivalent circular diameter", "min_feret": "minimum Feret diameter",
                     "max_feret": "maximum Feret diameter", "area": "area"}


def plot_histogram(values: np.ndarray, out_stem: Path, *, title: str, xlabel: str, bins: int = 30,
                   lognormal: Mapping[str, float] | None = None) -> list[Path]:
    """Histogram (counts) with an optional fitted log-normal; writes ``<out_stem>.png`` and ``.svg``."""
    from scipy import stats

    plt = pyplot()
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    fig, ax = plt.subplots(figsize=(6, 4))
    if values.size:
        counts, edges, _ = ax.hist(values, bins=bins, color="#4c72b0", alpha=0.75, edgecolor="white", label=f"n = {values.size}")
        if lognormal:
            x = np.linspace(max(edges[0], 1e-9), edges[-1], 300)
            pdf = stats.lognorm.pdf(x, lognormal["shape"], loc=0, scale=lognormal["scale"])
            ax.plot(x, pdf * values.size * (edges[1] - edges[0]), color="#dd5555", lw=2,
                    label=f"log-normal: median {lognormal['scale']:.3g}, GSD {lognormal['geometric_sd']:.3g}")
        ax.legend(frameon=False)
    else:
        ax.text(0.5, 0.5, "no particles", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("number of particles")
    ax.set_title(title)
    paths = [Path(f"{out_stem}.png"), Path(f"{out_stem}.svg")]
    save_figure(fig, paths, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths


def plot_comparison(a: np.ndarray, b: np.ndarray, out_stem: Path, *, names: tuple[str, str], xlabel: str,
                    bins: int = 30, ks: Mapping[str, float] | None = None) -> list[Path]:
    """Overlaid, normalised histograms of two size samples; writes ``<out_stem>.png`` and ``.svg``."""
    plt = pyplot()
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    both = np.concatenate([a, b])
    edges = np.histogram_bin_edges(both, bins=bins) if both.size else bins
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(a, bins=edges, density=True, alpha=0.55, color="#4c72b0", label=f"{names[0]} (n = {a.size})")
    ax.hist(b, bins=edges, density=True, alpha=0.55, color="#dd8452", label=f"{names[1]} (n = {b.size})")
    if ks:
        ax.set_title(f"KS D = {ks['ks_statistic']:.3f}, p = {ks['p_value']:.3g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("probability density")
    ax.legend(frameon=False)
    paths = [Path(f"{out_stem}.png"), Path(f"{out_stem}.svg")]
    save_figure(fig, paths, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths


KEPT_RGB = (40, 200, 80)
DISCARDED_RGB = (230, 60, 50)


def overlay_kept(image: np.ndarray, labels: np.ndarray, kept_labels: Sequence[int], alpha: float = 0.35) -> np.ndarray:
    """RGB uint8 overlay: kept particles tinted green, discarded ones red, outlines opaque.

    Parameters
    ----------
    image : (H, W) float array in [0, 1]
    labels : (H, W) int array
    kept_labels : sequence of int
        Labels of the kept particles; every other non-zero label counts as discarded.
    """
    kept_labels = np.asarray(list(kept_labels), dtype=labels.dtype)
    return in_row_strips(lambda im, lab: _draw_kept(im, lab, kept_labels, alpha), image, labels)


def _draw_kept(image: np.ndarray, labels: np.ndarray, kept_labels: np.ndarray, alpha: float) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    gray = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    kept = np.isin(labels, kept_labels) & (labels > 0)
    discarded = (labels > 0) & ~kept
    edges = find_boundaries(labels, mode="inner")
    for region, color in ((kept, KEPT_RGB), (discarded, DISCARDED_RGB)):
        c = np.asarray(color, dtype=np.float32) / 255
        rgb[region] = (1 - alpha) * rgb[region] + alpha * c
        rgb[region & edges] = c
    return (rgb * 255 + 0.5).astype(np.uint8)
