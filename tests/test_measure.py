"""Measurements on shapes with known geometry, calibration, size statistics, stage outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk, polygon

from nanoseg.errors import NanosegError
from nanoseg.measure import (
    bootstrap_ci,
    compare_distributions,
    ec_definition_check,
    fit_lognormal,
    join_decisions,
    measure_files,
    median_window,
    pooled_statistics,
    resample_counts,
    size_summary,
    write_results,
)
from nanoseg.particles import feret_diameters, measure_images, measure_particles, pixel_corner_points


def _one(labels, **kwargs) -> pd.Series:
    df = measure_particles(labels, **kwargs)
    assert len(df) == 1
    return df.iloc[0]


def _brute_force_feret(points: np.ndarray) -> tuple[float, float]:
    """Min and max projection width over 0.005-degree steps: slow, independent reference."""
    theta = np.radians(np.arange(0, 180, 0.005))
    directions = np.stack([np.sin(theta), np.cos(theta)], axis=1)
    proj = points @ directions.T
    width = proj.max(axis=0) - proj.min(axis=0)
    return float(width.min()), float(width.max())


# ------------------------------------------------------------------ Feret on exact polygons


def test_feret_of_345_triangle_is_exact():
    f = feret_diameters(np.array([[0.0, 0.0], [0.0, 4.0], [3.0, 0.0]]))
    assert f["max_feret"] == pytest.approx(5.0, abs=1e-12)
    assert f["min_feret"] == pytest.approx(2.4, abs=1e-12)  # smallest altitude = 2 * area / longest side


def test_feret_of_equilateral_triangle_and_rotated_rectangle():
    s = 10.0
    tri = np.array([[0.0, 0.0], [0.0, s], [-s * math.sqrt(3) / 2, s / 2]])
    f = feret_diameters(tri)
    assert f["min_feret"] == pytest.approx(s * math.sqrt(3) / 2, abs=1e-9)
    assert f["max_feret"] == pytest.approx(s, abs=1e-9)
    # a 4 x 9 rectangle rotated by 30 degrees, plus interior points that must not matter
    a = math.radians(30)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    rect = np.array([[0, 0], [4, 0], [4, 9], [0, 9], [2, 3], [1, 5]], float) @ rot.T
    f = feret_diameters(rect)
    assert f["min_feret"] == pytest.approx(4.0, abs=1e-9)
    assert f["max_feret"] == pytest.approx(math.hypot(4, 9), abs=1e-9)


def test_pixel_corner_points_hull_is_the_pixel_union_hull():
    mask = np.zeros((5, 6), bool)
    mask[1, 2] = True
    pts = pixel_corner_points(mask)
    assert {tuple(p) for p in pts} == {(0.5, 1.5), (1.5, 1.5), (0.5, 2.5), (1.5, 2.5)}


# ------------------------------------------------------------------ drawn pixel shapes


def test_square_descriptors_exact():
    lab = np.zeros((40, 40), np.int32)
    lab[10:20, 12:22] = 1
    p = _one(lab)
    assert p.area_px == 100
    assert p.min_feret_px == pytest.approx(10.0)
    assert p.max_feret_px == pytest.approx(10 * math.sqrt(2))
    assert p.ecd_px == pytest.approx(math.sqrt(400 / math.pi))
    assert p.aspect_ratio == pytest.approx(1 / math.sqrt(2))
    assert p.solidity == pytest.approx(1.0)
    assert p.convexity == pytest.approx(1.0)
    assert p.perimeter_px == pytest.approx(36 + 4 * math.sqrt(0.5))  # edge midpoints, corners cut
    assert 0.785 < p.circularity < 0.85  # a true square has pi / 4
    assert (p.centroid_row_px, p.centroid_col_px) == (14.5, 16.5)
    assert p.max_feret_angle_deg in (pytest.approx(45.0), pytest.approx(135.0))


def test_rectangle_descriptors_and_angles():
    lab = np.zeros((50, 60), np.int32)
    lab[10:20, 5:35] = 3  # 10 rows x 30 columns
    p = _one(lab)
    assert p.label == 3
    assert p.min_feret_px == pytest.approx(10.0)
    assert p.max_feret_px == pytest.approx(math.hypot(10, 30))
    assert p.min_feret_angle_deg == pytest.approx(90.0)  # measured across the rows (vertically)
    assert p.aspect_ratio == pytest.approx(10 / math.hypot(10, 30))
    lab_t = np.ascontiguousarray(lab.T)  # transposed: 30 rows x 10 columns
    assert _one(lab_t).min_feret_angle_deg == pytest.approx(0.0)


def test_disc_feret_close_to_diameter():
    r = 20
    lab = np.zeros((64, 64), np.int32)
    lab[disk((32, 32), r + 0.5)] = 1  # pixel centres within r + 0.5 of the centre
    p = _one(lab)
    d = 2 * r + 1  # width of the digital disc along the axes
    assert d - 1.0 <= p.min_feret_px <= d + 1e-9
    assert d <= p.max_feret_px <= d + 1.0
    assert p.ecd_px == pytest.approx(d, rel=0.02)
    assert 0.88 < p.circularity <= 1.0
    assert p.solidity > 0.97


def test_pixel_triangle_matches_brute_force():
    lab = np.zeros((60, 60), np.int32)
    rr, cc = polygon([5, 50, 40], [5, 12, 55], lab.shape)
    lab[rr, cc] = 1
    p = _one(lab)
    ref_min, ref_max = _brute_force_feret(pixel_corner_points(lab == 1))
    assert p.min_feret_px == pytest.approx(ref_min, abs=5e-3)  # width has a kink at its minimum
    assert p.max_feret_px == pytest.approx(ref_max, abs=1e-6)
    assert p.min_feret_px <= ref_min + 1e-9  # exact minimum can only be smaller than a sampled one


def test_concave_shape_solidity_and_convexity():
    lab = np.zeros((40, 40), np.int32)
    lab[5:35, 5:35] = 1
    lab[5:25, 15:25] = 0  # U shape
    p = _one(lab)
    assert p.solidity == pytest.approx((900 - 200) / 900, abs=0.01)
    assert p.convexity < 0.9
    assert p.min_feret_px == pytest.approx(30.0)  # Feret diameters see only the hull


def test_inscribed_diameter_of_strips_and_touching_particles():
    lab = np.zeros((40, 60), np.int32)
    lab[5:12, 5:50] = 1  # 7 px wide strip
    lab[20:26, 5:50] = 2  # 6 px wide: the deepest pixel centre is half a pixel off the middle
    lab[26:31, 5:50] = 3  # touches 2: its pixels are background for 2's inscribed circle
    df = measure_particles(lab).set_index("label")
    assert df.loc[1, "inscribed_diameter_px"] == pytest.approx(7.0)
    assert df.loc[2, "inscribed_diameter_px"] == pytest.approx(5.0)
    assert df.loc[3, "inscribed_diameter_px"] == pytest.approx(5.0)
    assert _one(np.pad(np.ones((1, 1), np.int32), 3)).inscribed_diameter_px == pytest.approx(1.0)


def test_convex_particles_are_thick_and_crescents_thin():
    """Inscribed diameter / min Feret is at least 2/3 for a convex body (equality: the equilateral
    triangle); on the pixel grid, with one pixel of slack, convex shapes keep that bound and a
    crescent falls far below it (the ``thin`` rule of the keep/discard step)."""
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(200):
        lab = np.zeros((80, 80), np.int32)
        n = int(rng.integers(3, 7))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(4, 30)
        rr, cc = polygon(40 + radius * np.sin(angles), 40 + radius * np.cos(angles) * rng.uniform(0.5, 1.0), lab.shape)
        lab[rr, cc] = 1
        if lab.sum() < 3:
            continue
        p = _one(lab)
        ratios.append((p.inscribed_diameter_px + 1) / p.min_feret_px)
    assert min(ratios) >= 0.66
    yy, xx = np.mgrid[:80, :80]
    crescent = ((yy - 40) ** 2 + (xx - 40) ** 2 <= 25**2) & ((yy - 40) ** 2 + (xx - 44) ** 2 > 23**2)
    p = _one(crescent.astype(np.int32))
    assert (p.inscribed_diameter_px + 1) / p.min_feret_px < 0.3


def test_pixel_size_converts_lengths_and_areas():
    lab = np.zeros((40, 60), np.int32)
    lab[10:20, 5:35] = 1
    lab[25:33, 40:44] = 2
    px = measure_particles(lab)
    nm = measure_particles(lab, pixel_size_nm=2.5)
    assert "min_feret_nm" not in px.columns and "area_nm2" not in px.columns
    for stem in ("perimeter", "ecd", "min_feret", "max_feret", "inscribed_diameter", "centroid_row", "centroid_col"):
        np.testing.assert_allclose(nm[f"{stem}_nm"], px[f"{stem}_px"] * 2.5)
    np.testing.assert_allclose(nm["area_nm2"], px["area_px"] * 6.25)
    assert nm.loc[0, "min_feret_nm"] == pytest.approx(25.0)
    assert nm.loc[0, "area_nm2"] == pytest.approx(300 * 6.25)
    for col in ("min_feret_angle_deg", "aspect_ratio", "circularity", "solidity"):
        np.testing.assert_allclose(nm[col], px[col])


def test_border_particles_excluded_by_default_and_flagged_otherwise():
    lab = np.zeros((30, 30), np.int32)
    lab[0:5, 10:15] = 1  # top edge
    lab[10:15, 10:15] = 2
    lab[25:30, 2:6] = 3  # bottom edge (the info bar side)
    lab[12:16, 26:30] = 4  # right edge
    assert measure_particles(lab)["label"].tolist() == [2]
    all_df = measure_particles(lab, exclude_border=False)
    assert dict(zip(all_df["label"], all_df["touches_border"])) == {1: True, 2: False, 3: True, 4: True}


def test_single_pixel_particle():
    lab = np.zeros((9, 9), np.int32)
    lab[4, 4] = 1
    p = _one(lab)
    assert p.area_px == 1 and p.min_feret_px == pytest.approx(1.0) and p.max_feret_px == pytest.approx(math.sqrt(2))
    assert p.perimeter_px == pytest.approx(4 * math.sqrt(0.5)) and np.isfinite(p.circularity)


def test_mean_intensity_and_empty_labels():
    lab = np.zeros((20, 20), np.int32)
    lab[5:10, 5:10] = 1
    img = np.zeros((20, 20), np.float32)
    img[5:10, 5:10] = 0.75
    assert _one(lab, image=img).mean_intensity == pytest.approx(0.75)
    empty = measure_particles(np.zeros((10, 10), np.int32), pixel_size_nm=1.0)
    assert len(empty) == 0 and "min_feret_nm" in empty.columns


# ------------------------------------------------------------------ statistics


def test_size_summary_statistics():
    df = pd.DataFrame({"min_feret_nm": np.arange(1, 101, dtype=float), "min_feret_px": np.arange(1, 101) / 2.0})
    s = size_summary(df, ["min_feret"], fit=False)["min_feret"]
    assert s["column"] == "min_feret_nm" and s["unit"] == "nm"
    assert s["count"] == 100
    assert s["mean"] == pytest.approx(50.5)
    assert s["median"] == pytest.approx(50.5)
    assert s["sd"] == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert s["d10"] == pytest.approx(10.9) and s["d90"] == pytest.approx(90.1)


# ------------------------------------------------------------------ confidence intervals


def test_pooled_statistics_equal_the_statistics_of_explicit_resamples():
    rng = np.random.default_rng(5)
    for _ in range(40):
        n_units = int(rng.integers(1, 7))
        units = rng.permutation(np.repeat(np.arange(n_units), rng.integers(1, 6, n_units)))
        values = rng.normal(size=units.size).round(1)  # ties on purpose
        counts = resample_counts(rng, n_units, 30)
        assert (counts.sum(axis=1) == n_units).all()
        # no window, a sensible one, and windows too narrow to hold any median (the slow path)
        for window in (None, median_window(np.sort(values)), (0, 0), (values.size - 1, values.size)):
            medians, means = pooled_statistics(values, units, counts, window)
            for r in range(len(counts)):
                pool = np.concatenate([np.repeat(values[units == u], counts[r, u]) for u in range(n_units)])
                assert medians[r] == pytest.approx(np.median(pool)) and means[r] == pytest.approx(pool.mean())


def _clustered_sample(rng, n_images, per_image, median=50.0, gsd=1.5, image_sd=0.15):
    """Log-normal particle sizes whose median shifts from image to image (log-normal too):
    the population median stays ``median``."""
    shift = rng.normal(0.0, image_sd, n_images)
    images = np.repeat(np.arange(n_images), per_image)
    sizes = median * np.exp(shift[images] + rng.normal(0.0, np.log(gsd), images.size))
    return sizes, images


def test_bootstrap_over_images_covers_the_true_median():
    rng = np.random.default_rng(0)
    sizes, images = _clustered_sample(rng, 20, 60)
    ci = bootstrap_ci(sizes, images, seed=1)
    assert ci["median_ci95"][0] < 50.0 < ci["median_ci95"][1]
    assert ci["mean_ci95"][0] < sizes.mean() < ci["mean_ci95"][1]
    assert "over images" in ci["ci_method"] and ci["ci_notes"] == []
    # over repeated samples the interval over images covers the true median about 95 % of the
    # time; pretending the particles were independent covers it far less often
    hits_images = hits_particles = 0
    for k in range(40):
        sizes, images = _clustered_sample(rng, 20, 60)
        lo, hi = bootstrap_ci(sizes, images, n_resamples=500, seed=k)["median_ci95"]
        hits_images += lo < 50.0 < hi
        lo, hi = bootstrap_ci(sizes, None, n_resamples=500, seed=k)["median_ci95"]
        hits_particles += lo < 50.0 < hi
    assert hits_images >= 34, hits_images
    assert hits_particles <= 30, hits_particles


def test_bootstrap_interval_narrows_with_more_images_and_repeats_with_the_seed():
    rng = np.random.default_rng(3)
    few = bootstrap_ci(*_clustered_sample(rng, 5, 60), seed=0)["median_ci95"]
    many = bootstrap_ci(*_clustered_sample(rng, 40, 60), seed=0)["median_ci95"]
    assert many[1] - many[0] < 0.6 * (few[1] - few[0])
    sizes, images = _clustered_sample(rng, 10, 30)
    assert bootstrap_ci(sizes, images, seed=7) == bootstrap_ci(sizes, images, seed=7)
    assert bootstrap_ci(sizes, images, seed=7)["median_ci95"] != bootstrap_ci(sizes, images, seed=8)["median_ci95"]


def test_bootstrap_notes_one_image_and_few_particles():
    rng = np.random.default_rng(4)
    one = bootstrap_ci(rng.lognormal(3.0, 0.4, 30), np.zeros(30))
    assert "over particles" in one["ci_method"]
    assert any("one image only" in n for n in one["ci_notes"])
    assert any("fewer than 50" in n for n in one["ci_notes"])
    assert one["median_ci95"][0] <= one["median_ci95"][1]
    many = bootstrap_ci(rng.lognormal(3.0, 0.4, 600), np.repeat(np.arange(10), 60))
    assert many["ci_notes"] == []
    empty = bootstrap_ci(np.array([np.nan]))
    assert empty["median_ci95"] is None and empty["mean_ci95"] is None


def test_size_summary_intervals_use_the_image_column():
    rng = np.random.default_rng(6)
    sizes, images = _clustered_sample(rng, 12, 40)
    df = pd.DataFrame({"image": images.astype(str), "ecd_nm": sizes, "ecd_px": sizes / 2})
    entry = size_summary(df, ["ecd"], fit=False, seed=2)["ecd"]
    assert entry["median_ci95"] == bootstrap_ci(sizes, images.astype(str), seed=2)["median_ci95"]
    assert entry["median_ci95"][0] < entry["median"] < entry["median_ci95"][1]
    assert "over images" in entry["ci_method"]
    assert "median_ci95" not in size_summary(df, ["ecd"], fit=False, ci=False)["ecd"]


def test_lognormal_fit_recovers_parameters():
    rng = np.random.default_rng(1)
    values = rng.lognormal(mean=np.log(40.0), sigma=0.3, size=4000)
    fit = fit_lognormal(values)
    assert fit["scale"] == pytest.approx(40.0, rel=0.03)
    assert fit["shape"] == pytest.approx(0.3, rel=0.05)
    assert fit_lognormal(np.array([1.0, 1.0])) is None


def test_ec_definition_statement():
    small = pd.DataFrame({"min_feret_nm": [20.0, 40.0, 60.0, 150.0]})
    res = ec_definition_check(small)
    assert res["is_nanomaterial"] is True and res["share_below_limit"] == 0.75
    assert "meets" in res["statement"]
    large = pd.DataFrame({"min_feret_nm": [120.0, 140.0, 60.0]})
    assert ec_definition_check(large)["is_nanomaterial"] is False
    assert ec_definition_check(pd.DataFrame({"min_feret_px": [3.0]}))["checked"] is False


def test_ks_comparison_separates_shifted_distributions():
    rng = np.random.default_rng(0)
    a, b = rng.normal(50, 5, 300), rng.normal(50, 5, 300)
    assert compare_distributions(a, b)["p_value"] > 0.01
    assert compare_distributions(a, b + 5)["p_value"] < 1e-6


# ------------------------------------------------------------------ results and the stage


def _toy_image_and_labels():
    lab = np.zeros((64, 80), np.int32)
    lab[5:15, 5:20] = 1
    lab[20:30, 30:36] = 2
    lab[40:52, 50:60] = 3
    lab[55:64, 0:10] = 4  # touches the border
    rr, cc = disk((20, 60), 6)
    lab[rr, cc] = 5
    img = np.where(lab > 0, 0.8, 0.2).astype(np.float32)
    return img, lab


def test_write_results_outputs(tmp_path):
    img, lab = _toy_image_and_labels()
    particles = measure_images([("toy", lab, img, 5.0)])
    decisions = pd.DataFrame({"image": "toy", "label": [1, 2, 3, 4, 5], "score": [0.9, 0.2, 0.8, 0.9, 0.7],
                              "kept": [True, False, True, False, True],
                              "reason": ["", "score_below_threshold", "", "touches_border", ""]})
    particles = join_decisions(particles, decisions)
    summary = write_results(particles, tmp_path, micrographs={"toy": img}, labels={"toy": lab},
                            pixel_size_source="test", size_prior="outlines", bins=5, warnings=["w1"])
    table = pd.read_csv(tmp_path / "particles.csv")
    assert len(table) == 5 and set(table.loc[~table["kept"], "reason"]) == {"score_below_threshold", "touches_border"}
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["n_kept"] == summary["n_kept"] == 3
    assert on_disk["descriptors"]["min_feret"]["column"] == "min_feret_nm"
    assert on_disk["pixel_size_nm"] == 5.0 and on_disk["size_prior"] == "outlines"
    assert on_disk["warnings"] == ["w1"]
    # no counting rule given: recorded as unknown, with the pixel size and its source
    assert on_disk["counting_rule"]["method"] is None
    assert on_disk["counting_rule"]["pixel_size_nm"] == 5.0 and on_disk["counting_rule"]["pixel_size_source"] == "test"
    kept_min_feret = table.loc[table["kept"], "min_feret_nm"]
    ci = on_disk["descriptors"]["min_feret"]["median_ci95"]
    assert ci[0] <= kept_min_feret.median() <= ci[1]
    assert on_disk["ec_definition"]["median_ci95_nm"] == ci and "confidence interval" in on_disk["ec_definition"]["statement"]
    for stem in ("ecd", "min_feret", "max_feret", "area"):
        assert (tmp_path / f"hist_{stem}.png").stat().st_size > 0
        assert (tmp_path / f"hist_{stem}.svg").read_text().lstrip().startswith("<?xml")
    overlay = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "overlays" / "toy.png"))
    assert overlay.shape == (64, 80, 3)
    inside_kept, inside_dropped = overlay[10, 10], overlay[25, 33]
    assert inside_kept[1] > inside_kept[0] and inside_dropped[0] > inside_dropped[1]  # green vs red
    assert (tmp_path / "report.html").is_file()


def _write_run(tmp_path):
    from nanoseg.io import write_tiff

    img, lab = _toy_image_and_labels()
    images = tmp_path / "images"
    write_tiff(images / "toy.tif", (img * 255).astype(np.uint8), pixel_size_nm=4.0)
    run = tmp_path / "run"
    write_tiff(run / "adapt" / "labels" / "toy.tif", lab.astype(np.uint16))  # the labels measure reads
    (run / "masks").mkdir(parents=True)
    (run / "masks" / "stats.json").write_text(json.dumps({"size_prior": "images", "median_area_px": 120}))
    (run / "classify").mkdir()
    return images, run


def _ctx(run, images, stage_name, **sections):
    from nanoseg.config import build_config
    from nanoseg.pipeline import STAGES, StageContext

    cfg = build_config({"data": {"images": str(images), "info_bar_rows": 0}, **sections}, profile="demo")
    stage = next(s for s in STAGES if s.name == stage_name)
    (run / stage_name).mkdir(parents=True, exist_ok=True)
    return StageContext(config=cfg, run_dir=run, stage=stage)


def test_decisions_join_keeps_leading_zeros(tmp_path):
    from nanoseg.classify import read_decisions

    pd.DataFrame({"image": ["007"], "label": [1], "score": [0.2], "kept": [False], "reason": ["score_below_threshold"]}
                 ).to_csv(tmp_path / "d.csv", index=False)
    lab = np.zeros((10, 10), np.int32)
    lab[3:6, 3:6] = 1
    joined = join_decisions(measure_images([("007", lab, None, None)]), read_decisions(tmp_path / "d.csv"))
    assert joined["reason"].tolist() == ["score_below_threshold"] and not joined["kept"].any()


def test_run_stage_measure(tmp_path):
    from nanoseg.measure import run_stage

    images, run = _write_run(tmp_path)
    run_stage(_ctx(run, images, "measure", classify={"method": "rules"}))
    out = run / "measure"
    table = pd.read_csv(out / "particles.csv", keep_default_na=False)
    assert len(table) == 5
    assert table.set_index("label").loc[4, "reason"] == "touches_border"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_kept"] == 4 and summary["pixel_size_nm"] == pytest.approx(4.0)
    assert summary["size_prior"] == {"masks.size_prior": "images"}
    assert table.set_index("label").loc[1, "min_feret_nm"] == pytest.approx(10 * 4.0)
    assert (out / "report.html").is_file() and (out / "overlays" / "toy.png").is_file()
    rule = summary["counting_rule"]
    assert rule["method"] == "rules" and not rule["classifier"]["ran"] and rule["edge_particles_excluded"]
    assert rule["pixel_size_nm"] == pytest.approx(4.0) and rule["pixel_size_source"] != "unknown"
    assert summary["warnings"] == []
    # one image: the intervals resample particles and say so
    assert "over particles" in summary["descriptors"]["ecd"]["ci_method"]
    assert summary["descriptors"]["ecd"]["median_ci95"] is not None
    # one road: the stage wrote what `nanoseg measure --labels` writes, decisions included
    direct = measure_files([images], tmp_path / "direct", _ctx(run, images, "measure", classify={"method": "rules"}
                                                                ).config, labels_dir=run / "adapt" / "labels")
    pd.testing.assert_frame_equal(table, pd.read_csv(tmp_path / "direct" / "particles.csv", keep_default_na=False))
    assert direct["n_kept"] == summary["n_kept"]
    assert (out / "decisions.csv").read_text() == (tmp_path / "direct" / "decisions.csv").read_text()


def test_run_stage_measure_records_the_size_prior_fallback(tmp_path):
    from nanoseg.measure import run_stage

    images, run = _write_run(tmp_path)
    (run / "masks" / "stats.json").write_text(json.dumps({"size_prior": "outlines", "size_prior_configured": "images"}))
    run_stage(_ctx(run, images, "measure", classify={"method": "rules"}))
    summary = json.loads((run / "measure" / "summary.json").read_text())
    assert len(summary["warnings"]) == 1
    assert "size_prior=images" in summary["warnings"][0] and "size_prior=outlines" in summary["warnings"][0]


def test_run_stage_measure_without_the_classifier_applies_rules_and_says_so(tmp_path):
    from nanoseg.measure import run_stage

    images, run = _write_run(tmp_path)
    run_stage(_ctx(run, images, "measure"))  # demo profile: classify.method network, but no classify/model.pt
    table = pd.read_csv(run / "measure" / "particles.csv", keep_default_na=False).set_index("label")
    assert table.loc[4, "reason"] == "touches_border" and not table.loc[4, "kept"]
    summary = json.loads((run / "measure" / "summary.json").read_text())
    assert summary["size_prior"] == {"masks.size_prior": "images"}
    # the configured classifier did not run: the switch to rules is stated, not silent
    assert summary["classify_method"] == "rules" and summary["counting_rule"]["method"] == "rules"
    assert not summary["counting_rule"]["classifier"]["ran"]
    assert not summary["counting_rule"]["partly_covered_excluded"]
    assert any("classify/model.pt" in w and "rules alone" in w for w in summary["warnings"])


def test_cli_measure_with_labels_and_compare(tmp_path):
    from typer.testing import CliRunner

    from nanoseg.cli import app

    images, run = _write_run(tmp_path)
    labels = run / "adapt" / "labels"
    runner = CliRunner()
    first = runner.invoke(app, ["measure", str(images), "--labels", str(labels), "--out", str(tmp_path / "a"),
                                "--set", "data.info_bar_rows=0"])
    assert first.exit_code == 0, first.output
    assert "kept 4 of 5" in first.output  # rules only: the border particle is dropped
    assert "warning:" in first.output and "--classifier" in first.output
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["counting_rule"]["method"] == "rules" and summary["counting_rule"]["edge_particles_excluded"]
    assert [r["name"] for r in summary["counting_rule"]["rules"]] == ["touches_border", "min_feret_below_min", "thin",
                                                                      "intensity_below_li"]
    assert len(summary["warnings"]) == 1 and "--classifier" in summary["warnings"][0]
    second = runner.invoke(app, ["measure", str(images), "--labels", str(labels), "--out", str(tmp_path / "b"),
                                 "--set", "data.info_bar_rows=0", "--compare", str(tmp_path / "a" / "particles.csv")])
    assert second.exit_code == 0, second.output
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["comparison"]["p_value"] == pytest.approx(1.0)
    assert (tmp_path / "b" / "compare_min_feret.png").is_file()


def test_shared_manual_masks_give_about_140_particles(shared_data):
    from skimage.measure import label

    from nanoseg.io import read_mask

    counts = []
    for stem in ("1908248", "1908254", "1908264"):
        lab = label(read_mask(shared_data / "masks" / f"{stem}_m.tif"), connectivity=1)
        df = measure_particles(lab, pixel_size_nm=7.34375, exclude_border=False)
        counts.append(len(df))
        big = df[df["area_px"] >= 20]
        # median ECD about 24 px (dataset README)
        assert 15 < big["ecd_px"].median() < 35
        assert (big["min_feret_px"] <= big["max_feret_px"]).all()
    assert 90 < np.mean(counts) < 200, counts


def test_measure_files_segments_with_a_model(tmp_path, four_squares):
    """The --model path: a (barely trained) segmentation model, then classify and measure."""
    torch = pytest.importorskip("torch")
    from nanoseg.config import build_config
    from nanoseg.io import write_tiff
    from nanoseg.measure import measure_files
    from nanoseg.segment import Pair, train

    torch.manual_seed(0)
    img, inst = four_squares
    seg = build_config({"segment": {"architecture": "unet", "base_width": 4, "depth": 2, "tile_size_px": 32,
                                    "batch_size": 2, "steps": 2, "val_every": 1}}, profile="demo").segment
    model = train([Pair(img, inst, "a"), Pair(img, inst, "b")], seg, tmp_path / "seg", rng=np.random.default_rng(0))
    write_tiff(tmp_path / "images" / "x.tif", (img * 255).astype(np.uint8), pixel_size_nm=2.0)
    cfg = build_config({"data": {"info_bar_rows": 0}}, profile="demo")
    summary = measure_files([tmp_path / "images"], tmp_path / "out", cfg, model=model, probabilities=True)
    assert (tmp_path / "out" / "segment" / "labels" / "x.tif").is_file()
    import tifffile

    prob = tifffile.imread(tmp_path / "out" / "segment" / "probabilities" / "x.tif")
    assert prob.shape == (64, 64) and prob.dtype == np.float32 and 0 <= prob.min() <= prob.max() <= 1
    assert summary["n_particles"] == len(pd.read_csv(tmp_path / "out" / "particles.csv"))
    assert summary["classify_method"] == "rules"  # no classifier given
    with pytest.raises(NanosegError, match="give --model .* or --labels"):
        measure_files([tmp_path / "images"], tmp_path / "out2", cfg)


def test_run_stage_measure_reports_the_fakes_realism(tmp_path):
    from nanoseg.measure import run_stage

    images, run = _write_run(tmp_path)
    (run / "pairs").mkdir(exist_ok=True)
    scores = {"classifier_accuracy": 0.83, "histogram_distance": 0.0287, "spectrum_distance_decades": 0.31,
              "translator": "render"}
    (run / "pairs" / "realism.json").write_text(json.dumps(scores))
    run_stage(_ctx(run, images, "measure"))
    summary = json.loads((run / "measure" / "summary.json").read_text())
    assert summary["realism"] == scores
    html = (run / "measure" / "report.html").read_text()
    assert "83 % held-out accuracy" in html and "render" in html
