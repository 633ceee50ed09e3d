"""Stages 3-4: translate fake masks into fake micrographs, filter artifact particles, write pairs.

Stage 3 (``translate``) either trains a CycleGAN (Zhu et al. 2017) between the domain of fake
binary masks (A) and the domain of real micrographs (B), on random tiles and without any paired
data, or fits the parameters of the physics-inspired SEM renderer (:mod:`nanoseg.translate.render`), or
(``refine``) fits the renderer and trains the CycleGAN from rendered fakes (A) to real micrographs,
so that the generator only has to learn what the renderer misses.

Stage 4 (``pairs``) translates every fake mask into a fake micrograph, drops "artifact"
particles that did not become visible in the fake image (:func:`filter_artifacts`) and writes
aligned training pairs for the segmentation network.

The trained image -> mask generator is also a segmentation model on its own
(:func:`gan_segment`, the "GAN" baseline of Rühle et al. 2021).

Images are float arrays in [0, 1] with bright particles outside this package; inside the
networks both domains are mapped to [-1, 1].

Modules
-------
- :mod:`~nanoseg.translate.cyclegan`: tiles, tensors, image pool, the CycleGAN and its training loop.
- :mod:`~nanoseg.translate.fakemasks`: the masks stage's tiles (:class:`FakeMask`).
- :mod:`~nanoseg.translate.translators`: mask -> micrograph translators, fitting the SEM renderer.
- :mod:`~nanoseg.translate.artifacts`: the artifact filter and the GAN segmentation.
- :mod:`~nanoseg.translate.pairs`: making, writing and reading training pairs, contact sheet.
- :mod:`~nanoseg.translate.render`: the physics-inspired renderer (SE or transmission contrast);
  :mod:`~nanoseg.translate.render_fit`: the fit of its parameters to the micrographs.
- :mod:`~nanoseg.translate.realism`: how real the fake micrographs look (scores of the pairs stage).
- :mod:`~nanoseg.translate.stages`: the stage entry points.

None of them imports torch at module level.
"""

from __future__ import annotations

from nanoseg.translate.artifacts import (
    THRESHOLD_METHODS,
    artifact_threshold,
    filter_artifacts,
    gan_segment,
    gan_segment_instances,
)
from nanoseg.translate.cyclegan import (
    CHECKPOINT,
    IMAGE_TO_MASK,
    LOSS_PLOT,
    MASK_TO_IMAGE,
    CycleGAN,
    ImagePool,
    apply_generator,
    from_net,
    lr_factor,
    to_net,
    train_cyclegan,
    write_sample_grid,
)
from nanoseg.translate.fakemasks import FakeMask, load_fake_masks
from nanoseg.translate.pairs import (
    generate_pairs,
    iter_pairs,
    overlay,
    read_pair,
    write_contact_sheet,
    write_pair,
)
from nanoseg.translate.stages import (
    MAX_TRAIN_MASKS,
    make_pairs,
    run_pairs_stage,
    run_train_stage,
    train_translator,
    write_realism,
)
from nanoseg.translate.translators import (
    RENDERER,
    SUBSTRATE,
    GanTranslator,
    RefineTranslator,
    RenderTranslator,
    fit_renderer,
    load_renderer,
    load_translator,
)

__all__ = [
    "CHECKPOINT", "IMAGE_TO_MASK", "LOSS_PLOT", "MASK_TO_IMAGE", "MAX_TRAIN_MASKS", "RENDERER", "SUBSTRATE",
    "THRESHOLD_METHODS", "CycleGAN", "FakeMask", "GanTranslator", "ImagePool", "RefineTranslator", "RenderTranslator",
    "apply_generator", "artifact_threshold", "filter_artifacts", "fit_renderer", "from_net", "gan_segment",
    "gan_segment_instances", "generate_pairs", "iter_pairs", "load_fake_masks", "load_renderer", "load_translator", "lr_factor",
    "make_pairs", "overlay", "read_pair", "run_pairs_stage", "run_train_stage", "to_net",
    "train_cyclegan", "train_translator", "write_contact_sheet", "write_pair", "write_realism", "write_sample_grid",
]
