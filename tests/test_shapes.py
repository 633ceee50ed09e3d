"""Stage 1: outline input, WGAN-GP (penalty, training, resume), sampling clean-up, polygons, stage outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from skimage.draw import disk, ellipse

from nanoseg.config import build_config
from nanoseg.errors import NanosegError
from nanoseg.io import center_shape, load_outlines, write_outline_folder
from nanoseg.shapes import (
    build_library,
    clean_shapes,
    gradient_penalty,
    random_polygons,
    shape_summary,
    train_wgan,
)

torch = pytest.importorskip("torch")


def _blob(size=64, center=(30, 34), radii=(10, 14)):
    image = np.zeros((size, size), np.uint8)
    rr, cc = ellipse(*center, *radii, shape=image.shape)
    image[rr, cc] = 255
    return image


# ---------------------------------------------------------------- gradient penalty


class _LinearCritic(torch.nn.Module):
    """f(x) = <w, x>: its gradient is w everywhere, so the penalty is (||w|| - 1)^2 exactly."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1)


@pytest.mark.parametrize("norm", [0.0, 1.0, 3.0])
def test_gradient_penalty_of_linear_critic_is_known(norm):
    torch.manual_seed(0)
    w = torch.randn(1, 4, 4)
    w = w / w.norm() * norm
    critic = _LinearCritic(w)
    real, fake = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    penalty = gradient_penalty(critic, real, fake)
    assert penalty.item() == pytest.approx((norm - 1) ** 2, abs=1e-5)
    # The penalty must stay differentiable in the critic's weights: d/dw (||w||-1)^2 = 2(||w||-1) w/||w||
    penalty.backward()
    if norm > 0:
        expected = 2 * (norm - 1) * w / norm
        assert torch.allclose(critic.w.grad, expected, atol=1e-5)


def test_gradient_penalty_uses_interpolates_between_real_and_fake():
    # f(x) = 0.5 ||x||^2 has gradient x: with real == fake the interpolate is real itself.
    real = torch.full((3, 1, 2, 2), 0.25)  # ||x|| = 0.5 per sample
    penalty = gradient_penalty(lambda x: 0.5 * (x**2).flatten(1).sum(1), real, real.clone())
    assert penalty.item() == pytest.approx(0.25, abs=1e-6)


def test_registered_nets_have_the_right_shapes():
    from nanoseg import nets

    gen = nets.create("wgan_generator", size=64, latent_dim=16, width=4)
    critic = nets.create("wgan_critic", size=64, latent_dim=16, width=4)
    out = gen(torch.randn(3, 16))
    assert out.shape == (3, 1, 64, 64) and out.abs().max() <= 1
    assert critic(out).shape == (3,)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in critic.modules())


# ---------------------------------------------------------------- outline input


def test_load_outline_folder_centres_and_fills(tmp_path):
    import imageio.v3 as iio

    ring = _blob(center=(20, 40))
    rr, cc = disk((20, 40), 4)
    ring[rr, cc] = 0  # a hole: filled on load
    iio.imwrite(tmp_path / "a.png", ring)
    iio.imwrite(tmp_path / "b.png", 255 - _blob())  # drawn black on white
    shapes = load_outlines(tmp_path, 64)
    assert shapes.shape == (2, 64, 64) and shapes.dtype == bool
    for shape in shapes:
        rows, cols = np.nonzero(shape)
        assert abs(rows.mean() - 31.5) < 1.5 and abs(cols.mean() - 31.5) < 1.5
    assert shapes[0].sum() == shapes[1].sum()  # same ellipse, hole filled, inversion undone


def test_load_painted_mask_cuts_single_particles(tmp_path):
    import tifffile

    mask = np.zeros((200, 300), np.uint8)
    for center, radius in (((50, 60), 12), ((120, 200), 20), ((5, 150), 10)):  # the last touches the border
        rr, cc = disk(center, radius, shape=mask.shape)
        mask[rr, cc] = 255
    rr, cc = ellipse(150, 80, 30, 45, shape=mask.shape)  # wider than 64 px: scaled down
    mask[rr, cc] = 255
    tifffile.imwrite(tmp_path / "painted.tif", mask)
    shapes = load_outlines(tmp_path / "painted.tif", 64)
    assert len(shapes) == 3
    areas = sorted(s.sum() for s in shapes)
    assert areas[0] == pytest.approx(np.pi * 12**2, rel=0.1)  # padded, not enlarged
    for shape in shapes:
        assert not (shape[0].any() or shape[-1].any() or shape[:, 0].any() or shape[:, -1].any())


