"""Transmission micrographs in their vendors' formats (DigitalMicrograph, EMD, TIA, MRC), read
through RosettaSciIO with their calibration.

Every file is written here, by the format's own library (``mrcfile``) or by a minimal writer of
the layout RosettaSciIO reads (EMD with ``h5py``, DigitalMicrograph 3/4 and TIA ``.ser`` byte by
byte): nothing is downloaded.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from nanoseg.errors import NanosegError
from nanoseg.io import (
    IMAGE_SUFFIXES,
    list_images,
    pixel_size_with_source,
    read_micrograph,
    read_raw,
    vendor,
    write_tiff,
)

H, W = 48, 64


def _image(dtype=np.uint16, seed: int = 0) -> np.ndarray:
    """A noisy background with two bright disks, in ``dtype``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    img = 200.0 + 20.0 * rng.standard_normal((H, W))
    for cy, cx, r in ((15, 18, 7), (30, 44, 9)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 2000.0
    return img.astype(dtype)


# --------------------------------------------------------------------------- writers


def write_mrc(path: Path, data: np.ndarray, voxel_size_angstrom=None) -> Path:
    mrcfile = pytest.importorskip("mrcfile")
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(data)
        if voxel_size_angstrom is not None:
            mrc.voxel_size = voxel_size_angstrom
    return path


def write_emd_berkeley(path: Path, images: dict[str, np.ndarray], scale: float = 0.5, units: str = "[n_m]",
                       y_scale: float | None = None) -> Path:
    """Berkeley (NCEM) EMD: root version attributes, /data/<name>/data + dim1 (x), dim2 (y).

    RosettaSciIO reads the dataset transposed (dim1 is the fastest axis of the image), so the
    image is stored as ``image.T`` with dim1 along x.
    """
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        f.attrs["version_major"] = 0
        f.attrs["version_minor"] = 2
        group = f.create_group("data")
        for name, image in images.items():
            sub = group.create_group(name)
            sub.attrs["emd_group_type"] = 1
            sub.create_dataset("data", data=image.T)
            for key, n, step, label in (("dim1", image.shape[1], scale, "x"),
                                        ("dim2", image.shape[0], y_scale or scale, "y")):
                dim = sub.create_dataset(key, data=np.arange(n) * step)
                dim.attrs["name"] = label
                dim.attrs["units"] = units
    return path


def write_emd_velox(path: Path, images: dict[str, np.ndarray], pixel_m: float = 2.5e-10) -> Path:
    """Velox EMD: /Version (JSON), /Data/Image/<id>/Data (y, x, frame) + Metadata (JSON as bytes).

    ``images`` maps detector names to (H, W) images or (frames, H, W) stacks.
    """
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        f.create_dataset("Version", data=np.array([json.dumps({"format": "Velox", "version": "11"}).encode()]))
        group = f.create_group("Data").create_group("Image")
        for i, (detector, image) in enumerate(images.items()):
            frames = image if image.ndim == 3 else image[np.newaxis]
            meta = {
                "BinaryResult": {"PixelSize": {"width": str(pixel_m), "height": str(pixel_m)}, "PixelUnitX": "m",
                                 "PixelUnitY": "m", "Offset": {"x": "0", "y": "0"}, "DetectorIndex": str(i)},
                "Detectors": {f"Detector-{j}": {"DetectorName": name} for j, name in enumerate(images)},
                "Acquisition": {"AcquisitionStartDatetime": {"DateTime": "1600000000"}},
                "Scan": {"FrameTime": "1.0"},
            }
            raw = np.frombuffer(json.dumps(meta).encode(), np.uint8)
            sub = group.create_group(f"{i:032x}")
            sub.create_dataset("Data", data=np.moveaxis(frames, 0, -1))
            sub.create_dataset("Metadata", data=np.repeat(raw[:, np.newaxis], frames.shape[0], axis=1))
    return path


# DigitalMicrograph data types: numpy dtype -> (ImageData.DataType, tag element type of the Data array)
_DM_TYPES = {np.dtype(np.int16): (1, 2), np.dtype(np.float32): (2, 6), np.dtype(np.uint8): (6, 10),
             np.dtype(np.int32): (7, 3), np.dtype(np.uint16): (10, 4), np.dtype(np.uint32): (11, 5),
             np.dtype(np.float64): (12, 7)}


class _DMWriter:
    """A minimal DigitalMicrograph 3 or 4 writer: the tag tree RosettaSciIO's reader parses.

    Tag headers and lengths are big-endian (8-byte lengths in DM4), tag values little-endian.
    """

    def __init__(self, version: int):
        self.version = version
        self.q = ">q" if version == 4 else ">l"

    def group(self, name: str, tags: list[bytes], root: bool = False) -> bytes:
        body = b"".join(tags)
        head = struct.pack(">BB", 0, 0)
        if self.version == 4 and not root:
            head += struct.pack(">q", len(body) + 8)
        head += struct.pack(self.q, len(tags))
        return head + body if root else self._named(20, name) + head + body

    def _named(self, tag_id: int, name: str) -> bytes:
        raw = name.encode()
        return struct.pack(">Bh", tag_id, len(raw)) + raw

    def _data(self, name: str, info: list[int], payload: bytes) -> bytes:
        body = b"%%%%" + struct.pack(self.q, len(info)) + b"".join(struct.pack(self.q, v) for v in info) + payload
        size = struct.pack(">q", len(body)) if self.version == 4 else b""
        return self._named(21, name) + size + body

    def long(self, name: str, value: int) -> bytes:
        return self._data(name, [3], struct.pack("<l", value))

    def float(self, name: str, value: float) -> bytes:
        return self._data(name, [6], struct.pack("<f", value))

    def text(self, name: str, value: str) -> bytes:  # an array of 2-byte characters
        return self._data(name, [20, 4, len(value)], b"".join(struct.pack("<H", ord(c)) for c in value))

    def array(self, name: str, data: np.ndarray) -> bytes:
        return self._data(name, [20, _DM_TYPES[data.dtype][1], data.size], data.astype(data.dtype.newbyteorder("<")).tobytes())

    def image(self, data: np.ndarray, scale: float, units: str, title: str, y_scale: float | None = None) -> bytes:
        """One ImageList entry; ``data`` is (y, x) or (z, y, x); calibrations listed x first."""
        shape = data.shape[::-1]
        scales = [scale, y_scale or scale] + [1.0] * (len(shape) - 2)
        unit_names = [units, units] + [""] * (len(shape) - 2)
        dims = [self.group("", [self.float("Origin", 0.0), self.float("Scale", s), self.text("Units", u)])
                for s, u in zip(scales, unit_names)]
        calibrations = self.group("Calibrations", [
            self.group("Brightness", [self.float("Origin", 0.0), self.float("Scale", 1.0), self.text("Units", "")]),
            self.group("Dimension", dims)])
        image_data = self.group("ImageData", [
            calibrations, self.array("Data", data), self.long("DataType", _DM_TYPES[data.dtype][0]),
            self.group("Dimensions", [self.long("", n) for n in shape])])
        return self.group("", [image_data, self.group("ImageTags", []), self.text("Name", title)])

    def file(self, images: list[bytes]) -> bytes:
        root = self.group("", [self.group("ImageList", images)], root=True)
        size = struct.pack(">q" if self.version == 4 else ">l", len(root))
        return struct.pack(">l", self.version) + size + struct.pack(">l", 1) + root


def write_dm(path: Path, images: list[tuple[np.ndarray, str]], scale: float = 0.2, units: str = "nm",
             y_scale: float | None = None) -> Path:
    writer = _DMWriter(4 if path.suffix.lower() == ".dm4" else 3)
    path.write_bytes(writer.file([writer.image(data, scale, units, title, y_scale) for data, title in images]))
    return path


def write_ser(path: Path, frames: np.ndarray, delta_m: float = 3e-10) -> Path:
    """A TIA .ser file (series version 0x210) of 2-D image elements: (H, W) or (n, H, W)."""
    frames = frames if frames.ndim == 3 else frames[np.newaxis]
    n, h, w = frames.shape
    codes = {np.dtype(np.uint8): 1, np.dtype(np.uint16): 2, np.dtype(np.int16): 5, np.dtype(np.float32): 7}
    dim_units = b""
    dimension = struct.pack("<IddII", n, 0.0, 1.0, 0, 0) + struct.pack("<I", len(dim_units)) + dim_units
    header_len = 30 + len(dimension)
    offsets_at = header_len
    first = offsets_at + 8 * n
    element_len = 40 + 2 + 8 + frames[0].nbytes + 8  # calibrations, type, sizes, array, tag
    data_offsets = [first + i * element_len for i in range(n)]
    tag_offsets = [o + element_len - 8 for o in data_offsets]
    out = struct.pack("<HHHIIIII", 0x4949, 0x0197, 0x0210, 0x4122, 0x4152, n, n, offsets_at)
    out += struct.pack("<I", 1) + dimension
    out += struct.pack(f"<{n}I", *data_offsets) + struct.pack(f"<{n}I", *tag_offsets)
    for frame in frames:
        out += struct.pack("<ddIddI", 0.0, delta_m, 0, 0.0, delta_m, 0)
        out += struct.pack("<HII", codes[frame.dtype], w, h)
        out += np.ascontiguousarray(frame[::-1]).astype(frame.dtype.newbyteorder("<")).tobytes()  # bottom row first
        out += struct.pack("<HHI", 0x4152, 0, 0)
    path.write_bytes(out)
    return path


# --------------------------------------------------------------------------- reading


def test_vendor_suffixes_are_image_suffixes():
    for suffix in (".dm3", ".dm4", ".emd", ".ser", ".emi", ".mrc"):
        assert suffix in IMAGE_SUFFIXES


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int16])
def test_mrc_data_and_pixel_size(tmp_path, dtype):
    data = _image(dtype)
    path = write_mrc(tmp_path / "a.mrc", data, voxel_size_angstrom=(2.5, 2.5, 1.0))
    raw = read_raw(path)
    assert raw.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(raw, data)
    assert pixel_size_with_source(path) == (pytest.approx(0.25), "mrc")
    mg = read_micrograph(path, info_bar_rows=0)
    assert mg.pixel_size_nm == pytest.approx(0.25) and mg.pixel_size_source == "mrc"
    assert mg.image.shape == (H, W) and mg.full_shape == (H, W)


