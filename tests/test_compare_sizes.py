"""Size tables of any source (ImageJ/Fiji Results, nanoseg particles.csv) and `nanoseg compare-sizes`."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nanoseg.errors import NanosegError
from nanoseg.measure import SIZE_DESCRIPTORS, read_size_table

#: ImageJ 1.x / Fiji "Results" saved as CSV: a row-number column headed ' ', 3 decimals.
IMAGEJ_HEADER = " ,Area,Mean,Min,Max,Perim.,Feret,FeretX,FeretY,FeretAngle,MinFeret"


def write_imagej(path, area, feret, min_feret, header=IMAGEJ_HEADER, sep=","):
    """A Results table as ImageJ writes it, lengths in whatever unit the caller's numbers are in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header.replace(",", sep)]
    for i, (a, f, m) in enumerate(zip(area, feret, min_feret), start=1):
        cells = {"Area": f"{a:.6g}", "Mean": "121.377", "Min": "61", "Max": "255", "Perim.": f"{3.3 * f:.6g}",
                 "Feret": f"{f:.6g}", "FeretX": "104", "FeretY": "37", "FeretAngle": "29.745",
                 "MinFeret": f"{m:.6g}", " ": str(i)}
        lines.append(sep.join(cells[name] for name in header.split(",")))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_particles(path, min_feret_nm, kept, pixel_size=2.0):
    """A nanoseg particles.csv (the columns compare-sizes reads, plus some it does not)."""
    n = len(min_feret_nm)
    m = np.asarray(min_feret_nm, float)
    df = pd.DataFrame({"image": ["a.tif"] * n, "label": np.arange(1, n + 1),
                       "min_feret_px": m / pixel_size, "min_feret_nm": m,
                       "max_feret_px": 1.4 * m / pixel_size, "max_feret_nm": 1.4 * m,
                       "area_px": (m / pixel_size) ** 2, "area_nm2": m**2, "ecd_px": 1.1 * m / pixel_size,
                       "ecd_nm": 1.1 * m, "kept": kept, "reason": ["" if k else "touches_border" for k in kept]})
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def test_imagej_results_in_um_and_nm_give_the_same_nm_columns(tmp_path):
    area_um2 = np.array([0.0123, 0.0456, 0.0789])
    feret_um, min_feret_um = np.array([0.151, 0.302, 0.415]), np.array([0.098, 0.187, 0.263])
    in_um = read_size_table(write_imagej(tmp_path / "um.csv", area_um2, feret_um, min_feret_um), unit="um")
    in_nm = read_size_table(write_imagej(tmp_path / "nm.csv", area_um2 * 1e6, feret_um * 1e3, min_feret_um * 1e3),
                            unit="nm")
    for df in (in_um, in_nm):
        assert df.attrs["source"] == "imagej" and df.attrs["unit"] == "nm"
        np.testing.assert_allclose(df["min_feret_nm"], min_feret_um * 1e3)
        np.testing.assert_allclose(df["max_feret_nm"], feret_um * 1e3)
        np.testing.assert_allclose(df["area_nm2"], area_um2 * 1e6)
        np.testing.assert_allclose(df["ecd_nm"], np.sqrt(4 * area_um2 * 1e6 / np.pi))
        np.testing.assert_allclose(df["perimeter_nm"], 3.3 * feret_um * 1e3, rtol=1e-5)
    # µm spelled as ImageJ and Fiji write it, and px (no scale set): the values as they are.
    px = read_size_table(tmp_path / "um.csv", unit="px", descriptor="min_feret")
    np.testing.assert_allclose(px["min_feret_px"], min_feret_um)
    np.testing.assert_allclose(read_size_table(tmp_path / "um.csv", unit="µm")["min_feret_nm"], min_feret_um * 1e3)


def test_imagej_results_without_row_numbers_or_saved_as_xls(tmp_path):
    """Without "Save row numbers" ImageJ leaves the first column out; .xls is tab-separated text."""
    no_index = write_imagej(tmp_path / "r.csv", [1.0, 2.0], [3.0, 4.0], [1.5, 2.5], header="Area,Feret,MinFeret")
    xls = write_imagej(tmp_path / "r.xls", [1.0, 2.0], [3.0, 4.0], [1.5, 2.5], sep="\t")
    for path in (no_index, xls):
        df = read_size_table(path, unit="nm", descriptor="min_feret")
        assert list(df["min_feret_nm"]) == [1.5, 2.5]


