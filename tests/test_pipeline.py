"""The run folder: completion markers, skipping, invalidation, --from/--force, crash and kill safety."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanoseg import pipeline
from nanoseg.atomic import atomic_path, is_temp_file
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


def test_inputs_count_by_content_not_by_modification_time(tmp_path, monkeypatch):
    stages = (Stage("shapes", "pipeline_toy_stages:first", ("seed", "shapes"), ("outlines",)),
              Stage("masks", "pipeline_toy_stages:second", ("seed", "masks")))
    monkeypatch.setattr(pipeline, "STAGES", stages)
    monkeypatch.setattr(pipeline, "STAGE_NAMES", tuple(s.name for s in stages))
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        outlines = tmp_path / "outlines"
        outlines.mkdir()
        (outlines / "a.tif").write_bytes(b"outline a")
        cfg = build_config({"data": {"outlines": str(outlines)}}, profile="demo")
        run = tmp_path / "run"
        pipeline.run_pipeline(cfg, run, check=False)
        # The data folder unpacked again: same bytes, new times. The run goes on where it was.
        os.utime(outlines / "a.tif", (1_000_000_000, 1_000_000_000))
        assert set(pipeline.run_pipeline(cfg, run, check=False).values()) == {"skipped"}
        (outlines / "a.tif").write_bytes(b"outline A")  # same size, other content
        assert pipeline.run_pipeline(cfg, run, check=False) == {"shapes": "ran", "masks": "ran"}
    finally:
        sys.path.remove(str(Path(__file__).parent))


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


@pytest.fixture
def pipeline_log(caplog, monkeypatch):
    # setup_logging (run by CLI tests) stops "nanoseg" from propagating to caplog's handler.
    monkeypatch.setattr(logging.getLogger("nanoseg"), "propagate", True)
    caplog.set_level(logging.INFO, logger="nanoseg.pipeline")
    return caplog


def _finished_toy_run(run_dir: Path):
    cfg = build_config(profile="demo")
    assert set(pipeline.run_pipeline(cfg, run_dir, check=False).values()) == {"ran"}
    return cfg


def test_marker_records_every_output_of_the_stage(tmp_path, toy_stages):
    _finished_toy_run(tmp_path)
    marker = json.loads((tmp_path / "masks" / pipeline.DONE_MARKER).read_text())
    assert [o["path"] for o in marker["outputs"]] == ["partial.txt", "result.txt", "sub/nested.txt"]
    for out in marker["outputs"]:
        data = (tmp_path / "masks" / out["path"]).read_bytes()
        assert out["size_bytes"] == len(data)
        assert out["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("stage, output, rerun", [
    ("shapes", "result.txt", ["first", "second", "third"]),
    ("masks", "sub/nested.txt", ["second", "third"]),
    ("translate", "result.txt", ["third"]),
])
def test_deleted_output_reruns_the_stage_and_those_after_it(tmp_path, toy_stages, pipeline_log,
                                                           stage, output, rerun):
    cfg = _finished_toy_run(tmp_path)
    expected = (tmp_path / stage / output).read_text()
    (tmp_path / stage / output).unlink()
    for name in pipeline.STAGE_NAMES:  # not an output: shows whether a folder was started afresh
        (tmp_path / name / "stale.txt").write_text("from the first run")

    outcome = pipeline.run_pipeline(cfg, tmp_path, check=False)

    ran = [name for name, what in outcome.items() if what == "ran"]
    assert ran == list(pipeline.STAGE_NAMES[pipeline.STAGE_NAMES.index(stage):])
    assert calls(tmp_path) == ["first", "second", "third"] + rerun
    assert (tmp_path / stage / output).read_text() == expected
    assert [name for name in pipeline.STAGE_NAMES if (tmp_path / name / "stale.txt").exists()] == \
        [name for name in pipeline.STAGE_NAMES if name not in ran]
    assert f"{stage}: output {output} is missing; rerunning the stage" in pipeline_log.messages
    assert set(pipeline.run_pipeline(cfg, tmp_path, check=False).values()) == {"skipped"}


@pytest.mark.parametrize("garbled, why", [
    ("SECOND seed=0", "changed since it was written (same size, other content)"),
    ("second seed=00", "changed since it was written (13 -> 14 bytes)"),
])
def test_changed_output_reruns_the_stage(tmp_path, toy_stages, pipeline_log, garbled, why):
    cfg = _finished_toy_run(tmp_path)
    result = tmp_path / "masks" / "result.txt"
    assert result.read_text() == "second seed=0"
    result.write_text(garbled)

    outcome = pipeline.run_pipeline(cfg, tmp_path, check=False)

    assert outcome == {"shapes": "skipped", "masks": "ran", "translate": "ran"}
    assert result.read_text() == "second seed=0"
    assert f"masks: output result.txt {why}; rerunning the stage" in pipeline_log.messages


def test_stage_rerun_makes_later_stages_rerun_in_a_later_call(tmp_path, toy_stages, pipeline_log):
    """The later stages' hashes do not change, so only their removed markers make them run."""
    cfg = _finished_toy_run(tmp_path)
    (tmp_path / "shapes" / "result.txt").write_text("edited by hand")

    assert pipeline.run_pipeline(cfg, tmp_path, to_stage="shapes", check=False) == {"shapes": "ran"}
    assert not (tmp_path / "masks" / pipeline.DONE_MARKER).exists()
    assert any("shapes" in m and "masks, translate will run again" in m for m in pipeline_log.messages)

    outcome = pipeline.run_pipeline(cfg, tmp_path, check=False)

    assert outcome == {"shapes": "skipped", "masks": "ran", "translate": "ran"}
    assert calls(tmp_path) == ["first", "second", "third", "first", "second", "third"]