def test_load_imagej_roi_set(tmp_path):
    roifile = pytest.importorskip("roifile")
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    rois = [roifile.ImagejRoi.frompoints(np.stack([100 + r * np.cos(t), 80 + 0.6 * r * np.sin(t)], 1), name=f"p{i}")
            for i, r in enumerate((10, 15, 20))]
    roifile.roiwrite(tmp_path / "RoiSet.zip", rois)
    shapes = load_outlines(tmp_path / "RoiSet.zip", 64)
    assert shapes.shape == (3, 64, 64)
    areas = [s.sum() for s in shapes]
    for r, area in zip((10, 15, 20), areas):
        assert area == pytest.approx(np.pi * r * 0.6 * r, rel=0.15)


def test_bad_outline_input_names_the_file(tmp_path):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "good.png", _blob())
    iio.imwrite(tmp_path / "empty.png", np.zeros((64, 64), np.uint8))
    with pytest.raises(NanosegError, match="empty.png"):
        load_outlines(tmp_path, 64)
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    with pytest.raises(NanosegError, match="broken.tif"):
        load_outlines(tmp_path / "broken.tif", 64)
    with pytest.raises(NanosegError, match="missing"):
        load_outlines(tmp_path / "missing", 64)
    (tmp_path / "none").mkdir()
    with pytest.raises(NanosegError, match="none"):
        load_outlines(tmp_path / "none", 64)


