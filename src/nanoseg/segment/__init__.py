"""Stage 5: train a MultiResUNet/UNet on image/mask pairs, segment micrographs, split particles.

The network predicts either a three-class map (background / particle interior / boundary band,
derived from instance labels so that touching particles are separated by the band) or a plain
binary mask. Instances come from a watershed: grown from interior-probability markers for the
three-class target, or on the smoothed distance transform of the binary mask.

Public functions
----------------
- :func:`make_target`, :func:`load_pairs`: training data; :func:`centre_target` and
  :func:`instances_from_centres`: the centre-vote representation of touching particles (targets
  and decoding; not yet a ``segment.target``).
- :func:`train`: training with validation, best checkpoint, resume and a loss/IoU plot.
- :func:`predict_probabilities`, :func:`particle_probability`, :func:`instances_from_probabilities`,
  :func:`segment_image`, :func:`segment_micrographs`, :func:`write_segmentation`: inference on whole
  images of any size.
- :func:`export_onnx`, :func:`load_segmenter` (a ``.pt`` model or its ONNX export), :func:`run_stage`.

Modules: :mod:`~nanoseg.segment.data` (pairs, targets), :mod:`~nanoseg.segment.training`,
:mod:`~nanoseg.segment.infer` (tiled probabilities, TTA, whole micrographs),
:mod:`~nanoseg.segment.instances` (watershed), :mod:`~nanoseg.segment.export` (ONNX),
:mod:`~nanoseg.segment.batch` (``segment predict`` on Dask workers, resumable),
:mod:`~nanoseg.segment.stage` (the pipeline stage) and :mod:`~nanoseg.segment.adapt` (stage 5b:
self-training on the real micrographs; not re-exported here).
"""

from __future__ import annotations

from nanoseg.segment.data import (
    BACKGROUND,
    BOUNDARY,
    IGNORE,
    INTERIOR,
    CentreTarget,
    Pair,
    TargetKind,
    centre_target,
    foreground_mask,
    load_pairs,
    make_target,
    n_outputs,
)
from nanoseg.segment.export import OnnxModel, export_onnx, load_onnx
from nanoseg.segment.infer import (
    ModelScaleSegmentation,
    load_segmenter,
    overlay,
    particle_probability,
    predict_probabilities,
    predict_with_agreement,
    probabilities_from_logits,
    segment_at_model_scale,
    segment_image,
    segment_micrographs,
    segmenter_meta,
    to_model_scale,
    write_segmentation,
)
from nanoseg.segment.instances import (
    foreground_threshold,
    instances_from_centres,
    instances_from_probabilities,
    interior_markers,
    resize_labels,
)
from nanoseg.segment.stage import run_stage
from nanoseg.segment.training import (
    INFERENCE_SETTINGS,
    TRAINING_PLOT,
    choose_threshold,
    class_weights,
    random_tile,
    segmentation_loss,
    train,
    training_fingerprint,
)

__all__ = [
    "BACKGROUND", "BOUNDARY", "CentreTarget", "IGNORE", "INFERENCE_SETTINGS", "INTERIOR", "OnnxModel", "Pair", "TRAINING_PLOT",
    "TargetKind", "centre_target", "choose_threshold", "class_weights", "export_onnx", "foreground_mask", "foreground_threshold", "instances_from_centres", "instances_from_probabilities",
    "interior_markers", "load_onnx", "load_pairs", "load_segmenter", "segmenter_meta", "make_target", "n_outputs", "overlay", "particle_probability",
    "predict_probabilities", "predict_with_agreement", "probabilities_from_logits", "random_tile", "resize_labels",
    "run_stage", "ModelScaleSegmentation", "segment_at_model_scale", "segment_image", "segment_micrographs", "segmentation_loss", "to_model_scale", "train", "write_segmentation",
    "training_fingerprint",
]
