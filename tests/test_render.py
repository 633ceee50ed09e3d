"""The renderer: SE contrast, edge effect, separate bodies, transmission contrast, determinism, parameter fitting."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from nanoseg.demo import place_agglomerates
from nanoseg.translate.render import RenderParams, instance_distances, render_sem
from nanoseg.translate.render_fit import fit_render_params


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


def _quiet(**changes):
    return RenderParams(noise_sd=0, particle_texture=0, background_texture=0, brightness_sd=0, **changes)


def test_transmission_particles_are_dark_thickest_at_the_centre_and_touching_ones_merge():
    from nanoseg.labels import separation_lines

    shape = (80, 120)
    labels = np.zeros(shape, np.int32)
    labels[_disk(shape, (40, 40), 18)] = 1
    labels[_disk(shape, (40, 68), 18)] = 2
    labels[separation_lines(labels)] = 0  # as the fake masks keep touching particles apart
    image = render_sem(labels, _quiet(contrast="transmission", absorption=1.0), rng=0)
    # As the detector sees it (the workflow inverts transmission images): dark particles on a bright background.
    seen = 1.0 - image
    dist = ndi.distance_transform_edt(labels > 0)
    assert np.median(seen[dist > 5]) < np.median(seen[~ndi.binary_dilation(labels > 0, iterations=4)]) - 0.1
    # Darkest where thickest: no bright SE rim, the centre darker than the rim.
    assert seen[40, 40] < seen[40, 25] - 0.05
    # One silhouette: the contact between the two (where the beam crosses both) is no lighter
    # than either particle halfway to it.
    contact = int(np.flatnonzero(labels[40] == 2)[0])
    assert seen[40, contact - 1: contact + 2].max() <= max(seen[40, 30], seen[40, 78]) + 0.01
    # while the SE renderer draws a crevice there
    se = render_sem(labels, _quiet(), rng=0)
    assert se[40, contact - 1: contact + 2].min() < min(se[40, 30], se[40, 78]) - 0.02


def test_fit_tells_flat_silhouettes_from_domes(scene):
    def fitted(absorption):
        truth = RenderParams(contrast="transmission", background_level=0.25, particle_level=0.8,
                             absorption=absorption, noise_sd=0.015, brightness_sd=0.05)
        images = [render_sem(scene, truth, rng=s) for s in (1, 2)]
        return fit_render_params(images, None, seed=5, contrast="transmission")  # particles by Otsu, as in a run

    dome, flat = fitted(1.0), fitted(8.0)
    assert flat.contrast == "transmission" and flat.edge_gain == 0 and flat.shadow_depth == 0
    # The absorption is relative to the median particle, which agglomerates blur: a factor, not the value.
    assert flat.absorption > 3 * dome.absorption and flat.absorption == pytest.approx(8.0, rel=0.5)
    assert flat.particle_level == pytest.approx(0.8, abs=0.06)
    assert RenderParams.from_dict(flat.to_dict()) == flat


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


def _textured_scene(seed=0):
    """A 'micrograph': textured substrate at ~0.2 with bright discs (0.8) in its left half."""
    rng = np.random.default_rng(seed)
    image = 0.2 + 0.02 * ndi.gaussian_filter(rng.standard_normal((200, 300)), 2)
    for centre in ((50, 40), (120, 60), (160, 30)):
        image[_disk(image.shape, centre, 12)] = 0.8
    return image.astype(np.float32)


def test_substrate_bank_takes_patches_away_from_particles_only():
    from nanoseg.translate.render import SubstrateBank

    bank = SubstrateBank.from_images([_textured_scene()], patch_px=48, margin_px=8, seed=1)
    patches = bank.patches[0]
    assert patches.shape[1:] == (48, 48) and 1 <= len(patches) <= 64
    assert patches.max() < 0.4 and abs(float(patches.mean()) - 0.2) < 0.02
    # An image with particles everywhere has no free patch.
    dense = np.full((100, 100), 0.2, np.float32)
    for r in range(10, 100, 25):
        for c in range(10, 100, 25):
            dense[_disk(dense.shape, (r, c), 8)] = 0.8
    assert SubstrateBank.from_images([dense], patch_px=48) is None


def test_substrate_compose_size_values_and_determinism(tmp_path):
    from nanoseg.translate.render import SubstrateBank

    bank = SubstrateBank.from_images([_textured_scene(), _textured_scene(1) + 0.1], patch_px=48, seed=1)
    a = bank.compose((130, 170), np.random.default_rng(5))
    b = bank.compose((130, 170), np.random.default_rng(5))
    assert a.shape == (130, 170) and np.array_equal(a, b)
    # One micrograph per composition: its grey level, not a mix of both.
    levels = {round(float(bank.compose((64, 64), np.random.default_rng(s)).mean()), 1) for s in range(12)}
    assert levels == {0.2, 0.3}
    bank.save(tmp_path / "bank.npz")
    again = SubstrateBank.load(tmp_path / "bank.npz")
    assert np.array_equal(again.compose((130, 170), np.random.default_rng(5)), a)


def test_render_with_real_substrate_keeps_it_away_from_particles(scene):
    rng = np.random.default_rng(0)
    substrate = (0.15 + 0.03 * rng.standard_normal(scene.shape)).astype(np.float32)
    image = render_sem(scene, RenderParams(halo_depth=0.0), rng=1, substrate=substrate)
    far = ndi.distance_transform_edt(scene == 0) > 8
    np.testing.assert_allclose(image[far], np.clip(substrate[far], 0, 1), atol=1e-6)  # no extra blur or noise
    inside = ndi.binary_erosion(scene > 0, iterations=3)
    assert image[inside].mean() > image[far].mean() + 0.15
    with pytest.raises(ValueError, match="substrate shape"):
        render_sem(scene, RenderParams(), rng=1, substrate=substrate[:10])


def test_separation_lines_are_not_drawn_as_gaps():
    """A mask's 1-px line between touching particles renders as particle, not as dark substrate."""
    from nanoseg.labels import cut_touching, fill_seams

    shape = (60, 90)
    labels = np.zeros(shape, np.int32)
    labels[_disk(shape, (30, 30), 18)] = 1
    labels[_disk(shape, (30, 58), 18)] = 2  # on top of the first
    cut = cut_touching(labels)
    line = (cut == 0) & (labels > 0)
    assert line.sum() > 10
    filled = fill_seams(cut)
    np.testing.assert_array_equal(filled[line], labels[line])
    # Elsewhere at most the single notch pixels where the two outlines meet change.
    assert np.count_nonzero((filled != labels) & ~line) <= 4
    params = RenderParams(noise_sd=0, particle_texture=0, background_texture=0, shading_gain=0, brightness_sd=0,
                          halo_depth=0.05, shadow_depth=0)
    image = render_sem(cut, params, rng=0)
    substrate = image[labels == 0].mean()
    particles = image[(labels > 0) & ~line].mean()
    # On the line: the upper particle's bright rim, far from the substrate level.
    assert image[line].mean() > particles
    assert image[line].mean() > substrate + 0.5 * (particles - substrate)