def test_a_nanoseg_particles_csv_gives_its_kept_particles(tmp_path):
    path = write_particles(tmp_path / "particles.csv", [10.0, 20.0, 30.0, 40.0], [True, False, True, True])
    for unit in (None, "nm", "um"):  # a particles.csv names its units: --unit (for ImageJ tables) is not used
        df = read_size_table(path, unit=unit, descriptor="min_feret")
        assert df.attrs["source"] == "nanoseg" and df.attrs["unit"] == "nm"
        assert list(df["min_feret_nm"]) == [10.0, 30.0, 40.0]
        assert list(df["area_nm2"]) == [100.0, 900.0, 1600.0]
    px = read_size_table(path, unit="px")
    assert px.attrs["unit"] == "px" and list(px["min_feret_px"]) == [5.0, 15.0, 20.0]


@pytest.mark.parametrize(("content", "unit", "fragment"), [
    ("Area,Feret,MinFeret\n", "nm", "no particles"),
    ("", "nm", "empty"),
    (" ,Area,Feret\n1,2,3\n", "nm", "no 'MinFeret' column"),
    (" ,Area,Feret,MinFeret\n1,2,3,4\n", None, "give --unit nm, um or px"),
    (" ,Area,Feret,MinFeret\n1,2,3,4\n2,2,3,x1\n", "nm", "'MinFeret' holds values that are not numbers ('x1' on line 3)"),
    (" ,Area,Feret,MinFeret\n1,2,3,-4\n", "nm", "not sizes"),
    ("a,b\n1,2\n", "nm", "neither a nanoseg particles.csv"),
    ("image,min_feret_px,kept\na,2,False\n", "nm", "no kept particle"),
    ("image,min_feret_px,kept\na,2,True\n", "nm", "measured without a pixel size"),
    (" ,Area,Feret,MinFeret\n1,2,3,4\n", "inch", "--unit 'inch'"),
])
def test_bad_tables_are_refused_with_the_file_and_the_fix(tmp_path, content, unit, fragment):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(NanosegError) as info:
        read_size_table(path, unit=unit, descriptor="min_feret")
    assert fragment in str(info.value)
    if "--unit 'inch'" not in fragment:
        assert str(path) in str(info.value)


def test_the_cli_lists_the_descriptors_the_reader_has():
    from nanoseg.cli.compare_sizes import DESCRIPTORS

    assert DESCRIPTORS == SIZE_DESCRIPTORS


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def test_compare_sizes_end_to_end(tmp_path, cli):
    rng = np.random.default_rng(0)
    manual_nm = np.round(rng.lognormal(np.log(60), 0.3, 120), 3)
    unet_nm = rng.lognormal(np.log(63), 0.32, 150)
    mres_nm = rng.lognormal(np.log(58), 0.28, 90)
    ref = write_imagej(tmp_path / "manual" / "Results.csv", area=(manual_nm / 1e3) ** 2,
                       feret=1.3 * manual_nm / 1e3, min_feret=manual_nm / 1e3)
    unet_kept = np.r_[np.ones(150, bool), np.zeros(10, bool)]
    unet = write_particles(tmp_path / "unet" / "measure" / "particles.csv", np.r_[unet_nm, np.full(10, 5.0)],
                           list(unet_kept))
    mres = write_particles(tmp_path / "mrunet" / "measure" / "particles.csv", mres_nm, [True] * 90)
    out = tmp_path / "cmp" / "sizes.csv"

    res = cli("compare-sizes", ref, unet, mres, "--unit", "um", "--out", out,
              "--name", "manual", "--name", "UNet", "--name", "MultiResUNet")
    assert res.code == 0, res.output
    table = pd.read_csv(out)
    assert list(table["table"]) == ["manual", "UNet", "MultiResUNet"]
    assert list(table["source"]) == ["imagej", "nanoseg", "nanoseg"]
    assert set(table["unit"]) == {"nm"} and set(table["descriptor"]) == {"min_feret"}
    # ImageJ wrote the um values with 6 significant digits: the reference as read back.
    manual_read = np.array([float(f"{v / 1e3:.6g}") * 1e3 for v in manual_nm])
    for row, values in zip(table.to_dict(orient="records"), (manual_read, unet_nm, mres_nm)):
        assert row["n"] == len(values)
        assert row["mean"] == pytest.approx(values.mean())
        assert row["sd"] == pytest.approx(values.std(ddof=1))
        assert row["median"] == pytest.approx(np.median(values))
        for q in (10, 50, 90):
            assert row[f"d{q}"] == pytest.approx(np.percentile(values, q))
        if row["table"] == "manual":
            assert all(math.isnan(row[k]) for k in ("mean_rel_error", "median_rel_error", "ks_statistic"))
            continue
        ks = stats.ks_2samp(manual_read, values)
        assert row["ks_statistic"] == pytest.approx(ks.statistic)
        assert row["ks_p_value"] == pytest.approx(ks.pvalue)
        assert row["mean_rel_error"] == pytest.approx(values.mean() / manual_read.mean() - 1)
        assert row["median_rel_error"] == pytest.approx(np.median(values) / np.median(manual_read) - 1)
    # The Markdown table on stdout: a header, a rule, one row per table.
    lines = [line for line in res.output.splitlines() if line.startswith("|")]
    assert len(lines) == 5 and "mean ± sd (nm)" in lines[0] and lines[2].startswith("| manual | 120 |")
    unet_row = table.iloc[1]
    assert f"{100 * unet_row['mean_rel_error']:+.1f} %" in lines[3] and f"{unet_row['ks_statistic']:.3f}" in lines[3]

    # Another descriptor; default names are the file stems, or the paths when the stems repeat.
    res = cli("compare-sizes", ref, unet, mres, "--unit", "um", "--out", out, "--column", "ecd")
    assert res.code == 0, res.output
    table = pd.read_csv(out)
    assert list(table["table"]) == [str(ref), str(unet), str(mres)]
    assert table["mean"].iloc[0] == pytest.approx(np.sqrt(4 * manual_read**2 / np.pi).mean(), rel=1e-5)
    assert table["mean"].iloc[2] == pytest.approx(1.1 * mres_nm.mean())


