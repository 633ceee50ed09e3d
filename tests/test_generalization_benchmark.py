"""benchmarks/generalization.py: the conditions' data as a user would have it, and the expert on their grids."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import common, generalization, workflow_scoring


def test_touching_particles_stay_apart_in_the_truth_mask():
    labels = np.zeros((20, 30), np.int32)
    labels[5:15, 3:14], labels[5:15, 14:25] = 1, 2  # two touching rectangles
    kept = np.where(labels == 2, 2, 0)
    mask, kept_parts = generalization._truth_from_labels(labels, kept)
    assert mask.dtype == bool and mask.sum() < (labels > 0).sum()
    from nanoseg.labels import label_binary

    assert label_binary(mask, 1).max() == 2 and len(np.unique(kept_parts)) == 2  # background and one kept


@pytest.mark.parametrize("condition", ["half", "double"])
def test_a_rescaled_condition_is_a_calibrated_micrograph_and_the_same_particles(shared_data, tmp_path, condition):
    from nanoseg.config import build_config
    from nanoseg.grid import working_scale
    from nanoseg.io import read_micrograph

    ids = common.ALL_IDS[:1]
    data, pixel_size, truth = generalization.condition_data(condition, ids, tmp_path)
    factor = generalization.CONDITIONS[condition][0]
    mg = read_micrograph(data / "sem" / f"{ids[0]}.tif")
    # what `nanoseg run` reads: the pixel size from the file, no info bar, the field at the new scale
    assert mg.pixel_size_nm == pytest.approx(common.pixel_size_nm() / factor)
    assert mg.info_bar_rows == 0 and mg.image.shape == (round(712 * factor), 1024 * factor)
    assert pixel_size == pytest.approx(mg.pixel_size_nm)
    mask, kept = truth[ids[0]]
    assert mask.shape == mg.image.shape
    # the expert's particles survive the resampling: nearly all of them, the kept ones too
    from nanoseg.labels import label_binary

    native_mask, native_kept = workflow_scoring.expert_truth(ids)[ids[0]]
    assert abs(label_binary(mask, 1).max() / label_binary(native_mask, 1).max() - 1) < 0.05
    assert abs(len(np.unique(kept)) / len(np.unique(native_kept)) - 1) < 0.05
    # and the run would work on the TiO2 scale again
    cfg = build_config({"data": {"images": str(data / "sem"), "outlines": str(data / "outlines")}})
    assert working_scale(cfg) == pytest.approx(1 / factor, rel=0.05)


def test_tsem_truth_is_the_expert_moved_onto_the_transmission_image(shared_data, tmp_path):
    from nanoseg.evaluate.baselines import tsem_binary
    from nanoseg.io import read_micrograph
    from nanoseg.metrics import image_iou

    ids = common.ALL_IDS[:1]
    data, _, truth = generalization.condition_data("tsem", ids, tmp_path)
    tsem = read_micrograph(data / "sem" / f"{ids[0]}.tif")
    native_mask = workflow_scoring.expert_truth(ids)[ids[0]][0]
    particles = tsem_binary(tsem.image)
    # the shifted expert overlaps the transmission particles better than the unshifted one
    assert image_iou(particles, truth[ids[0]][0]) > image_iou(particles, native_mask) + 0.02
