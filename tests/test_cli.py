"""The command line: instant help without torch, one-line errors, config commands."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from nanoseg.config import build_config


def nanoseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from nanoseg.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120)


def test_help_does_not_import_torch():
    code = ("import sys; from nanoseg.cli import app; from typer.testing import CliRunner;"
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output;"
            "heavy = [m for m in ('torch', 'skimage', 'matplotlib') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("group", ["run", "demo", "make-demo-data", "config"])
def test_subcommand_help(group):
    res = nanoseg(group, "--help")
    assert res.returncode == 0
    assert "Usage" in res.stdout


def test_help_paragraphs_wrap_to_the_terminal():
    import os

    wide = subprocess.run([sys.executable, "-c", "from nanoseg.cli import main; main()", "run", "--help"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "220"})
    # One source paragraph spans three docstring lines; on a wide terminal it is one line.
    assert "the exit status is then 1. --strict stops the run at the first such file, before any stage." in wide.stdout
    # Examples keep their own lines.
    assert "nanoseg run ../shared/data/bam-tio2 --out runs/tio2" in [line.strip() for line in wide.stdout.splitlines()]


def test_reflow_joins_plain_paragraphs_and_keeps_indented_ones():
    from nanoseg.cli.common import reflow

    doc = """Summary line.

    First paragraph
    continues here.

    Example:

      nanoseg run a
      nanoseg run b
    """
    assert reflow(doc) == "Summary line.\n\nFirst paragraph continues here.\n\nExample:\n\n  nanoseg run a\n  nanoseg run b"


def test_version_prints_the_package_version():
    from nanoseg import __version__

    res = nanoseg("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"nanoseg {__version__}"


def test_config_init_round_trips():
    res = nanoseg("config", "init", "--profile", "demo")
    assert res.returncode == 0
    assert build_config(yaml.safe_load(res.stdout)) == build_config(profile="demo")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["config", "init", "--set", "segment.stepz=3"], "unknown key 'segment.stepz'"),
        (["config", "init", "--set", "segment.learning_rate=.nan"], "'segment.learning_rate'"),
        (["run", "/nonexistent/folder"], "/nonexistent/folder"),
        (["run", "/tmp", "--pixel-size", "fast"], "--pixel-size"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, fragment):
    res = nanoseg(*args)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]


def test_config_check_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("measure:\n  histogram_bins: one\n")
    res = nanoseg("config", "check", str(path))
    assert res.returncode == 2 and str(path) in res.stderr and "measure.histogram_bins" in res.stderr


def test_predict_and_measure_segment_alike_with_the_models_settings(tmp_path):
    """`segment predict` and `measure --model` both post-process with the settings saved in the model."""
    import numpy as np
    import tifffile
    from skimage.draw import disk
    from typer.testing import CliRunner

    from nanoseg.cli import app
    from nanoseg.io import write_tiff
    from nanoseg.segment import Pair, train

    rng = np.random.default_rng(0)
    inst = np.zeros((64, 64), np.int32)
    inst[disk((20, 20), 8)] = 1  # 197 px
    inst[disk((40, 44), 10)] = 2  # 317 px
    image = (inst > 0).astype(np.float32) * 0.6 + 0.2
    pairs = [Pair(image + rng.normal(0, 0.05, image.shape).astype(np.float32), inst, f"p{i}") for i in range(3)]
    # A foreground threshold far from the profile's 0.5: the model's soft edges then differ.
    cfg = build_config({"segment": {"architecture": "unet", "base_width": 4, "depth": 2, "tile_size_px": 48,
                                    "batch_size": 2, "val_every": 10, "bf16": False, "threshold": 0.15}}).segment
    import torch

    torch.manual_seed(0)  # the initial weights come from torch's global generator
    model = train(pairs, cfg, tmp_path / "model", steps=40, rng=np.random.default_rng(1), pixel_size_nm=2.0)
    (tmp_path / "images").mkdir()
    write_tiff(tmp_path / "images" / "x.tif", np.round(pairs[0].image * 255).astype(np.uint8), pixel_size_nm=2.0)
    runner = CliRunner()
    common = ["--model", str(model), "--set", "data.info_bar_rows=0"]
    res = runner.invoke(app, ["segment", "predict", str(tmp_path / "images"), "--out", str(tmp_path / "p"), *common])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["measure", str(tmp_path / "images"), "--out", str(tmp_path / "m"), *common])
    assert res.exit_code == 0, res.output
    predicted = tifffile.imread(tmp_path / "p" / "labels" / "x.tif")
    measured = tifffile.imread(tmp_path / "m" / "segment" / "labels" / "x.tif")
    np.testing.assert_array_equal(predicted, measured)
    # ...and that is the model's post-processing, not the profile's (threshold 0.5).
    from nanoseg import nets
    from nanoseg.io import read_micrograph
    from nanoseg.segment import segment_image

    net, meta = nets.load(model)
    mg = read_micrograph(tmp_path / "images" / "x.tif", info_bar_rows=0)
    with_profile, _ = segment_image(net, meta, mg.image, build_config().segment, pixel_size_nm=2.0)
    assert not np.array_equal(with_profile, predicted)
