"""Image I/O: formats, scaling to [0, 1], pixel size from metadata, info bar, clear errors."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nanoseg.config import DataConfig
from nanoseg.errors import NanosegError
from nanoseg.io import (
    bright_fraction,
    detect_info_bar,
    list_images,
    load_micrographs,
    looks_antialiased,
    pixel_size_with_source,
    read_annotation,
    read_labels,
    read_mask,
    read_micrograph,
    read_pixel_size_nm,
    to_float01,
    write_png,
    write_tiff,
)


@pytest.fixture
def io_log(caplog):
    """Capture nanoseg.io records even when the CLI's logging setup stopped propagation."""
    logger = logging.getLogger("nanoseg.io")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.DEBUG)
    yield caplog
    logger.removeHandler(caplog.handler)


def _noise(shape=(96, 128), seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(100, 20, shape), 0, 255).astype(dtype)


def _with_bar(rows: int, shape=(200, 160), seed=1) -> np.ndarray:
    image = _noise(shape, seed)
    image[-rows:] = 0
    image[-rows + 4: -rows + 9, 10:60:3] = 240  # "text"
    return image


# --------------------------------------------------------------------------- shared TiO2 images


def test_shared_sem_pixel_size_and_info_bar(shared_data):
    files = list_images(shared_data / "sem")
    assert len(files) == 30
    for path in files:
        mg = read_micrograph(path)
        assert mg.pixel_size_nm == pytest.approx(7.34375, rel=1e-9), path
        assert mg.pixel_size_source == "rsciio"
        assert mg.info_bar_rows == 56, path
        assert mg.image.shape == (712, 1024) and mg.full_shape == (768, 1024)
        assert mg.image.dtype == np.float32 and 0.0 <= mg.image.min() and mg.image.max() <= 1.0


def test_shared_sem_raw_palette_indices(shared_data):
    path = shared_data / "sem" / "1908248.tif"
    raw = tifffile.TiffFile(path).pages[0].asarray()
    mg = read_micrograph(path, info_bar_rows=0)
    np.testing.assert_array_equal(np.round(mg.image * 255).astype(np.uint8), raw)
    assert read_pixel_size_nm(path) == pytest.approx(7.34375)


def test_shared_info_bar_survives_jpeg(shared_data, tmp_path):
    raw = tifffile.imread(shared_data / "sem" / "1908252.tif")
    Image.fromarray(raw).save(tmp_path / "lossy.jpg", quality=75)
    assert read_micrograph(tmp_path / "lossy.jpg").info_bar_rows == 56


def test_shared_image_without_bar_detects_none(shared_data):
    raw = tifffile.imread(shared_data / "sem" / "1908250.tif")
    assert detect_info_bar(raw) == 56
    assert detect_info_bar(raw[:712]) == 0
    assert detect_info_bar(raw[:700, 100:900]) == 0


# --------------------------------------------------------------------------- pixel size metadata


@pytest.mark.parametrize(
    "unit, px_per_unit, expected_nm",
    [("nm", 1 / 2.5, 2.5), ("micron", 1 / 0.0025, 2.5), ("um", 1 / 0.00734375, 7.34375)],
)
def test_imagej_resolution_with_unit(tmp_path, unit, px_per_unit, expected_nm):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, _noise(), imagej=True, resolution=(px_per_unit, px_per_unit), metadata={"unit": unit})
    assert read_pixel_size_nm(path) == pytest.approx(expected_nm, rel=1e-6)


@pytest.mark.parametrize(
    "meta, expected_nm",
    [
        ({"PhysicalSizeX": 3.5, "PhysicalSizeXUnit": "nm"}, 3.5),
        ({"PhysicalSizeX": 0.0035, "PhysicalSizeXUnit": "µm"}, 3.5),
        ({"PhysicalSizeX": 0.0035}, 3.5),  # OME's default unit is the micrometre
    ],
)
def test_ome_physical_size(tmp_path, meta, expected_nm):
    path = tmp_path / "ome.ome.tif"
    tifffile.imwrite(path, _noise(), ome=True, metadata=meta)
    mg = read_micrograph(path)
    assert mg.pixel_size_nm == pytest.approx(expected_nm, rel=1e-6)
    assert mg.pixel_size_source == "ome"


