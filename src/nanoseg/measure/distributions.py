"""Number-based size distributions: statistics, bootstrap confidence intervals, the EC check."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from nanoseg.errors import NanosegError
from nanoseg.particles import nm_column

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
        entry: dict[str, Any] = {"column": col, "unit": column_unit(col), "count": n}
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


def column_unit(col: str) -> str:
    """The unit of a size column from its suffix: ``nm``, ``nm²``, ``px`` (``px²`` for area) or ``''``."""
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