@pytest.mark.parametrize(("make", "args", "fragment"), [
    (lambda p: p.write_text(" ,Area,Feret\n1,2,3\n"), ["--unit", "nm"], "no 'MinFeret' column"),
    (lambda p: p.write_text(" ,Area,Feret,MinFeret\n1,2,3,4\n"), [], "give --unit nm, um or px"),
    (lambda p: p.write_text(" ,Area,Feret,MinFeret\n1,2,3,4\n2,2,3,n/a?\n"), ["--unit", "nm"], "not numbers"),
    (lambda p: p.write_text(" ,Area,Feret,MinFeret\n"), ["--unit", "nm"], "no particles"),
    (lambda p: p.write_text(""), ["--unit", "nm"], "the file is empty"),
    (lambda p: None, ["--unit", "nm"], "not found"),
    (lambda p: p.write_text(" ,Area,Feret,MinFeret\n1,2,3,4\n"), ["--unit", "nm", "--column", "diameter"],
     "--column 'diameter'"),
    (lambda p: p.write_text(" ,Area,Feret,MinFeret\n1,2,3,4\n"), ["--unit", "nm", "--name", "only-one"],
     "--name: given 1 times for 2 tables"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, cli, make, args, fragment):
    good = write_particles(tmp_path / "particles.csv", [10.0, 20.0, 30.0], [True, True, True])
    bad = tmp_path / "Results.csv"
    make(bad)
    out = tmp_path / "out" / "sizes.csv"
    res = cli("compare-sizes", bad, good, "--out", out, *args)
    assert res.code == 2
    line = res.error_line()
    assert fragment in line, line
    assert not (tmp_path / "out").exists()


def test_one_table_or_the_output_over_an_input_is_refused(tmp_path, cli):
    good = write_particles(tmp_path / "particles.csv", [10.0, 20.0, 30.0], [True, True, True])
    res = cli("compare-sizes", good, "--out", tmp_path / "s.csv")
    assert res.code == 2 and "at least two tables" in res.error_line()
    res = cli("compare-sizes", good, good, "--out", good)
    assert res.code == 2 and "is one of the input tables" in res.error_line()
    assert not (tmp_path / "s.csv").exists()


def test_help_imports_nothing_heavy():
    # numpy comes with the logging setup every sub-command's callback runs (nanoseg.runtime).
    code = ("import sys; from nanoseg.cli import app; from typer.testing import CliRunner;"
            "r = CliRunner().invoke(app, ['compare-sizes', '--help']); assert r.exit_code == 0, r.output;"
            "assert 'nanoseg compare-sizes manual/Results.csv' in r.output, r.output;"
            "print([m for m in ('torch', 'pandas', 'scipy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "COLUMNS": "400"})
    assert out.stdout.strip() == "[]"
