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
