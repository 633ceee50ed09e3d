"""Particle size tables from any source, and comparing their size distributions.

:func:`read_size_table` reads a nanoseg ``particles.csv`` (its kept particles) or an ImageJ/Fiji
"Results" table (every row a counted particle) into the same calibrated columns;
:func:`compare_size_tables` summarises one descriptor of several such tables against the first
(``nanoseg compare-sizes``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from nanoseg.errors import NanosegError
from nanoseg.measure.distributions import compare_distributions, size_summary
from nanoseg.particles import nm_column
from nanoseg.units import UNIT_NM

#: Descriptors a size table holds (and ``compare-sizes --column`` accepts), in this order.
SIZE_DESCRIPTORS: tuple[str, ...] = ("min_feret", "max_feret", "ecd", "area", "perimeter")

#: ImageJ/Fiji Results columns (Analyze > Set Measurements) -> nanoseg descriptor. ECD comes from Area.
IMAGEJ_COLUMNS: dict[str, str] = {"MinFeret": "min_feret", "Feret": "max_feret", "Area": "area",
                                  "Perim.": "perimeter"}
_IMAGEJ_NAME = {stem: name for name, stem in IMAGEJ_COLUMNS.items()}
#: Units that mean "not calibrated": the values are pixels.
_PIXEL_UNITS = ("px", "pixel", "pixels")
_MISSING = ("", "nan", "NaN", "NA", "N/A")


def size_column(stem: str, unit: str) -> str:
    """The column of a descriptor in a size table: ``min_feret_nm``, ``area_nm2``, or ``<stem>_px``."""
    return f"{stem}_px" if unit == "px" else nm_column(stem)


def _check_unit(unit: str | None) -> str | None:
    """``unit`` as ``'px'``, a key of :data:`UNIT_NM` (lower case), or None."""
    if unit is None:
        return None
    key = unit.strip().lower()
    if key in _PIXEL_UNITS:
        return "px"
    if key not in UNIT_NM:
        raise NanosegError(f"--unit {unit!r}: not a length unit; use nm, um or px")
    return key


def read_size_table(path: str | Path, unit: str | None = None, descriptor: str | None = None) -> pd.DataFrame:
    """Read the counted particles of a nanoseg ``particles.csv`` or an ImageJ/Fiji Results table.

    A ``particles.csv`` (recognised by columns such as ``min_feret_px``/``min_feret_nm``) gives
    its kept particles, with the lengths in nm, or in px when ``unit`` is ``'px'``; its headers
    name their units, so any other ``unit`` is not used. An ImageJ/Fiji Results table (columns
    ``MinFeret``, ``Feret``, ``Area``, ``Perim.``, with or without the unnamed row-number column;
    comma- or tab-separated, as ImageJ saves .csv and .xls) gives every row as a counted particle.
    ImageJ writes the lengths in the unit of the image's scale without naming it, so ``unit``
    is required there.

    Parameters
    ----------
    path : path-like
    unit : str, optional
        The ImageJ table's length unit: ``nm``, ``um`` (or another key of
        :data:`nanoseg.units.UNIT_NM`), or ``px`` (no scale set; every table is then read in px).
    descriptor : str, optional
        One of :data:`SIZE_DESCRIPTORS` the table must have, with at least one value.

    Returns
    -------
    pandas.DataFrame
        One row per counted particle; the columns of :func:`size_column` for the descriptors the
        table has (ECD from the area: sqrt(4 A / pi)). ``attrs``: ``source`` (``'nanoseg'`` or
        ``'imagej'``), ``unit`` (``'nm'`` or ``'px'``), ``path``.

    Raises
    ------
    NanosegError
        If the file is missing, not a table of either kind, holds non-numeric or negative sizes
        or no particle, lacks ``descriptor``, or is an ImageJ table read without ``unit``.
    """
    path = Path(path)
    unit = _check_unit(unit)
    if descriptor is not None and descriptor not in SIZE_DESCRIPTORS:
        raise NanosegError(f"--column {descriptor!r}: choose one of {', '.join(SIZE_DESCRIPTORS)}")
    fix = "give a particles.csv from `nanoseg measure` or an ImageJ/Fiji Results table saved as .csv"
    raw = _read_text_table(path, fix)
    nanoseg_cols = {c for stem in SIZE_DESCRIPTORS for c in (f"{stem}_px", nm_column(stem))}
    if nanoseg_cols & set(raw.columns):
        out = _from_particles_csv(path, raw, "px" if unit == "px" else "nm")
    elif set(IMAGEJ_COLUMNS) & set(raw.columns):
        if unit is None:
            raise NanosegError(f"{path}: an ImageJ/Fiji Results table does not say in which unit it measured; "
                               "give --unit nm, um or px (the unit of the scale set in ImageJ; px if none was set)")
        out = _from_imagej(path, raw, unit)
    else:
        shown = ", ".join(repr(c) for c in list(raw.columns)[:6]) or "none"
        raise NanosegError(f"{path}: neither a nanoseg particles.csv (min_feret_nm, ...) nor an ImageJ/Fiji Results "
                           f"table (MinFeret, Feret, Area); its columns: {shown}; {fix}")
    if len(out) == 0:
        raise NanosegError(f"{path}: no particles in the table ({fix} that has some)")
    if not len(out.columns):  # a particles.csv with px columns only, read in nm
        raise NanosegError(f"{path}: no calibrated size columns (measured without a pixel size); measure again "
                           "with --pixel-size, or compare in pixels with --unit px")
    if descriptor is not None:
        col = size_column(descriptor, out.attrs["unit"])
        if col not in out.columns:
            raise NanosegError(_missing_message(path, descriptor, out.attrs, list(raw.columns)))
        if not np.isfinite(out[col].to_numpy(dtype=float)).any():
            hint = ("; measured without a pixel size? measure again with --pixel-size, or compare in pixels with "
                    "--unit px") if out.attrs["source"] == "nanoseg" and out.attrs["unit"] == "nm" else ""
            raise NanosegError(f"{path}: no particle has a value in '{col}'{hint}")
    out.attrs["path"] = str(path)
    return out


def _read_text_table(path: Path, fix: str) -> pd.DataFrame:
    """The file as a table of strings, header names stripped, the row-number column dropped."""
    if not path.is_file():
        raise NanosegError(f"{path}: particle table not found ({fix})")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise NanosegError(f"{path}: not a text table (a binary file?); {fix}") from None
    if not text.strip():
        raise NanosegError(f"{path}: the file is empty; {fix}")
    first = text.lstrip().partition("\n")[0]
    sep = "\t" if "\t" in first and "," not in first else ","  # ImageJ saves .xls/.txt tab-separated
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    except ValueError as exc:  # what pandas raises for a malformed table
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise NanosegError(f"{path}: not a readable CSV table ({reason}); {fix}") from None
    df.columns = [str(c).strip() for c in df.columns]
    # ImageJ's row numbers: a column headed ' ' (or nothing, which pandas names 'Unnamed: 0').
    return df.drop(columns=[c for c in df.columns if c == "" or c.startswith("Unnamed: ")])


def _numbers(path: Path, df: pd.DataFrame, col: str) -> np.ndarray:
    """Column ``col`` as floats (blank/NaN -> NaN); one error naming the first bad cell and its line.

    ``df`` keeps the row index of the whole file (0 = the line after the header).
    """
    text = df[col].astype(str).str.strip()
    missing = text.isin(_MISSING)
    values = pd.to_numeric(text.where(~missing), errors="coerce")
    arr = values.to_numpy(dtype=float)
    for bad, what in (((values.isna() & ~missing).to_numpy(), "values that are not numbers"),
                      ((arr < 0) | np.isinf(arr), "values that are not sizes")):
        if bad.any():
            first = bad.nonzero()[0][0]
            raise NanosegError(f"{path}: column '{col}' holds {what} ({text.iloc[first]!r} on line "
                               f"{df.index[first] + 2}); fix or remove that row")
    return arr


def _from_particles_csv(path: Path, df: pd.DataFrame, unit: str) -> pd.DataFrame:
    if "kept" in df.columns and len(df):  # read as read_particles_csv reads it
        kept = df["kept"].astype(str).str.strip().str.lower().isin(["true", "1", "yes"])
        if not kept.any():
            raise NanosegError(f"{path}: no kept particle in the table (every row has kept=False)")
        df = df[kept]
    out = pd.DataFrame(index=range(len(df)))
    for stem in SIZE_DESCRIPTORS:
        col = size_column(stem, unit)
        if col in df.columns:
            out[col] = _numbers(path, df, col)
    out.attrs.update(source="nanoseg", unit=unit)
    return out


def _from_imagej(path: Path, df: pd.DataFrame, unit: str) -> pd.DataFrame:
    to_nm = 1.0 if unit == "px" else UNIT_NM[unit]
    out_unit = "px" if unit == "px" else "nm"
    out = pd.DataFrame(index=range(len(df)))
    for name, stem in IMAGEJ_COLUMNS.items():
        if name in df.columns:
            power = 2 if stem == "area" else 1
            out[size_column(stem, out_unit)] = _numbers(path, df, name) * to_nm**power
    area = size_column("area", out_unit)
    if area in out.columns:
        out[size_column("ecd", out_unit)] = np.sqrt(4.0 * out[area] / math.pi)
    out.attrs.update(source="imagej", unit=out_unit)
    return out


def _missing_message(path: Path, descriptor: str, attrs: Mapping[str, str], columns: list[str]) -> str:
    if attrs["source"] == "imagej":
        name = _IMAGEJ_NAME.get("area" if descriptor == "ecd" else descriptor)
        where = "Area" if name == "Area" else ("Perimeter" if name == "Perim." else "Feret's diameter")
        return (f"{path}: no '{name}' column, which {descriptor} needs (in ImageJ/Fiji tick {where} under "
                "Analyze > Set Measurements and measure again, or choose another --column)")
    col = size_column(descriptor, attrs["unit"])
    if attrs["unit"] == "nm" and f"{descriptor}_px" in columns:
        return (f"{path}: no calibrated column '{col}' (measured without a pixel size); measure again with "
                "--pixel-size, or compare in pixels with --unit px")
    return f"{path}: no column '{col}' (give a particles.csv from `nanoseg measure`, or choose another --column)"


def compare_size_tables(tables: Mapping[str, pd.DataFrame], descriptor: str = "min_feret") -> pd.DataFrame:
    """Summarise one descriptor of each table and compare it with the first table's (the reference).

    Parameters
    ----------
    tables : mapping of name -> DataFrame
        Size tables from :func:`read_size_table`, all in the same unit; the first is the reference.
    descriptor : str
        One of :data:`SIZE_DESCRIPTORS`.

    Returns
    -------
    pandas.DataFrame
        One row per table: ``table``, ``file``, ``source``, ``descriptor``, ``unit``, ``n``,
        ``mean``, ``sd`` (ddof=1), ``median``, ``d10``, ``d50``, ``d90`` (as
        :func:`nanoseg.measure.size_summary`), and versus the reference (NaN on its own row)
        ``mean_rel_error`` and ``median_rel_error`` ((value - ref) / ref), ``ks_statistic`` and
        ``ks_p_value`` (``scipy.stats.ks_2samp``).
    """
    if len(tables) < 2:
        raise NanosegError("compare sizes: give at least two tables, the reference first")
    units = {name: df.attrs.get("unit", "nm") for name, df in tables.items()}
    if len(set(units.values())) > 1:
        raise NanosegError(f"compare sizes: the tables are in different units ({units}); read them all in nm or px")
    rows = []
    ref_values = ref = None
    for name, df in tables.items():
        col = size_column(descriptor, units[name])
        if col not in df.columns:
            raise NanosegError(f"{df.attrs.get('path', name)}: no column '{col}'")
        values = df[col].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        stats = size_summary(pd.DataFrame({col: values}), [col], fit=False, ci=False)[col]
        row = {"table": name, "file": df.attrs.get("path", ""), "source": df.attrs.get("source", ""),
               "descriptor": descriptor, "unit": stats["unit"], "n": stats["count"],
               **{k: stats[k] for k in ("mean", "sd", "median", "d10", "d50", "d90")},
               "mean_rel_error": math.nan, "median_rel_error": math.nan, "ks_statistic": math.nan,
               "ks_p_value": math.nan}
        if ref is None:
            ref, ref_values = row, values
        else:
            ks = compare_distributions(ref_values, values)
            row.update(mean_rel_error=_relative(row["mean"], ref["mean"]),
                       median_rel_error=_relative(row["median"], ref["median"]),
                       ks_statistic=ks["ks_statistic"], ks_p_value=ks["p_value"])
        rows.append(row)
    return pd.DataFrame(rows)


def _relative(value: float, ref: float) -> float:
    return (value - ref) / ref if ref != 0 else math.nan