def test_centimetre_resolution_tags(tmp_path):
    path = tmp_path / "cm.tif"
    tifffile.imwrite(path, _noise(), resolution=(1e7 / 4.0, 1e7 / 4.0), resolutionunit="CENTIMETER")
    assert read_pixel_size_nm(path) == pytest.approx(4.0, rel=1e-6)


def test_dpi_is_not_a_pixel_size(tmp_path, io_log):
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, _noise(), resolution=(72, 72), resolutionunit="INCH")
    assert read_pixel_size_nm(path) is None
    assert "no pixel size" in io_log.text


def test_png_without_metadata_warns(tmp_path, io_log):
    path = tmp_path / "plain.png"
    Image.fromarray(_noise()).save(path)
    mg = read_micrograph(path)
    assert mg.pixel_size_nm is None and mg.pixel_size_source == "none"
    assert any(r.levelno == logging.WARNING and "plain.png" in r.getMessage() for r in io_log.records)


def test_a_files_warning_is_logged_once_per_command(tmp_path):
    from nanoseg.runtime import setup_logging

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.warnings = []

        def emit(self, record):
            if record.levelno == logging.WARNING and "no pixel size" in record.getMessage():
                self.warnings.append(record)

    path = tmp_path / "plain.png"
    Image.fromarray(_noise()).save(path)
    root, io_logger, collect = logging.getLogger("nanoseg"), logging.getLogger("nanoseg.io"), Collect()
    saved = root.handlers[:], root.propagate, root.level
    io_logger.addHandler(collect)
    try:
        for _ in range(3):  # every stage of a run reads the micrographs again
            read_micrograph(path)
        assert len(collect.warnings) == 1
        setup_logging("INFO")  # the next command says it again
        read_micrograph(path)
        assert len(collect.warnings) == 2
    finally:
        io_logger.removeHandler(collect)
        root.handlers[:], root.propagate, root.level = saved


def test_override_wins(tmp_path, io_log):
    path = tmp_path / "plain.png"
    Image.fromarray(_noise()).save(path)
    mg = read_micrograph(path, pixel_size_nm=1.25)
    assert mg.pixel_size_nm == 1.25 and mg.pixel_size_source == "override"
    assert "no pixel size" not in io_log.text


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.int32, np.uint32])
def test_write_tiff_round_trips_pixel_size(tmp_path, dtype):
    path = tmp_path / "w.tif"
    data = _noise(dtype=dtype)
    write_tiff(path, data, pixel_size_nm=7.34375)
    assert read_pixel_size_nm(path) == pytest.approx(7.34375, rel=1e-6)
    np.testing.assert_array_equal(tifffile.imread(path), data)
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_write_tiff_ome_labels_carry_the_physical_pixel_size(tmp_path):
    labels = np.zeros((40, 50), np.int32)
    labels[5:10, 5:12] = 70_000  # beyond uint16: ImageJ TIFF could not hold it
    labels[20:30, 20:30] = 3
    path = write_tiff(tmp_path / "labels.tif", labels, pixel_size_nm=7.34, ome=True)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and not tif.is_imagej
        pixels = tif.ome_metadata.split("<Pixels ")[1].split(">")[0]
    assert 'PhysicalSizeX="7.34"' in pixels and 'PhysicalSizeXUnit="nm"' in pixels
    assert 'PhysicalSizeY="7.34"' in pixels and 'Type="int32"' in pixels
    assert pixel_size_with_source(path) == (pytest.approx(7.34), "ome")
    np.testing.assert_array_equal(read_labels(path), labels)
    assert not list(tmp_path.glob(".*"))


def test_write_tiff_bool_is_0_255(tmp_path):
    path = write_tiff(tmp_path / "m.tif", np.eye(40, dtype=bool))
    assert set(np.unique(tifffile.imread(path))) == {0, 255}
    np.testing.assert_array_equal(read_mask(path), np.eye(40, dtype=bool))


