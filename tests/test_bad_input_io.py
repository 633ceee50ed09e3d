"""Bad input of the io area: pixel sizes from metadata, orientation, intensity scaling of a series,
and the pixel size a model trained on image files stores (issue 35, the second bad-input audit)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from test_bad_input import Case, check_case, measure

from nanoseg.config import DataConfig
from nanoseg.errors import NanosegError
from nanoseg.io import load_micrographs, pixel_size_with_source, read_micrograph, robust_range, write_tiff

pytestmark = pytest.mark.usefixtures("keep_global_rng")


def image_of(root: Path, stem: str = "a") -> np.ndarray:
    return tifffile.imread(root / "images" / f"{stem}.tif")


# --------------------------------------------------------------------------- pixel size metadata


def dpi72_cm(root: Path) -> None:
    # A print resolution of 72 dpi stored in centimetre tags: 3.5e5 nm "per pixel".
    tifffile.imwrite(root / "images" / "b.tif", image_of(root, "b"), resolution=(28.3465, 28.3465),
                     resolutionunit="CENTIMETER")


def aniso_imagej(root: Path) -> None:
    tifffile.imwrite(root / "images" / "b.tif", image_of(root, "b"), imagej=True,
                     resolution=(1000 / 2.5, 1000 / 5.0), metadata={"unit": "um"})


def changed(change, args):
    def setup(root, _):
        change(root)
        return args(root)
    return setup


IO_CASES = [
    Case("metadata-72dpi-in-batch", changed(dpi72_cm, lambda root: measure(root, root / "images")), 1,
         ("{root}/images/b.tif", "pixel size in the metadata (tiff)", "352777 nm per pixel", "--pixel-size")),
    Case("metadata-72dpi-alone", changed(dpi72_cm, lambda root: measure(root, root / "images" / "b.tif")), 2,
         ("none of the 1 micrograph(s) could be used", "{root}/images/b.tif", "data.pixel_size_nm")),
    Case("pixels-not-square-in-batch", changed(aniso_imagej, lambda root: measure(root, root / "images")), 1,
         ("{root}/images/b.tif", "pixels are not square (x 2.5 nm, y 5 nm", "resample the image to square pixels",
          "--pixel-size")),
]


@pytest.mark.parametrize("case", IO_CASES, ids=lambda c: c.id)
def test_io_bad_input(case, batch, cli, monkeypatch):
    check_case(case, batch, cli, monkeypatch)


def test_bad_metadata_left_out_unless_overridden(batch, cli):
    import json

    dpi72_cm(batch)
    tifffile.imwrite(batch / "images" / "c.tif", image_of(batch, "c"), imagej=True,
                     resolution=(1000 / 2.5, 1000 / 5.0), metadata={"unit": "um"})
    res = cli(*measure(batch, batch / "images"))
    assert res.code == 1 and "failed: 2 of 3" in res.err, res.output
    res = cli(*measure(batch, batch / "images", out="out2", extra=("--pixel-size", "2nm")))
    assert res.code == 0, res.output
    summary = json.loads((batch / "out2" / "summary.json").read_text())
    assert summary["failures"] == [] and summary["pixel_size_nm"] == 2.0


@pytest.mark.parametrize("write, source", [
    (lambda p, a: tifffile.imwrite(p, a, imagej=True, resolution=(1000 / 2.5, 1000 / 5.0),
                                   metadata={"unit": "um"}), "imagej"),
    (lambda p, a: tifffile.imwrite(p, a, resolution=(1e7 / 2.5, 1e7 / 5.0), resolutionunit="CENTIMETER"), "tiff"),
    (lambda p, a: tifffile.imwrite(p, a, ome=True, metadata={
        "axes": "YX", "PhysicalSizeX": 2.5, "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 5.0, "PhysicalSizeYUnit": "nm"}), "ome"),
])
def test_non_square_pixels_refused_from_every_metadata(tmp_path, write, source):
    path = tmp_path / "aniso.tif"
    write(path, np.zeros((64, 64), np.uint8))
    with pytest.raises(NanosegError, match=rf"aniso\.tif: pixels are not square \(x 2\.5 nm, y 5 nm, in the "
                                           rf"{source} metadata\).*--pixel-size"):
        pixel_size_with_source(path)
    # an override is taken as square
    assert read_micrograph(path, pixel_size_nm=2.5, info_bar_rows=0).pixel_size_nm == 2.5


def test_nearly_square_pixels_and_absurd_sidecar(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), imagej=True,
                     resolution=(1000 / 2.5, 1000 / 2.52), metadata={"unit": "um"})  # 0.8 %: rounding
    assert pixel_size_with_source(path) == (pytest.approx(2.5), "imagej")
    png = tmp_path / "s.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(png)
    (tmp_path / "s.txt").write_text("PixelSize=2540000\n")  # an inch, not a calibration
    with pytest.raises(NanosegError, match=r"s\.png: pixel size in the metadata \(hitachi-txt\).*--pixel-size"):
        read_micrograph(png)


def test_implausible_override_refused(tmp_path):
    path = write_tiff(tmp_path / "a.tif", np.zeros((64, 64), np.uint8), pixel_size_nm=2.0)
    with pytest.raises(NanosegError, match=r"data\.pixel_size_nm.*outside the plausible"):
        read_micrograph(path, pixel_size_nm=3.5e5)


# --------------------------------------------------------------------------- EXIF orientation


def _with_bar(shape=(64, 80)) -> np.ndarray:
    """Noisy sample with a flat 12-row info bar at the bottom (text: a few bright blocks)."""
    image = np.random.default_rng(4).integers(20, 200, shape).astype(np.uint8)
    image[-12:] = 0
    image[-9:-4, 5:30:4] = 255
    return image


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    upright = _with_bar()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": stored rotated counter-clockwise
    path = tmp_path / f"rot6{suffix}"
    Image.fromarray(np.rot90(upright)).save(path, exif=exif, **({"quality": 100} if suffix == ".jpg" else {}))
    mg = read_micrograph(path, pixel_size_nm=2.5)
    assert mg.full_shape == upright.shape
    if suffix == ".png":
        assert mg.info_bar_rows == 12
        np.testing.assert_array_equal(mg.image, upright[:-12] / np.float32(255))
    else:
        assert 10 <= mg.info_bar_rows <= 13  # JPEG ringing blurs the bar's top edge
        assert np.abs(mg.image[:40] - upright[:40] / 255).mean() < 0.02


# --------------------------------------------------------------------------- intensity scale of a series


def _float_sample(seed: int) -> np.ndarray:
    """0..255 float micrograph (both ends reached by a few pixels) with bright discs."""
    from skimage.draw import disk

    image = np.random.default_rng(seed).normal(60, 10, (64, 64))
    for centre in ((20, 20), (44, 40)):
        image[disk(centre, 8)] += 120
    image = np.clip(image, 0, 255)
    image[:2, :2], image[-2:, -2:] = 0.0, 255.0
    return image.astype(np.float32)


@pytest.mark.parametrize("hot", [400.0, 2550.0, 1e30, -1e30])
def test_one_hot_pixel_does_not_rescale_the_series(tmp_path, hot):
    folder = tmp_path / "f"
    folder.mkdir()
    a, b = _float_sample(0), _float_sample(1)
    a[30, 30] = hot
    tifffile.imwrite(folder / "a.tif", a)
    tifffile.imwrite(folder / "b.tif", b)
    data = DataConfig(images=folder, info_bar_rows=0, pixel_size_nm=2.0)
    together = load_micrographs(data)
    alone = load_micrographs(DataConfig(images=folder / "b.tif", info_bar_rows=0, pixel_size_nm=2.0))[0]
    np.testing.assert_allclose(together[1].image, alone.image, atol=1e-3)
    np.testing.assert_allclose(alone.image, b / 255, atol=1e-6)
    # the hot image itself keeps its contrast; the hot pixel is clipped
    np.testing.assert_allclose(np.delete(together[0].image.ravel(), 30 * 64 + 30),
                               np.delete(a.ravel(), 30 * 64 + 30) / 255, atol=1e-6)


def test_huge_value_alone_does_not_flatten_the_image(tmp_path):
    image = _float_sample(2)
    image[5, 5] = 1e30
    tifffile.imwrite(tmp_path / "h.tif", image)
    mg = read_micrograph(tmp_path / "h.tif", info_bar_rows=0, pixel_size_nm=2.5)
    assert mg.image[5, 5] == 1.0
    np.testing.assert_allclose(np.delete(mg.image.ravel(), 5 * 64 + 5), np.delete(image.ravel(), 5 * 64 + 5) / 255,
                               atol=1e-6)


def test_robust_range_keeps_a_clean_image_exact():
    clean = np.random.default_rng(0).random((64, 64))
    assert robust_range(clean) == (clean.min(), clean.max())
    clean[0, 0] = 7.0
    assert robust_range(clean)[1] == np.sort(clean.ravel())[-2]


def test_small_signed_range_is_scaled_by_its_values(tmp_path):
    # int16 counts around zero: over the dtype's range they were a flat 0.5 and gave no particles
    image = (_float_sample(3) - 40).astype(np.int16)
    tifffile.imwrite(tmp_path / "s.tif", image)
    mg = read_micrograph(tmp_path / "s.tif", info_bar_rows=0, pixel_size_nm=2.5)
    lo, hi = float(image.min()), float(image.max())
    np.testing.assert_allclose(mg.image, (image - lo) / (hi - lo), atol=1e-6)
    assert mg.bit_depth is None


def test_mixed_bit_depths_keep_one_scale_and_warn(tmp_path, caplog):
    folder = tmp_path / "b16"
    folder.mkdir()
    twelve = (_float_sample(0) * 16).astype(np.uint16)  # reaches 4080: 12-bit
    ten = (_float_sample(1) * 4).astype(np.uint16)  # reaches 1020: another detector's 10 bits
    tifffile.imwrite(folder / "a.tif", twelve)
    tifffile.imwrite(folder / "b.tif", ten)
    with caplog.at_level("WARNING", logger="nanoseg.io"):
        a, b = load_micrographs(DataConfig(images=folder, info_bar_rows=0, pixel_size_nm=2.0))
    assert a.bit_depth == b.bit_depth == 12
    np.testing.assert_allclose(b.image, ten / 4095.0, atol=1e-6)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "b.tif reaches 1020 of the series' 4080" in warned and "measure them separately" in warned
    assert "a.tif reaches" not in warned
    # no false alarm for a normal series: a third 12-bit image, and float images of one range
    caplog.clear()
    tifffile.imwrite(folder / "b.tif", (_float_sample(1) * 16).astype(np.uint16))
    for stem, seed in (("fa", 0), ("fb", 1)):
        tifffile.imwrite(folder / f"{stem}.tif", _float_sample(seed) * 3)
    with caplog.at_level("WARNING", logger="nanoseg.io"):
        load_micrographs(DataConfig(images=folder, info_bar_rows=0, pixel_size_nm=2.0))
    assert "intensity range of their series" not in caplog.text


# --------------------------------------------------------------------------- segment train: the model's pixel size


def _train_folder(root: Path, sizes: dict[str, float]) -> Path:
    folder = root / "manual"
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for stem, size in sizes.items():
        write_tiff(folder / "images" / f"{stem}.tif", image_of(root, stem), pixel_size_nm=size)
        write_tiff(folder / "masks" / f"{stem}.tif", tifffile.imread(root / "labels" / f"{stem}.tif") > 0)
    return folder


TINY_TRAINING = ("--set", "segment.steps=2", "--set", "segment.val_every=1", "--set", "segment.architecture=unet",
                 "--set", "segment.base_width=4", "--set", "segment.depth=2", "--set", "segment.tile_size_px=48",
                 "--set", "segment.batch_size=2", "--set", "segment.bf16=false", "--set", "data.info_bar_rows=0",
                 "--device", "cpu")


def test_segment_train_stores_the_images_pixel_size(batch, cli):
    from nanoseg import nets

    folder = _train_folder(batch, {"a": 2.0, "b": 2.0, "c": 2.0})
    res = cli("segment", "train", folder, "--out", batch / "model", *TINY_TRAINING)
    assert res.code == 0, res.output
    assert nets.load(batch / "model" / "model.pt")[1]["pixel_size_nm"] == pytest.approx(2.0)


def differing_pixel_sizes(root, _):
    folder = _train_folder(root, {"a": 2.0, "b": 2.0, "c": 4.0})
    return ["segment", "train", folder, "--out", root / "model", *TINY_TRAINING]


TRAIN_CASES = [
    Case("train-images-differ-in-pixel-size", differing_pixel_sizes, 2,
         ("different pixel sizes (a 2 nm, c 4 nm)", "resample them to one pixel size", "--pixel-size")),
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=lambda c: c.id)
def test_train_bad_input(case, batch, cli, monkeypatch):
    check_case(case, batch, cli, monkeypatch)


def test_a_dim_image_in_a_series_is_named_in_the_summary(batch, cli):
    """The warning about a dim image reaches summary.json and the report, not only the log."""
    for stem, factor in (("a", 16), ("b", 4), ("c", 16)):  # b: a 10-bit detector among 12-bit ones
        write_tiff(batch / "images" / f"{stem}.tif", image_of(batch, stem).astype(np.uint16) * factor,
                   pixel_size_nm=2.0)
    res = cli("measure", batch / "images", "--labels", batch / "labels", "--out", batch / "out",
              "--set", "data.info_bar_rows=0", "--set", "classify.method=rules")
    assert res.code == 0, res.output
    warnings = json.loads((batch / "out" / "summary.json").read_text())["warnings"]
    assert any("b.tif reaches" in w and "less than half the intensity range" in w for w in warnings), warnings
