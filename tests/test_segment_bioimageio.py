"""bioimage.io export: the package validates offline, passes bioimageio.core's model test in both
weight formats, and its weights compute what nanoseg's own net computes."""

from __future__ import annotations

import socket
import sys
import zipfile

import numpy as np
import pytest
import torch
from skimage.draw import disk

pytest.importorskip("bioimageio.spec")
pytest.importorskip("bioimageio.core")
ort = pytest.importorskip("onnxruntime")

from nanoseg import nets  # noqa: E402
from nanoseg.atomic import is_temp_file  # noqa: E402
from nanoseg.config import build_config  # noqa: E402
from nanoseg.segment import probabilities_from_logits, train  # noqa: E402
from nanoseg.segment.bioimageio import INSTALL_HINT, export_bioimageio  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def offline():
    """No test here may reach the network: every connection and name lookup fails and is counted."""
    attempts: list[object] = []
    connect = socket.socket.connect

    def refuse_connect(sock, address):
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return connect(sock, address)  # local (Unix) sockets are no network
        attempts.append(address)
        raise OSError("network access in an offline test")

    def refuse_lookup(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror("name lookup in an offline test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse_connect)
        mp.setattr(socket, "getaddrinfo", refuse_lookup)
        yield
    assert attempts == [], f"bioimageio tried to go online: {attempts}"


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    """A UNet trained a few steps on pairs named as the `pairs` stage names them, and its package."""
    from test_segment import _noisy_disc_pairs

    folder = tmp_path_factory.mktemp("three_class")
    pairs, _, _ = _noisy_disc_pairs(prefix="pair_000")  # named as the pairs stage names its synthetic pairs
    cfg = build_config({"segment": {"architecture": "unet", "base_width": 4, "depth": 2, "tile_size_px": 48,
                                    "batch_size": 2, "val_every": 4, "bf16": False}}).segment
    torch.manual_seed(0)
    model = train(pairs, cfg, folder / "model", steps=8, rng=np.random.default_rng(1), pixel_size_nm=2.0)
    return model, export_bioimageio(model, folder / "out" / "nanoseg.zip")


def _unzip(package, tmp_path):
    with zipfile.ZipFile(package) as z:
        z.extractall(tmp_path)
    return tmp_path


def test_package_validates_offline(three_class):
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    model, package = three_class
    descr = load_description(package, perform_io_checks=True)  # reads every file and checks its hash
    assert isinstance(descr, ModelDescr), descr.validation_summary.format()
    assert descr.validation_summary.status in ("passed", "valid-format")
    assert descr.format_version.startswith("0.5")
    assert descr.license == "MIT" and [a.name for a in descr.authors] == ["nanoseg developers"]
    assert str(descr.cite[0].doi) == "10.1038/s41598-021-84287-6"
    assert "trained by nanoseg without manual annotation" in descr.cite[0].text
    assert descr.weights.onnx.opset_version == 18 and descr.weights.torchscript is not None
    (axes_in,), (axes_out,) = [t.axes for t in descr.inputs], [t.axes for t in descr.outputs]
    assert [str(a.id) for a in axes_in] == ["batch", "channel", "y", "x"]
    assert (axes_in[2].size.min, axes_in[2].size.step, axes_in[2].scale, axes_in[2].unit) == (4, 4, 2.0, "nanometer")
    assert axes_out[1].channel_names == ["background", "interior", "boundary"]
    assert [p.id for p in descr.inputs[0].preprocessing] == ["ensure_dtype", "scale_range", "ensure_dtype"]
    assert package.parent.is_dir() and not any(is_temp_file(p) for p in package.parent.iterdir())


def test_documentation_comes_from_the_model(three_class, tmp_path):
    _, package = three_class
    readme = (_unzip(package, tmp_path) / "README.md").read_text()
    for expected in ["unet (in_channels=1, out_channels=3, base_width=4, depth=2)", "multiples of 4",
                     "| 1 | interior |", "**2 nm per pixel**", "Resample micrographs to 2 nm/px",
                     "**bright particles**", "not in this package", "grows by at most 3 px into the foreground",
                     "without manual annotation", "all 2 training pairs",
                     "held-out validation pair(s) at training step"]:
        assert expected in readme
    from PIL import Image

    cover = Image.open(tmp_path / "cover.png")
    assert cover.size == (256, 128)  # input beside output, 2:1


# TorchScript is what bioimage.io's "torchscript" weights are, deprecated in torch or not.
JIT_DEPRECATED = "ignore:`torch.jit.load` is deprecated:DeprecationWarning"


@pytest.mark.filterwarnings(JIT_DEPRECATED)
@pytest.mark.parametrize("weight_format", ["torchscript", "onnx"])
def test_bioimageio_core_model_test_passes(three_class, weight_format):
    from bioimageio.core import test_model

    _, package = three_class
    summary = test_model(package, weight_format=weight_format, devices=["cpu"])
    assert summary.status == "passed", summary.format()


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_package_weights_compute_nanosegs_probabilities(three_class, tmp_path):
    model, package = three_class
    folder = _unzip(package, tmp_path)
    x = np.load(folder / "test_input.npy")
    assert x.shape == (1, 1, 128, 128) and x.min() == 0.0 and x.max() == 1.0  # scale_range leaves it as it is
    net, meta = nets.load(model)
    with torch.no_grad():
        ours = probabilities_from_logits(net(torch.from_numpy(x)), meta["target"]).numpy()
        scripted = torch.jit.load(str(folder / "weights.pt"))(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(folder / "weights.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    for out in (scripted, onnx_out, np.load(folder / "test_output.npy")):
        np.testing.assert_allclose(out, ours, atol=1e-5)


def test_cli_exports_a_binary_model_with_a_sample_crop(cli, tmp_path):
    """A binary MultiResUNet trained on 'manual' pairs (names say nothing of how their masks were
    made); the test input is a sample micrograph at 4 nm/px resampled to the model's 2 nm/px."""
    from bioimageio.spec import load_description

    from nanoseg.io import write_tiff

    torch.manual_seed(0)
    net = nets.create("multiresunet", in_channels=1, out_channels=1, base_width=4, depth=2).eval()
    model = nets.save(net, tmp_path / "m.pt", meta={"target": "binary", "pixel_size_nm": 2.0,
                                                    "train_pairs": ["sem_001", "sem_002"]}, kind="segmenter")
    image = np.full((100, 90), 900, np.uint16)
    image[disk((40, 40), 15)] = 3000
    write_tiff(tmp_path / "sample.tif", image, pixel_size_nm=4.0)
    res = cli("segment", "export", model, "--format", "bioimageio", "--out", tmp_path / "b.zip",
              "--sample", tmp_path / "sample.tif")
    assert res.code == 0, res.output
    descr = load_description(tmp_path / "b.zip", perform_io_checks=True)
    assert descr.validation_summary.status in ("passed", "valid-format"), descr.validation_summary.format()
    assert descr.outputs[0].axes[1].channel_names == ["particle"]
    assert "without manual annotation" not in descr.cite[0].text
    folder = _unzip(tmp_path / "b.zip", tmp_path / "b")
    x = np.load(folder / "test_input.npy")
    assert x.shape == (1, 1, 180, 180)  # 90 px wide at 4 nm is 180 px at 2 nm, a multiple of 4
    with torch.no_grad():
        ours = torch.sigmoid(net(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(np.load(folder / "test_output.npy"), ours, atol=1e-5)
    readme = (folder / "README.md").read_text()
    assert "does not record how its training masks were made (2 training pairs)" in readme
    assert "records no validation score" in readme and "from maxima at least 9 px apart" in readme
    # The default format is still ONNX, now also through --out.
    assert cli("segment", "export", model, "--out", tmp_path / "m.onnx").code == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0


@pytest.mark.parametrize(("side", "value", "message"), [(40, None, "too small for a test input"),
                                                         (64, 0.5, "the test crop is blank")])
def test_unusable_samples_are_refused(tmp_path, side, value, message):
    from nanoseg.errors import NanosegError
    from nanoseg.io import write_tiff
    from nanoseg.segment.bioimageio import sample_input

    image = np.random.default_rng(0).random((side, side)) if value is None else np.full((side, side), value)
    write_tiff(tmp_path / "s.tif", image.astype(np.float32))
    with pytest.raises(NanosegError, match=message):
        sample_input(64, {}, tmp_path / "s.tif")


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "tiff", "--out", "x"], "--format tiff: use onnx or bioimageio"),
    (["--format", "bioimageio", "--onnx", "x.onnx"], "--onnx names the output of --format onnx alone"),
    (["--onnx", "x.onnx", "--sample", "s.tif"], "--sample is for --format bioimageio"),
    (["--format", "bioimageio"], "no output file: give --out"),
])
def test_cli_export_usage_errors(cli, tmp_path, args, message):
    (tmp_path / "m.pt").write_bytes(b"")
    assert message in cli("segment", "export", tmp_path / "m.pt", *args).error_line()


def test_cli_says_how_to_install_bioimageio(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bioimageio.core", None)  # what a missing package looks like
    (tmp_path / "m.pt").write_bytes(b"")
    res = cli("segment", "export", tmp_path / "m.pt", "--format", "bioimageio", "--out", tmp_path / "p.zip")
    assert res.code == 2 and res.error_line() == f"error: {INSTALL_HINT}"
