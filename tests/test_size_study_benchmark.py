"""benchmarks/size_study.py: the manual, threshold and run rows of the BaSO4 study's table."""

from __future__ import annotations

import pytest

from benchmarks import common, size_study

IDS = common.ALL_IDS[:2]


def _expert_as_run(folder):
    """A run folder whose particles.csv holds the expert's kept particles, as `nanoseg measure` writes them."""
    from nanoseg.particles import measure_particles

    run = folder / "seed0" / "run"
    (run / "measure").mkdir(parents=True)
    tables = []
    for i in IDS:
        kept = common.manual_kept_labels(i)
        table = measure_particles(kept, pixel_size_nm=common.pixel_size_nm(), exclude_border=True)
        table.insert(0, "image", i)
        tables.append(table.assign(kept=True))
    import pandas as pd

    pd.concat(tables, ignore_index=True).to_csv(run / "measure" / "particles.csv", index=False)
    return run


def test_a_run_holding_the_experts_particles_matches_the_manual_row(shared_data, tmp_path):
    _expert_as_run(tmp_path / "expert")
    rows = size_study.study("tsem", IDS, {"expert": tmp_path / "expert"}, size_study.manual_table(IDS))
    manual, expert = rows["manual"]["stats"], rows["expert"]["stats"]
    assert manual["n"] >= 50 and expert["n"]["mean"] == manual["n"]
    assert expert["mean"]["mean"] == pytest.approx(manual["mean"])
    assert expert["ks_statistic"]["mean"] == pytest.approx(0.0)
    # the threshold pipeline finds particles of the expert's size range in the transmission images
    threshold = rows["threshold"]["stats"]
    assert threshold["n"] > 0.5 * manual["n"] and abs(threshold["median_rel_error"]) < 0.15
    assert "| expert | 0 |" in size_study.render({"detectors": {"tsem": rows}, "meta": {
        **common.provenance((0.0, 0.0, 0.0)), "images": list(IDS), "note": None}})


def test_a_run_on_other_images_is_left_out(shared_data, tmp_path):
    _expert_as_run(tmp_path / "expert")
    rows = size_study.study("sem", IDS[:1], {"expert": tmp_path / "expert"}, size_study.manual_table(IDS[:1]))
    assert "expert" not in rows
