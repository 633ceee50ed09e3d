"""``nanoseg compare-sizes``: size distributions of several particle tables against a reference.

A top-level command, not ``nanoseg evaluate sizes``: ``nanoseg evaluate PRED_DIR GT_DIR`` is one
command whose first argument is a folder, so a sub-command under it would change what
``evaluate`` means. Nothing heavy is imported at module level so that ``--help`` stays instant.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from nanoseg.cli import common

DESCRIPTORS = ("min_feret", "max_feret", "ecd", "area", "perimeter")  # nanoseg.measure.SIZE_DESCRIPTORS


def command(
    tables: list[Path] = typer.Argument(..., help="Particle tables, the reference first (e.g. the manual "
                                        "measurement), then the others: each a particles.csv from `nanoseg "
                                        "measure` (its kept particles) or an ImageJ/Fiji Results table (.csv, or "
                                        ".xls/.txt as ImageJ saves them; every row counts)."),
    out: Path = typer.Option(Path("size_comparison.csv"), "--out", "-o", help="CSV table to write."),
    unit: Optional[str] = typer.Option(None, "--unit", help="Unit of the lengths in the ImageJ tables (the scale "
                                       "set in ImageJ; ImageJ does not write it): nm, um or px. Required when a "
                                       "table is an ImageJ one. A particles.csv names its own units; px compares "
                                       "every table in pixels."),
    column: str = typer.Option("min_feret", "--column", help=f"Descriptor to compare: {', '.join(DESCRIPTORS)} "
                               "(ImageJ: MinFeret, Feret, ECD from Area, Area, Perim.)."),
    names: Optional[list[str]] = typer.Option(None, "--name", help="Name of each table in the output, in the "
                                              "order of TABLES (repeat it; default: the file names)."),
) -> None:
    """Compare the size distributions of particle tables with the first one (the reference).

    For each table: n, mean, sd, median, D10, D50 and D90 of the descriptor in nm (nm² for
    area; px with --unit px), and against the reference the relative errors of mean and median
    and the two-sample Kolmogorov-Smirnov distance and p-value. Writes them to CSV and prints
    them as a Markdown table.

    Examples:

      nanoseg compare-sizes manual/Results.csv runs/unet/measure/particles.csv runs/mrunet/measure/particles.csv --unit nm --name manual --name UNet --name MultiResUNet --out baso4_sizes.csv

      nanoseg compare-sizes Results_um.csv particles.csv --unit um --column ecd
    """
    from nanoseg.atomic import atomic_path
    from nanoseg.errors import NanosegError
    from nanoseg.measure import compare_size_tables, read_size_table

    if len(tables) < 2:
        raise NanosegError("compare-sizes: give at least two tables, the reference first")
    if column not in DESCRIPTORS:
        raise NanosegError(f"--column {column!r}: choose one of {', '.join(DESCRIPTORS)}")
    if names and len(names) != len(tables):
        raise NanosegError(f"--name: given {len(names)} times for {len(tables)} tables; name every table or none")
    common.check_out_csv(out)
    if any(out.resolve() == t.resolve() for t in tables):
        raise NanosegError(f"--out {out} is one of the input tables; choose another file name")
    labels = names or _default_names(tables)
    if len(set(labels)) < len(labels):
        raise NanosegError(f"--name: the names repeat ({', '.join(labels)}); give each table its own")

    frames = {label: read_size_table(path, unit, column) for label, path in zip(labels, tables)}
    result = compare_size_tables(frames, column)
    with atomic_path(out) as tmp:
        result.to_csv(tmp, index=False)
    typer.echo(markdown_table(result))
    typer.echo(f"\nwrote {out}")


def _default_names(tables: list[Path]) -> list[str]:
    """File stems when they differ, else the paths as given."""
    stems = [t.stem for t in tables]
    return stems if len(set(stems)) == len(stems) else [str(t) for t in tables]


def markdown_table(result) -> str:
    """The comparison as a Markdown table: one row per table, the reference first."""
    unit = result["unit"].iloc[0]
    header = ["table", "n", f"mean ± sd ({unit})", "median", "D10", "D50", "D90", "Δ mean", "Δ median",
              "KS D", "KS p"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for i, row in enumerate(result.to_dict(orient="records")):
        cells = [str(row["table"]), str(row["n"]), f"{_num(row['mean'])} ± {_num(row['sd'])}",
                 *(_num(row[k]) for k in ("median", "d10", "d50", "d90"))]
        if i == 0:
            cells += ["reference"] + ["-"] * 3
        else:
            cells += [_percent(row["mean_rel_error"]), _percent(row["median_rel_error"]),
                      f"{row['ks_statistic']:.3f}", f"{row['ks_p_value']:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4g}"


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:+.1f} %"