def test_marker_without_outputs_list_is_honoured(tmp_path, toy_stages):
    """Markers written before outputs were recorded: such runs stay finished, as they were."""
    cfg = _finished_toy_run(tmp_path)
    for name in pipeline.STAGE_NAMES:
        marker = tmp_path / name / pipeline.DONE_MARKER
        record = json.loads(marker.read_text())
        del record["outputs"]
        marker.write_text(json.dumps(record))

    assert set(pipeline.run_pipeline(cfg, tmp_path, check=False).values()) == {"skipped"}
    assert calls(tmp_path) == ["first", "second", "third"]


def test_unreadable_marker_reruns_the_stage(tmp_path, toy_stages, pipeline_log):
    cfg = _finished_toy_run(tmp_path)
    (tmp_path / "translate" / pipeline.DONE_MARKER).write_text('{"hash": ')

    assert pipeline.run_pipeline(cfg, tmp_path, check=False)["translate"] == "ran"
    assert f"translate: its {pipeline.DONE_MARKER} is unreadable; rerunning the stage" in pipeline_log.messages


def test_resumed_stage_loses_leftover_temp_files_and_nothing_else(tmp_path, toy_stages, pipeline_log, monkeypatch):
    cfg = build_config(profile="demo")
    monkeypatch.setenv("TOY_FAIL_AT", "second")
    with pytest.raises(RuntimeError):
        pipeline.run_pipeline(cfg, tmp_path, check=False)
    masks = tmp_path / "masks"
    # Temporary files named by the atomic writer itself, left as a kill mid-write leaves them.
    # The suspended writers are kept referenced: closing them would delete their files.
    writers = [atomic_path(masks / "result.txt"), atomic_path(masks / "sub" / "labels.tif"),
               atomic_path(masks / "README")]
    leftovers = [w.__enter__() for w in writers]
    for tmp in leftovers:
        tmp.write_text("half written")
    assert all(tmp.name.startswith(".") and is_temp_file(tmp) for tmp in leftovers)
    decoys = ["notes.tmp", ".hidden", "result.tmp.txt", ".result.tmp.txt", ".result.abc.tmp.txt",
              "sub/.labels.ABCDEFGH.tmp.tif"]
    for name in decoys:
        (masks / name).write_text("not the writer's")
    assert not any(is_temp_file(masks / name) for name in decoys)

    monkeypatch.delenv("TOY_FAIL_AT")
    outcome = pipeline.run_pipeline(cfg, tmp_path, check=False)

    assert outcome == {"shapes": "skipped", "masks": "ran", "translate": "ran"}
    assert [tmp for tmp in leftovers if tmp.exists()] == []
    assert [name for name in decoys if not (masks / name).exists()] == []
    assert (masks / "partial.txt").exists()  # resumed, not emptied
    assert any("removed 3 temporary file(s)" in m for m in pipeline_log.messages)
    recorded = [o["path"] for o in json.loads((masks / pipeline.DONE_MARKER).read_text())["outputs"]]
    assert not any(is_temp_file(p) for p in recorded) and "notes.tmp" in recorded