def test_mrc_without_calibration_is_in_px(tmp_path):
    path = write_mrc(tmp_path / "a.mrc", _image(np.float32))
    assert pixel_size_with_source(path) == (None, "none")


def test_mrc_stack_is_refused(tmp_path):
    path = write_mrc(tmp_path / "stack.mrc", np.stack([_image(np.int16, s) for s in range(3)]), 2.0)
    with pytest.raises(NanosegError, match=r"stack\.mrc: holds 3 images \(a stack of 64x48 px frames\).*"
                                           r"export a single image"):
        read_raw(path)


def test_mrc_non_square_pixels_are_refused(tmp_path):
    path = write_mrc(tmp_path / "a.mrc", _image(np.uint16), voxel_size_angstrom=(2.0, 3.0, 1.0))
    with pytest.raises(NanosegError, match="pixels are not square.*mrc"):
        pixel_size_with_source(path)
    # an override measures it anyway
    assert read_micrograph(path, pixel_size_nm=0.2, info_bar_rows=0).pixel_size_source == "override"


def test_emd_berkeley(tmp_path):
    data = _image(np.uint16)
    path = write_emd_berkeley(tmp_path / "a.emd", {"haadf": data}, scale=0.5, units="[n_m]")
    np.testing.assert_array_equal(read_raw(path), data)
    assert pixel_size_with_source(path) == (pytest.approx(0.5), "emd")
    path = write_emd_berkeley(tmp_path / "b.emd", {"haadf": data}, scale=2e-3, units="[u_m]")
    assert pixel_size_with_source(path) == (pytest.approx(2.0), "emd")


