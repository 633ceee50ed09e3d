"""Stage 2: Perlin placement, mask assembly (determinism, counts, 4-connected separation), density estimate, stage outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from skimage import measure

from nanoseg.config import MasksConfig, build_config
from nanoseg.errors import NanosegError
from nanoseg.masks import (
    PARTICLE_COLUMNS,
    assemble_mask,
    clark_evans_ratio,
    draw_scales,
    estimate_particle_density,
    mask_statistics,
    perlin_density,
    sample_positions,
    simulate_masks,
    size_factor_for,
)
from nanoseg.shapes import random_polygons


@pytest.fixture(scope="module")
def shapes():
    return random_polygons(30, 32, np.random.default_rng(0), mean_area_px=150)


def _assert_instances_match_binary(instances, binary):
    """4-connected labelling of the binary mask gives exactly the instances (up to numbering)."""
    assert np.array_equal(binary, instances > 0)
    components = measure.label(binary, connectivity=1)
    fg = components > 0
    pairs = set(zip(components[fg].tolist(), instances[fg].tolist()))
    assert len(pairs) == components.max() == len(np.unique(instances[fg]))


def test_perlin_density_range_and_seed():
    a = perlin_density((60, 80), cell_px=20, octaves=2, seed=1)
    assert a.shape == (60, 80) and a.dtype == np.float32
    assert a.min() == 0 and a.max() == pytest.approx(1)
    assert np.array_equal(a, perlin_density((60, 80), 20, 2, seed=1))
    assert not np.array_equal(a, perlin_density((60, 80), 20, 2, seed=2))
    # smooth on the scale of a cell: neighbouring pixels differ little
    assert np.abs(np.diff(a, axis=1)).mean() < 0.05


def test_perlin_placement_is_more_clustered_than_uniform():
    shape = (400, 600)
    perlin, uniform = [], []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        density = perlin_density(shape, cell_px=100, octaves=2, seed=seed)
        perlin.append(clark_evans_ratio(sample_positions(density, 150, rng, clustering=20), shape[0] * shape[1]))
        uniform.append(clark_evans_ratio(sample_positions(density, 150, rng, clustering=0), shape[0] * shape[1]))
    assert np.mean(uniform) == pytest.approx(1.0, abs=0.12)  # Poisson: ratio ~1
    assert np.mean(perlin) < np.mean(uniform) - 0.3


def test_draw_scales_cut_and_distribution():
    rng = np.random.default_rng(0)
    scales = draw_scales(20000, rng, sd=0.1, cut_sd=3)
    assert scales.mean() == pytest.approx(1, abs=0.01) and scales.std() == pytest.approx(0.1, rel=0.05)
    assert scales.min() >= 0.7 - 1e-9 and scales.max() <= 1.3 + 1e-9
    narrow = draw_scales(20000, rng, sd=0.2, cut_sd=2)
    assert np.abs(narrow - 1).max() <= 0.4 + 1e-9 and np.median(narrow) == pytest.approx(1, abs=0.01)


def test_assembly_deterministic_and_consistent(shapes):
    cfg = MasksConfig(clustering=10, perlin_cell_px=60)
    a = assemble_mask(shapes, (160, 200), 40, np.random.default_rng(7), cfg)
    b = assemble_mask(shapes, (160, 200), 40, np.random.default_rng(7), cfg)
    c = assemble_mask(shapes, (160, 200), 40, np.random.default_rng(8), cfg)
    assert np.array_equal(a.instances, b.instances) and a.particles.equals(b.particles)
    assert not np.array_equal(a.instances, c.instances)
    assert a.instances.dtype == np.uint16
    _assert_instances_match_binary(a.instances, a.binary)
    # later particles on top: some occlusion happens at this density, and labels are 1..K
    table = a.particles
    assert table["label"].tolist() == list(range(1, a.instances.max() + 1))
    assert (table["visible_fraction"] < 0.95).any()
    assert table["area_px"].tolist() == np.bincount(a.instances.ravel())[1:].tolist()
    assert (table["area_px"] >= cfg.min_visible_px).all()
    assert ((table["whole"]) == ((table["visible_fraction"] >= 0.95) & ~table["touches_border"])).all()
    edge = set(np.concatenate([a.instances[0], a.instances[-1], a.instances[:, 0], a.instances[:, -1]]).tolist()) - {0}
    assert set(table.loc[table["touches_border"], "label"]) == edge


def test_max_overlap_limits_occlusion(shapes):
    visible = {}
    for limit in (0.0, 1.0):
        cfg = MasksConfig(clustering=15, perlin_cell_px=60, max_overlap=limit)
        tables = [assemble_mask(shapes, (150, 150), 30, np.random.default_rng(s), cfg).particles for s in range(3)]
        visible[limit] = pd.concat(tables)["visible_fraction"].mean()
    assert visible[0.0] > visible[1.0] + 0.05


def test_size_factor_scales_particles(shapes):
    cfg = MasksConfig(clustering=0)
    small = assemble_mask(shapes, (200, 200), 20, np.random.default_rng(1), cfg, size_factor=1.0)
    large = assemble_mask(shapes, (200, 200), 20, np.random.default_rng(1), cfg, size_factor=1.5)
    ratio = large.particles["full_area_px"].median() / small.particles["full_area_px"].median()
    assert ratio == pytest.approx(2.25, rel=0.15)
    assert size_factor_for("outlines", 30.0) == 1.0
    assert size_factor_for("images", 30.0, image_ecd_px=24.0) == pytest.approx(0.8)
    with pytest.raises(NanosegError, match="expected"):
        size_factor_for("expected", 30.0)


def test_simulate_masks_writes_contract(tmp_path, shapes):
    import tifffile

    cfg = MasksConfig(n_masks=3, tile_size_px=(96, 128), clustering=5, perlin_cell_px=50)
    particles = simulate_masks(shapes, cfg, tmp_path, (10, 15), np.random.default_rng(0))
    assert list(particles.columns) == list(PARTICLE_COLUMNS)
    tiles = pd.read_csv(tmp_path / "tiles.csv")
    assert tiles["n_drawn"].between(10, 15).all()
    for i in range(3):
        mask = tifffile.imread(tmp_path / f"mask_{i:04d}.tif")
        instances = tifffile.imread(tmp_path / f"instances_{i:04d}.tif")
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert instances.dtype == np.uint16 and mask.shape == (96, 128)
        _assert_instances_match_binary(instances, mask > 0)
        assert (particles["tile"] == i).sum() == instances.max()
    assert (tmp_path / "contact_sheet.png").is_file()
    assert not list(tmp_path.glob(".particles_*"))
    # a second call (e.g. a resumed stage) gives the same files
    again = simulate_masks(shapes, cfg, tmp_path / "again", (10, 15), np.random.default_rng(0))
    pd.testing.assert_frame_equal(particles, again)


def test_masks_stage_with_configured_counts(tmp_path, shapes):
    from nanoseg.atomic import write_json
    from nanoseg.masks import run_stage
    from nanoseg.pipeline import STAGES, StageContext

    shapes_dir = tmp_path / "shapes"
    shapes_dir.mkdir()
    np.savez_compressed(shapes_dir / "library.npz", shapes=shapes)
    write_json(shapes_dir / "stats.json", {"outline_median_area_px": 150.0})
    config = build_config({"masks": {"n_masks": 2, "tile_size_px": [80, 96], "particles_per_tile": [5, 8]}})
    stage = next(s for s in STAGES if s.name == "masks")
    (tmp_path / "masks").mkdir()
    run_stage(StageContext(config=config, run_dir=tmp_path, stage=stage))
    stats = json.loads((tmp_path / "masks" / "stats.json").read_text())
    assert stats["size_prior"] == "outlines" and stats["count_range"] == [5, 8]
    assert 0 < stats["fake"]["foreground_fraction"] < 1 and stats["real"] is None
    assert "resulting_median_ecd_px" in stats
    assert len(pd.read_csv(tmp_path / "masks" / "particles.csv")) > 0


def test_count_calibrated_to_foreground_fraction(shapes):
    from nanoseg.masks import calibrate_particle_count

    cfg = MasksConfig(tile_size_px=(200, 240), clustering=10, perlin_cell_px=80)
    n = calibrate_particle_count(shapes, cfg, 0.10, 1.0, np.random.default_rng(0), n_trials=3)
    fractions = [assemble_mask(shapes, cfg.tile_size_px, n, np.random.default_rng(s), cfg).binary.mean()
                 for s in range(10, 16)]
    assert np.mean(fractions) == pytest.approx(0.10, rel=0.25)


def test_count_levels_follow_each_images_coverage(tmp_path, shapes):
    """One level per real image: the fakes reproduce the spread of coverage, not only its median."""
    from nanoseg.masks import calibrate_particle_count, count_levels_for

    cfg = MasksConfig(tile_size_px=(200, 240), clustering=10, perlin_cell_px=80)
    fractions = [0.04, 0.08, 0.08, 0.24]
    n_median = calibrate_particle_count(shapes, cfg, 0.08, 1.0, np.random.default_rng(0))
    levels = count_levels_for(shapes, cfg, fractions, 0.08, n_median, 1.0, np.random.default_rng(1))
    assert levels[1] == levels[2] == n_median and levels[0] < n_median < levels[3]
    reached = [np.mean([assemble_mask(shapes, cfg.tile_size_px, n, np.random.default_rng(s), cfg).binary.mean()
                        for s in range(20, 24)]) for n in (levels[0], levels[3])]
    assert reached[0] == pytest.approx(0.04, rel=0.3) and reached[1] == pytest.approx(0.24, rel=0.25)
    # Tiles drawn from the levels span the range; the whole-range draw stays within +-15 % of them.
    cfg = MasksConfig(n_masks=12, tile_size_px=(200, 240), clustering=10, perlin_cell_px=80)
    simulate_masks(shapes, cfg, tmp_path, (1, 1), np.random.default_rng(0), count_levels=levels)
    tiles = pd.read_csv(tmp_path / "tiles.csv")
    assert tiles["n_drawn"].between(0.85 * min(levels) - 1, 1.15 * max(levels) + 1).all()
    assert tiles["foreground_fraction"].max() > 2.5 * tiles["foreground_fraction"].min()


def test_density_estimate_on_shared_micrographs(shared_data):
    import tifffile

    from nanoseg.io import read_micrograph

    stems = ["1908248", "1908250", "1908252"]
    images = [read_micrograph(shared_data / "sem" / f"{s}.tif").image for s in stems]
    estimate = estimate_particle_density(images)
    manual = [mask_statistics(tifffile.imread(shared_data / "masks" / f"{s}_m.tif")[:712] > 0) for s in stems]
    fg_manual = np.median([m["foreground_fraction"] for m in manual])
    assert estimate["foreground_fraction"] == pytest.approx(fg_manual, rel=0.35)
    assert 15 < estimate["typical_ecd_px"] < 40  # whole particles: ~29 px ECD
    assert len(estimate["foreground_fractions"]) == 3
    assert np.median(estimate["foreground_fractions"]) == pytest.approx(estimate["foreground_fraction"], abs=1e-5)


def test_simulate_command_from_outline_folder(tmp_path):
    from typer.testing import CliRunner

    from nanoseg.cli import app
    from nanoseg.io import write_outline_folder

    write_outline_folder(random_polygons(5, 32, np.random.default_rng(0), mean_area_px=120), tmp_path / "outlines")
    args = ["masks", "simulate", str(tmp_path / "outlines"), "--n", "2", "--out", str(tmp_path / "out"),
            "--set", "masks.tile_size_px=[64,80]", "--set", "masks.particles_per_tile=[4,6]",
            "--set", "shapes.outline_size_px=32"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("mask_*.tif")) == ["mask_0000.tif", "mask_0001.tif"]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["size_prior"] == "outlines" and stats["count_range"] == [4, 6]