# --------------------------------------------------------------------------- formats and scaling


def test_16bit_full_range(tmp_path):
    data = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", data)
    image = read_micrograph(tmp_path / "a.tif", info_bar_rows=0).image
    np.testing.assert_allclose(image, data / 65535.0, atol=1e-6)


def test_12bit_data_in_16bit_container(tmp_path):
    data = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", data)
    image = read_micrograph(tmp_path / "a.tif", info_bar_rows=0).image
    np.testing.assert_allclose(image, data / 4095.0, atol=1e-6)
    assert image.max() == pytest.approx(1.0)


def test_float32_kept_or_rescaled(tmp_path):
    data = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", data)
    np.testing.assert_array_equal(read_micrograph(tmp_path / "f.tif", info_bar_rows=0).image, data)
    tifffile.imwrite(tmp_path / "g.tif", data * 1000 - 200)
    image = read_micrograph(tmp_path / "g.tif", info_bar_rows=0).image
    assert image.min() == 0.0 and image.max() == pytest.approx(1.0)
    np.testing.assert_allclose(image, (data - data.min()) / (data.max() - data.min()), atol=1e-5)


def test_signed_integers_scaled_by_their_range():
    # Offset-corrected counts: over the dtype's 65536 levels they would be a flat gray.
    data = np.linspace(-50, 950, 64 * 64).reshape(64, 64).astype(np.int16)
    np.testing.assert_allclose(to_float01(data), (data + 50) / 1000.0, atol=1e-6)


def test_rgb_and_rgba_to_gray(tmp_path):
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 200  # pure red: luminance 0.2125 * 200
    Image.fromarray(rgb).save(tmp_path / "c.png")
    image = read_micrograph(tmp_path / "c.png", info_bar_rows=0).image
    assert image.shape == (64, 64)
    assert image.mean() == pytest.approx(round(0.2125 * 200) / 255, abs=1e-6)
    gray = _noise((64, 64))
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    tifffile.imwrite(tmp_path / "g.tif", rgba, photometric="rgb")
    np.testing.assert_array_equal(
        np.round(read_micrograph(tmp_path / "g.tif", info_bar_rows=0).image * 255).astype(np.uint8), gray
    )


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".jpg"])
def test_other_formats(tmp_path, suffix):
    data = _noise((64, 80))
    Image.fromarray(data).save(tmp_path / f"x{suffix}")
    image = read_micrograph(tmp_path / f"x{suffix}", info_bar_rows=0).image
    assert image.shape == (64, 80)
    tol = 12 / 255 if suffix == ".jpg" else 1e-6
    assert np.abs(image - data / 255.0).mean() < tol


def test_write_png(tmp_path):
    data = _noise((40, 50))
    write_png(tmp_path / "a.png", data)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), data)
    rgb = np.dstack([data, data // 2, data // 3])
    write_png(tmp_path / "b.png", rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), rgb)
    with pytest.raises(ValueError):
        write_png(tmp_path / "c.png", data.astype(np.int64))


# --------------------------------------------------------------------------- errors


def _corrupt_files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, _noise(), compression="zlib")
    files = {"truncated": tmp_path / "truncated.tif", "empty": tmp_path / "empty.tif",
             "garbage": tmp_path / "garbage.png", "stack": tmp_path / "stack.tif", "tiny": tmp_path / "tiny.tif"}
    files["truncated"].write_bytes(good.read_bytes()[:400])
    files["empty"].write_bytes(b"")
    files["garbage"].write_bytes(b"this is not a PNG file at all")
    tifffile.imwrite(files["stack"], np.zeros((5, 64, 64), np.uint8), photometric="minisblack")
    tifffile.imwrite(files["tiny"], np.zeros((20, 64), np.uint8))
    return files


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage", "stack", "tiny"])
def test_bad_files_give_one_line_naming_the_file(tmp_path, kind):
    path = _corrupt_files(tmp_path)[kind]
    with pytest.raises(NanosegError) as info:
        read_micrograph(path)
    message = str(info.value)
    assert path.name in message and "\n" not in message


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(NanosegError, match="nothere.tif"):
        read_micrograph(tmp_path / "nothere.tif")
    with pytest.raises(NanosegError, match="no images found"):
        list_images(tmp_path)
    with pytest.raises(NanosegError, match="no such image folder"):
        list_images(tmp_path / "nope")