def test_label_dtype_does_not_change_the_render():
    """int64 and float label images render like int32 ones (no negative labels at the image border)."""
    labels = np.zeros((40, 50), np.int32)
    labels[5:35, 0:20], labels[5:35, 21:45] = 1, 2  # touching the left border, a 1-px line at col 20
    labels[0:5, 10:30] = 3  # touches the top border
    reference = render_sem(labels, RenderParams(), rng=0)
    for dtype in (np.int64, np.uint16, np.float32):
        np.testing.assert_array_equal(render_sem(labels.astype(dtype), RenderParams(), rng=0), reference)


def test_vary_params_spreads_the_look_not_the_levels():
    from nanoseg.translate.render import VARIED_PARAMS, vary_params

    params = RenderParams()
    assert vary_params(params, 0.0, np.random.default_rng(0)) is params
    varied = [vary_params(params, 0.5, np.random.default_rng(k)) for k in range(40)]
    for name in VARIED_PARAMS:
        ratios = np.array([getattr(v, name) / getattr(params, name) for v in varied])
        assert ratios.min() >= 0.5 and ratios.max() <= 1.5 and ratios.std() > 0.15
    assert {v.background_level for v in varied} == {params.background_level}
    assert {v.particle_level for v in varied} == {params.particle_level}
    assert {v.shadow_spread for v in varied} == {0.5}


def test_shadow_spread_varies_the_crevice_per_particle():
    shape = (60, 200)
    labels = np.zeros(shape, np.int32)
    for k, col in enumerate(range(25, 200, 45)):
        labels[_disk(shape, (30, col), 14)] = 2 * k + 1
        labels[_disk(shape, (30, col + 20), 10)] = 2 * k + 2  # each pair: a small particle on a larger one
    params = RenderParams(noise_sd=0, particle_texture=0, background_texture=0, shading_gain=0, brightness_sd=0,
                          shadow_depth=0.4)
    _, dist_front = instance_distances(labels)
    near = dist_front <= 2

    def crevice_levels(spread):
        image = render_sem(labels, dataclasses.replace(params, shadow_spread=spread), rng=3)
        return np.array([image[near & (labels == 2 * k + 1)].mean() for k in range(4)])

    assert np.ptp(crevice_levels(0.0)) < 1e-3
    assert np.ptp(crevice_levels(1.0)) > 0.02
