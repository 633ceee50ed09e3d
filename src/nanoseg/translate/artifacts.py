"""The artifact filter of stage 4 and the GAN segmentation that uses it.

A fake mask may hold particles the translator did not draw visibly; :func:`filter_artifacts`
drops every instance whose mean intensity lies on the background side of an automatic
threshold (:func:`artifact_threshold`). The trained image -> mask generator is also a
segmentation model on its own (:func:`gan_segment`, the "GAN" baseline of Rühle et al. 2021);
:func:`gan_segment_instances` labels its output and applies the same filter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nanoseg.errors import NanosegError
from nanoseg.translate.cyclegan import apply_generator

THRESHOLD_METHODS = ("li", "otsu", "mean", "median")
#: Larger images are thresholded from a regular grid of about this many of their pixels: the
#: threshold methods copy the image several times over, which on a large micrograph costs
#: gigabytes for a number that a grid of 4 million pixels already fixes.
THRESHOLD_MAX_PX = 1 << 22


def artifact_threshold(image: np.ndarray, method: str = "li") -> float:
    """Automatic intensity threshold of ``image`` (``'li'``, ``'otsu'``, ``'mean'`` or ``'median'``)."""
    from skimage import filters

    image = np.asarray(image, dtype=np.float32)
    if image.size > THRESHOLD_MAX_PX:
        step = int(np.ceil(np.sqrt(image.size / THRESHOLD_MAX_PX)))
        image = image[::step, ::step]
    if method == "li":
        return float(filters.threshold_li(image))
    if method == "otsu":
        return float(filters.threshold_otsu(image))
    if method == "mean":
        return float(image.mean())
    if method == "median":
        return float(np.median(image))
    raise NanosegError(f"translate.artifact_threshold: unknown method '{method}' (choose one of {', '.join(THRESHOLD_METHODS)})")


def filter_artifacts(
    image: np.ndarray,
    instances: np.ndarray,
    method: str = "li",
    dark_particles: bool = False,
) -> tuple[np.ndarray, list[int]]:
    """Drop instances whose mean intensity lies on the background side of an automatic threshold.

    A fake mask may hold particles that the translator did not draw (e.g. hidden under others):
    training on them would teach the segmentation net to find invisible particles.

    Parameters
    ----------
    image : (H, W) float array
        The (fake) micrograph the mask is paired with.
    instances : (H, W) int array
        Instance labels, 0 = background.
    method : {'li', 'otsu', 'mean', 'median'}
        Threshold of the whole image.
    dark_particles : bool
        Particles are darker than the background (TEM/TSEM bright field): keep instances below
        the threshold instead of above it.

    Returns
    -------
    kept_instances : (H, W) array
        ``instances`` with the dropped labels set to 0 (other labels unchanged).
    dropped_labels : list of int
        Labels that were removed.
    """
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float32)
    instances = np.asarray(instances)
    if image.shape != instances.shape:
        raise ValueError(f"image {image.shape} and instances {instances.shape} differ in shape")
    labels = np.unique(instances)
    labels = labels[labels != 0]
    if labels.size == 0:
        return instances.copy(), []
    threshold = artifact_threshold(image, method)
    means = np.asarray(ndimage.mean(image, labels=instances, index=labels))
    visible = means < threshold if dark_particles else means > threshold
    dropped = labels[~visible]
    kept = instances.copy()
    if dropped.size:
        kept[np.isin(instances, dropped)] = 0
    return kept, [int(v) for v in dropped]


def gan_segment(image: np.ndarray, generator: Any, device: Any = "cpu", bf16: bool = False) -> np.ndarray:
    """Particle probability map of a micrograph from the trained image -> mask generator.

    Parameters
    ----------
    image : (H, W) float array in [0, 1], bright particles
    generator : nn.Module
        ``image_to_mask.pt`` loaded with :func:`nanoseg.nets.load`.
    device : torch.device or str
    bf16 : bool
        bfloat16 autocast.

    Returns
    -------
    (H, W) float32 array in [0, 1]
    """
    image = np.asarray(image, dtype=np.float32)
    return apply_generator(generator, [image], device, bf16, 1)[0]


def gan_segment_instances(
    image: np.ndarray,
    generator: Any,
    device: Any = "cpu",
    method: str = "li",
    threshold: float = 0.5,
    bf16: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Segment with the generator, label 4-connected components, then apply the artifact filter.

    Returns
    -------
    probability : (H, W) float32
    instances : (H, W) int32, after the filter
    dropped_labels : list of int
    """
    from skimage.measure import label

    prob = gan_segment(image, generator, device, bf16)
    instances = label(prob > threshold, connectivity=1).astype(np.int32)
    kept, dropped = filter_artifacts(image, instances, method=method)
    return prob, kept, dropped