def test_read_mask_and_labels(tmp_path):
    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 5:15] = 255
    tifffile.imwrite(tmp_path / "m.tif", mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif"), mask > 0)
    tifffile.imwrite(tmp_path / "bad.tif", np.arange(1600, dtype=np.uint8).reshape(40, 40))
    with pytest.raises(NanosegError, match="bad.tif.*not a binary mask"):
        read_mask(tmp_path / "bad.tif")
    labels = np.zeros((40, 40), np.uint16)
    labels[:10, :10], labels[20:, 20:] = 1, 70000 % 65536
    tifffile.imwrite(tmp_path / "l.tif", labels)
    out = read_labels(tmp_path / "l.tif")
    assert out.dtype.kind == "i"
    np.testing.assert_array_equal(out, labels)
    tifffile.imwrite(tmp_path / "lf.tif", labels.astype(np.float32) + 0.5)
    with pytest.raises(NanosegError, match="lf.tif"):
        read_labels(tmp_path / "lf.tif")


# --------------------------------------------------------------------------- info bar


@pytest.mark.parametrize("rows", [8, 30, 56])
def test_synthetic_info_bar_detected_exactly(rows):
    image = _with_bar(rows)
    assert detect_info_bar(image) == rows
    assert detect_info_bar(image.astype(np.float32) / 255) == rows  # any monotone rescaling


def test_no_bar_and_flat_images():
    assert detect_info_bar(_noise((200, 160))) == 0
    assert detect_info_bar(np.zeros((200, 160), np.uint8)) == 0  # flat all the way up: no bar
    saturated = _noise((200, 160))
    saturated[150:] = 255  # looks like a bar: bar-like bottom band with a sharp transition
    assert detect_info_bar(saturated) == 50


def test_info_bar_override_and_crop(tmp_path):
    tifffile.imwrite(tmp_path / "b.tif", _with_bar(30))
    assert read_micrograph(tmp_path / "b.tif").image.shape == (170, 160)
    mg = read_micrograph(tmp_path / "b.tif", info_bar_rows=10)
    assert mg.info_bar_rows == 10 and mg.image.shape == (190, 160)
    assert read_micrograph(tmp_path / "b.tif", info_bar_rows=0).image.shape == (200, 160)
    with pytest.raises(NanosegError, match="info_bar_rows"):
        read_micrograph(tmp_path / "b.tif", info_bar_rows=190)


def test_load_micrographs_inverts_dark_particles(tmp_path):
    (tmp_path / "imgs").mkdir()
    data = _noise((64, 64))
    tifffile.imwrite(tmp_path / "imgs" / "b.tif", data)
    tifffile.imwrite(tmp_path / "imgs" / "a.tif", data)
    (tmp_path / "imgs" / ".a.tmp.tif").write_bytes(b"")  # half-written temporaries are ignored
    (tmp_path / "imgs" / "notes.txt").write_text("x")
    cfg = DataConfig(images=tmp_path / "imgs", dark_particles=True, info_bar_rows=0, pixel_size_nm=2.0)
    mgs = load_micrographs(cfg)
    assert [m.stem for m in mgs] == ["a", "b"]
    np.testing.assert_allclose(mgs[0].image, 1.0 - data / 255.0, atol=1e-6)
    assert mgs[0].pixel_size_nm == 2.0


def test_info_command(tmp_path):
    from typer.testing import CliRunner

    from nanoseg.cli import app

    write_tiff(tmp_path / "a.tif", _with_bar(30), pixel_size_nm=3.5)
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    result = CliRunner().invoke(app, ["info", str(tmp_path / "a.tif")])
    assert result.exit_code == 0, result.output
    assert "3.5 nm" in result.output and " 30" in result.output
    result = CliRunner().invoke(app, ["info", str(tmp_path / "a.tif"), "--pixel-size", "2nm", "--info-bar-rows", "0"])
    assert "2 nm" in result.output and "override" in result.output
    result = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 2 and "broken.tif" in result.output and "a.tif" in result.output


def test_hitachi_and_jeol_sidecar_files(tmp_path):
    Image.fromarray(_noise()).save(tmp_path / "hitachi.bmp")
    (tmp_path / "hitachi.txt").write_text("[SemImageFile]\nInstructName=S-4800\nDataSize=128x96\nPixelSize=4.960938\n")
    mg = read_micrograph(tmp_path / "hitachi.bmp", info_bar_rows=0)
    assert mg.pixel_size_nm == pytest.approx(4.960938) and mg.pixel_size_source == "hitachi-txt"
    tifffile.imwrite(tmp_path / "jeol.tif", _noise())
    (tmp_path / "jeol.txt").write_text("$CM_FORMAT JEOL/SEM\n$CM_FULL_SIZE 128 96\n$$SM_MICRON_BAR 80\n$$SM_MICRON_MARKER 1um\n")
    mg = read_micrograph(tmp_path / "jeol.tif", info_bar_rows=0)
    assert mg.pixel_size_nm == pytest.approx(12.5) and mg.pixel_size_source == "jeol-txt"


# --------------------------------------------------------------------------- one scale per series


def _counts(top: int, shape=(64, 64), seed=0) -> np.ndarray:
    """16-bit detector counts whose maximum is exactly ``top``; pixel (0, 0) holds 1000."""
    data = np.random.default_rng(seed).integers(100, top, shape).astype(np.uint16)
    data[0, 0], data[-1, -1] = 1000, top
    return data


def _series(tmp_path, *tops: int, **tiff_kwargs) -> Path:
    folder = tmp_path / "series"
    folder.mkdir()
    for i, top in enumerate(tops):
        tifffile.imwrite(folder / f"img{i}.tif", _counts(top, seed=i), **tiff_kwargs)
    return folder


def test_series_shares_one_bit_depth(tmp_path, caplog):
    # 3000 fits 12 bits, 5000 needs 13: read one by one they were scaled by 4095 and 16383
    folder = _series(tmp_path, 3000, 5000)
    with caplog.at_level(logging.INFO, logger="nanoseg.io"):
        mgs = load_micrographs(DataConfig(images=folder, info_bar_rows=0, pixel_size_nm=1.0))
    assert mgs[0].image[0, 0] == mgs[1].image[0, 0] == pytest.approx(1000 / 16383)
    assert [m.bit_depth for m in mgs] == [14, 14]
    scale_logs = [r.getMessage() for r in caplog.records if "intensity scale" in r.getMessage()]
    assert len(scale_logs) == 1 and "14-bit" in scale_logs[0]
    # an image read alone keeps its own scale
    alone = read_micrograph(folder / "img0.tif", info_bar_rows=0, pixel_size_nm=1.0)
    assert alone.bit_depth == 12 and alone.image[0, 0] == pytest.approx(1000 / 4095)
    fixed = read_micrograph(folder / "img0.tif", info_bar_rows=0, bit_depth=16)
    assert fixed.bit_depth == 16 and fixed.image[0, 0] == pytest.approx(1000 / 65535)


def test_series_explicit_bit_depth(tmp_path):
    folder = _series(tmp_path, 3000, 5000)
    mgs = load_micrographs(DataConfig(images=folder, info_bar_rows=0, pixel_size_nm=1.0, bit_depth=16))
    assert mgs[0].image[0, 0] == mgs[1].image[0, 0] == pytest.approx(1000 / 65535)
    with pytest.raises(NanosegError, match=r"img1\.tif.*5000.*data\.bit_depth.*at least 13"):
        load_micrographs(DataConfig(images=folder, info_bar_rows=0, pixel_size_nm=1.0, bit_depth=12))


@pytest.mark.parametrize("tiff_kwargs", [
    {"extratags": [(281, "H", 1, 4095, True)]},  # TIFF MaxSampleValue below the container's
    {"ome": True, "metadata": {"SignificantBits": 12}},
])
def test_bit_depth_stated_in_the_file_wins(tmp_path, tiff_kwargs):
    folder = _series(tmp_path, 700, 900, **tiff_kwargs)  # the values alone would say 10 bits
    mgs = load_micrographs(DataConfig(images=folder, info_bar_rows=0, pixel_size_nm=1.0))
    assert [m.bit_depth for m in mgs] == [12, 12]
    assert mgs[0].image[0, 0] == pytest.approx(1000 / 4095)


def test_bit_depth_stated_too_small_is_not_believed(tmp_path, io_log):
    folder = _series(tmp_path, 3000, 5000, extratags=[(281, "H", 1, 4095, True)])
    mgs = load_micrographs(DataConfig(images=folder, info_bar_rows=0, pixel_size_nm=1.0))
    assert [m.bit_depth for m in mgs] == [14, 14]
    assert any("img1.tif" in r.getMessage() and "12-bit" in r.getMessage() for r in io_log.records)


def test_float_series_shares_one_range(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    base = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    tifffile.imwrite(folder / "a.tif", base * 100)
    tifffile.imwrite(folder / "b.tif", base * 200)
    a, b = load_micrographs(DataConfig(images=folder, info_bar_rows=0, pixel_size_nm=1.0))
    lo, hi = float(base.min()) * 100, float(base.max()) * 200
    np.testing.assert_allclose(a.image, (base * 100 - lo) / (hi - lo), atol=1e-5)
    assert a.bit_depth is None and b.image.max() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["16-bit", "float", "dark 8-bit"])
def test_series_read_one_at_a_time_matches_the_whole_series(tmp_path, kind):
    """A batch reads each image alone, after a first pass for the scale: same images as reading them together."""
    from nanoseg.io import read_in_series, scan_micrograph, series_scale

    if kind == "16-bit":
        folder, cfg = _series(tmp_path, 3000, 5000), {}
    else:
        folder, cfg = tmp_path / "f", {"dark_particles": kind.startswith("dark")}
        folder.mkdir()
        base = np.random.default_rng(0).random((64, 64))
        for name, factor in (("a", 100), ("b", 200)):
            data = (base * factor).astype(np.float32) if kind == "float" else (base * factor).astype(np.uint8)
            tifffile.imwrite(folder / f"{name}.tif", data)
    data = DataConfig(images=folder, info_bar_rows=0, pixel_size_nm=1.0, **cfg)
    together = load_micrographs(data)
    paths = list_images(folder)
    frames = [scan_micrograph(p, data) for p in paths]
    assert [f.pixel_size_nm for f in frames] == [1.0, 1.0]
    scale = series_scale(frames, data.bit_depth, data.dark_particles)
    for path, mg in zip(paths, together):
        alone = read_in_series(path, data, scale)
        np.testing.assert_array_equal(alone.image, mg.image)
        assert alone.bit_depth == mg.bit_depth and alone.pixel_size_nm == mg.pixel_size_nm


# --------------------------------------------------------------------------- annotations


def _disc_mask(antialiased: bool, shape=(64, 64)) -> np.ndarray:
    """Two discs on black, 0/255, with grey edges when ``antialiased`` (drawn 4x and averaged)."""
    from skimage.draw import disk
    from skimage.transform import downscale_local_mean

    big = np.zeros((shape[0] * 4, shape[1] * 4))
    for centre in ((80, 80), (160, 170)):
        big[disk(centre, 50, shape=big.shape)] = 255
    if not antialiased:
        return big[::4, ::4].astype(np.uint8)
    return np.round(downscale_local_mean(big, (4, 4))).astype(np.uint8)


def test_read_annotation_binary_and_labels(tmp_path):
    mask = _disc_mask(False)
    tifffile.imwrite(tmp_path / "m.tif", mask)
    np.testing.assert_array_equal(read_annotation(tmp_path / "m.tif"), mask > 0)
    Image.fromarray((mask > 0).astype(np.uint8)).save(tmp_path / "m01.png")
    assert read_annotation(tmp_path / "m01.png").dtype == bool
    labels = np.zeros((40, 40), np.uint16)
    labels[:10, :10], labels[20:30, 20:30], labels[32:, :5] = 1, 2, 300
    tifffile.imwrite(tmp_path / "l.tif", labels)
    out = read_annotation(tmp_path / "l.tif")
    assert out.dtype.kind == "i"
    np.testing.assert_array_equal(out, labels)
    forced = read_annotation(tmp_path / "m.tif", kind="labels")
    assert forced.dtype.kind == "i" and set(np.unique(forced)) == {0, 255}


def test_read_annotation_refuses_antialiased_masks(tmp_path):
    mask = _disc_mask(True)
    assert np.unique(mask).size > 10 and looks_antialiased(mask)
    tifffile.imwrite(tmp_path / "aa_m.tif", mask)
    with pytest.raises(NanosegError) as info:
        read_annotation(tmp_path / "aa_m.tif")
    message = str(info.value)
    assert "aa_m.tif" in message and "anti-aliased" in message and "128" in message and "--labels" in message
    assert "\n" not in message
    np.testing.assert_array_equal(read_annotation(tmp_path / "aa_m.tif", kind="mask"), mask >= 128)
    # a 0/255 mask saved as JPEG is refused the same way
    Image.fromarray(_disc_mask(False)).save(tmp_path / "j_m.jpg", quality=75)
    with pytest.raises(NanosegError, match="j_m.jpg.*anti-aliased"):
        read_annotation(tmp_path / "j_m.jpg")


def test_read_annotation_8bit_labels_only_when_asked(tmp_path):
    labels = np.zeros((40, 40), np.uint8)
    for i in range(12):
        labels[(i // 4) * 10: (i // 4) * 10 + 8, (i % 4) * 10: (i % 4) * 10 + 8] = i + 1
    assert not looks_antialiased(labels)
    tifffile.imwrite(tmp_path / "l8.tif", labels)
    with pytest.raises(NanosegError, match="l8.tif.*--labels"):
        read_annotation(tmp_path / "l8.tif")
    np.testing.assert_array_equal(read_annotation(tmp_path / "l8.tif", kind="labels"), labels)
    tifffile.imwrite(tmp_path / "p.tif", np.linspace(0, 1, 1600, dtype=np.float32).reshape(40, 40))
    with pytest.raises(NanosegError, match="p.tif.*fractional"):
        read_annotation(tmp_path / "p.tif")
    with pytest.raises(NanosegError, match="kind"):
        read_annotation(tmp_path / "p.tif", kind="binary")


# --------------------------------------------------------------------------- degenerate input


def _particles(dark: bool, shape=(96, 128)) -> np.ndarray:
    """Noisy uint8 image with a few discs, bright on dark or dark on bright."""
    from skimage.draw import disk

    image = _noise(shape).astype(float) * 0.3 + 40
    for centre in ((25, 30), (60, 90), (70, 30)):
        image[disk(centre, 10, shape=shape)] += 150
    image = np.clip(image, 0, 255)
    return (255 - image if dark else image).astype(np.uint8)


def test_nan_pixels_are_replaced_with_a_warning(tmp_path, io_log):
    data = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    data[3:5, 3:5] = np.nan
    data[10, 10] = np.inf
    tifffile.imwrite(tmp_path / "nan.tif", data)
    image = read_micrograph(tmp_path / "nan.tif", info_bar_rows=0).image
    assert np.isfinite(image).all()
    warnings = [r.getMessage() for r in io_log.records if r.levelno == logging.WARNING]
    assert any("nan.tif" in w and "5 of 4096 pixels" in w and "NaN" in w for w in warnings)


@pytest.mark.parametrize("dtype, value", [(np.uint8, 0), (np.uint16, 1234), (np.float32, 0.5)])
def test_blank_image_warns(tmp_path, io_log, dtype, value):
    tifffile.imwrite(tmp_path / "blank.tif", np.full((64, 64), value, dtype))
    read_micrograph(tmp_path / "blank.tif", info_bar_rows=0, pixel_size_nm=1.0)
    warnings = [r.getMessage() for r in io_log.records if r.levelno == logging.WARNING]
    assert any("blank.tif" in w and f"blank (all pixels {value:g})" in w and "no particles" in w
               for w in warnings), warnings


def test_dark_particles_hint(tmp_path, io_log):
    assert bright_fraction(_particles(dark=True) / 255.0) > 0.5 > bright_fraction(_particles(dark=False) / 255.0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    tifffile.imwrite(folder / "bright.tif", _particles(dark=False))
    tifffile.imwrite(folder / "dark.tif", _particles(dark=True))
    load_micrographs(DataConfig(images=folder, info_bar_rows=0, pixel_size_nm=1.0, dark_particles=False))
    hints = sorted({r.getMessage() for r in io_log.records if "dark_particles" in r.getMessage()})
    assert len(hints) == 1 and "1 of 2 micrographs (dark.tif)" in hints[0]
    assert "set data.dark_particles: auto or true (or --set data.dark_particles=true)" in hints[0]
    io_log.clear()
    (folder / "bright.tif").unlink()
    load_micrographs(DataConfig(images=folder, info_bar_rows=0, pixel_size_nm=1.0, dark_particles=True))
    assert not [r for r in io_log.records if "dark_particles" in r.getMessage()]


def test_info_command_shows_bit_depth(tmp_path):
    from typer.testing import CliRunner

    from nanoseg.cli import app

    tifffile.imwrite(tmp_path / "d12.tif", _counts(3000))
    result = CliRunner().invoke(app, ["info", str(tmp_path / "d12.tif"), "--info-bar-rows", "0"])
    assert result.exit_code == 0, result.output
    assert "bits" in result.output.splitlines()[0]
    assert "uint16   12" in result.output


def test_a_file_rewritten_with_its_size_and_time_restored_is_read_again(tmp_path):
    """The frame cache keys on inode and ctime too: new bytes behind an old mtime are not served stale."""
    from nanoseg.io import read_micrograph, write_tiff

    path = tmp_path / "m.tif"
    rng = np.random.default_rng(0)
    write_tiff(path, rng.integers(0, 255, (64, 64), dtype=np.uint8), pixel_size_nm=2.0)
    first = read_micrograph(path, info_bar_rows=0)
    st = path.stat()
    write_tiff(path, rng.integers(0, 255, (64, 64), dtype=np.uint8), pixel_size_nm=2.0)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    second = read_micrograph(path, info_bar_rows=0)
    assert not np.array_equal(first.image, second.image)
    assert np.array_equal(second.image, read_micrograph(path, info_bar_rows=0).image)


def test_a_batch_decodes_each_micrograph_once(tmp_path, monkeypatch):
    """nanoseg measure scans the series for its scale, then measures image by image: one decode per file."""
    from skimage.measure import label

    from nanoseg.config import build_config
    from nanoseg.io import raw, read, write_tiff
    from nanoseg.measure import measure_files

    rng = np.random.default_rng(1)
    for stem in "abc":
        image = np.zeros((64, 64), np.uint8)
        image[10:20, 10:20] = image[30:45, 35:50] = 200
        write_tiff(tmp_path / "images" / f"{stem}.tif", image + rng.integers(0, 20, image.shape, dtype=np.uint8),
                   pixel_size_nm=2.0)
        write_tiff(tmp_path / "labels" / f"{stem}.tif", label(image > 0).astype(np.uint16))
    decoded = []
    real = raw.read_raw
    monkeypatch.setattr(read, "read_raw", lambda path, *a, **k: decoded.append(path) or real(path, *a, **k))
    config = build_config({"data": {"info_bar_rows": 0}, "classify": {"method": "rules"}}, profile="demo")
    summary = measure_files([tmp_path / "images"], tmp_path / "out", config, labels_dir=tmp_path / "labels")
    assert summary["n_particles"] == 6
    assert sorted(p.name for p in decoded) == ["a.tif", "b.tif", "c.tif"]