def _outlines(folder: Path, n: int) -> str:
    """``n`` disc outlines (32x32, white on black) in ``folder``."""
    import numpy as np
    from skimage.draw import disk

    from nanoseg.io import write_tiff

    folder.mkdir()
    for i in range(n):
        outline = np.zeros((32, 32), np.uint8)
        outline[disk((16, 16), 6 + i)] = 255
        write_tiff(folder / f"o{i}.tif", outline)
    return str(folder)


def _data(tmp_path, image):
    from nanoseg.io import write_tiff

    (tmp_path / "images").mkdir()
    write_tiff(tmp_path / "images" / "a.tif", image, pixel_size_nm=2.0)
    return {"images": str(tmp_path / "images"), "outlines": _outlines(tmp_path / "outlines", 2), "info_bar_rows": 0}


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
    # The outlines are read too: one is too few for the WGAN, found before any stage starts.
    data["outlines"] = _outlines(tmp_path / "one", 1)
    with pytest.raises(NanosegError, match="WGAN needs at least 2 outlines, found 1"):
        pipeline.check_inputs(build_config({"data": data}, profile="demo"))


def toy_pairs(ctx):
    """Training pairs for the real segment stage: the batch fixture's micrographs and labels."""
    import shutil

    for sub, to in (("images", "images"), ("labels", "masks")):
        shutil.copytree(ctx.config.data.images.parent / sub, ctx.out_dir / to)


def test_inference_settings_alone_re_segment_without_retraining(batch, segment_after, tiny_segment, pipeline_log):
    segment_after(f"{__name__}:toy_pairs")
    tiny = tiny_segment
    run = batch / "run"
    pipeline_log.set_level(logging.INFO, logger="nanoseg")  # the segment stage's own lines too

    def config(**segment):
        return build_config({"data": {"images": str(batch / "images")}, "segment": {**tiny, **segment}},
                            profile="demo")

    pipeline.run_pipeline(config(), run, check=False)
    history = (run / "segment" / "history.json").read_bytes()
    labels = (run / "segment" / "labels" / "a.tif").stat().st_mtime_ns
    pipeline_log.clear()

    # TTA and post-processing change how the net is applied, not what it learned: the stage
    # reruns (new labels) from its finished training.
    outcome = pipeline.run_pipeline(config(tta=True, min_size_px=3), run, check=False)
    assert outcome == {"pairs": "skipped", "segment": "ran"}
    assert "resuming segmentation training at step 4/4" in pipeline_log.text
    assert (run / "segment" / "history.json").read_bytes() == history
    assert (run / "segment" / "labels" / "a.tif").stat().st_mtime_ns != labels
    assert json.loads((run / "segment" / "summary.json").read_text())["images"]
    from nanoseg import nets

    # The model carries the settings it now segments with: `nanoseg measure` with it applies TTA too.
    saved = nets.load(run / "segment" / "model.pt")[1]["config"]
    assert saved["tta"] is True and saved["min_size_px"] == 3
    pipeline_log.clear()

    # What the net learns from changed: the kept checkpoint is refused and training starts over.
    pipeline.run_pipeline(config(tta=True, min_size_px=3, learning_rate=5e-4), run, check=False)
    assert "starting fresh" in pipeline_log.text and "resuming" not in pipeline_log.text
    pipeline_log.clear()

    # --force means from scratch: nothing is kept.
    pipeline.run_pipeline(config(tta=True, min_size_px=3, learning_rate=5e-4), run, check=False, force=True)
    assert "starts from its earlier" not in pipeline_log.text and "resuming" not in pipeline_log.text
    pipeline_log.clear()

    # A damaged stage is never trusted, its checkpoint included.
    (run / "segment" / "model.pt").unlink()
    pipeline.run_pipeline(config(tta=True, min_size_px=3, learning_rate=5e-4), run, check=False)
    assert "model.pt is missing" in pipeline_log.text and "resuming" not in pipeline_log.text
