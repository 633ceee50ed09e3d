"""Realism scores: tell fakes from real micrographs, or fail to."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from nanoseg.tiles import random_tiles
from nanoseg.translate.realism import (
    classifier_accuracy,
    histogram_distance,
    realism_scores,
    spectrum_distance,
)


def _smooth_images(n: int, seed: int, sigma: float = 2.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.clip(0.5 + 3 * ndi.gaussian_filter(rng.normal(0, 0.05, (96, 96)), sigma), 0, 1).astype(np.float32)
            for _ in range(n)]


def test_identical_sources_score_as_indistinguishable():
    a = random_tiles(_smooth_images(6, 0), 128, 32, np.random.default_rng(0))
    b = random_tiles(_smooth_images(6, 1), 128, 32, np.random.default_rng(1))
    assert spectrum_distance(a, b) < 0.1
    assert histogram_distance(a, b) < 0.01
    assert classifier_accuracy(a, b, steps=80, seed=0) < 0.7


def test_blurred_or_brighter_fakes_are_found_out():
    real = random_tiles(_smooth_images(6, 0, sigma=1.0), 128, 32, np.random.default_rng(0))
    blurred = random_tiles(_smooth_images(6, 1, sigma=4.0), 128, 32, np.random.default_rng(1))
    assert spectrum_distance(real, blurred) > 0.3
    assert histogram_distance(real, real + 0.1) == pytest.approx(0.1, abs=0.005)
    assert classifier_accuracy(real, blurred, steps=150, seed=0) > 0.9


def test_realism_scores_report_all_three():
    scores = realism_scores(_smooth_images(4, 0), _smooth_images(4, 1, sigma=4.0), tile_px=32, n_tiles=64,
                            steps=60, seed=0)
    assert 0.0 <= scores["classifier_accuracy"] <= 1.0
    assert scores["spectrum_distance_decades"] > 0.3
    assert scores["tile_px"] == 32 and "meaning" in scores


def test_classifier_accuracy_leaves_the_callers_torch_rng_alone():
    torch = pytest.importorskip("torch")
    a = random_tiles(_smooth_images(4, 0), 16, 32, np.random.default_rng(0))
    b = random_tiles(_smooth_images(4, 1), 16, 32, np.random.default_rng(1))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    classifier_accuracy(a, b, steps=2, seed=0)
    assert torch.equal(torch.rand(3), expected)