def test_import_command_writes_outline_folder(tmp_path):
    import imageio.v3 as iio
    from typer.testing import CliRunner

    from nanoseg.cli import app

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        iio.imwrite(src / f"o{i}.png", _blob(center=(30 + i, 30)))
    result = CliRunner().invoke(app, ["shapes", "import", str(src), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").glob("outline_*.png"))) == 3
    assert (tmp_path / "out" / "contact_sheet.png").is_file()
    assert np.array_equal(load_outlines(tmp_path / "out", 64), load_outlines(src, 64))


def test_write_outline_folder_roundtrip(tmp_path):
    shapes = random_polygons(4, 64, np.random.default_rng(1))
    write_outline_folder(shapes, tmp_path)
    loaded = load_outlines(tmp_path, 64)
    assert loaded.shape == shapes.shape
    for a, b in zip(loaded, shapes):  # recentred by the bounding box: equal up to a shift
        assert a.sum() == pytest.approx(b.sum(), rel=0.02)
        assert np.array_equal(a, center_shape(b, 64)) or np.abs(a.sum() - b.sum()) <= 3


# ---------------------------------------------------------------- clean-up, polygons


def test_clean_shapes_keeps_largest_filled_blob_and_drops_bad_samples():
    raw = -np.ones((4, 32, 32), np.float32)
    rr, cc = disk((16, 16), 8)
    raw[0, rr, cc] = 1
    raw[0, 16, 16] = -1  # hole
    raw[0, 2:5, 2:5] = 1  # smaller second blob
    raw[1, rr, cc] = 1
    raw[1, 0:10, 10:20] = 1  # attached to the border
    raw[3, 5:6, 5:6] = 1  # one speck: empty after clean-up
    shapes, kept = clean_shapes(raw)
    assert kept.tolist() == [True, False, False, False]
    expected = np.zeros((32, 32), bool)
    expected[rr, cc] = True
    assert np.array_equal(shapes[0], expected)


def test_random_polygons_sized_and_inside():
    rng = np.random.default_rng(0)
    shapes = random_polygons(200, 64, rng, mean_area_px=600)
    assert shapes.shape == (200, 64, 64)
    summary = shape_summary(shapes)
    assert summary["median_area_px"] == pytest.approx(600, rel=0.2)
    assert 0.8 < summary["median_solidity"] <= 1
    assert not shapes[:, 0].any() and not shapes[:, :, -1].any()
    again = random_polygons(200, 64, np.random.default_rng(0), mean_area_px=600)
    assert np.array_equal(shapes, again)


def test_polygon_library_stage_outputs(tmp_path):
    cfg = build_config({"shapes": {"source": "polygon", "n_samples": 50}}).shapes
    outlines = random_polygons(6, 64, np.random.default_rng(3), mean_area_px=400)
    stats = build_library(cfg, tmp_path, outlines)
    with np.load(tmp_path / "library.npz") as data:
        assert data["shapes"].shape == (50, 64, 64) and data["shapes"].dtype == bool
    written = json.loads((tmp_path / "stats.json").read_text())
    assert written == json.loads(json.dumps(stats))
    assert written["outline_median_area_px"] == pytest.approx(shape_summary(outlines)["median_area_px"])
    for name in ("outlines.png", "samples.png"):
        assert (tmp_path / name).is_file()


# ---------------------------------------------------------------- training


def test_training_checkpoints_and_resumes(tmp_path):
    outlines = random_polygons(8, 16, np.random.default_rng(0), mean_area_px=50)
    values = {"shapes": {"outline_size_px": 16, "generator_width": 4, "critic_width": 4, "latent_dim": 8,
                         "batch_size": 4, "critic_steps": 2, "checkpoint_every": 2}}
    cfg = build_config(values).shapes
    _, full = train_wgan(outlines, cfg.model_copy(update={"steps": 4}), tmp_path / "full", seed=1)
    _, first = train_wgan(outlines, cfg.model_copy(update={"steps": 2}), tmp_path / "split", seed=1)
    assert (tmp_path / "split" / "checkpoint.pt").is_file()
    assert (tmp_path / "split" / "losses.csv").is_file() and (tmp_path / "split" / "losses.png").is_file()
    _, resumed = train_wgan(outlines, cfg.model_copy(update={"steps": 4}), tmp_path / "split", seed=1)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert resumed[:2] == first
    # resuming continues the same random stream: identical to an uninterrupted run
    for a, b in zip(resumed, full):
        assert a["critic_loss"] == pytest.approx(b["critic_loss"], rel=1e-4, abs=1e-5)


@pytest.mark.slow
def test_short_training_on_shared_outlines_matches_area_and_solidity(shared_data, tmp_path):
    outlines = load_outlines(shared_data / "outlines", 64)
    cfg = build_config(profile="demo").shapes.model_copy(update={"steps": 200})
    generator, losses = train_wgan(outlines, cfg, seed=0)
    shapes, dropped = _sample(generator)
    want, got = shape_summary(outlines), shape_summary(shapes)
    assert got["median_area_px"] == pytest.approx(want["median_area_px"], rel=0.25)
    assert got["median_solidity"] == pytest.approx(want["median_solidity"], rel=0.25)
    assert dropped < len(shapes)
    assert all(math.isfinite(r["critic_loss"]) for r in losses)


def _sample(generator):
    from nanoseg.shapes import sample_shapes

    return sample_shapes(generator, 300, seed=0)


def test_choose_smoothing_matches_the_outlines_roughness():
    """A generator that draws ragged discs: the chosen smoothing makes them as smooth as the outlines."""
    import torch

    from nanoseg.shapes import choose_smoothing, outline_roughness, sample_shapes

    yy, xx = np.mgrid[:48, :48]
    disc = ((yy - 23.5) ** 2 + (xx - 23.5) ** 2 <= 12**2).astype(np.float32)

    class Ragged(torch.nn.Module):
        latent_dim = 4

        def forward(self, z):
            # Per-sample pixel noise strong enough to fray the edge when thresholded at 0.
            gen = torch.Generator().manual_seed(int(z.abs().sum() * 1000) % 2**31)
            noise = torch.randn(z.shape[0], 1, 48, 48, generator=gen)
            return torch.from_numpy(2 * disc - 1)[None, None] + 0.9 * noise

    outlines = np.stack([disc > 0] * 4)
    sigma, trials = choose_smoothing(Ragged(), outlines, n=32, min_area_px=50)
    assert sigma > 0 and len(trials) > 2
    raw = np.median(outline_roughness(sample_shapes(Ragged(), 32, min_area_px=50)[0]))
    smooth = np.median(outline_roughness(sample_shapes(Ragged(), 32, min_area_px=50, smooth_sigma_px=sigma)[0]))
    target = np.median(outline_roughness(outlines))
    assert abs(smooth - target) < abs(raw - target) and smooth < raw