def test_emd_berkeley_absurd_calibration_is_refused(tmp_path):
    path = write_emd_berkeley(tmp_path / "a.emd", {"haadf": _image()}, scale=5.0, units="[m]")
    with pytest.raises(NanosegError, match=r"a\.emd: pixel size in the metadata \(emd\).*outside the plausible"):
        pixel_size_with_source(path)


def test_emd_with_several_images_names_them(tmp_path):
    path = write_emd_berkeley(tmp_path / "two.emd", {"haadf": _image(), "bf": _image(seed=1)})
    with pytest.raises(NanosegError, match=r"two\.emd: holds 2 signals \(.*haadf.*bf|two\.emd: holds 2 signals \(.*bf.*haadf"):
        read_raw(path)


def test_emd_velox(tmp_path):
    data = _image(np.uint16)
    path = write_emd_velox(tmp_path / "v.emd", {"HAADF": data}, pixel_m=2.5e-10)
    np.testing.assert_array_equal(read_raw(path), data)
    assert pixel_size_with_source(path) == (pytest.approx(0.25), "emd")


def test_emd_velox_two_detectors_and_stack_are_refused(tmp_path):
    path = write_emd_velox(tmp_path / "hb.emd", {"HAADF": _image(), "BF": _image(seed=1)})
    with pytest.raises(NanosegError, match=r"hb\.emd: holds 2 signals \(HAADF \(an image\), BF \(an image\)\)"):
        read_raw(path)
    path = write_emd_velox(tmp_path / "frames.emd", {"HAADF": np.stack([_image(seed=s) for s in range(4)])})
    with pytest.raises(NanosegError, match=r"frames\.emd: holds 4 images \(a stack"):
        read_raw(path)


