"""Transmission images: dark particles on a bright background are found and inverted without a flag."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from skimage.draw import disk

from nanoseg.config import build_config
from nanoseg.io import load_micrographs, write_tiff


def _field(dark: bool, seed: int) -> np.ndarray:
    """Particles (about 12 % of the field) on a flat background with noise, as 8-bit."""
    rng = np.random.default_rng(seed)
    image = np.full((96, 128), 60.0)
    for _ in range(10):
        rr, cc = disk((rng.integers(10, 86), rng.integers(10, 118)), rng.integers(5, 9), shape=image.shape)
        image[rr, cc] = 190.0
    image += rng.normal(0, 8, image.shape)
    if dark:
        image = 255.0 - image
    return np.clip(image, 0, 255).astype(np.uint8)


def _folder(tmp_path, dark: list[bool]):
    for i, d in enumerate(dark):
        write_tiff(tmp_path / "images" / f"m{i}.tif", _field(d, i), pixel_size_nm=2.0)
    return tmp_path / "images"


def _data(folder, **values):
    return build_config({"data": {"images": str(folder), "info_bar_rows": 0, **values}}).data


@pytest.mark.parametrize("dark", [False, True])
def test_auto_gives_bright_particles_either_way(tmp_path, dark):
    folder = _folder(tmp_path, [dark] * 3)
    bright = load_micrographs(_data(folder))
    truth = [_field(False, i) > 128 for i in range(3)]
    for mg, particles in zip(bright, truth):
        assert mg.image[particles].mean() > mg.image[~particles].mean() + 0.3
        assert mg.dark_inverted is dark


def test_an_explicit_setting_wins(tmp_path):
    folder = _folder(tmp_path, [True] * 2)
    kept = load_micrographs(_data(folder, dark_particles=False))
    assert all(not mg.dark_inverted for mg in kept)
    particles = _field(True, 0) < 128
    assert kept[0].image[particles].mean() < kept[0].image[~particles].mean()


def test_one_series_one_decision_and_the_odd_image_is_named(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("nanoseg"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="nanoseg")
    folder = _folder(tmp_path, [True, True, False])
    micrographs = load_micrographs(_data(folder))
    assert all(mg.dark_inverted for mg in micrographs)  # the majority decides for the series
    assert "m2.tif" in caplog.text and "data.dark_particles" in caplog.text


def test_the_shared_tsem_images_are_inverted_and_the_sem_images_not(shared_data):
    tsem = load_micrographs(_data(shared_data / "tsem", info_bar_rows="auto"))
    sem = load_micrographs(_data(shared_data / "sem", info_bar_rows="auto"))
    assert all(mg.dark_inverted for mg in tsem) and not any(mg.dark_inverted for mg in sem)


def _disks(radius: int, dark: bool = False) -> np.ndarray:
    """Isolated disks on a grid, 8-bit, with a little noise."""
    image = np.full((256, 256), 40.0)
    step = 4 * radius + 6
    for r in range(step // 2, 256 - radius, step):
        for c in range(step // 2, 256 - radius, step):
            image[disk((r, c), radius, shape=image.shape)] = 200.0
    image += np.random.default_rng(0).normal(0, 5, image.shape)
    return np.clip(255.0 - image if dark else image, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("radius, dark", [(3, False), (12, True)])
def test_info_states_the_particle_size_and_warns_below_10_px(tmp_path, radius, dark):
    from typer.testing import CliRunner

    from nanoseg.cli import app

    write_tiff(tmp_path / "m.tif", _disks(radius, dark), pixel_size_nm=2.0)
    result = CliRunner().invoke(app, ["info", str(tmp_path / "m.tif"), "--info-bar-rows", "0"])
    assert result.exit_code == 0, result.output
    line = next(t for t in result.output.splitlines() if t.startswith("particles about"))
    px = float(line.split()[2])
    assert px == pytest.approx(2 * radius, rel=0.2)  # the disks' diameter
    assert float(line.split("(")[1].split(" nm")[0]) == pytest.approx(px * 2.0, rel=0.05)  # at 2 nm per pixel
    assert ("warning: particles about" in result.output) is (radius == 3)
    assert ("dark particles on a bright background" in result.output) is dark
