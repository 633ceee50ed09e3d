"""Size-distribution agreement of predicted and ground-truth particles (moments, percentiles, KS)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from nanoseg.errors import NanosegError


def size_distribution_agreement(pred: pd.DataFrame, gt: pd.DataFrame, descriptors: Sequence[str] | None = None) -> pd.DataFrame:
    """Compare the size distributions of predicted and ground-truth particles.

    For each descriptor: number of particles, mean, standard deviation (ddof 1), median, D10
    and D90 (10th and 90th percentiles) of both samples, the relative error of each of these
    ``(pred - gt) / gt``, and the two-sample Kolmogorov-Smirnov statistic D (largest distance
    between the empirical CDFs, :func:`scipy.stats.ks_2samp`) with its p-value.

    Parameters
    ----------
    pred, gt : pandas.DataFrame
        Per-particle tables, e.g. from :func:`nanoseg.particles.measure_particles`.
    descriptors : sequence of str, optional
        Column names; default: the calibrated (``*_nm``) columns of ECD, min/max Feret and
        area when both tables have them, else the ``*_px`` ones.

    Returns
    -------
    pandas.DataFrame
        One row per descriptor.

    References
    ----------
    F. J. Massey, "The Kolmogorov-Smirnov test for goodness of fit", JASA 46, 68 (1951).
    """
    from scipy import stats

    if descriptors is None:
        descriptors = default_size_columns(pred, gt)
    rows = []
    for col in descriptors:
        if col not in pred.columns or col not in gt.columns:
            raise NanosegError(f"size_distribution_agreement: column '{col}' missing from one of the tables")
        p = pred[col].to_numpy(dtype=float)
        g = gt[col].to_numpy(dtype=float)
        p, g = p[np.isfinite(p)], g[np.isfinite(g)]
        row: dict[str, Any] = {"descriptor": col, "n_pred": p.size, "n_gt": g.size}
        for name, fn in (("mean", np.mean), ("sd", lambda x: np.std(x, ddof=1) if x.size > 1 else np.nan),
                         ("median", np.median), ("d10", lambda x: np.percentile(x, 10)),
                         ("d90", lambda x: np.percentile(x, 90))):
            vp = float(fn(p)) if p.size else np.nan
            vg = float(fn(g)) if g.size else np.nan
            row[f"{name}_pred"], row[f"{name}_gt"] = vp, vg
            row[f"{name}_rel_error"] = (vp - vg) / vg if vg not in (0.0,) and np.isfinite(vg) else np.nan
        if p.size and g.size:
            res = stats.ks_2samp(p, g)
            row["ks_statistic"], row["ks_p_value"] = float(res.statistic), float(res.pvalue)
        else:
            row["ks_statistic"], row["ks_p_value"] = np.nan, np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def default_size_columns(*tables: pd.DataFrame) -> list[str]:
    """ECD, min Feret, max Feret and area columns, in nm where every table has them, else px."""
    stems = (("ecd_nm", "ecd_px"), ("min_feret_nm", "min_feret_px"), ("max_feret_nm", "max_feret_px"),
             ("area_nm2", "area_px"))
    cols = []
    for nm, px in stems:
        if all(nm in t.columns and t[nm].notna().all() for t in tables):
            cols.append(nm)
        elif all(px in t.columns for t in tables):
            cols.append(px)
    return cols