@pytest.mark.parametrize("suffix", [".dm3", ".dm4"])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int16])
def test_digitalmicrograph(tmp_path, suffix, dtype):
    data = _image(dtype)
    path = write_dm(tmp_path / f"a{suffix}", [(data, "HAADF")], scale=0.125, units="nm")
    raw = read_raw(path)
    assert raw.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(raw, data)
    assert pixel_size_with_source(path) == (pytest.approx(0.125), "dm")
    path = write_dm(tmp_path / f"b{suffix}", [(data, "HAADF")], scale=1.5, units="µm")
    assert pixel_size_with_source(path) == (pytest.approx(1500.0), "dm")


def test_digitalmicrograph_refusals(tmp_path):
    stack = write_dm(tmp_path / "stack.dm4", [(np.stack([_image(seed=s) for s in range(3)]), "series")])
    with pytest.raises(NanosegError, match=r"stack\.dm4: holds 3 images \(a stack of 64x48 px frames\)"):
        read_raw(stack)
    two = write_dm(tmp_path / "two.dm3", [(_image(), "HAADF"), (_image(seed=1), "BF")])
    with pytest.raises(NanosegError, match=r"two\.dm3: holds 2 signals \(HAADF \(an image\), BF \(an image\)\)"):
        read_raw(two)
    odd = write_dm(tmp_path / "odd.dm3", [(_image(), "HAADF")], scale=0.2, y_scale=0.4)
    with pytest.raises(NanosegError, match=r"odd\.dm3: pixels are not square \(x 0\.2 nm, y 0\.4 nm, in the dm"):
        pixel_size_with_source(odd)
    broken = tmp_path / "broken.dm3"
    broken.write_bytes(write_dm(tmp_path / "whole.dm3", [(_image(), "HAADF")]).read_bytes()[:200])
    with pytest.raises(NanosegError, match=r"broken\.dm3: cannot read the DigitalMicrograph file"):
        read_raw(broken)


