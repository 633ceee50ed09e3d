"""Stage 6: decide which segmented particles are whole and unoccluded, so they can be measured.

Two complementary methods:

- **Rules** (:func:`apply_rules`): area range, min Feret, inscribed circle, solidity, contact
  with the image border or info bar, mean intensity. Every rule a particle fails is recorded as a reason; :func:`counting_rule`
  states which rules ran, for the report.
- **Network**: a MultiResUNet with two input channels (micrograph, binary mask) predicts per
  pixel whether the particle under it should be kept; a particle's score is the mean over its
  pixels, and it is kept when the score is above ``classify.score_threshold`` (by default the
  threshold that best separates whole from partial particles on held-out fake pairs, one per
  bin of particle area, :func:`calibrate_threshold`, saved with the model). Trained either
  self-supervised from the fake training pairs (their ``whole`` masks mark the particles that
  are not occluded and do not touch the border: no annotation needed) or from manual
  keep/discard masks (white = kept particles), see :func:`load_manual_samples`.

With ``method='network'`` the rules are applied as well.

The package follows the stage's seams: :mod:`~nanoseg.classify.rules` (rules and the counting
rule), :mod:`~nanoseg.classify.data` (training samples), :mod:`~nanoseg.classify.network`
(training, calibration, scores) and :mod:`~nanoseg.classify.stage` (decisions, the pipeline
stage); everything public is importable from ``nanoseg.classify``.
"""

from __future__ import annotations

from nanoseg.classify.data import (
    Sample,
    balanced_weights,
    load_manual_samples,
    load_pair_samples,
    sample_batch,
)
from nanoseg.classify.network import (
    calibrate_threshold,
    fit_classifier,
    instance_scores,
    make_classifier,
    masked_bce,
    predict_keep_probability,
    resolve_threshold,
    sample_particles,
    train_classifier,
)
from nanoseg.classify.rules import (
    DECISION_COLUMNS,
    RULE_SETTINGS,
    apply_rules,
    area_thresholds,
    counting_rule,
    describe_rules,
    rule_checks,
    rule_reasons,
)
from nanoseg.classify.stage import (
    CHECKPOINT_NAME,
    classify_images,
    network_binary,
    read_decisions,
    run_stage,
    write_decisions,
)

__all__ = [
    "CHECKPOINT_NAME",
    "DECISION_COLUMNS",
    "RULE_SETTINGS",
    "Sample",
    "apply_rules",
    "area_thresholds",
    "balanced_weights",
    "calibrate_threshold",
    "classify_images",
    "counting_rule",
    "describe_rules",
    "fit_classifier",
    "instance_scores",
    "load_manual_samples",
    "load_pair_samples",
    "make_classifier",
    "masked_bce",
    "network_binary",
    "predict_keep_probability",
    "read_decisions",
    "resolve_threshold",
    "rule_checks",
    "rule_reasons",
    "run_stage",
    "sample_batch",
    "sample_particles",
    "train_classifier",
    "write_decisions",
]
