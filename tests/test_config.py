"""Config validation: profiles, unknown keys, bad values, NaN, YAML round trip."""

from __future__ import annotations

import pytest
import yaml

from nanoseg.cli.common import parse_length_nm, resolve_config
from nanoseg.config import PROFILES, build_config, config_reference, load_config, parse_assignment
from nanoseg.errors import NanosegError


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_validate_and_differ(profile):
    cfg = build_config(profile=profile)
    assert cfg.profile == profile


def test_profiles_scale_with_the_machine():
    demo, quick, paper = (build_config(profile=p) for p in ("demo", "quick", "paper"))
    assert demo.segment.steps < quick.segment.steps < paper.segment.steps
    assert quick.translate.generator_width < paper.translate.generator_width
    assert (demo.translate.method, quick.translate.method, paper.translate.method) == ("render", "refine", "refine")


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("segment:\n  stepz: 10\n")
    with pytest.raises(NanosegError, match=r"unknown key 'segment.stepz'") as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_value_is_named():
    with pytest.raises(NanosegError, match=r"'segment.steps'"):
        build_config({"segment": {"steps": 0}})
    with pytest.raises(NanosegError, match=r"'translate.method'"):
        build_config({"translate": {"method": "magic"}})


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_values_rejected(value):
    with pytest.raises(NanosegError, match=r"'segment.learning_rate'"):
        build_config({"segment": {"learning_rate": value}})


def test_nan_from_yaml_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  pixel_size_nm: .nan\n")
    with pytest.raises(NanosegError, match=r"'data.pixel_size_nm'"):
        load_config(path)


def test_yaml_round_trip(tmp_path):
    cfg = build_config({"seed": 7, "masks": {"particles_per_tile": [100, 150]}}, profile="demo")
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg
    assert again.masks.particles_per_tile == (100, 150)


def test_profile_defaults_then_file_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"profile": "demo", "segment": {"steps": 11}}))
    cfg = load_config(path)
    assert cfg.segment.steps == 11
    assert cfg.shapes.steps == build_config(profile="demo").shapes.steps


def test_inconsistent_range_rejected():
    with pytest.raises(NanosegError, match="particles_per_tile"):
        build_config({"masks": {"particles_per_tile": [150, 100]}})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(NanosegError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("segment: [1, 2\n")
    with pytest.raises(NanosegError, match="not valid YAML"):
        load_config(bad)


def test_section_hash_tracks_only_named_sections():
    a = build_config()
    b = build_config({"measure": {"histogram_bins": 10}})
    assert a.section_hash("segment") == b.section_hash("segment")
    assert a.section_hash("measure") != b.section_hash("measure")


def test_assignments_and_overrides():
    assert parse_assignment("segment.steps=5") == {"segment": {"steps": 5}}
    cfg = resolve_config(sets=["segment.steps=5", "masks.scale_sd=0.2"], seed=3, pixel_size="0.5um")
    assert (cfg.segment.steps, cfg.masks.scale_sd, cfg.seed) == (5, 0.2, 3)
    assert cfg.data.pixel_size_nm == pytest.approx(500.0)
    with pytest.raises(NanosegError, match="KEY=VALUE"):
        parse_assignment("segment.steps")


@pytest.mark.parametrize("text, nm", [("7.34nm", 7.34), ("7.34 nm", 7.34), ("3.1e-9m", 3.1), ("0.5um", 500.0), ("2", 2.0)])
def test_parse_length(text, nm):
    assert parse_length_nm(text) == pytest.approx(nm)


@pytest.mark.parametrize("text", ["abc", "-1nm", "5 parsecs", "nan"])
def test_parse_length_rejects(text):
    with pytest.raises(NanosegError):
        parse_length_nm(text)


def test_reference_lists_every_section():
    ref = config_reference()
    for key in ("`segment.steps`", "`masks.perlin_cell_px`", "`data.pixel_size_nm`", "`classify.score_threshold`"):
        assert key in ref


def test_docs_config_reference_is_current():
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert config_reference() in doc.read_text(), "run `nanoseg config docs --into docs/config.md`"


def test_user_keys_are_real_keys_and_few():
    from nanoseg.config import USER_KEYS, Config, build_config, user_settings

    dump = build_config().model_dump(mode="json")
    for section, names in USER_KEYS.items():
        fields = Config.model_fields if not section else Config.model_fields[section].annotation.model_fields
        assert set(names) <= set(fields), section
    shown = user_settings(dump)
    n = len(USER_KEYS[""]) + sum(len(v) for v in shown.values() if isinstance(v, dict))
    assert n == sum(len(v) for v in USER_KEYS.values()) <= 40


def test_config_init_writes_the_user_keys_and_loads_back(tmp_path, cli):
    import yaml

    res = cli("config", "init", "--profile", "demo")
    assert res.code == 0
    written = yaml.safe_load(res.output)
    assert "steps" in written["segment"] and "base_width" not in written["segment"]
    (tmp_path / "c.yaml").write_text(res.output)
    # the profile gives every key not written: the short file loads to the whole demo config
    assert load_config(tmp_path / "c.yaml") == build_config(profile="demo")
    full = yaml.safe_load(cli("config", "init", "--profile", "demo", "--advanced").output)
    assert full["segment"]["base_width"] == build_config(profile="demo").segment.base_width


@pytest.mark.parametrize("value", [1.7, -0.1, float("nan")])
def test_segment_threshold_is_a_probability(value):
    with pytest.raises(NanosegError, match="segment.threshold"):
        build_config({"segment": {"threshold": value}})
    assert build_config({"segment": {"threshold": "auto"}}).segment.threshold == "auto"


def test_a_removed_key_is_refused_with_its_reason_and_a_model_that_saved_it_loads():
    from nanoseg.config import REMOVED_KEYS, segment_settings

    with pytest.raises(NanosegError, match=r"'segment.select_by' was removed \(the checkpoint with the lowest"):
        parse_and_build = build_config({"segment": {"select_by": "val_iou"}})  # noqa: F841
    saved = build_config().segment.model_dump(mode="json") | {"select_by": "val_loss", "dice_weight": 0.0}
    assert segment_settings(saved, "model.pt") == build_config().segment
    assert all(key.count(".") == 1 for key in REMOVED_KEYS)