def test_uncalibrated_digitalmicrograph_is_in_px(tmp_path):
    path = write_dm(tmp_path / "a.dm3", [(_image(), "HAADF")], scale=1.0, units="")
    assert pixel_size_with_source(path) == (None, "none")


def test_tia_ser(tmp_path):
    data = _image(np.uint16)
    path = write_ser(tmp_path / "a_1.ser", data, delta_m=3e-10)
    np.testing.assert_array_equal(read_raw(path), data)
    assert pixel_size_with_source(path) == (pytest.approx(0.3), "tia")
    stack = write_ser(tmp_path / "b_1.ser", np.stack([_image(seed=s) for s in range(3)]))
    with pytest.raises(NanosegError, match=r"b_1\.ser: holds 3 images \(a stack of 64x48 px frames\)"):
        read_raw(stack)


def test_a_folder_lists_tia_ser_files_not_their_emi(tmp_path):
    write_ser(tmp_path / "a_1.ser", _image())
    (tmp_path / "a.emi").write_bytes(b"<ObjectInfo></ObjectInfo>")
    write_mrc(tmp_path / "b.mrc", _image(np.float32), 2.0)
    assert [p.name for p in list_images(tmp_path)] == ["a_1.ser", "b.mrc"]
    assert list_images(tmp_path / "a.emi") == [tmp_path / "a.emi"]


def test_the_file_is_parsed_once_for_data_and_pixel_size(tmp_path, monkeypatch):
    path = write_mrc(tmp_path / "a.mrc", _image(), 2.0)
    calls = []
    real = vendor._signals
    monkeypatch.setattr(vendor, "_signals", lambda p, s: calls.append(p) or real(p, s))
    read_micrograph(path, info_bar_rows=0)
    assert len(calls) == 1
    # a changed file is read again
    write_mrc(path, _image(seed=2), 4.0)
    import os

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert pixel_size_with_source(path) == (pytest.approx(0.4), "mrc")
    assert len(calls) == 2


def test_spectra_are_described(tmp_path, monkeypatch):
    """Data that is no image, as RosettaSciIO's readers give it: each refused with what it is."""
    def signal(shape, navigate, units=None, title="s"):
        axes = [{"size": n, "navigate": nav, "scale": 1.0, "units": u}
                for n, nav, u in zip(shape, navigate, units or [""] * len(shape))]
        return {"data": np.zeros(shape, np.float32), "axes": axes, "metadata": {"General": {"title": title}}}

    cases = {
        "spectrum": ([signal((2048,), [False], ["eV"])], r"holds a spectrum of 2048 channels"),
        "si": ([signal((40, 50, 1024), [True, True, False], ["nm", "nm", "eV"])],
               r"holds a spectrum image of 50x40 spectra"),
        "dm_si": ([signal((1024, 40, 50), [True, False, False], ["eV", "nm", "nm"])],
                  r"holds a spectrum image of 50x40 spectra"),
        "4d": ([signal((8, 8, 32, 32), [True, True, False, False])], r"holds 4-D data of shape 8x8x32x32"),
        "fft": ([{**signal((H, W), [False, False]), "data": np.zeros((H, W), np.complex64)}], r"complex 64x48"),
    }
    for name, (signals, says) in cases.items():
        monkeypatch.setattr(vendor, "_signals", lambda p, s, signals=signals: signals)
        with pytest.raises(NanosegError, match=says):
            read_raw(write_mrc(tmp_path / f"{name}.mrc", _image()))


def test_one_image_beside_a_spectrum_is_read(tmp_path, monkeypatch):
    image = {"data": _image(), "axes": [{"size": H, "navigate": False, "scale": 0.5, "units": "nm"},
                                         {"size": W, "navigate": False, "scale": 0.5, "units": "nm"}],
             "metadata": {"General": {"title": "HAADF"}}}
    spectrum = {"data": np.zeros(2048), "axes": [{"size": 2048, "navigate": False, "scale": 5.0, "units": "eV"}],
                "metadata": {"General": {"title": "EDS"}}}
    monkeypatch.setattr(vendor, "_signals", lambda p, s: [spectrum, image])
    path = write_mrc(tmp_path / "a.mrc", _image())
    np.testing.assert_array_equal(read_raw(path), _image())
    assert pixel_size_with_source(path) == (pytest.approx(0.5), "mrc")


