"""A run whose particles are much smaller or larger in pixels than the TiO2 ones works on a
resampled grid where they are the size the defaults were made for (:mod:`nanoseg.grid`), and
writes its outputs on the micrographs' own pixels."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from nanoseg import pipeline
from nanoseg.config import build_config
from nanoseg.errors import NanosegError
from nanoseg.grid import REFERENCE_OUTLINE_ECD_PX, working_scale
from nanoseg.io import load_micrographs, load_outlines, write_png, write_tiff


def _disc_outlines(folder: Path, diameter: float, n: int = 5) -> Path:
    """``n`` outline images of filled ellipses with an equivalent diameter of about ``diameter`` px."""
    from skimage.draw import ellipse

    folder.mkdir(parents=True, exist_ok=True)
    side = int(diameter * 1.6) + 8
    for i in range(n):
        image = np.zeros((side, side), np.uint8)
        a = diameter / 2 * (1.1 + 0.02 * i)
        rr, cc = ellipse(side / 2, side / 2, a, (diameter / 2) ** 2 / a, shape=image.shape, rotation=0.4 * i)
        image[rr, cc] = 255
        write_png(folder / f"outline_{i}.png", image)
    return folder


def _ecd(shapes: np.ndarray) -> np.ndarray:
    return np.sqrt(4 * shapes.reshape(len(shapes), -1).sum(axis=1) / np.pi)


@pytest.mark.parametrize(("diameter", "expected"), [(32, 1.0), (28, 1.0), (16, 2.0), (64, 0.5), (100, 0.32)])
def test_the_working_scale_brings_the_outlines_to_the_reference_size(tmp_path, diameter, expected):
    cfg = build_config({"data": {"outlines": str(_disc_outlines(tmp_path / "o", diameter))}})
    assert working_scale(cfg) == pytest.approx(expected, rel=0.03)
    # a number in the config wins
    cfg = build_config({"data": {"outlines": str(tmp_path / "o"), "working_scale": 1}})
    assert working_scale(cfg) == 1.0


def test_without_outlines_the_expected_size_sets_the_scale():
    cfg = build_config({"data": {"expected_size_nm": 80.0, "pixel_size_nm": 5.0}})
    assert working_scale(cfg) == pytest.approx(2.0)
    assert working_scale(build_config({"data": {"expected_size_nm": 80.0}})) == 1.0  # no pixel size: 1


def test_particles_too_small_to_learn_are_one_clear_error(tmp_path):
    cfg = build_config({"data": {"outlines": str(_disc_outlines(tmp_path / "o", 6))}})
    with pytest.raises(NanosegError, match=r"about 6\.\d px across are too small .* data\.working_scale"):
        working_scale(cfg)


@pytest.mark.parametrize("diameter", [16, 80])
def test_outlines_on_the_working_grid_are_the_reference_size(tmp_path, diameter):
    """At 80 px the outlines did not fit the 64 px shape images and were shrunk to fit without a
    word; on the working grid they are the size of the TiO2 ones, whatever they were drawn at."""
    folder = _disc_outlines(tmp_path / "o", diameter)
    cfg = build_config({"data": {"outlines": str(folder)}})
    shapes = load_outlines(folder, 64, scale=working_scale(cfg))
    assert np.median(_ecd(shapes)) == pytest.approx(REFERENCE_OUTLINE_ECD_PX, rel=0.04)
    assert not (shapes[:, 0].any() or shapes[:, -1].any() or shapes[:, :, 0].any() or shapes[:, :, -1].any())


def test_micrographs_on_the_working_grid_keep_their_size_in_nm(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    write_tiff(tmp_path / "images" / "a.tif", rng.integers(0, 255, (96, 128), dtype=np.uint8), pixel_size_nm=4.0)
    data = build_config({"data": {"images": str(tmp_path / "images"), "info_bar_rows": 0}}).data
    (native,), (fine,) = load_micrographs(data), load_micrographs(data, scale=2.0)
    assert fine.image.shape == (192, 256) and fine.pixel_size_nm == pytest.approx(2.0)
    assert fine.image.dtype == np.float32 and abs(float(fine.image.mean()) - float(native.image.mean())) < 0.01


def test_a_model_of_unknown_pixel_size_resamples_by_its_input_scale():
    """A net that learned on micrographs enlarged 2x (no pixel size known) enlarges what it is
    applied to likewise; with a pixel size on both sides the pixel sizes decide."""
    from nanoseg.segment import to_model_scale

    image = np.zeros((40, 60), np.float32)
    work, factor = to_model_scale(image, None, {"pixel_size_nm": None, "input_scale": 2.0})
    assert work.shape == (80, 120) and factor == 2.0
    assert to_model_scale(image, None, {"pixel_size_nm": None})[0].shape == (40, 60)
    assert to_model_scale(image, 4.0, {"pixel_size_nm": 2.0, "input_scale": 3.0})[0].shape == (80, 120)
    # a model with a pixel size, an image without one: as before, not resampled (the run warns)
    assert to_model_scale(image, None, {"pixel_size_nm": 2.0, "input_scale": 2.0})[0].shape == (40, 60)


def _small_pairs(ctx):
    """Pairs for the real segment stage: the batch fixture's discs enlarged 2x, as the pairs of a
    run on a 2x working grid are."""
    from skimage.transform import rescale

    from nanoseg.io import read_labels

    data = ctx.config.data.images.parent
    for sub in ("images", "masks"):
        (ctx.out_dir / sub).mkdir()
    for stem in "abc":
        image = load_micrographs(ctx.config.data, scale=2.0)["abc".index(stem)].image
        labels = read_labels(data / "labels" / f"{stem}.tif")
        write_tiff(ctx.out_dir / "images" / f"{stem}.tif", image, pixel_size_nm=1.0)
        write_tiff(ctx.out_dir / "masks" / f"{stem}.tif", rescale(labels, 2, order=0, preserve_range=True,
                                                                   anti_aliasing=False).astype(np.uint16))


def test_the_segment_stage_learns_on_the_working_grid_and_writes_on_the_micrographs(batch, segment_after,
                                                                                   tiny_segment):
    sys.path.insert(0, str(Path(__file__).parent))
    segment_after(f"{__name__}:_small_pairs")
    cfg = build_config({"data": {"images": str(batch / "images"), "info_bar_rows": 0, "working_scale": 2.0},
                        "segment": tiny_segment}, profile="demo")
    run = batch / "run"
    pipeline.run_pipeline(cfg, run, check=False)
    from nanoseg import nets
    from nanoseg.io import read_labels

    meta = nets.load_meta(run / "segment" / "model.pt")
    assert meta["pixel_size_nm"] == pytest.approx(1.0) and meta["input_scale"] == 2.0  # the batch is at 2 nm
    assert json.loads((run / "segment" / "summary.json").read_text())["pixel_size_nm"] == pytest.approx(1.0)
    assert read_labels(run / "segment" / "labels" / "a.tif").shape == (64, 64)  # the micrograph's pixels
