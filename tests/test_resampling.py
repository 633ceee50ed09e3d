"""A model applied at another pixel size reports the same sizes in nm.

The micrograph is resampled to the model's pixel size, segmented and measured there; the labels
come back onto the micrograph's grid with their sizes kept. Checked on hundreds of non-round
particles (so that min Feret diameters are not whole pixels) with a small net trained at 2 nm.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

PIXEL_NM = 2.0


def ellipse_field(seed: int, shape: tuple[int, int] = (512, 512), n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Bright separate ellipses (semi-axes 5-12 px, any orientation) on a noisy, blurred background."""
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    k = 0
    for _ in range(n * 30):
        a, b = rng.uniform(6, 12), rng.uniform(5, 9)
        r, c = rng.uniform(a + 3, shape[0] - a - 3), rng.uniform(a + 3, shape[1] - a - 3)
        rr, cc = ellipse(r, c, a, b, shape=shape, rotation=rng.uniform(0, np.pi))
        if labels[max(0, int(r - a) - 2): int(r + a) + 3, max(0, int(c - a) - 2): int(c + a) + 3].any():
            continue
        k += 1
        labels[rr, cc] = k
        if k == n:
            break
    image = ndi.gaussian_filter(np.where(labels > 0, 0.75, 0.2) + rng.normal(0, 0.05, shape), 0.7)
    return np.clip(image, 0, 1).astype(np.float32), labels


@pytest.fixture(scope="module")
def field_model(tmp_path_factory):
    """A small UNet trained on ellipse fields at 2 nm per pixel (about 10 s on one core)."""
    from nanoseg.config import build_config
    from nanoseg.segment import Pair, train

    pairs = [Pair(*ellipse_field(seed, (256, 256), 60), f"p{seed}") for seed in range(4)]
    cfg = build_config({"segment": {"architecture": "unet", "base_width": 8, "depth": 2, "tile_size_px": 64,
                                    "batch_size": 4, "val_every": 50, "bf16": False}}).segment
    return train(pairs, cfg, tmp_path_factory.mktemp("field-model"), steps=200, rng=np.random.default_rng(1),
                 pixel_size_nm=PIXEL_NM)


def _rescaled(image: np.ndarray, factor: float) -> np.ndarray:
    from skimage.transform import rescale

    return rescale(image, factor, order=1, anti_aliasing=factor < 1).astype(np.float32)


def _sizes(net, meta, images, factor: float) -> pd.DataFrame:
    from nanoseg.config import SegmentConfig
    from nanoseg.particles import measure_images
    from nanoseg.segment import segment_at_model_scale

    cfg = SegmentConfig.model_validate(meta["config"])
    items = []
    for i, image in enumerate(images):
        seg = segment_at_model_scale(net, meta, _rescaled(image, factor) if factor != 1 else image, cfg,
                                     pixel_size_nm=PIXEL_NM / factor)
        items.append((f"f{i}", seg.labels, seg.image, seg.pixel_size_nm))
    return measure_images(items)


@pytest.mark.parametrize("factor", [0.5, 0.96, 1.04, 2.0])
def test_sizes_in_nm_do_not_depend_on_the_pixel_size(field_model, factor):
    from nanoseg import nets

    net, meta = nets.load(field_model)
    images = [ellipse_field(100 + seed)[0] for seed in range(2)]
    native, other = _sizes(net, meta, images, 1.0), _sizes(net, meta, images, factor)
    assert len(native) >= 300 and abs(len(other) / len(native) - 1) < 0.02
    for stat in ("mean", "median"):
        ratio = getattr(other["min_feret_nm"], stat)() / getattr(native["min_feret_nm"], stat)()
        assert abs(ratio - 1) < 0.01, (stat, ratio)
    assert abs(other["area_nm2"].mean() / native["area_nm2"].mean() - 1) < 0.03


def test_labels_brought_back_keep_their_size(field_model):
    """The labels file a resampled micrograph gets holds particles of the measured size (within a
    pixel of the micrograph's grid), with the numbers of the particle table."""
    from nanoseg import nets
    from nanoseg.config import SegmentConfig
    from nanoseg.particles import measure_images, measure_particles
    from nanoseg.segment import segment_at_model_scale

    net, meta = nets.load(field_model)
    image = _rescaled(ellipse_field(7)[0], 2.0)
    seg = segment_at_model_scale(net, meta, image, SegmentConfig.model_validate(meta["config"]),
                                 pixel_size_nm=PIXEL_NM / 2)
    assert seg.resampled and seg.labels.shape == (512, 512)
    labels, probability = seg.on_image_grid()
    assert labels.shape == probability.shape == image.shape
    measured = seg.table_on_image_grid(measure_images([("f", seg.labels, seg.image, seg.pixel_size_nm)]))
    fine = measure_particles(labels, image, PIXEL_NM / 2)
    both = measured.merge(fine, on="label", suffixes=("", "_fine"))
    assert len(both) >= 0.98 * len(measured)
    assert abs(both["area_nm2_fine"].mean() / both["area_nm2"].mean() - 1) < 0.03
    # the px columns are in the micrograph's pixels
    assert abs(both["centroid_row_px"] - both["centroid_row_px_fine"]).max() < 1.0
    assert abs(both["pixel_size_nm"] - PIXEL_NM / 2).max() < 1e-9


def test_a_pixel_size_far_from_the_models_is_refused(field_model):
    from nanoseg import nets
    from nanoseg.errors import NanosegError
    from nanoseg.segment import to_model_scale

    _, meta = nets.load(field_model)
    with pytest.raises(NanosegError, match="1250 times the 2 nm the model was trained at"):
        to_model_scale(np.zeros((64, 64), np.float32), 2500.0, meta)  # '2.5um' for '2.5nm'


def test_measure_reports_one_size_at_three_magnifications(field_model, tmp_path, cli):
    """`nanoseg measure` on one field at 2 nm, at 4 nm (0.5x) and at 1 nm (2x) per pixel, in one
    folder with one model: the same distribution in nm (issue: +5 to +15 % before)."""
    from nanoseg.io import write_tiff

    image = ellipse_field(11, (512, 512), 330)[0]
    (tmp_path / "images").mkdir()
    for name, factor in (("native", 1.0), ("half", 0.5), ("double", 2.0)):
        write_tiff(tmp_path / "images" / f"{name}.tif", _rescaled(image, factor) if factor != 1 else image,
                   pixel_size_nm=PIXEL_NM / factor)
    res = cli("measure", tmp_path / "images", "--model", field_model, "--out", tmp_path / "out",
              "--set", "data.info_bar_rows=0", "--set", "classify.method=rules")
    assert res.code == 0, res.output
    table = pd.read_csv(tmp_path / "out" / "particles.csv")
    by_image = table.groupby("image")["min_feret_nm"]
    assert by_image.size()["native"] >= 300
    for stat in ("mean", "median"):
        values = getattr(by_image, stat)()
        for name in ("half", "double"):
            assert abs(values[name] / values["native"] - 1) < 0.02, (stat, name, values.to_dict())
