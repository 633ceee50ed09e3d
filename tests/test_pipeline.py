"""The run folder: completion markers, skipping, invalidation, --from/--force, crash and kill safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanoseg import pipeline
from nanoseg.config import build_config
from nanoseg.errors import NanosegError
from nanoseg.pipeline import Stage

TOY = (
    Stage("shapes", "pipeline_toy_stages:first", ("seed", "shapes")),
    Stage("masks", "pipeline_toy_stages:second", ("seed", "masks")),
    Stage("translate", "pipeline_toy_stages:third", ("seed", "translate")),
)


@pytest.fixture
def toy_stages(monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    monkeypatch.setattr(pipeline, "STAGES", TOY)
    monkeypatch.setattr(pipeline, "STAGE_NAMES", tuple(s.name for s in TOY))
    yield
    sys.path.remove(str(Path(__file__).parent))


def calls(run_dir: Path) -> list[str]:
    log = run_dir / "calls.log"
    return log.read_text().split() if log.exists() else []


def test_second_run_skips_everything(tmp_path, toy_stages):
    cfg = build_config(profile="demo")
    assert set(pipeline.run_pipeline(cfg, tmp_path, check=False).values()) == {"ran"}
    assert set(pipeline.run_pipeline(cfg, tmp_path, check=False).values()) == {"skipped"}
    assert calls(tmp_path) == ["first", "second", "third"]
    assert (tmp_path / "config.yaml").read_text() == cfg.to_yaml()


def test_config_change_redoes_that_stage_and_later(tmp_path, toy_stages):
    pipeline.run_pipeline(build_config(profile="demo"), tmp_path, check=False)
    changed = build_config({"masks": {"n_masks": 3}}, profile="demo")
    outcome = pipeline.run_pipeline(changed, tmp_path, check=False)
    assert outcome == {"shapes": "skipped", "masks": "ran", "translate": "ran"}


def test_from_stage_and_force(tmp_path, toy_stages):
    cfg = build_config(profile="demo")
    pipeline.run_pipeline(cfg, tmp_path, check=False)
    assert pipeline.run_pipeline(cfg, tmp_path, from_stage="translate", check=False)["translate"] == "ran"
    assert set(pipeline.run_pipeline(cfg, tmp_path, force=True, check=False).values()) == {"ran"}
    with pytest.raises(NanosegError, match="unknown stage"):
        pipeline.run_pipeline(cfg, tmp_path, from_stage="nope", check=False)


def test_crash_mid_stage_leaves_it_unfinished(tmp_path, toy_stages, monkeypatch):
    cfg = build_config(profile="demo")
    monkeypatch.setenv("TOY_FAIL_AT", "second")
    with pytest.raises(RuntimeError):
        pipeline.run_pipeline(cfg, tmp_path, check=False)
    assert not (tmp_path / "masks" / pipeline.DONE_MARKER).exists()
    monkeypatch.delenv("TOY_FAIL_AT")
    outcome = pipeline.run_pipeline(cfg, tmp_path, check=False)
    assert outcome == {"shapes": "skipped", "masks": "ran", "translate": "ran"}
    # the interrupted attempt had the same config, so its folder was kept for resuming
    assert (tmp_path / "masks" / "partial.txt").exists()


def test_killed_process_resumes_without_redoing_finished_stages(tmp_path):
    """A real kill -9 in the middle of the second stage, then the same command again."""
    script = (
        "import sys; from nanoseg import pipeline; from nanoseg.config import build_config;"
        "from test_pipeline import TOY;"
        "pipeline.STAGES = TOY; pipeline.STAGE_NAMES = tuple(s.name for s in TOY);"
        "pipeline.run_pipeline(build_config(profile='demo'), sys.argv[1], check=False)"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent), TOY_SLEEP_AT="second")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], env=env)
    deadline = time.time() + 60
    while not (tmp_path / "second.sleeping").exists():
        assert time.time() < deadline and proc.poll() is None, "toy run never reached stage two"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "shapes" / pipeline.DONE_MARKER).exists()
    assert not (tmp_path / "masks" / pipeline.DONE_MARKER).exists()

    env.pop("TOY_SLEEP_AT")
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, check=True)
    assert calls(tmp_path) == ["first", "second", "second", "third"]
    assert (tmp_path / "translate" / "result.txt").read_text() == "third seed=0"
    marker = json.loads((tmp_path / "translate" / pipeline.DONE_MARKER).read_text())
    assert marker["seconds"] >= 0 and marker["peak_rss_mb"] > 10  # a Python process with numpy


def _data(tmp_path, image):
    from nanoseg.io import write_tiff

    (tmp_path / "images").mkdir()
    write_tiff(tmp_path / "images" / "a.tif", image, pixel_size_nm=2.0)
    (tmp_path / "outlines").mkdir()
    return {"images": str(tmp_path / "images"), "outlines": str(tmp_path / "outlines"), "info_bar_rows": 0}


def test_inputs_checked_before_any_stage_runs(tmp_path, toy_stages):
    import numpy as np

    data = _data(tmp_path, np.zeros((100, 120), np.uint8))
    (tmp_path / "images" / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(NanosegError, match="broken.tif"):
        pipeline.run_pipeline(build_config({"data": data}, profile="demo"), tmp_path / "run")
    assert calls(tmp_path / "run") == []


def test_image_smaller_than_a_tile_is_named(tmp_path, toy_stages):
    import numpy as np

    data = _data(tmp_path, np.zeros((100, 120), np.uint8))
    cfg = build_config({"data": data, "translate": {"method": "cyclegan", "tile_size_px": 128}}, profile="demo")
    with pytest.raises(NanosegError, match=r"a.tif: 120x100 px .* smaller than translate.tile_size_px=128"):
        pipeline.check_inputs(cfg)
    data["outlines"] = str(tmp_path / "nope")
    with pytest.raises(NanosegError, match="outlines not found"):
        pipeline.check_inputs(build_config({"data": data}, profile="demo"))
