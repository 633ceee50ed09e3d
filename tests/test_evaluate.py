"""Scoring folders of predictions: pairing, reading, info-bar cropping, both protocols, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.draw import disk

from nanoseg import evaluate as E
from nanoseg.errors import NanosegError

SHAPE = (48, 64)
INFO_BAR_ROWS = 8


def ground_truth() -> np.ndarray:
    """Three discs, two of them touching across a one-pixel line (0/255 mask, no info bar)."""
    mask = np.zeros(SHAPE, np.uint8)
    mask[disk((16, 16), 8, shape=SHAPE)] = 255
    mask[disk((16, 33), 8, shape=SHAPE)] = 255
    mask[:, 24] = 0  # the one-pixel separation line
    mask[disk((36, 48), 7, shape=SHAPE)] = 255
    return mask


def write_folder(tmp_path):
    """Ground truth with info-bar rows and three kinds of perfect predictions."""
    gt = ground_truth()
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    with_bar = np.vstack([gt, np.full((INFO_BAR_ROWS, SHAPE[1]), 255, np.uint8)])
    for stem in ("a", "b", "c"):
        tifffile.imwrite(gt_dir / f"{stem}_m.tif", with_bar)
    tifffile.imwrite(pred_dir / "a.tif", gt)  # binary 0/255
    prob = np.where(gt > 0, 0.9, 0.05).astype(np.float32)
    np.savez(pred_dir / "b_prob.npz", prob=prob)  # probability map
    from skimage.measure import label

    tifffile.imwrite(pred_dir / "c.tif", label(gt > 0, connectivity=1).astype(np.uint16))  # labels
    return pred_dir, gt_dir


def test_read_prediction_kinds(tmp_path):
    pred_dir, _ = write_folder(tmp_path)
    assert E.read_prediction(pred_dir / "a.tif")[1] == "binary"
    prob, kind = E.read_prediction(pred_dir / "b_prob.npz")
    assert kind == "probability" and prob.dtype == np.float32
    labels, kind = E.read_prediction(pred_dir / "c.tif")
    assert kind == "labels" and labels.max() == 3
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, np.array([[0, 128, 255, 64]] * 4, np.uint8))
    prob, kind = E.read_prediction(gray)
    assert kind == "probability" and prob.max() == 1.0 and prob[0, 1] == pytest.approx(128 / 255)
    labels8, kind = E.read_prediction(gray, kind="labels")
    assert kind == "labels" and labels8.max() == 255
    with pytest.raises(NanosegError, match="two values"):
        E.read_prediction(gray, kind="binary")
    bad = tmp_path / "bad.tif"
    tifffile.imwrite(bad, np.full((8, 8), 1.5, np.float32) * np.linspace(0, 1, 8, dtype=np.float32))
    with pytest.raises(NanosegError, match="bad.tif"):
        E.read_prediction(bad)


def test_pairing_by_stem_tolerates_suffixes(tmp_path):
    pred_dir, gt_dir = write_folder(tmp_path)
    pairs = E.pair_files(pred_dir, gt_dir)
    assert [(s, p.name, g.name) for s, p, g in pairs] == [
        ("a", "a.tif", "a_m.tif"), ("b", "b_prob.npz", "b_m.tif"), ("c", "c.tif", "c_m.tif")]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NanosegError, match="pair"):
        E.pair_files(empty, gt_dir)


def test_info_bar_rows_are_cropped_other_mismatches_fail(tmp_path):
    gt = np.zeros((56, 64), bool)
    assert E.align_ground_truth(gt, (48, 64)).shape == (48, 64)
    with pytest.raises(NanosegError, match=r"pred\.tif.*gt_m\.tif"):
        E.align_ground_truth(gt, (48, 60), "gt_m.tif", "pred.tif")
    with pytest.raises(NanosegError, match="gt_m.tif"):
        E.align_ground_truth(gt, (20, 64), "gt_m.tif", "pred.tif")  # far more than an info bar
    pred_dir, gt_dir = write_folder(tmp_path)
    tifffile.imwrite(gt_dir / "a_m.tif", np.zeros((SHAPE[0], SHAPE[1] + 3), np.uint8))
    with pytest.raises(NanosegError, match="a_m.tif"):
        E.load_pairs(pred_dir, gt_dir)


@pytest.mark.parametrize("protocol", ["strict", "paper"])
def test_perfect_predictions_score_perfectly(tmp_path, protocol):
    pred_dir, gt_dir = write_folder(tmp_path)
    df = E.evaluate_folder(pred_dir, gt_dir, protocol)
    assert list(df["image"]) == ["a", "b", "c"]
    assert list(df["kind"]) == ["binary", "probability", "labels"]
    assert (df["n_gt"] == 3).all() and (df["n_pred"] == 3).all()
    for col in ("image_iou", "instance_iou", "youden"):
        assert np.allclose(df[col], 1.0), col
    for col in ("pixel_error", "warping_error", "rand_error", "rand_error_thinned", "info_error_thinned"):
        assert np.allclose(df[col], 0.0), col
    if protocol == "strict":
        for col in ("f1", "ap50", "ap50_95", "pq", "symmetric_instance_iou"):
            assert np.allclose(df[col], 1.0), col
        assert df.attrs["threshold"] == 0.5
    else:
        assert np.allclose(df["instance_iou_area_gt9"], 1.0)
        # any threshold between the two probability levels separates perfectly: the first wins
        assert df.attrs["threshold"] == pytest.approx(0.1)


def test_strict_counts_a_missed_particle(tmp_path):
    gt = ground_truth()
    pred = gt.copy()
    pred[disk((36, 48), 7, shape=SHAPE)] = 0  # the lone disc is missed
    df = E.evaluate_predictions({"x": pred > 0}, {"x": gt > 0}, "strict")
    row = df.iloc[0]
    assert row["instance_iou"] == 1.0  # the paper's direction does not see it
    assert row["instance_iou_gt"] == pytest.approx(2 / 3)
    assert row["recall"] == pytest.approx(2 / 3) and row["precision"] == 1.0
    assert row["f1"] == pytest.approx(0.8)


def test_strict_scores_labels_with_the_probability_map_for_the_roc():
    from skimage.measure import label

    gt = ground_truth()
    labels = label(gt > 0, connectivity=1)
    prob = np.where(gt > 0, 0.9, 0.05)
    prob[40:43, 2:5] = 0.95  # a background blob: a false particle if the map were thresholded
    df = E.evaluate_predictions({"x": labels}, {"x": gt > 0}, "strict", score_maps={"x": prob})
    row = df.iloc[0]
    assert row["kind"] == "labels" and row["n_pred"] == 3
    assert row["precision"] == 1.0 and row["f1"] == 1.0 and row["image_iou"] == 1.0
    n_background = int(np.count_nonzero(gt == 0))
    # best cut between 0.05 and 0.9: every particle pixel, and the 9 blob pixels, above it
    assert row["youden"] == pytest.approx(1 - 9 / n_background)
    without = E.evaluate_predictions({"x": labels}, {"x": gt > 0}, "strict").iloc[0]
    assert without["youden"] == 1.0
    thresholded = E.evaluate_predictions({"x": prob}, {"x": gt > 0}, "strict").iloc[0]
    assert thresholded["precision"] == pytest.approx(3 / 4)
    with pytest.raises(NanosegError, match="no probability map"):
        E.evaluate_predictions({"x": labels}, {"x": gt > 0}, "strict", score_maps={})


def test_size_comparison_writes_histograms(tmp_path):
    gt = ground_truth()
    instances: dict = {}
    E.evaluate_predictions({"x": gt > 0}, {"x": gt > 0}, "strict", instances_out=instances)
    table = E.compare_sizes(instances, pixel_size_nm=2.0, plot_stem=tmp_path / "hist")
    assert set(table["descriptor"]) == {"ecd_nm", "min_feret_nm", "max_feret_nm", "area_nm2"}
    assert np.allclose(table["ks_statistic"], 0.0)
    assert np.allclose(table["mean_rel_error"], 0.0)
    assert (tmp_path / "hist_ecd_nm.png").stat().st_size > 0


def test_cli_writes_csv_and_json(tmp_path):
    pred_dir, gt_dir = write_folder(tmp_path)
    out = tmp_path / "eval" / "table.csv"
    code = "from nanoseg.cli import main; main()"
    res = subprocess.run([sys.executable, "-c", code, "evaluate", str(pred_dir), str(gt_dir), "--protocol", "strict",
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "mean" in res.stdout
    df = pd.read_csv(out)
    assert len(df) == 3 and np.allclose(df["f1"], 1.0)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["protocol"] == "strict" and report["mean"]["f1"] == 1.0
    bad = subprocess.run([sys.executable, "-c", code, "evaluate", str(pred_dir), str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error:" in bad.stderr and "nope" in bad.stderr


def test_cli_scores_labels_with_probability_maps(tmp_path):
    from skimage.measure import label

    gt = ground_truth()
    (tmp_path / "gt").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "probs").mkdir()
    tifffile.imwrite(tmp_path / "gt" / "x_m.tif", gt)
    tifffile.imwrite(tmp_path / "labels" / "x.tif", label(gt > 0, connectivity=1).astype(np.uint16))
    prob = np.where(gt > 0, 0.9, 0.05).astype(np.float32)
    prob[40:43, 2:5] = 0.95
    tifffile.imwrite(tmp_path / "probs" / "x.tif", prob)
    code = "from nanoseg.cli import main; main()"
    args = [sys.executable, "-c", code, "evaluate", str(tmp_path / "labels"), str(tmp_path / "gt"),
            "--protocol", "strict", "--out", str(tmp_path / "e.csv")]
    res = subprocess.run([*args, "--scores", str(tmp_path / "probs")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    row = pd.read_csv(tmp_path / "e.csv").iloc[0]
    assert row["f1"] == 1.0 and row["youden"] == pytest.approx(1 - 9 / np.count_nonzero(gt == 0))
    (tmp_path / "probs" / "x.tif").unlink()
    res = subprocess.run([*args, "--scores", str(tmp_path / "probs")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no probability map for x" in res.stderr and "Traceback" not in res.stderr


def test_manual_masks_score_perfectly_against_themselves(shared_data):
    path = sorted((shared_data / "masks").glob("*_m.tif"))[0]
    gt = E.read_ground_truth(path)
    assert gt.dtype == bool and gt.shape == (768, 1024)
    pred = gt[:712]  # a prediction of the micrograph without its info bar
    aligned = E.align_ground_truth(gt, pred.shape, path.name, "pred")
    df = E.evaluate_predictions({"m": pred}, {"m": aligned}, "strict")
    row = df.iloc[0]
    assert row["n_gt"] > 50
    for col in ("image_iou", "symmetric_instance_iou", "f1", "ap50_95", "pq"):
        assert row[col] == pytest.approx(1.0), col
    for col in ("pixel_error", "warping_error", "rand_error", "rand_error_thinned", "info_error_thinned"):
        assert row[col] == pytest.approx(0.0, abs=1e-12), col


def _antialiased(mask: np.ndarray) -> np.ndarray:
    """``mask`` (0/255) with grey edge pixels, as an anti-aliased export writes it."""
    from scipy.ndimage import binary_dilation, binary_erosion

    particles = mask > 0
    edge = binary_dilation(particles) & ~binary_erosion(particles)
    grey = mask.copy()
    grey[edge] = np.random.default_rng(0).integers(20, 236, int(edge.sum()))
    return grey


def test_antialiased_ground_truth_is_refused_not_read_as_labels(tmp_path):
    pred_dir, gt_dir = write_folder(tmp_path)
    with_bar = np.vstack([_antialiased(ground_truth()), np.full((INFO_BAR_ROWS, SHAPE[1]), 255, np.uint8)])
    tifffile.imwrite(gt_dir / "a_m.tif", with_bar)
    with pytest.raises(NanosegError, match=r"a_m\.tif.*anti-aliased binary mask.*threshold it at 128.*--labels"):
        E.evaluate_folder(pred_dir, gt_dir, "strict")
    # read as asked instead: a mask thresholded at 128 scores the binary prediction perfectly
    assert E.read_ground_truth(gt_dir / "a_m.tif", "mask").dtype == bool


def test_cli_reads_8bit_label_ground_truth_only_with_labels(tmp_path):
    from skimage.measure import label

    gt = ground_truth()
    for folder in ("gt", "pred"):
        (tmp_path / folder).mkdir()
    tifffile.imwrite(tmp_path / "gt" / "x_m.tif", label(gt > 0, connectivity=1).astype(np.uint8) * 40)
    tifffile.imwrite(tmp_path / "pred" / "x.tif", gt)
    code = "from nanoseg.cli import main; main()"
    args = [sys.executable, "-c", code, "evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"),
            "--protocol", "strict", "--out", str(tmp_path / "e.csv")]
    res = subprocess.run(args, capture_output=True, text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "x_m.tif" in lines[0] and "--labels" in lines[0], res.stderr
    res = subprocess.run([*args, "--labels"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    row = pd.read_csv(tmp_path / "e.csv").iloc[0]
    assert row["n_gt"] == 3 and row["f1"] == 1.0