# --------------------------------------------------------------------------- command line, napari


def test_info_shows_vendor_pixel_sizes(tmp_path):
    from typer.testing import CliRunner

    from nanoseg.cli import app

    write_dm(tmp_path / "a.dm3", [(_image(), "HAADF")], scale=0.125)
    write_mrc(tmp_path / "b.mrc", _image(np.float32), 2.5)
    write_emd_berkeley(tmp_path / "c.emd", {"haadf": _image()}, scale=0.5)
    write_ser(tmp_path / "d_1.ser", _image(), 3e-10)
    write_mrc(tmp_path / "stack.mrc", np.stack([_image(seed=s) for s in range(3)]), 2.0)
    result = CliRunner().invoke(app, ["info", str(tmp_path), "--info-bar-rows", "0"])
    assert result.exit_code == 2, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line and line.split()[0][0] in "abcd"}
    assert rows["a.dm3"][1] == "64x48" and rows["a.dm3"][4:7] == ["0.125", "nm", "dm"]
    assert rows["b.mrc"][4:7] == ["0.25", "nm", "mrc"]
    assert rows["c.emd"][4:7] == ["0.5", "nm", "emd"]
    assert rows["d_1.ser"][4:7] == ["0.3", "nm", "tia"]
    assert "stack.mrc: holds 3 images (a stack" in result.output


def test_measure_a_vendor_file_with_labels(tmp_path):
    import pandas as pd
    from skimage.measure import label
    from typer.testing import CliRunner

    from nanoseg.cli import app

    data = _image()
    (tmp_path / "images").mkdir()
    write_dm(tmp_path / "images" / "tem.dm4", [(data, "HAADF")], scale=0.5)
    (tmp_path / "labels").mkdir()
    write_tiff(tmp_path / "labels" / "tem.tif", label(data > 1000).astype(np.uint16))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["measure", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                                      "--out", str(out), "--set", "data.info_bar_rows=0",
                                      "--set", "classify.method=rules"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["pixel_size_nm"], summary["pixel_size_source"], summary["n_kept"]) == (0.5, "dm", 2)
    # disks of radius 7 and 9 px at 0.5 nm per pixel
    assert sorted(pd.read_csv(out / "particles.csv")["ecd_nm"]) == pytest.approx([7.0, 9.0], abs=0.5)


def test_napari_reader_accepts_vendor_files(tmp_path):
    import yaml

    from nanoseg.napari_plugin import _reader

    manifest = yaml.safe_load((Path(_reader.__file__).parent / "napari.yaml").read_text())
    patterns = manifest["contributions"]["readers"][0]["filename_patterns"]
    for suffix in vendor.VENDOR_SUFFIXES:
        assert f"*{suffix}" in patterns and f"*{suffix.upper()}" in patterns
        assert suffix in _reader.SUFFIXES
    path = write_mrc(tmp_path / "a.mrc", _image(np.float32), 2.5)
    reader = _reader.get_reader(str(path))
    assert reader is not None
    image, kwargs, kind = reader(str(path))[0]
    assert kind == "image" and image.shape == (H, W)
    assert kwargs["scale"] == (pytest.approx(0.25), pytest.approx(0.25))
    assert kwargs["metadata"]["nanoseg"]["pixel_size_source"] == "mrc"


def test_a_missing_reader_package_is_named(tmp_path, monkeypatch):
    import sys

    path = write_emd_berkeley(tmp_path / "a.emd", {"haadf": _image()})
    for name in [m for m in sys.modules if m == "h5py" or m.startswith(("h5py.", "rsciio.emd"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(NanosegError, match=r"a\.emd: reading EMD files needs the Python package 'h5py' \(pip install h5py\)"):
        read_raw(path)
