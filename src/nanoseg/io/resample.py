"""Resampling a micrograph to another pixel size: one function, shared by the run's working grid
(:mod:`nanoseg.grid`) and by a model applied to images of another magnification
(:func:`nanoseg.segment.to_model_scale`)."""

from __future__ import annotations

import numpy as np


def resample(image: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """``image`` with ``scale`` times as many pixels along each side, and the factor reached.

    Linear interpolation, anti-aliased when shrinking. The new shape is rounded to whole pixels
    (at least 16 on a side), so the factor reached differs slightly from ``scale``: the new pixel
    size is the old one divided by the returned factor (the geometric mean of both axes').

    Returns
    -------
    image : (h, w) float32
    factor : float
    """
    from skimage.transform import resize

    shape = (max(16, round(image.shape[0] * scale)), max(16, round(image.shape[1] * scale)))
    out = resize(np.asarray(image, np.float32), shape, order=1, preserve_range=True, anti_aliasing=scale < 1)
    return out.astype(np.float32, copy=False), float(np.sqrt(shape[0] * shape[1] / (image.shape[0] * image.shape[1])))
