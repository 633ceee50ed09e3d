"""Stage 7: calibrated particle measurements, number-based size distributions and the report.

The particles of each label image are measured by :mod:`nanoseg.particles` (its docstring
states the geometry conventions: Feret diameters, perimeter, ECD); this module pools them
into size distributions with bootstrap confidence intervals, applies the classify
decisions, and writes the tables, figures, overlays and the HTML report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nanoseg.errors import NanosegError
from nanoseg.particles import label_items, measure_images, nm_column
from nanoseg.plots import pyplot, save_figure

logger = logging.getLogger("nanoseg.measure")

#: The size descriptors summarised, plotted and reported, in this order.
MAIN_DESCRIPTORS: tuple[str, ...] = ("ecd", "min_feret", "max_feret", "area")
#: EC recommendation 2022/C 229/01: external dimension limit in nm.
EC_LIMIT_NM = 100.0


# --------------------------------------------------------------------------------------------
# Size distributions
# --------------------------------------------------------------------------------------------


def descriptor_column(df: pd.DataFrame, stem: str) -> str:
    """The calibrated column of a descriptor when present (and complete), else the px one."""
    col = nm_column(stem)
    if col in df.columns and df[col].notna().all():
        return col
    return f"{stem}_px"


def fit_lognormal(values: np.ndarray) -> dict[str, float] | None:
    """Maximum-likelihood log-normal fit (``scipy.stats.lognorm``, location fixed at 0).

    Returns
    -------
    dict or None
        ``shape`` (sigma of ln x), ``scale`` (= the geometric mean / median of the fit),
        ``geometric_sd`` (exp(sigma)); None with fewer than 3 positive values.
    """
    from scipy import stats

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size < 3 or np.ptp(values) == 0:
        return None
    shape, _, scale = stats.lognorm.fit(values, floc=0)
    return {"shape": float(shape), "scale": float(scale), "geometric_sd": float(np.exp(shape))}


#: Resamples of the bootstrap confidence intervals.
BOOTSTRAP_RESAMPLES = 2000
#: Below this many particles the median (and its interval) is called unstable in the summary.
MIN_PARTICLES_STABLE_MEDIAN = 50
#: Below this many images the interval from resampling images is called coarse in the summary.
MIN_IMAGES_CLUSTER_BOOTSTRAP = 5
# Elements of one (resamples x particles) block: bounds the memory of the vectorised bootstrap.
_BOOTSTRAP_BLOCK = 4_000_000
_PILOT_RESAMPLES = 64


def resample_counts(rng: np.random.Generator, n_units: int, n_resamples: int) -> np.ndarray:
    """How often each of ``n_units`` units is drawn in each of ``n_resamples`` bootstrap resamples.

    Returns
    -------
    (n_resamples, n_units) int64 array
        Every row sums to ``n_units`` (units drawn with replacement).
    """
    # 32-bit indices where they fit: half the memory traffic of the largest arrays here
    dtype = np.int32 if n_resamples * n_units < 2**31 else np.int64
    draws = rng.integers(0, n_units, size=(n_resamples, n_units), dtype=dtype)
    # counted unit-major: the transposed view is what pooled_statistics scans
    flat = (draws * dtype(n_resamples) + np.arange(n_resamples, dtype=dtype)[:, None]).ravel()
    return np.bincount(flat, minlength=n_resamples * n_units).reshape(n_units, n_resamples).T


def pooled_statistics(
    values: np.ndarray, units: np.ndarray, counts: np.ndarray, window: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Median and mean of pooled resamples, without building them.

    Resample ``r`` is the multiset holding every value of unit ``u`` ``counts[r, u]`` times
    (a unit is an image, or one particle). Its median is found on the values sorted once:
    the cumulative count along the sorted values crosses the middle rank(s), as in
    :func:`numpy.median` (the two middle values averaged for an even total).

    Parameters
    ----------
    values : (N,) float array
    units : (N,) int array
        Unit index of each value, in ``[0, n_units)``.
    counts : (R, n_units) int array
        Draws of each unit per resample; every row must draw at least one value.
    window : (lo, hi), optional
        Sorted positions expected to hold every resample's middle values (see
        :func:`median_window`): only they are scanned, which makes a median cost the window's
        width instead of N. Rows whose middle values fall outside are redone over all values,
        so the window changes the speed, never the result. Default: all values.

    Returns
    -------
    medians, means : (R,) float arrays
    """
    values = np.asarray(values, dtype=float)
    units = np.asarray(units, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    n_units = counts.shape[1]
    order = np.argsort(values, kind="stable")
    sorted_values, sorted_units = values[order], units[order]
    lo, hi = (0, len(values)) if window is None else (max(0, window[0]), min(len(values), window[1]))
    # one float matrix product (BLAS) for every sum over units: the counts stay exact in float64
    per_unit = np.stack([np.bincount(units, weights=values, minlength=n_units),
                         np.bincount(units, minlength=n_units),
                         np.bincount(sorted_units[:lo], minlength=n_units)], axis=1).astype(float)
    value_sum, total, before = (counts.astype(float) @ per_unit).T
    means = value_sum / total
    total, before = np.rint(total).astype(np.int64), np.rint(before).astype(np.int64)
    # 1-based ranks of the lower and upper middle values (the same for an odd total)
    rank_lo, rank_hi = (total + 1) // 2, total // 2 + 1
    # (positions x resamples): gathering whole rows and summing down the columns is far
    # faster in numpy than gathering and summing along rows
    by_unit = np.ascontiguousarray(counts.T)
    cum = before[None, :] + np.cumsum(by_unit[sorted_units[lo:hi]], axis=0)
    inside = (before < rank_lo) & (cum[-1] >= rank_hi) if hi > lo else np.zeros(len(counts), dtype=bool)
    medians = np.empty(len(counts))
    medians[inside] = _middle(sorted_values[lo:hi], cum[:, inside], rank_lo[inside], rank_hi[inside])
    if not inside.all():
        outside = ~inside
        cum = np.cumsum(by_unit[:, outside][sorted_units], axis=0)
        medians[outside] = _middle(sorted_values, cum, rank_lo[outside], rank_hi[outside])
    return medians, means


def _middle(sorted_values: np.ndarray, cum: np.ndarray, rank_lo: np.ndarray, rank_hi: np.ndarray) -> np.ndarray:
    """Mean of the values at which each column's cumulative count first reaches the two ranks."""
    lower = np.count_nonzero(cum < rank_lo[None, :], axis=0)
    upper = np.count_nonzero(cum < rank_hi[None, :], axis=0)
    return 0.5 * (sorted_values[lower] + sorted_values[upper])


def median_window(sorted_values: np.ndarray, pilot_medians: np.ndarray | None = None) -> tuple[int, int]:
    """Sorted positions ``[lo, hi)`` expected to hold the middle values of every resample.

    Only speed depends on it: :func:`pooled_statistics` redoes the rare resamples whose
    middle values fall outside over all values.

    Parameters
    ----------
    sorted_values : (N,) float array
    pilot_medians : array, optional
        Medians of a few pilot resamples; the window then also spans their range widened by
        that range on each side (about +-7 standard deviations of the bootstrap median for 64
        pilots), which is what resampling whole images needs.

    Returns
    -------
    lo, hi : int
        At least N/2 +- 4 sqrt(N): when single particles are resampled, the middle rank falls
        outside with a probability far below 1e-12 (8 binomial standard deviations).
    """
    n = len(sorted_values)
    half = int(4 * np.sqrt(n)) + 8
    lo, hi = max(0, n // 2 - half), min(n, n // 2 + half + 1)
    if pilot_medians is not None and len(pilot_medians):
        spread = float(np.ptp(pilot_medians))
        lo = min(lo, int(np.searchsorted(sorted_values, np.min(pilot_medians) - spread, side="left")))
        hi = max(hi, int(np.searchsorted(sorted_values, np.max(pilot_medians) + spread, side="right")))
    return lo, hi


def bootstrap_ci(
    values: np.ndarray,
    images: np.ndarray | None = None,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap 95 % confidence intervals of the median and the mean.

    Particles of one micrograph share its focus, contrast, segmentation errors and local
    sample preparation, so they are not independent draws: images are resampled with
    replacement and their particles pooled (cluster bootstrap). With one image there is
    nothing to resample but particles, which ignores image-to-image variation; the returned
    notes say so.

    Parameters
    ----------
    values : (N,) float array
        One descriptor of the counted particles; non-finite values are ignored.
    images : (N,) array, optional
        Image of each particle; None means all come from one image.
    n_resamples : int
        Bootstrap resamples.
    seed : int
        Seed of :func:`numpy.random.default_rng`: the same seed gives the same interval.

    Returns
    -------
    dict
        ``median_ci95``, ``mean_ci95`` ([low, high], None without particles), ``ci_method``
        (a phrase naming what was resampled) and ``ci_notes`` (list of str, warnings about
        the interval's reliability with the rule that triggered them).
    """
    values = np.asarray(values, dtype=float)
    images = np.zeros(values.size, dtype=int) if images is None else np.asarray(images)
    finite = np.isfinite(values)
    values = values[finite]
    # only images with counted particles are units: an empty image adds nothing to a pool
    _, units = np.unique(images[finite], return_inverse=True)
    n_images = int(units.max()) + 1 if values.size else 0
    notes: list[str] = []
    if n_images >= 2:
        method = f"bootstrap over images ({n_resamples} resamples: images drawn with replacement, their particles pooled)"
        if n_images < MIN_IMAGES_CLUSTER_BOOTSTRAP:
            notes.append(f"only {n_images} images (fewer than {MIN_IMAGES_CLUSTER_BOOTSTRAP}): an interval from "
                         "resampling so few images is coarse")
    else:
        method = f"bootstrap over particles ({n_resamples} resamples: particles drawn with replacement)"
        if values.size:
            notes.append("one image only: particles were resampled instead of images, so the interval ignores "
                         "image-to-image variation and is likely too narrow")
            units = np.arange(values.size)
    if values.size < MIN_PARTICLES_STABLE_MEDIAN:
        notes.append(f"{values.size} particles (fewer than {MIN_PARTICLES_STABLE_MEDIAN}): the median is not stable "
                     "and its interval is approximate")
    out: dict[str, Any] = {"median_ci95": None, "mean_ci95": None, "ci_method": method, "ci_notes": notes}
    if not values.size:
        return out
    n_units = int(units.max()) + 1
    # sorted once here, so the sort in every block of resamples meets sorted input (linear time)
    order = np.argsort(values, kind="stable")
    values, units = values[order], units[order]
    pilot = None
    if n_images >= 2:
        # a pilot on its own stream, so that the window (speed only) leaves the main draws alone
        pilot_counts = resample_counts(np.random.default_rng([seed, 1]), n_units, _PILOT_RESAMPLES)
        pilot = pooled_statistics(values, units, pilot_counts)[0]
    window = median_window(values, pilot)
    rng = np.random.default_rng(seed)
    medians, means = np.empty(n_resamples), np.empty(n_resamples)
    # blocks of resamples keep the (resamples x units) and (resamples x window) arrays to a few tens of MB
    step = max(1, _BOOTSTRAP_BLOCK // max(n_units, window[1] - window[0]))
    for start in range(0, n_resamples, step):
        rows = min(step, n_resamples - start)
        block = pooled_statistics(values, units, resample_counts(rng, n_units, rows), window)
        medians[start:start + rows], means[start:start + rows] = block
    out["median_ci95"] = [float(v) for v in np.percentile(medians, [2.5, 97.5])]
    out["mean_ci95"] = [float(v) for v in np.percentile(means, [2.5, 97.5])]
    return out


def size_summary(
    df: pd.DataFrame,
    descriptors: Sequence[str] = MAIN_DESCRIPTORS,
    fit: bool = True,
    *,
    ci: bool = True,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Number-based statistics of each descriptor, with bootstrap confidence intervals.

    Parameters
    ----------
    df : pandas.DataFrame
        Particles (usually only the kept ones), as from
        :func:`nanoseg.particles.measure_particles`; with an ``image`` column the intervals
        resample images (see :func:`bootstrap_ci`).
    descriptors : sequence of str
        Descriptor stems (``ecd``, ``min_feret``, ...) or explicit column names.
    fit : bool
        Also fit a log-normal distribution.
    ci : bool
        Also compute the 95 % confidence intervals of the median and the mean.
    n_resamples, seed : int
        Bootstrap resamples and seed (the same seed gives the same intervals).

    Returns
    -------
    dict
        Per descriptor: ``column``, ``unit``, ``count``, ``mean``, ``sd`` (sample, ddof=1),
        ``median``, ``d10``, ``d50``, ``d90``, with ``ci`` ``median_ci95`` and ``mean_ci95``
        ([low, high] in ``unit``), ``ci_method`` and ``ci_notes``, and with ``fit``
        ``lognormal`` (see :func:`fit_lognormal`).
    """
    images = df["image"].astype(str).to_numpy() if "image" in df.columns else None
    out: dict[str, Any] = {}
    for name in descriptors:
        col = name if name in df.columns else descriptor_column(df, name)
        if col not in df.columns:
            raise NanosegError(f"size_summary: no column '{col}' in the particle table")
        all_values = df[col].to_numpy(dtype=float)
        values = all_values[np.isfinite(all_values)]
        n = int(values.size)
        entry: dict[str, Any] = {"column": col, "unit": _unit(col), "count": n}
        if n:
            d10, d50, d90 = np.percentile(values, [10, 50, 90])
            entry.update(
                mean=float(values.mean()),
                sd=float(values.std(ddof=1)) if n > 1 else 0.0,
                median=float(np.median(values)),
                d10=float(d10),
                d50=float(d50),
                d90=float(d90),
            )
        else:
            entry.update(mean=None, sd=None, median=None, d10=None, d50=None, d90=None)
        if ci:
            entry.update(bootstrap_ci(all_values, images, n_resamples=n_resamples, seed=seed))
        if fit:
            entry["lognormal"] = fit_lognormal(values)
        out[name] = entry
    return out


def _unit(col: str) -> str:
    for suffix, unit in (("_nm2", "nm²"), ("_nm", "nm"), ("_px", "px")):
        if col.endswith(suffix):
            return unit + ("²" if col.startswith("area") and unit == "px" else "")
    return ""


def ec_definition_check(
    df: pd.DataFrame,
    column: str = "min_feret_nm",
    limit_nm: float = EC_LIMIT_NM,
    median_ci95_nm: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Number-based check against the EC nanomaterial definition (2022/C 229/01).

    A material is a nanomaterial when 50 % or more of its particles (by number) have an
    external dimension, here the minimum Feret diameter, below 100 nm, i.e. when the
    number-based median of that dimension is below 100 nm.

    Parameters
    ----------
    df : pandas.DataFrame
        The counted particles.
    column : str
        The calibrated external dimension.
    limit_nm : float
        The size limit.
    median_ci95_nm : (low, high), optional
        95 % confidence interval of the median (see :func:`bootstrap_ci`): the statement then
        says whether the verdict holds over the whole interval.

    Returns
    -------
    dict
        ``checked`` (False without calibrated sizes), ``column``, ``count``,
        ``share_below_limit``, ``median_nm``, ``limit_nm``, ``is_nanomaterial``,
        ``median_ci95_nm`` (when given) and ``statement`` (for the report).
    """
    if len(df) and (column not in df.columns or df[column].isna().all()):
        return {
            "checked": False,
            "column": column,
            "limit_nm": limit_nm,
            "is_nanomaterial": None,
            "statement": "EC nanomaterial definition not checked: the pixel size is unknown, so no sizes in nm.",
        }
    values = df[column].to_numpy(dtype=float) if column in df.columns else np.zeros(0)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"checked": False, "column": column, "limit_nm": limit_nm, "is_nanomaterial": None,
                "statement": "EC nanomaterial definition not checked: no particles were kept."}
    share = float(np.mean(values < limit_nm))
    median = float(np.median(values))
    is_nano = share >= 0.5
    statement = (
        f"{share:.1%} of {values.size} particles have a minimum Feret diameter below {limit_nm:g} nm "
        f"(number-based median {median:.1f} nm): the material "
        f"{'meets' if is_nano else 'does not meet'} the EC definition of a nanomaterial "
        f"(2022/C 229/01, 50 % by number with an external dimension of 1-100 nm)."
    )
    out = {"checked": True, "column": column, "count": int(values.size), "share_below_limit": share,
           "median_nm": median, "limit_nm": limit_nm, "is_nanomaterial": is_nano}
    if median_ci95_nm is not None:
        low, high = (float(v) for v in median_ci95_nm)
        out["median_ci95_nm"] = [low, high]
        interval = f"The 95 % confidence interval of the median, {low:.1f}-{high:.1f} nm,"
        if high < limit_nm or low >= limit_nm:
            statement += f" {interval} lies entirely {'below' if high < limit_nm else 'above'} {limit_nm:g} nm."
        else:
            statement += (f" {interval} includes {limit_nm:g} nm, so the verdict is uncertain: measure more "
                          "images before relying on it.")
    out["statement"] = statement
    return out


def compare_distributions(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Two-sample Kolmogorov-Smirnov test of two size samples (``scipy.stats.ks_2samp``).

    Returns
    -------
    dict
        ``n_a``, ``n_b``, ``mean_a``, ``mean_b``, ``median_a``, ``median_b``, ``ks_statistic``,
        ``p_value``.
    """
    from scipy import stats

    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        raise NanosegError("compare_distributions: both samples need at least one particle")
    res = stats.ks_2samp(a, b)
    return {"n_a": int(a.size), "n_b": int(b.size), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            "median_a": float(np.median(a)), "median_b": float(np.median(b)),
            "ks_statistic": float(res.statistic), "p_value": float(res.pvalue)}


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

_LABELS = {"ecd": "equivalent circular diameter", "min_feret": "minimum Feret diameter",
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
    from skimage.segmentation import find_boundaries

    gray = np.clip(np.asarray(image, dtype=float), 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    kept = np.isin(labels, np.asarray(list(kept_labels), dtype=labels.dtype)) & (labels > 0)
    discarded = (labels > 0) & ~kept
    edges = find_boundaries(labels, mode="inner")
    for region, color in ((kept, KEPT_RGB), (discarded, DISCARDED_RGB)):
        c = np.asarray(color, dtype=float) / 255
        rgb[region] = (1 - alpha) * rgb[region] + alpha * c
        rgb[region & edges] = c
    return (rgb * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Measuring a set of images and writing the results
# --------------------------------------------------------------------------------------------


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


def _read_size_prior(run_dir: Path | None) -> dict[str, Any]:
    """The size prior the masks were built with, as recorded by the shapes/masks stages."""
    found: dict[str, Any] = {}
    if run_dir is not None:
        for stage in ("masks", "shapes"):
            path = run_dir / stage / "stats.json"
            try:
                stats = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for key, value in stats.items():
                # the prior itself, and what it did to the particle size of the fake masks
                if "size_prior" in key or (key in ("size_factor", "resulting_median_ecd_px") and "size_prior" in stats):
                    found[f"{stage}.{key}"] = round(value, 4) if isinstance(value, float) else value
    return found


def size_prior_fallbacks(size_prior: Any) -> list[str]:
    """Sentences for every stage whose size prior differs from the configured one.

    Parameters
    ----------
    size_prior : any
        As from :func:`_read_size_prior`: ``{'<stage>.size_prior': used,
        '<stage>.size_prior_configured': configured, ...}``; anything else has no fallback.
    """
    if not isinstance(size_prior, Mapping):
        return []
    out = []
    for key, configured in size_prior.items():
        if not key.endswith(".size_prior_configured"):
            continue
        stage = key.removesuffix(".size_prior_configured")
        used = size_prior.get(f"{stage}.size_prior")
        if used is not None and used != configured:
            out.append(f"the {stage} stage was configured with size_prior={configured} but fell back to "
                       f"size_prior={used}: the training masks' particle sizes follow {used}")
    return out


def write_results(
    particles: pd.DataFrame,
    out_dir: Path,
    *,
    micrographs: Mapping[str, np.ndarray] | None = None,
    labels: Mapping[str, np.ndarray] | None = None,
    bins: int = 30,
    fit: bool = True,
    report: bool = True,
    pixel_size_source: str = "unknown",
    size_prior: Any = "unknown",
    compare: tuple[str, pd.DataFrame] | None = None,
    extra: Mapping[str, Any] | None = None,
    report_rows: int = 50,
    report_overlays: int = 12,
    counting_rule: Mapping[str, Any] | None = None,
    warnings: Sequence[str] = (),
    seed: int = 0,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """Write ``particles.csv``, ``summary.json``, histograms, overlays and ``report.html``.

    Parameters
    ----------
    particles : pandas.DataFrame
        Every particle with ``image``, ``kept`` and ``reason`` (see :func:`join_decisions`).
    out_dir : path
        Output folder.
    micrographs, labels : mapping of image name -> array, optional
        For the overlay PNGs (kept green, discarded red).
    bins : int
        Histogram bins.
    fit : bool
        Fit log-normals.
    report : bool
        Render ``report.html``.
    pixel_size_source : str
        Where the pixel size came from (stated in the report).
    size_prior : any
        The size prior used to build the fake masks ('unknown' when not recorded).
    compare : (name, DataFrame), optional
        Another particle table (e.g. manual); its kept particles are compared with these by
        a KS test on the minimum Feret diameter, with overlaid histograms.
    extra : mapping, optional
        More entries for ``summary.json``.
    report_rows, report_overlays : int
        Particles listed and overlays embedded in the report.
    counting_rule : mapping, optional
        Which particles were counted (see :func:`nanoseg.classify.counting_rule`); the pixel
        size and its source are added. Without it the rule is recorded as not stated.
    warnings : sequence of str
        Methods that switched silently on the way (e.g. classifier requested but missing);
        a fallback of the size prior recorded in ``size_prior`` is added here.
    seed, n_resamples : int
        Seed and resamples of the bootstrap confidence intervals (see :func:`bootstrap_ci`).

    Returns
    -------
    dict
        The summary written to ``summary.json``: counts, discard reasons, pixel size,
        ``counting_rule``, ``warnings``, ``descriptors`` (see :func:`size_summary`) and
        ``ec_definition``.
    """
    from nanoseg.atomic import atomic_path, write_json
    from nanoseg.io import write_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "particles.csv") as tmp:
        particles.to_csv(tmp, index=False, float_format="%.6g")
    kept = particles[particles["kept"]]
    summary_desc = size_summary(kept, MAIN_DESCRIPTORS, fit=fit, n_resamples=n_resamples, seed=seed)
    reasons = particles.loc[~particles["kept"], "reason"].value_counts().to_dict()
    pixel_sizes = sorted({float(v) for v in particles["pixel_size_nm"].dropna()}) if "pixel_size_nm" in particles else []
    pixel_size_nm = pixel_sizes[0] if len(pixel_sizes) == 1 else (pixel_sizes or None)
    rule = dict(counting_rule) if counting_rule is not None else {
        "method": None, "rules": None, "classifier": None, "edge_particles_excluded": None,
        "partly_covered_excluded": None, "partly_covered_excluded_by": None}
    rule.update(pixel_size_nm=pixel_size_nm, pixel_size_source=pixel_size_source)
    all_warnings = list(warnings)
    for text in size_prior_fallbacks(size_prior):
        logger.warning("measure: %s", text)
        all_warnings.append(text)
    min_feret = summary_desc["min_feret"]
    ec = ec_definition_check(kept, "min_feret_nm", median_ci95_nm=min_feret.get("median_ci95")
                             if min_feret["column"] == "min_feret_nm" else None)
    summary: dict[str, Any] = {
        "n_images": int(particles["image"].nunique()),
        "n_particles": int(len(particles)),
        "n_kept": int(len(kept)),
        "n_discarded": int(len(particles) - len(kept)),
        "discard_reasons": {str(k): int(v) for k, v in reasons.items()},
        "pixel_size_nm": pixel_size_nm,
        "pixel_size_source": pixel_size_source,
        "size_prior": size_prior,
        "counting_rule": rule,
        "warnings": all_warnings,
        "descriptors": summary_desc,
        "ec_definition": ec,
    }
    figures: dict[str, Path] = {}
    for stem in MAIN_DESCRIPTORS:
        entry = summary_desc[stem]
        col = entry["column"]
        paths = plot_histogram(kept[col].to_numpy(dtype=float) if len(kept) else np.array([]),
                               out_dir / f"hist_{stem}", title=f"{_LABELS[stem]} (kept particles)",
                               xlabel=f"{_LABELS[stem]} / {entry['unit']}", bins=bins, lognormal=entry.get("lognormal"))
        figures[stem] = paths[0]
    if compare is not None:
        other_name, other = compare
        col = summary_desc["min_feret"]["column"]
        if col not in other.columns:
            raise NanosegError(f"--compare {other_name}: no column '{col}' (measure both with the same pixel-size setting)")
        other_kept = other[other["kept"].astype(bool)] if "kept" in other.columns else other
        ks = compare_distributions(kept[col], other_kept[col])
        ks.update(column=col, name_a="this run", name_b=other_name)
        paths = plot_comparison(kept[col], other_kept[col], out_dir / "compare_min_feret", names=("this run", other_name),
                                xlabel=f"minimum Feret diameter / {_unit(col)}", bins=bins, ks=ks)
        figures["comparison"] = paths[0]
        summary["comparison"] = ks
    overlays: dict[str, Path] = {}
    if micrographs and labels:
        for name, image in micrographs.items():
            if name not in labels:
                continue
            keep_ids = particles.loc[(particles["image"] == name) & particles["kept"], "label"].to_numpy()
            path = out_dir / "overlays" / f"{name}.png"
            write_png(path, overlay_kept(image, labels[name], keep_ids))
            overlays[name] = path
    if extra:
        summary.update(extra)
    write_json(out_dir / "summary.json", summary)
    if report:
        from nanoseg.atomic import write_text
        from nanoseg.report import render_report

        write_text(out_dir / "report.html", render_report(summary, particles, figures=figures, overlays=overlays,
                                                                max_rows=report_rows, max_overlays=report_overlays))
    return summary


_SOURCE_WORDS = {"override": "set by the user (data.pixel_size_nm / --pixel-size)", "rsciio": "vendor TIFF metadata",
                 "ome": "OME-TIFF metadata", "imagej": "ImageJ TIFF metadata", "tiff": "TIFF resolution tags"}


def pixel_size_source(micrographs: Sequence[Any]) -> str:
    """One phrase saying where the micrographs' pixel sizes came from."""
    sources = [getattr(m, "pixel_size_source", "none") if m.pixel_size_nm is not None else "none" for m in micrographs]
    known = [s for s in sources if s != "none"]
    if not known:
        return "unknown: no pixel size in the image metadata and none set (sizes in px)"
    words = ", ".join(sorted({_SOURCE_WORDS.get(s, s) for s in known}))
    if len(known) < len(sources):
        return f"{words} for {len(known)} of {len(sources)} images (the others are measured in px only)"
    return words


def run_stage(ctx: Any) -> None:
    """Pipeline stage 7: measure the segment labels, join classify decisions, write the results."""
    from nanoseg.classify import classify_images, counting_rule, read_decisions
    from nanoseg.io import load_micrographs

    cfg = ctx.config
    labels_dir = ctx.stage_dir("adapt") / "labels"
    failures: list[dict[str, str]] = []
    micrographs = load_micrographs(cfg.data, failures=failures)
    items = label_items(micrographs, labels_dir, fix="rerun with --from segment")
    images = {stem: image for stem, _, image, _ in items}
    label_images = {stem: lab for stem, lab, _, _ in items}
    particles = measure_images(items)
    cls_cfg = cfg.classify
    warnings: list[str] = []
    classifier_model = ctx.stage_dir("classify") / "model.pt" if cls_cfg.method == "network" else None
    decisions = read_decisions(ctx.stage_dir("classify") / "decisions.csv")
    if decisions is None:
        if cls_cfg.method == "network":
            text = ("no classify/decisions.csv: particles were kept by the rules alone, without the classifier "
                    "that classify.method=network asks for (rerun with --from classify)")
            ctx.log.warning("measure: %s", text)
            warnings.append(text)
            cls_cfg = cls_cfg.model_copy(update={"method": "rules"})
            classifier_model = None
        decisions = classify_images(items, cls_cfg, particles=particles)
    particles = join_decisions(particles, decisions)
    warnings += left_out_warning(failures, len(micrographs) + len(failures))
    prior = _read_size_prior(Path(ctx.run_dir)) or "unknown"
    summary = write_results(
        particles, ctx.out_dir, micrographs=images, labels=label_images, bins=cfg.measure.histogram_bins,
        fit=cfg.measure.fit_lognormal, report=cfg.measure.report,
        pixel_size_source=pixel_size_source(micrographs),
        size_prior=prior, report_rows=cfg.measure.report_rows, report_overlays=cfg.measure.report_overlays,
        counting_rule=counting_rule(cls_cfg, classifier_model=classifier_model), warnings=warnings, seed=cfg.seed,
        extra={"size_prior_configured": cfg.masks.size_prior, "classify_method": cls_cfg.method, "failures": failures,
               "realism": _read_realism(Path(ctx.run_dir)), "adaptation": _read_adaptation(Path(ctx.run_dir))},
    )
    ctx.log.info("measure: %d of %d particles kept in %d images; %s", summary["n_kept"], summary["n_particles"],
                 summary["n_images"], summary["ec_definition"]["statement"])


def _read_adaptation(run_dir: Path) -> list[dict[str, Any]] | None:
    """The self-training rounds the adapt stage wrote (``adapt/rounds.json``), without per-image rows."""
    path = run_dir / "adapt" / "rounds.json"
    try:
        rounds = json.loads(path.read_text())["rounds"] if path.is_file() else None
    except (ValueError, KeyError):
        logger.warning("measure: %s is unreadable; the report leaves the adaptation rounds out", path)
        return None
    return [{k: v for k, v in r.items() if k != "images"} for r in rounds] if rounds is not None else None


def _read_realism(run_dir: Path) -> dict[str, Any] | None:
    """The fake micrographs' realism scores the pairs stage wrote (``pairs/realism.json``), if any."""
    path = run_dir / "pairs" / "realism.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        logger.warning("measure: %s is unreadable; the report leaves the realism out", path)
        return None


def read_particles_csv(path: str | Path, column: str | None = None) -> pd.DataFrame:
    """Read a ``particles.csv`` written by this module (or any table with the same columns).

    Parameters
    ----------
    path : path-like
    column : str, optional
        A size column the table must have, numeric, with at least one kept particle.

    Raises
    ------
    NanosegError
        If the file is missing or not a readable table, or ``column`` is missing or unusable.
    """
    path = Path(path)
    fix = "give a particles.csv from `nanoseg measure`"
    if not path.is_file():
        raise NanosegError(f"{path}: particle table not found ({fix})")
    try:
        df = pd.read_csv(path, dtype={"image": str, "reason": str}, keep_default_na=False,
                         na_values={c: ["", "nan", "NaN"] for c in ("score",)})
    except ValueError as exc:  # what pandas raises for a malformed, empty or undecodable file
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise NanosegError(f"{path}: not a readable CSV table ({reason}); {fix}") from None
    if "kept" in df.columns:
        df["kept"] = df["kept"].astype(str).str.lower().isin(["true", "1", "yes"])
    if column is not None:
        if column not in df.columns:
            raise NanosegError(f"{path}: no column '{column}' ({fix}, measured with the same pixel-size setting)")
        given = df[column].replace("", np.nan)
        values = pd.to_numeric(given, errors="coerce")
        if (values.isna() & given.notna()).any():
            raise NanosegError(f"{path}: column '{column}' holds values that are not numbers ({fix})")
        df[column] = values
        kept = values[df["kept"]] if "kept" in df.columns else values
        if not np.isfinite(kept.to_numpy(dtype=float)).any():
            raise NanosegError(f"{path}: no kept particle with a '{column}' to compare with ({fix} that has some)")
    return df


def measure_files(
    images: Sequence[str | Path],
    out_dir: str | Path,
    config: Any,
    *,
    model: str | Path | None = None,
    labels_dir: str | Path | None = None,
    classifier: str | Path | None = None,
    compare_csv: str | Path | None = None,
    device: Any = "cpu",
    probabilities: bool = False,
    strict: bool = True,
    before_writing: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Segment (or read labels of), classify and measure micrographs; write all results.

    Parameters
    ----------
    images : sequence of path
        Micrograph files or folders of them.
    out_dir : path
        Output folder: ``particles.csv``, ``decisions.csv``, ``summary.json``, histograms,
        ``overlays/``, ``report.html`` (and ``segment/`` when segmenting).
    config : Config
        Uses ``data`` (pixel size, info bar, dark particles), ``segment``, ``classify``, ``measure``.
    model : path, optional
        Segmentation model (``adapt/model.pt`` of a run); used unless ``labels_dir`` is given.
    labels_dir : path, optional
        Folder of instance label images ``<stem>.tif`` matching the micrographs.
    classifier : path, optional
        Keep/discard network (``classify/model.pt``). Without it the rules alone decide.
    compare_csv : path, optional
        Another ``particles.csv`` to compare the kept min Feret distribution with (KS test).
    device : torch.device or str
    probabilities : bool
        When segmenting, also write ``segment/probabilities/<stem>.tif`` (particle probability).
    strict : bool
        Raise at the first micrograph that cannot be read, segmented or paired with its labels.
        Otherwise such a micrograph is left out with a warning and listed in the summary's
        ``failures`` (``{"image": path, "error": reason}``); it raises only when none is left.
    before_writing : callable, optional
        Called once every input has been read, before the first file is written: the place to
        clear an earlier run's outputs, which an input error then leaves as they were.

    Returns
    -------
    dict
        The summary written to ``summary.json``.
    """
    from nanoseg.classify import classify_images, counting_rule, write_decisions
    from nanoseg.io import list_images, read_micrographs

    out_dir = Path(out_dir)
    # Folders are listed; files are kept as given, so that a wrong one fails alone when not strict.
    paths = [p for item in images for p in (list_images(item) if Path(item).is_dir() else [Path(item)])]
    if not paths:
        raise NanosegError("measure: no micrographs given")
    if labels_dir is None and model is None:
        raise NanosegError("measure: give --model (a segmentation model) or --labels (a folder of label images)")
    if labels_dir is not None and not Path(labels_dir).is_dir():
        raise NanosegError(f"--labels {labels_dir}: no such folder (give the folder of label images <stem>.tif)")
    failures: list[dict[str, str]] | None = None if strict else []
    micrographs = read_micrographs(paths, config.data, failures=failures)
    items = None if labels_dir is None else _paired_labels(micrographs, Path(labels_dir), failures)
    cls_cfg = config.classify
    warnings: list[str] = []
    net = None
    if classifier is not None:
        from nanoseg import nets

        net, _ = nets.load(classifier, device)
        cls_cfg = cls_cfg.model_copy(update={"method": "network"})
    elif cls_cfg.method == "network":
        text = ("classify.method is 'network' but no --classifier was given: particles were kept by the rules "
                "alone, so partly covered particles were not excluded")
        logger.warning("measure: %s", text)
        warnings.append(text)
        cls_cfg = cls_cfg.model_copy(update={"method": "rules"})
    compare = None
    if compare_csv is not None:
        # Checked now, not when the comparison is drawn: a bad table then leaves no outputs behind.
        column = nm_column("min_feret") if all(mg.pixel_size_nm is not None for mg in micrographs) else "min_feret_px"
        compare = (Path(compare_csv).name, read_particles_csv(compare_csv, column))
    if before_writing is not None:
        before_writing()
    if items is None:
        from nanoseg.segment import segment_micrographs

        segmented = segment_micrographs(model, micrographs, out_dir / "segment", config.segment, device=device,
                                        probabilities=probabilities, failures=failures)
        done = {row["image"] for row in segmented}
        items = _paired_labels([mg for mg in micrographs if mg.stem in done], out_dir / "segment" / "labels", failures)
    measured = {stem for stem, _, _, _ in items}
    micrographs = [mg for mg in micrographs if mg.stem in measured]
    warnings += left_out_warning(failures or [], len(paths))
    images_by_name = {stem: image for stem, _, image, _ in items}
    labels_by_name = {stem: lab for stem, lab, _, _ in items}
    particles = measure_images(items)
    decisions = classify_images(items, cls_cfg, net=net, device=device, particles=particles)
    write_decisions(decisions, out_dir / "decisions.csv")
    particles = join_decisions(particles, decisions)
    return write_results(
        particles, out_dir, micrographs=images_by_name, labels=labels_by_name, bins=config.measure.histogram_bins,
        fit=config.measure.fit_lognormal, report=config.measure.report, pixel_size_source=pixel_size_source(micrographs),
        size_prior=_size_prior_of_model(model), compare=compare, report_rows=config.measure.report_rows,
        report_overlays=config.measure.report_overlays,
        extra={"classify_method": cls_cfg.method, "failures": failures or [],
               "realism": _read_realism(Path(model).resolve().parent.parent) if model is not None else None},
        counting_rule=counting_rule(cls_cfg, classifier_model=classifier), warnings=warnings, seed=config.seed,
    )


def left_out_warning(failures: Sequence[dict[str, str]], n_images: int) -> list[str]:
    """The report's warning that the results lack some micrographs (none when ``failures`` is empty)."""
    if not failures:
        return []
    names = ", ".join(Path(f["image"]).name for f in failures)
    return [f"{len(failures)} of {n_images} micrographs could not be used and are not in these results: {names} "
            "(the reasons are under failures in summary.json)"]


def _paired_labels(micrographs: Sequence[Any], labels_dir: Path, failures: list[dict[str, str]] | None
                   ) -> list[tuple[str, np.ndarray, np.ndarray, float | None]]:
    """:func:`label_items` one micrograph at a time, so that a missing or mismatched label image
    leaves out that micrograph alone when ``failures`` is a list (see :func:`nanoseg.io.skip_or_raise`)."""
    from nanoseg.io import nothing_usable, skip_or_raise

    items = []
    for mg in micrographs:
        try:
            items.extend(label_items([mg], labels_dir, fix="check data.info_bar_rows"))
        except NanosegError as exc:
            skip_or_raise(failures, mg.path, exc)
    if failures and not items:
        raise nothing_usable(failures)
    return items


def _size_prior_of_model(model: str | Path | None) -> Any:
    """The size prior recorded beside a segmentation model of a run folder (RUN/adapt/model.pt, RUN/segment/model.pt)."""
    if model is None:
        return "unknown"
    return _read_size_prior(Path(model).resolve().parent.parent) or "unknown"
