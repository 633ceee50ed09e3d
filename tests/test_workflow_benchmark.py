"""benchmarks/workflow.py with its scoring and report modules: hand-made particles, and the smoke run end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks import workflow, workflow_report, workflow_scoring


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _labels(shape, discs):
    out = np.zeros(shape, np.int32)
    for k, (centre, radius) in enumerate(discs, start=1):
        out[_disc(shape, centre, radius)] = k
    return out


SHAPE = (120, 160)
EXPERT = _labels(SHAPE, [((30, 30), 10), ((30, 90), 12), ((80, 60), 9), ((85, 120), 11)])


def test_keep_precision_recall_counts_matches_and_kept_flags():
    expert_kept = np.where(np.isin(EXPERT, [1, 2, 3]), EXPERT, 0)  # the expert keeps 3 of 4
    # Ours: particle 1 found and kept; 2 found, discarded; 3 missed; 4 found and kept (expert
    # discarded it); plus one false particle, kept. Label numbers differ from the expert's.
    ours = _labels(SHAPE, [((30, 30), 10), ((30, 91), 12), ((85, 120), 11), ((100, 20), 6)]) * 3
    kept = np.where(np.isin(ours, [3, 9, 12]), ours, 0)
    res = workflow_scoring.keep_precision_recall({"a": ours}, {"a": kept}, {"a": EXPERT}, {"a": expert_kept})
    assert res["n_kept"] == 3 and res["n_expert_kept"] == 3
    assert res["precision"] == pytest.approx(1 / 3)  # only particle 1 is kept by both
    assert res["recall"] == pytest.approx(1 / 3)
    # Among matched particles (1, 2, 4): ours keeps 1 and 4, the expert 1 and 2.
    assert res["precision_matched"] == pytest.approx(1 / 2)
    assert res["recall_matched"] == pytest.approx(1 / 2)


def test_size_table_is_exact_for_identical_particles_and_sees_a_bias():
    same = workflow_scoring.size_table({"a": EXPERT}, {"a": EXPERT}, 2.0)
    assert [r["descriptor"] for r in same] == list(workflow_scoring.SIZE_DESCRIPTORS)
    for rec in same:
        assert rec["n_pred"] == rec["n_gt"] == 4 and rec["count_rel_error"] == 0
        for stat in ("mean", "median", "d10", "d90"):
            assert rec[f"{stat}_rel_error"] == pytest.approx(0.0, abs=1e-12)
    grown = _labels(SHAPE, [((30, 30), 12), ((30, 90), 14), ((80, 60), 11), ((85, 120), 13)])
    rec = {r["descriptor"]: r for r in workflow_scoring.size_table({"a": grown}, {"a": EXPERT}, 2.0)}["ecd_nm"]
    assert rec["mean_rel_error"] == pytest.approx(np.mean([24, 28, 22, 26]) / np.mean([20, 24, 18, 22]) - 1, abs=0.03)
    assert rec["mean_pred"] > rec["mean_gt"]


def test_size_error_by_stage_separates_misses_outlines_and_keep():
    expert_kept = np.where(np.isin(EXPERT, [1, 2, 3]), EXPERT, 0)
    # Ours: particle 1 exact, 2 one pixel too wide all round, 3 (the smallest kept) missed, 4 exact.
    ours = _labels(SHAPE, [((30, 30), 10), ((30, 90), 13), ((85, 120), 11)]) * 5
    st = workflow_scoring.size_error_by_stage({"a": ours}, {"a": EXPERT}, {"a": expert_kept}, 1.0)
    found, perfect = st["found"], st["perfect_keep"]
    assert found["n_pred"] == perfect["n_pred"] == 2 and found["n_gt"] == 3
    # the miss alone: the expert's own outlines of particles 1 and 2 against 1, 2 and 3
    assert found["mean_rel_error"] == pytest.approx(np.mean([20, 24]) / np.mean([20, 24, 18]) - 1, abs=0.02)
    # plus our outlines: particle 2 two pixels wider
    assert perfect["mean_rel_error"] == pytest.approx(np.mean([20, 26]) / np.mean([20, 24, 18]) - 1, abs=0.02)
    exact = workflow_scoring.size_error_by_stage({"a": EXPERT}, {"a": EXPERT}, {"a": expert_kept}, 1.0)
    assert exact["found"]["mean_rel_error"] == exact["perfect_keep"]["mean_rel_error"] == pytest.approx(0, abs=1e-12)


def test_outline_error_by_match_separates_edge_bias_from_partial_merges():
    expert_kept = np.where(np.isin(EXPERT, [1, 2, 3]), EXPERT, 0)
    # Ours: particle 1 exact; 2 one pixel wider all round (an edge bias, IoU ~0.85); 3 merged
    # with a blob beside it that widens it across (a partial merge, IoU ~0.6); 4 (not kept) exact.
    ours = _labels(SHAPE, [((30, 30), 10), ((30, 90), 13), ((85, 120), 11)])
    ours[_disc(SHAPE, (80, 60), 9) | _disc(SHAPE, (80, 72), 7)] = 7
    pairs = workflow_scoring.matched_pair_sizes({"a": ours}, {"a": EXPERT}, {"a": expert_kept})
    assert len(pairs) == 3  # particle 4 is matched but the expert did not keep it
    by_iou = sorted(pairs, key=lambda p: p["iou"])
    assert 0.5 <= by_iou[0]["iou"] < 0.7 and by_iou[0]["area_px_ours"] > 1.3 * by_iou[0]["area_px_expert"]
    assert 0.8 <= by_iou[1]["iou"] < 0.9 and by_iou[2]["iou"] == 1.0
    bins = {b["iou_from"]: b for b in workflow_scoring.outline_error_by_match(pairs)}
    assert [bins[k]["n"] for k in workflow_scoring.IOU_BIN_EDGES] == [1, 0, 1, 1]
    assert bins[0.9]["mean_ratio"] == 1.0 and bins[0.9]["contribution"] == 0.0
    assert bins[0.8]["mean_ratio"] == pytest.approx(26 / 24, abs=0.03)
    assert bins[0.5]["median_area_ratio"] > 1.3
    # The contributions add up to the matched pairs' mean min Feret error.
    total = sum(p["min_feret_px_ours"] for p in pairs) / sum(p["min_feret_px_expert"] for p in pairs) - 1
    assert sum(b["contribution"] for b in bins.values()) == pytest.approx(total, abs=1e-12)
    assert workflow_scoring.outline_error_by_match([]) == []


def test_score_images_perfect_prediction():
    truth = {"a": (EXPERT > 0, EXPERT)}
    prob = (EXPERT > 0).astype(np.float32)
    scored = workflow_scoring.score_images({"a": EXPERT}, {"a": prob}, {"a": EXPERT}, truth, 1.0)
    assert scored["strict"]["mean"]["f1"] == 1.0
    assert scored["paper"]["mean"]["image_iou"] == pytest.approx(1.0)
    assert scored["keep"]["precision"] == scored["keep"]["recall"] == 1.0
    head = workflow_scoring.headline(scored)
    assert head["strict_f1"] == 1.0 and head["count_rel_error"] == 0
    assert scored["size_by_stage"]["perfect_keep"]["mean_rel_error"] == pytest.approx(0, abs=1e-12)
    n = int(EXPERT.max())
    assert scored["strict"]["missed"] == {"n_gt": n, "matched": n, "merged": 0, "not_found": 0, "outline": 0}


def test_missed_breakdown_counts_merges_across_images():
    # Two touching particles of the manual mask found as one, in each of two images.
    mask = np.zeros((40, 60), bool)
    mask[5:20, 5:20] = mask[5:20, 21:36] = True
    merged = np.zeros((40, 60), np.int32)
    merged[5:20, 5:36] = 1
    out = workflow_scoring.missed_breakdown({"a": merged, "b": merged}, {"a": mask, "b": mask})
    assert out == {"n_gt": 4, "matched": 0, "merged": 4, "not_found": 0, "outline": 0}
    assert workflow_report._missed_text(out) == "100 % / 0 % / 0 % of 4"


def test_size_prior_is_named_per_seed_when_the_seeds_differ():
    same = {"size_prior": "outlines"}
    assert workflow_report._size_prior_text({0: same, 1: dict(same)}) == "outlines"
    seeds = {0: {"size_prior": {"masks.size_factor": 0.93}}, 1: {"size_prior": {"masks.size_factor": 0.9}}}
    assert workflow_report._size_prior_text(seeds) == (
        "seed 0: {'masks.size_factor': 0.93}; seed 1: {'masks.size_factor': 0.9}")


def test_aggregate_mean_and_sample_sd_over_seeds():
    stat = workflow_scoring.mean_sd([0.5, 0.7, None, float("nan")])
    assert stat["mean"] == pytest.approx(0.6) and stat["sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert stat["n"] == 2
    assert workflow_scoring.mean_sd([0.4])["sd"] is None
    assert workflow_scoring.mean_sd([])["mean"] is None


@pytest.mark.slow
def test_smoke_run_end_to_end(shared_data, tmp_path):
    """Two seeds of the demo profile at smoke size on two images, through the real CLI."""
    out = tmp_path / "results" / "workflow_demo_smoke.md"
    results = workflow.main(["--profile", "demo", "--smoke", "--seeds", "0,1", "--images", "2", "--folds", "2",
                             "--work-dir", str(tmp_path / "work"), "--out", str(out)])
    assert set(results["seeds"]) == {0, 1}
    for seed in (0, 1):
        scored = results["seeds"][seed]
        assert {"strict", "paper", "sizes", "keep", "synthetic", "stages"} <= set(scored)
        assert 0.0 <= scored["strict"]["mean"]["image_iou"] <= 1.0
        assert scored["stages"]["run: segment"]["wall_s"] > 0
        measured = scored["stages"]["nanoseg measure (whole process)"]
        assert measured["peak_rss_mb"] > 50
        assert 0 < measured["cpu_s"] <= 2 * os.cpu_count() * measured["wall_s"] + 1  # its own CPU, not the sum
        # The run folder is what `nanoseg run` wrote, with the profile's settings and this seed.
        config = (tmp_path / "work" / f"seed{seed}" / "run" / "config.yaml").read_text()
        assert f"seed: {seed}" in config and "profile: demo" in config
    assert results["aggregate"]["strict_image_iou"]["n"] == 2
    assert results["supervised"]["strict"]["mean"]["image_iou"] >= 0.0
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["meta"]["seeds"] == [0, 1] and saved["meta"]["smoke"] is True
    report = out.read_text()
    assert "SMOKE RUN" in report and "mean +- sd over seeds" in report and "seed 1" in report
    assert len(results["overlays"]) == 1 and Path(results["overlays"][0]).is_file()  # only 1908248 is among 2
    # A report made without the reference gets the stored one back when re-rendered.
    saved["supervised"] = None
    bare = tmp_path / "results" / "bare.json"
    bare.write_text(json.dumps(saved))
    rerendered = workflow.main(["--render-from", str(bare), "--folds", "2"])
    for key in ("f1", "image_iou"):  # NaN fields come back from JSON as None
        assert rerendered["supervised"]["strict"]["mean"][key] == pytest.approx(results["supervised"]["strict"]["mean"][key])
    assert "supervised (manual masks, cross-validated)" in bare.with_suffix(".md").read_text()
    # The demo run's own summary and report state the uncertainty and the counting rule.
    run_measure = tmp_path / "work" / "seed0" / "run" / "measure"
    summary = json.loads((run_measure / "summary.json").read_text())
    assert summary["counting_rule"]["edge_particles_excluded"] is True
    if summary["n_kept"]:
        lo, hi = summary["descriptors"]["min_feret"]["median_ci95"]
        assert lo <= summary["descriptors"]["min_feret"]["median"] <= hi
    html = (run_measure / "report.html").read_text()
    assert "id='counting-rule'" in html and "median 95 % CI" in html
    assert 0.0 <= summary["realism"]["classifier_accuracy"] <= 1.0
    # A resumed call keeps finished work: `nanoseg measure` skips the images it already measured.
    markers = sorted((tmp_path / "work" / "seed0" / "measure" / "markers").glob("*.json"))
    assert len(markers) == 2
    before = {m: m.stat().st_mtime_ns for m in markers}
    workflow.main(["--profile", "demo", "--smoke", "--seeds", "0", "--images", "2", "--no-supervised", "--resume",
                   "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "results" / "resumed.md")])
    assert {m: m.stat().st_mtime_ns for m in markers} == before
