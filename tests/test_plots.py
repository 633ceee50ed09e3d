"""Figures the stages share (nanoseg.plots)."""

import numpy as np
import pytest

from nanoseg.plots import in_row_strips


@pytest.mark.parametrize("draw", ["kept", "segment"])
def test_overlay_in_row_strips_has_no_seams(draw):
    """Strips of 7 rows (the last one short) give the overlay drawn in one piece, outlines included."""
    from skimage.draw import disk

    from nanoseg.measure.figures import _draw_kept
    from nanoseg.segment.infer import _draw_overlay

    rng = np.random.default_rng(0)
    image = rng.random((40, 33)).astype(np.float32)
    labels = np.zeros(image.shape, np.int32)
    for k, (r, c) in enumerate([(6, 6), (13, 20), (27, 9), (33, 25), (20, 5)], start=1):
        labels[disk((r, c), 5, shape=labels.shape)] = k
    fn = _draw_overlay if draw == "segment" else (lambda im, lab: _draw_kept(im, lab, np.array([1, 3]), 0.35))
    whole = fn(image, labels)
    np.testing.assert_array_equal(in_row_strips(fn, image, labels, rows=7), whole)
    assert len(np.unique(whole.reshape(-1, 3), axis=0)) > 100  # the image shows through
