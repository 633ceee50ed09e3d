"""The SEM renderer: contrast, edge effect, separate bodies, determinism, parameter fitting."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from nanoseg.demo import place_agglomerates
from nanoseg.render import RenderParams, fit_render_params, render_sem


def _disk(shape, centre, radius):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(3)
    return place_agglomerates((256, 320), 40, rng)


def test_output_range_type_and_contrast(scene):
    image = render_sem(scene, RenderParams(), rng=0)
    assert image.shape == scene.shape and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    fg = ndi.binary_erosion(scene > 0, iterations=2)
    bg = ~ndi.binary_dilation(scene > 0, iterations=4)
    assert np.median(image[fg]) > np.median(image[bg]) + 0.15


def test_edges_brighter_than_interior():
    labels = _disk((96, 96), (48, 48), 25).astype(np.int32)
    params = RenderParams(noise_sd=0, particle_texture=0, background_texture=0, shading_gain=0,
                          brightness_sd=0, dome_gain=0)
    image = render_sem(labels, params, rng=0)
    dist = ndi.distance_transform_edt(labels)
    # The very first pixel is blurred with the substrate; the rim peaks just inside (as in real SE images).
    rim = image[(dist >= 2) & (dist <= 4)].mean()
    centre = image[dist > 12].mean()
    assert rim > centre + 0.03
    # The secant law alone (no explicit edge term) also brightens the rim.
    dome = render_sem(labels, dataclasses.replace(params, edge_gain=0, dome_gain=0.5), rng=0)
    assert dome[(dist >= 2) & (dist <= 4)].mean() > dome[dist > 12].mean() + 0.03


def test_overlapping_particles_look_like_two_bodies():
    shape = (80, 120)
    labels = np.zeros(shape, np.int32)
    labels[_disk(shape, (40, 45), 20)] = 1
    labels[_disk(shape, (40, 75), 20)] = 2  # overlaps the first one, lies on top
    params = RenderParams(noise_sd=0, particle_texture=0, background_texture=0, shading_gain=0, brightness_sd=0)
    image = render_sem(labels, params, rng=0)
    profile = image[40, 30:90]
    seam_col = np.flatnonzero(labels[40, 30:90] == 2)[0]
    # The particle underneath is shadowed next to the one on top, whose rim is bright: a sharp step.
    assert profile[seam_col - 2] < profile[seam_col - 10] - 0.01
    assert profile[seam_col: seam_col + 3].max() > profile[seam_col - 4: seam_col].min() + 0.2
    # Without the second label the same pixels show one smooth body: no such step.
    merged = render_sem((labels > 0).astype(np.int32), params, rng=0)[40, 30:90]
    assert merged[seam_col: seam_col + 3].max() < merged[seam_col - 4: seam_col].min() + 0.05


def test_deterministic_for_a_seed(scene):
    a = render_sem(scene, RenderParams(), rng=np.random.default_rng(7))
    b = render_sem(scene, RenderParams(), rng=np.random.default_rng(7))
    c = render_sem(scene, RenderParams(), rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-3


def test_empty_scene_is_substrate():
    image = render_sem(np.zeros((64, 64), np.int32), RenderParams(noise_sd=0.01), rng=0)
    assert image.mean() == pytest.approx(RenderParams().background_level, abs=0.01)


def test_params_round_trip():
    params = RenderParams(particle_level=0.5, blur_sigma_px=1.5)
    assert RenderParams.from_dict({**params.to_dict(), "unknown": 1}) == params


@pytest.mark.parametrize("use_masks", [True, False])
def test_fit_recovers_levels(scene, use_masks):
    truth = RenderParams(background_level=0.25, particle_level=0.55, edge_gain=0.1, noise_sd=0.02,
                         brightness_sd=0.1)
    images = [render_sem(scene, truth, rng=s) for s in (1, 2)]
    masks = [scene > 0] * 2 if use_masks else None
    fitted = fit_render_params(images, masks, seed=5)
    assert fitted.background_level == pytest.approx(truth.background_level, abs=0.015)
    assert fitted.particle_level == pytest.approx(truth.particle_level, abs=0.05 if use_masks else 0.08)
    assert fitted.noise_sd == pytest.approx(truth.noise_sd, rel=0.35)
    # And what it renders has the same contrast as the input.
    again = render_sem(scene, fitted, rng=9)
    fg = ndi.binary_erosion(scene > 0, iterations=3)
    assert np.median(again[fg]) == pytest.approx(np.median(images[0][fg]), abs=0.04)


def test_fit_tells_bright_from_dark_levels(scene):
    dim = fit_render_params([render_sem(scene, RenderParams(particle_level=0.35), rng=1)], [scene > 0])
    bright = fit_render_params([render_sem(scene, RenderParams(particle_level=0.6), rng=1)], [scene > 0])
    assert bright.particle_level > dim.particle_level + 0.15
