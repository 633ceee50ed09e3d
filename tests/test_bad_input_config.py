"""Bad configuration and command-line input through the real command line (issue 35).

The table rows end as :func:`test_bad_input.check_case` checks: exit 2, one ``error:`` line
naming the file or option and the fix, nothing written. The tests below the table check that
what was silently misread before is now read right, or refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from test_bad_input import Case, check_case, measure, writes

from nanoseg.config import build_config, load_config
from nanoseg.errors import NanosegError

pytestmark = pytest.mark.usefixtures("keep_global_rng")

NON_UTF8 = b"# caf\xe9 au lait\nsegment:\n  steps: 5\n"  # Latin-1, as an editor on Windows saves it


def config_check(text: str | bytes, *extra: str):
    return writes({"cfg.yaml": text}, lambda root: ["config", "check", root / "cfg.yaml", *extra])


def config_init(*sets: str):
    return lambda root, _: ["config", "init", *(a for s in sets for a in ("--set", s))]


def grey_masks(root, _):
    # A mask painted with the micrograph's own grey values: neither binary nor labels.
    (root / "masks").mkdir()
    for path in sorted((root / "images").glob("*.tif")):
        image = tifffile.imread(path)
        labels = tifffile.imread(root / "labels" / path.name)
        tifffile.imwrite(root / "masks" / f"{path.stem}_m.tif", np.where(labels > 0, np.clip(image, 1, 255), 0)
                         .astype(np.uint8))
    return ["segment", "train", root, "--out", root / "seg", "--set", "segment.steps=2"]


def jpeg_ground_truth(root, _):
    from PIL import Image

    (root / "gt").mkdir()
    Image.fromarray(((tifffile.imread(root / "labels" / "a.tif") > 0) * 255).astype(np.uint8)).save(
        root / "gt" / "a_m.jpg")
    return ["evaluate", root / "labels", root / "gt", "--protocol", "strict", "--out", root / "e.csv"]


CONFIG_CASES = [
    # 1. a config file that is not UTF-8, wherever a config is read
    Case("cfgcheck-nonutf8", config_check(NON_UTF8), 2, ("{root}/cfg.yaml", "not UTF-8 text", "save it as UTF-8")),
    Case("measure-config-nonutf8",
         writes({"bad.yaml": NON_UTF8}, lambda root: measure(root, root / "images", extra=("--config",
                                                                                       root / "bad.yaml"))), 2,
         ("{root}/bad.yaml", "not UTF-8 text", "save it as UTF-8")),
    Case("run-config-nonutf8", writes({"bad.yaml": NON_UTF8}, lambda root: ["run", root / "bad.yaml", "--out",
                                                                              root / "run"]), 2,
         ("{root}/bad.yaml", "not UTF-8 text", "save it as UTF-8")),
    # 2. duplicate keys: PyYAML keeps the last one silently
    Case("config-duplicate-section", config_check("segment:\n  steps: 5\nsegment:\n  batch_size: 2\n"), 2,
         ("{root}/cfg.yaml", "key 'segment' appears twice", "lines 1 and 3", "keep one")),
    Case("config-duplicate-nested-key", config_check("segment:\n  steps: 5\n  batch_size: 2\n  steps: 7\n"), 2,
         ("{root}/cfg.yaml", "key 'steps' appears twice", "lines 2 and 4")),
    # 3. true/false is not a number
    Case("config-bool-for-int", config_check("segment:\n  steps: true\n"), 2,
         ("{root}/cfg.yaml", "'segment.steps'", "not true/false")),
    Case("set-bool-for-float", config_init("segment.learning_rate=yes"), 2,
         ("'segment.learning_rate'", "not true/false")),
    Case("set-bool-in-tuple", config_init("masks.tile_size_px=[true, 64]"), 2,
         ("'masks.tile_size_px'", "not true/false")),
    # 4. pixel sizes and sizes that overflow
    Case("set-pixel-size-huge", lambda root, _: measure(root, root / "images",
                                                        extra=("--set", "data.pixel_size_nm=1e300")), 2,
         ("data.pixel_size_nm", "outside the plausible", "--pixel-size")),
    Case("set-pixel-size-tiny", lambda root, _: measure(root, root / "images",
                                                        extra=("--set", "data.pixel_size_nm=1e-300")), 2,
         ("data.pixel_size_nm", "outside the plausible")),
    Case("set-expected-size-huge", config_init("data.expected_size_nm=1.0e300"), 2,
         ("'data.expected_size_nm'", "less than or equal to 1000000")),
    # 5. a section given a value
    Case("set-section-scalar", config_init("segment=5"), 2,
         ("--set 'segment=5'", "segment is a section", "set one of its keys", "--set segment.")),
    Case("config-section-scalar", config_check("segment: 5\n"), 2,
         ("{root}/cfg.yaml", "segment is a section", "set one of its keys")),
    # 6. tile and block steps that collapse (a run that never ends)
    Case("set-overlap-over-tile", config_init("segment.inference_tile_px=64", "segment.tile_overlap_px=128"), 2,
         ("segment.tile_overlap_px 128", "segment.inference_tile_px 64", "lower tile_overlap_px to 32")),
    Case("config-overlap-over-half-tile", config_check("segment:\n  inference_tile_px: 256\n"
                                                       "  tile_overlap_px: 200\n"), 2,
         ("{root}/cfg.yaml", "segment.tile_overlap_px 200", "more than half")),
    Case("set-block-core-1px", config_init("segment.block_px=257", "segment.block_margin_px=128"), 2,
         ("segment.block_px 257", "segment.block_margin_px 128", "raise block_px to 512")),
    # 7. a log level that does not exist
    Case("log-level-bogus", lambda root, _: ["--log-level", "LOUD", "info", root / "images" / "a.tif"], 2,
         ("--log-level 'LOUD'", "DEBUG, INFO, WARNING, ERROR")),
    # 8. a scheduler address that is not one
    Case("scheduler-garbage", lambda root, _: measure(root, root / "images", extra=("--scheduler", "not a url")), 2,
         ("--scheduler 'not a url'", "tcp://")),
    # 9. click's usage errors: one line, not a framed box
    Case("workers-0", lambda root, _: measure(root, root / "images", extra=("--workers", "0")), 2,
         ("'--workers'", "greater than or equal to 1", "nanoseg measure --help")),
    Case("workers-negative", lambda root, _: measure(root, root / "images", extra=("--workers", "-1")), 2,
         ("'--workers'", "greater than or equal to 1")),
    Case("evaluate-threshold-over-1", lambda root, _: ["evaluate", root / "labels", root / "labels",
                                                       "--threshold", "1.5"], 2,
         ("'--threshold'", "less than or equal to 1", "nanoseg evaluate --help")),
    Case("unknown-option", lambda root, _: measure(root, root / "images", extra=("--bogus",)), 2,
         ("No such option: --bogus", "nanoseg measure --help")),
    Case("config-check-set-bad-key", config_check("segment:\n  steps: 5\n", "--set", "segment.stepz=3"), 2,
         ("{root}/cfg.yaml", "unknown key 'segment.stepz'")),
    # 10. messages that pointed the wrong way
    Case("train-grey-masks", grey_masks, 2,
         ("{root}/masks/a_m.tif", "neither a binary mask", "save a mask with only 0 and 255", "16-bit")),
    Case("evaluate-jpeg-ground-truth", jpeg_ground_truth, 2,
         ("{root}/gt/a_m.jpg", "JPEG files are not read", "save them as TIFF or PNG")),
    Case("classify-out-is-folder",
         writes({"decisions": None}, lambda root: ["classify", "predict", root / "images", "--labels",
                                                   root / "labels", "--out", root / "decisions",
                                                   "--set", "data.info_bar_rows=0"]), 2,
         ("--out {root}/decisions is a folder", "give a .csv file name")),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=lambda c: c.id)
def test_config_bad_input(case, batch, cli, monkeypatch):
    check_case(case, batch, cli, monkeypatch)


# --------------------------------------------------------------------------- read right, or refused


def test_duplicate_keys_refused_but_merge_keys_kept(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("segment:\n  steps: 5\nsegment:\n  steps: 7\n")
    with pytest.raises(NanosegError, match="key 'segment' appears twice"):
        load_config(path)  # read as 7 steps before
    # A YAML merge key's values are meant to be overridden: no duplicate.
    path.write_text("segment:\n  <<: {steps: 5, batch_size: 2}\n  steps: 7\n")
    cfg = load_config(path)
    assert (cfg.segment.steps, cfg.segment.batch_size) == (7, 2)


def test_booleans_stay_booleans_and_numbers_numbers():
    cfg = build_config({"segment": {"tta": True, "steps": 3, "threshold": 0.25}, "data": {"info_bar_rows": 0}})
    assert cfg.segment.tta is True and cfg.segment.steps == 3 and cfg.segment.threshold == 0.25
    assert cfg.data.info_bar_rows == 0
    with pytest.raises(NanosegError, match=r"'data.info_bar_rows'.*not true/false"):
        build_config({"data": {"info_bar_rows": False}})  # was read as 0 rows


def test_tile_and_block_steps_keep_half_a_tile():
    seg = build_config({"segment": {"inference_tile_px": 128, "tile_overlap_px": 64,
                                    "block_px": 512, "block_margin_px": 128}}).segment
    assert (seg.inference_tile_px, seg.tile_overlap_px, seg.block_px, seg.block_margin_px) == (128, 64, 512, 128)
    with pytest.raises(NanosegError, match="segment.tile_overlap_px 65 is more than half"):
        build_config({"segment": {"inference_tile_px": 128, "tile_overlap_px": 65}})
    with pytest.raises(NanosegError, match="segment.block_px 511 leaves no core of at least half"):
        build_config({"segment": {"block_px": 511, "block_margin_px": 128}})


def test_pixel_size_checked_like_every_other():
    assert build_config({"data": {"pixel_size_nm": 7.34375}}).data.pixel_size_nm == 7.34375
    with pytest.raises(NanosegError, match=r"config: data.pixel_size_nm: 350000 nm per pixel is outside"):
        build_config({"data": {"pixel_size_nm": 3.5e5}})  # 72 dpi, read as a calibration before


def test_config_check_applies_set(batch, cli):
    (batch / "cfg.yaml").write_text("segment:\n  steps: 5\n")
    res = cli("config", "check", batch / "cfg.yaml", "--set", "segment.steps=3")
    assert res.code == 0 and "  steps: 3\n" in res.output


def test_usage_errors_are_one_line_and_help_is_unchanged(cli):
    assert cli("--help").code == 0
    res = cli("config")  # a bare group prints its help, as before
    assert res.code == 2 and "Usage:" in res.output and "error:" not in res.output
    res = cli("config", "init", "--profile")
    assert res.code == 2 and res.err == "error: Option '--profile' requires an argument.\n"


def test_model_commands_refuse_bad_settings_before_work(batch, cli, model):
    """With --model the settings pass through the model's saved ones: the same clean lines, no hang."""
    common = ["segment", "predict", batch / "images" / "a.tif", "--model", model, "--out", batch / "seg"]
    res = cli(*common, "--set", "segment.inference_tile_px=64", "--set", "segment.tile_overlap_px=128")
    assert res.code == 2 and "segment.tile_overlap_px 128" in res.error_line()
    res = cli(*common, "--set", "segment=5")
    assert res.code == 2 and "segment is a section" in res.error_line()
    assert not (batch / "seg").exists()
