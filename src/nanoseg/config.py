"""One validated configuration object for the whole workflow.

A run is described by :class:`Config`, loaded from YAML on top of a named profile:

- ``demo``: the smallest settings that still exercise every stage; the demo run finishes
  in minutes on 2 CPU cores.
- ``quick``: sized for a laptop CPU, trains everything in under an hour.
- ``paper``: the published defaults of Rühle et al. (2021), meant for a GPU.

Unknown keys, wrong types (true/false for a number too), NaN/inf values and duplicate YAML keys
are rejected with one line that names the key.
This module imports no torch so that the CLI can parse and validate before any heavy import.

Why one module of this size: the config is one object, and every key's type, bounds, default and
description sit in one place with the profiles that override them, the user-facing key list and the
generator of docs/config.md, so that a key cannot be added in one place and forgotten in another.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from nanoseg.atomic import embed_section
from nanoseg.errors import NanosegError
from nanoseg.units import check_pixel_size_nm

PROFILES = ("demo", "quick", "paper")


def _leaf_types(annotation: Any) -> set[Any]:
    """The plain types a field annotation admits (``int | Literal['auto']`` -> ``{int, str}``)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _leaf_types(args[0])
    if origin is Literal:
        return {type(arg) for arg in args}
    if args:  # a union, tuple or list: what its members admit
        return set().union(*(_leaf_types(arg) for arg in args))
    return {annotation}


def _holds_bool(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_holds_bool(item) for item in value)
    return isinstance(value, bool)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true as 1 and false as 0: `steps: true` would train 1 step.
        if _holds_bool(value) and info.field_name is not None:
            leaves = _leaf_types(cls.model_fields[info.field_name].annotation)
            if bool not in leaves and leaves & {int, float}:
                raise PydanticCustomError("bool_not_number", "Input should be a number, not true/false")
        return value


class DataConfig(_Section):
    """Where the inputs are and how to read them."""

    images: Path | None = Field(None, description="Folder of micrographs (TIFF, PNG, JPEG, BMP).")
    outlines: Path | None = Field(
        None,
        description="Single-particle outlines: a folder of small binary images, a mask image with a "
        "few painted particles, or an ImageJ ROI set (.roi/.zip).",
    )
    pixel_size_nm: float | None = Field(
        None, gt=0, description="Pixel size override in nm; default: read from the image metadata."
    )
    info_bar_rows: int | Literal["auto"] = Field(
        "auto", description="Rows of instrument info bar at the bottom: 'auto' detects it, 0 means none."
    )
    bit_depth: Annotated[int, Field(ge=8, le=32)] | Literal["auto"] = Field(
        "auto", description="Bits of the detector data in 16/32-bit images, the same scale for every image of a run; "
        "'auto': as the files state, else the smallest of 8, 10, 12, 14, 16, 32 bits holding the series' largest value."
    )
    dark_particles: bool | Literal["auto"] = Field(
        "auto", description="Particles darker than the background (TEM/TSEM bright-field images): the images are "
        "inverted. 'auto': when over 60 % of a typical image of the run is brighter than its automatic threshold (the "
        "background; on the TiO2 SEM images at most 26 %, on their TSEM twins at least 74 %).")
    # From an atom to a millimetre: outside it a unit slip, and the size in px can overflow.
    expected_size_nm: float | None = Field(
        None,
        ge=0.1,
        le=1e6,
        description="Expected equivalent circular diameter of a particle in nm (0.1 to 1e6); used as the size prior "
        "when masks.size_prior is 'expected'.",
    )
    working_scale: Annotated[float, Field(ge=0.125, le=8.0, allow_inf_nan=False)] | Literal["auto"] = Field(
        "auto", description="Factor by which the run resamples micrographs and outlines to learn and segment: every "
        "length in px of the defaults is for outlines about 32 px across. 'auto': the factor that makes the outlines' "
        "median diameter (or data.expected_size_nm) 32 px, 1 within 1.25x of it. The outputs stay on the "
        "micrographs' own pixels.")

    @field_validator("pixel_size_nm")
    @classmethod
    def _plausible_pixel_size(cls, value: float | None) -> float | None:
        if value is None:
            return None
        try:
            return check_pixel_size_nm(value, "data.pixel_size_nm")
        except NanosegError as exc:
            raise ValueError(str(exc)) from None


class ShapesConfig(_Section):
    """Stage 1: learn single-particle shapes (WGAN-GP) or draw random polygons."""

    source: Literal["wgan", "polygon"] = Field("wgan", description="Shape source: a WGAN-GP trained on the outlines, or random polygons.")
    outline_size_px: int = Field(64, ge=16, le=256, description="Side of the square outline images in px.")
    latent_dim: int = Field(64, ge=2, description="Length of the generator's noise vector.")
    generator_width: int = Field(16, ge=4, description="Channels of the generator's last feature map (doubles per upsampling).")
    critic_width: int = Field(16, ge=4, description="Channels of the critic's first feature map (doubles per downsampling).")
    steps: int = Field(400, ge=1, description="Generator steps. Samples are smoothed to the outlines' roughness "
                       "(smooth_sigma_px), so the ragged outlines of a short training do not reach the masks.")
    critic_steps: int = Field(5, ge=1, description="Critic steps per generator step.")
    gp_weight: float = Field(10.0, ge=0, description="Weight of the gradient penalty.")
    learning_rate: float = Field(1e-4, gt=0, description="Adam learning rate (betas 0.5, 0.9).")
    batch_size: int = Field(32, ge=2, description="Outlines per batch (augmented by flips and 90-degree rotations).")
    n_samples: int = Field(2000, ge=1, description="Shapes sampled into the shape library used for mask assembly.")
    checkpoint_every: int = Field(250, ge=1, description="Save a checkpoint every this many generator steps.")
    smooth_sigma_px: Annotated[float, Field(ge=0, allow_inf_nan=False)] | Literal["auto"] = Field(
        "auto", description="Gaussian sd (px, outline scale) applied to each generated shape before thresholding "
        "(sub-pixel smooth outlines); 'auto' picks the value whose samples are as smooth as the outlines "
        "(perimeter over equal-area circle perimeter), 0 disables it.")


class MasksConfig(_Section):
    """Stage 2: assemble fake segmentation masks from sampled shapes."""

    n_masks: int = Field(200, ge=1, description="Number of fake masks (tiles) to write.")
    tile_size_px: tuple[int, int] = Field((704, 1024), description="Height and width of a fake mask in px.")
    particles_per_tile: tuple[int, int] | None = Field(
        None, description="Range of particle counts per tile; default: estimated from the micrographs, one level "
        "per micrograph so that the fakes span the images' range of coverage."
    )
    size_prior: Literal["outlines", "images", "expected"] = Field(
        "images",
        description="Where the particle size in px comes from: the outlines as drawn, the micrographs "
        "(automatic threshold; falls back to the outlines when there are no images), or "
        "data.expected_size_nm with the pixel size. Hand-drawn outlines run large, so 'outlines' biases the sizes "
        "upwards; the masks stage's stats.json and every report name the prior used.",
    )
    scale_sd: float = Field(0.1, ge=0, description="Standard deviation of the scale factor (of its log for 'lognormal').")
    scale_cut_sd: float = Field(3.0, gt=0, description="Scale factors beyond this many sd are redrawn.")
    perlin_cell_px: float = Field(160.0, gt=0, description="Feature size of the Perlin placement density in px.")
    perlin_octaves: int = Field(2, ge=1, le=8, description="Octaves of the Perlin noise.")
    clustering: float = Field(20.0, ge=0, description="Exponent on the noise density: 0 places uniformly, larger clusters more.")
    max_overlap: float = Field(
        0.15, ge=0, le=1, description="Largest fraction of a particle's area that may cover earlier particles; "
        "a particle overlapping more is moved to another position drawn from the density (up to 20 tries)."
    )
    min_visible_px: int = Field(
        20, ge=1, description="Visible particle parts smaller than this many px (mostly hidden under others) are removed."
    )


class TranslateConfig(_Section):
    """Stages 3-4: translate fake masks into fake micrographs, filter artifacts, write training pairs."""

    method: Literal["cyclegan", "render", "refine"] = Field(
        "render", description="The physics-inspired SEM renderer (no training; real substrate from the micrographs), "
        "'cyclegan', trained masks -> micrographs (the paper's path), or 'refine' (the 'quick' and 'paper' "
        "default): the renderer, then a CycleGAN trained rendered -> real micrographs with an input-output skip, "
        "so that it only learns what the renderer misses.")
    substrate: Literal["real", "synthetic"] = Field(
        "real", description="Renderer: quilt the substrate from the micrographs' own particle-free areas (real), "
        "or draw smooth synthetic noise.")
    contrast: Literal["se", "transmission", "auto"] = Field(
        "se", description="Renderer: what the micrographs show. 'se': secondary electrons (bright rims, shading, "
        "a crevice between touching particles); 'transmission': mass thickness (TEM, STEM, TSEM bright field: "
        "particles darkest where thickest, touching ones one silhouette); 'auto': transmission when the micrographs "
        "have dark particles (data.dark_particles).")
    render_variation: float = Field(
        0.5, ge=0, le=1, description="Renderer: per fake image, edge contrast, shading, blur, noise and particle "
        "brightness spread vary by up to this fraction around the fitted values, and each particle's crevice "
        "shadow from (1 - this) to 1 times the fitted depth (0: every image looks alike).")
    realism_steps: int = Field(
        300, ge=0, description="Training steps of the classifier that tells fake tiles from real ones; its held-out "
        "accuracy (0.5 = indistinguishable) goes to pairs/realism.json and the report. 0 skips the check.")
    tile_size_px: int = Field(128, ge=32, description="Side of the square training tiles in px.")
    generator_width: int = Field(16, ge=4, description="ngf: channels of the generators' first layer.")
    discriminator_width: int = Field(32, ge=4, description="ndf: channels of the discriminators' first layer.")
    n_res_blocks: int = Field(6, ge=1, description="Residual blocks in each generator.")
    steps: int = Field(2000, ge=1, description="Training iterations (2 generators and 2 discriminators each).")
    batch_size: int = Field(1, ge=1, description="Tiles per iteration.")
    learning_rate: float = Field(2e-4, gt=0, description="Adam learning rate (betas 0.5, 0.999).")
    decay_start_fraction: float = Field(0.5, ge=0, le=1, description="Fraction of steps after which the learning rate decays linearly to 0.")
    pool_size: int = Field(50, ge=0, description="Image pool of past fakes for the discriminators; 0 disables.")
    cycle_weight: float = Field(10.0, ge=0, description="Weight of the cycle-consistency loss.")
    identity_weight: float = Field(0.5, ge=0, description="Weight of the identity loss (relative to cycle_weight).")
    generator_skip: bool = Field(False, description="Add the input to the generators' output (input-output skip); "
                                 "always on with method 'refine'.")
    generator_upsample: Literal["transpose", "resize"] = Field(
        "resize", description="Generators' upsampling: nearest-neighbour resize + 3x3 convolution, which leaves no "
        "checkerboard, or the reference implementation's transposed convolutions (a 4-px grid pattern).")
    n_pairs: int = Field(200, ge=1, description="Training pairs (fake micrograph + mask) to generate.")
    pair_format: Literal["npz", "tiff"] = Field(
        "npz", description="Training pairs are always written as pair_XXXX.npz (read by the later stages); 'tiff' also writes "
        "pairs/tiff/pair_XXXX_<key>.tif for other tools."
    )
    artifact_threshold: Literal["li", "otsu", "mean", "median"] = Field("li", description="Automatic threshold the artifact filter compares instance means with.")
    checkpoint_every: int = Field(500, ge=1, description="Save a checkpoint and sample grid every this many steps.")
    bf16: bool = Field(True, description="bfloat16 autocast on the CPU (and CUDA) where supported.")


#: Marks a segment key that acts after training (post-processing, tiling, test-time augmentation).
INFERENCE = {"applies": "inference"}


class SegmentConfig(_Section):
    """Stage 5: train the segmentation network and split its output into particles.

    The keys marked :data:`INFERENCE` turn the network's output into particles; changing one
    segments again with the trained network (see :meth:`inference_keys`).
    """

    @classmethod
    def inference_keys(cls) -> frozenset[str]:
        """The keys that act after training: a change re-segments without retraining."""
        return frozenset(name for name, f in cls.model_fields.items() if f.json_schema_extra == INFERENCE)

    architecture: Literal["multiresunet", "unet"] = Field(
        "unet",
        description="Segmentation network. MultiResUNet (the paper's) is the 'paper' default; on a CPU the UNet "
        "trains about 2x faster per step (benchmarks/results/segment.json), so 'demo' and 'quick' use it.",
    )
    base_width: int = Field(16, ge=2, description="Channels of the first level (doubling per level).")
    depth: int = Field(4, ge=1, le=6, description="Number of downsampling levels.")
    target: Literal["three_class", "binary", "centres"] = Field(
        "three_class", description="Predict particle/boundary/background (separates touching particles by a band), a "
        "plain binary mask, or 'centres' (experimental): per pixel the vector to its own particle's centre; centres "
        "are where at least min_size_px pixels' vectors point, min_distance_px apart, and touching particles split "
        "where the vectors part. Not the default: behind three_class on the TiO2 benchmark "
        "(benchmarks/results/segment_target.md)."
    )
    boundary_width_px: int = Field(3, ge=1, description="Width of the boundary band of the three-class target in px.")
    tile_size_px: int = Field(192, ge=32, description="Side of the square training tiles in px.")
    batch_size: int = Field(4, ge=1, description="Tiles per training step.")
    steps: int = Field(1000, ge=1, description="Training steps.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate.")
    lr_decay_every: int = Field(400, ge=1, description="Step-decay period of the learning rate.")
    lr_decay_factor: float = Field(0.5, gt=0, le=1, description="Learning-rate factor applied every lr_decay_every steps.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Fraction of pairs held out for validation.")
    val_every: int = Field(250, ge=1, description="Validate (loss, IoU) and checkpoint every this many steps.")
    threshold: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | Literal["auto"] = Field(
        0.5, description="Probability threshold (0-1), or 'auto' to sweep 0.05-0.95 on the validation pairs.", json_schema_extra=INFERENCE)
    min_distance_px: int = Field(9, ge=1, description="Minimum distance between watershed markers in px.", json_schema_extra=INFERENCE)
    min_size_px: int = Field(10, ge=0, description="Instances smaller than this many px are removed.", json_schema_extra=INFERENCE)
    band_giveback: Literal["expand", "watershed"] = Field(
        "expand",
        description="Three-class target: how boundary-band pixels go back to particles: 'expand' grows each interior "
        "by at most boundary_width_px (keeps sizes unbiased), 'watershed' floods the whole predicted foreground.", json_schema_extra=INFERENCE,
    )
    marker_threshold: float = Field(0.4, gt=0, lt=1, description="Three-class target: interior probability above which pixels seed watershed markers.", json_schema_extra=INFERENCE)
    marker_h: float = Field(
        0.2, ge=0, lt=1, description="Three-class target: interior-probability maxima at least this high split a marker region (0: no split)."
    , json_schema_extra=INFERENCE)
    smoothing_sigma_px: float = Field(1.0, ge=0, description="Binary target: Gaussian sigma on the distance transform before peak finding.", json_schema_extra=INFERENCE)
    class_balance: bool = Field(True, description="Weight the loss by inverse class frequency of the training targets.")
    inference_tile_px: int = Field(
        1024, ge=64, description="Images with a side larger than this are segmented in overlapping, smoothly blended tiles."
    , json_schema_extra=INFERENCE)
    tile_overlap_px: int = Field(64, ge=0, description="Overlap of neighbouring inference tiles in px; at most half of "
                                 "inference_tile_px.", json_schema_extra=INFERENCE)
    block_px: int = Field(
        1984, ge=256, description="Images with a side larger than this are segmented in pieces of this side, "
        "block_margin_px of which on each side is context, and the particles joined: memory stays bounded whatever "
        "the image size. The default spans two 1024 px inference tiles.", json_schema_extra=INFERENCE)
    block_margin_px: int = Field(
        128, ge=0, description="Context around each piece's core, in px; must exceed the largest particle's extent, so "
        "that every particle lies whole in the piece its centre falls in (a warning says when one did not); at most a "
        "quarter of block_px.", json_schema_extra=INFERENCE)
    tta: bool = Field(False, description="Test-time augmentation: average the probabilities over the 8 flips and "
                      "90-degree rotations of each image (8x the inference time). On in the quick and paper profiles.", json_schema_extra=INFERENCE)
    bf16: bool = Field(True, description="bfloat16 autocast on the CPU (and CUDA) where supported.")

    # Both pairs set a step: tiles advance by inference_tile_px - tile_overlap_px, pieces by their core,
    # block_px - 2 * block_margin_px. Near zero the step makes millions of tiles or pieces (a run that
    # never ends), so each step must keep at least half its tile or piece.
    @model_validator(mode="after")
    def _tiles_advance(self) -> SegmentConfig:
        if 2 * self.tile_overlap_px > self.inference_tile_px:
            raise ValueError(f"segment.tile_overlap_px {self.tile_overlap_px} is more than half of "
                             f"segment.inference_tile_px {self.inference_tile_px}, so tiles would advance by "
                             f"{max(1, self.inference_tile_px - self.tile_overlap_px)} px: lower tile_overlap_px to "
                             f"{self.inference_tile_px // 2} or raise inference_tile_px to {2 * self.tile_overlap_px}")
        return self

    @model_validator(mode="after")
    def _block_has_a_core(self) -> SegmentConfig:
        if 4 * self.block_margin_px > self.block_px:
            raise ValueError(f"segment.block_px {self.block_px} leaves no core of at least half its side inside two "
                             f"segment.block_margin_px {self.block_margin_px} margins: raise block_px to "
                             f"{4 * self.block_margin_px} or lower block_margin_px to {self.block_px // 4}")
        return self


class AdaptConfig(_Section):
    """Stage adapt: self-training of the segmentation net on the user's own micrographs."""

    rounds: int = Field(0, ge=0, le=5, description="Self-training rounds; 0 (default) keeps the segment stage's "
                        "net and labels unchanged.")
    steps: int = Field(200, ge=1, description="Fine-tuning steps per round.")
    learning_rate: float = Field(2e-4, gt=0, description="Adam learning rate of the fine-tuning.")
    real_fraction: float = Field(0.5, gt=0, lt=1, description="Share of the training tiles taken from the real "
                                 "micrographs (the rest from the synthetic pairs).")
    min_agreement: float = Field(0.9, ge=0, le=1, description="A particle becomes a pseudo-label only where the 8 "
                                 "flips/rotations agree on at least this share of its pixels' classes (mean); "
                                 "background pixels are learned only where they agree this much.")
    min_solidity: float = Field(0.9, ge=0, le=1, description="Pseudo-labels must be at least this convex: most "
                                "merges are not (two equal touching discs still reach 0.93), and learning a merge "
                                "would teach the net to merge.")
    area_range: tuple[Annotated[float, Field(gt=0, allow_inf_nan=False)], Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        (0.25, 4.0), description="Pseudo-labels' area must lie in this range times the median area of the whole "
        "particles of the fake masks (the size prior).")
    split_check: float = Field(
        0.5, gt=0, le=1, description="Pseudo-labels must stay one particle when the post-processing splits more "
        "readily: at this fraction of segment.marker_h (binary target: of segment.min_distance_px). A particle it "
        "then splits is often a small particle merged into a neighbour, and a merge learned teaches the net to "
        "merge; 1 turns the check off.")

    @model_validator(mode="after")
    def _area_in_order(self) -> AdaptConfig:
        if self.area_range[0] > self.area_range[1]:
            raise ValueError(f"adapt.area_range {list(self.area_range)}: the first factor must not exceed the second")
        return self


class ClassifyConfig(_Section):
    """Stage 6: keep whole, unoccluded particles."""

    method: Literal["network", "rules", "none"] = Field("network", description="Classifier network (+ rules), rules only, or keep everything.")
    base_width: int = Field(8, ge=2, description="Channels of the classifier network's first level.")
    depth: int = Field(3, ge=1, le=6, description="Downsampling levels of the classifier network.")
    tile_size_px: int = Field(256, ge=32, description="Side of the square training tiles in px.")
    batch_size: int = Field(4, ge=1, description="Tiles per training step.")
    steps: int = Field(500, ge=1, description="Training steps.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate.")
    score_threshold: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | Literal["auto"] = Field(
        "auto", description="Particles with a mean keep score above this are kept. 'auto': the threshold that best "
        "separates whole from partial particles (Youden's J) on fake pairs held out from the classifier's training, "
        "found when the classifier is trained and saved with it; a network's scores shift from one training run to "
        "the next, a fixed 0.5 does not follow them.")
    calibration_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of the training pairs held out to calibrate score_threshold='auto' "
        "(at least one pair; 0, or a single pair, calibrates on the training pairs themselves).")
    calibration_bins: int = Field(
        5, ge=1, description="With score_threshold 'auto', calibrate one threshold per bin of particle area "
        "(equal-count bins of the held-out particles), where it is lower than the overall one: a network that "
        "scores small whole particles lower than large ones would otherwise lose them to a threshold set mostly by "
        "the common sizes. A bin holding fewer than 10 whole or 10 partial particles takes the overall threshold; "
        "1: one threshold for all sizes.")
    score_thresholds_by_area: list[tuple[Annotated[float, Field(ge=0, allow_inf_nan=False)],
                                         Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]]] | None = Field(
        None, description="Pairs (smallest area in px, score threshold), ascending, the first from 0: a particle's "
        "score must exceed the threshold of its area's pair. With score_threshold 'auto' they come with the "
        "classifier (see calibration_bins); set here, they win.")
    min_area_px: int = Field(0, ge=0, description="Rule: discard particles smaller than this many px.")
    max_area_px: int | None = Field(None, ge=1, description="Rule: discard particles larger than this many px.")
    min_solidity: float = Field(0.0, ge=0, le=1, description="Rule: discard particles with lower solidity (area / convex area).")
    min_feret_px: float = Field(
        5.0, ge=0, allow_inf_nan=False,
        description="Rule: discard particles whose min Feret diameter is below this many px: too few pixels across "
        "to be sized (at 5 px one pixel is a fifth of the size), and far smaller than any particle the networks "
        "learned from. Specks of substrate texture are the particles it discards; 0 turns it off.")
    min_inscribed_fraction: float = Field(
        0.5, ge=0, lt=1,
        description="Rule: discard particles whose largest inscribed circle, plus one pixel for the pixel grid, is "
        "narrower than this fraction of their min Feret diameter. No convex particle falls below 2/3 (the "
        "equilateral triangle's ratio, Steinhagen's inequality), while thin crescents segmented along the bright "
        "rims of substrate features, and slivers left between particles, fall far below it; 0 turns it off.")
    exclude_border: bool = Field(True, description="Rule: discard particles touching the image border or the info bar.")
    intensity_threshold: Literal["none", "li", "otsu", "mean", "median"] = Field(
        "li",
        description="Rule: discard particles whose mean intensity is below this automatic threshold of their "
        "micrograph (the stage-4 artifact filter applied to the predictions; removes background texture "
        "mistaken for particles). 'none' disables.",
    )
    min_mean_intensity: float | None = Field(
        None, ge=0, le=1, description="Rule: discard particles whose mean intensity (0-1, particles bright) is lower."
    )
    balance_classes: bool = Field(
        True, description="Give kept and discarded particle pixels equal total weight in the training loss."
    )
    size_balance: bool = Field(
        True, description="Weight the training loss so that within each particle-size bin kept and discarded "
        "particles count equally: in fake pairs most small pieces are fragments of covered particles, and without "
        "it the network learns to discard small particles that are whole.")
    ema_decay: float = Field(
        0.99, ge=0, lt=1, description="Keep the exponential moving average of the network's weights over the "
        "training steps with this decay (0.99: about the last 100 steps) and use it instead of the last weights, "
        "whose keep decisions depend on the last few batches; 0 turns it off.")
    checkpoint_every: int = Field(100, ge=1, description="Save a training checkpoint every this many steps.")
    bf16: bool = Field(True, description="bfloat16 autocast on the CPU (and CUDA) where supported.")

    @model_validator(mode="after")
    def _area_thresholds_ascending(self) -> ClassifyConfig:
        pairs = self.score_thresholds_by_area
        if pairs is not None:
            starts = [a for a, _ in pairs]
            if not pairs or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
                raise ValueError(f"classify.score_thresholds_by_area {[list(p) for p in pairs]}: the smallest areas "
                                 "must start at 0 and rise")
        return self


class MeasureConfig(_Section):
    """Stage 7: measurements, size distribution and report."""

    histogram_bins: int = Field(30, ge=2, description="Bins of the size histograms.")
    fit_lognormal: bool = Field(True, description="Fit a log-normal to each size histogram.")
    report: bool = Field(True, description="Write the self-contained HTML report.")
    report_rows: int = Field(50, ge=0, description="Particles listed in the report's table (all are in particles.csv).")
    report_overlays: int = Field(12, ge=0, description="Overlay images embedded in the report (all are in overlays/).")


class Config(_Section):
    """The whole workflow's configuration; saved as ``RUN/config.yaml`` beside every run."""

    profile: Literal["demo", "quick", "paper"] = Field("quick", description="Profile the defaults came from.")
    seed: int = Field(0, ge=0, description="Seed for every random draw; the same seed repeats a run on the same machine.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Torch device: CUDA when available with 'auto'.")
    num_threads: int | None = Field(None, ge=1, description="Torch CPU threads; default: the cores this process may use (CPU affinity, container CPU quota).")
    data: DataConfig = Field(default_factory=DataConfig)
    shapes: ShapesConfig = Field(default_factory=ShapesConfig)
    masks: MasksConfig = Field(default_factory=MasksConfig)
    translate: TranslateConfig = Field(default_factory=TranslateConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)

    @model_validator(mode="after")
    def _check_ranges(self) -> Config:
        ppt = self.masks.particles_per_tile
        if ppt is not None and not 1 <= ppt[0] <= ppt[1]:
            raise ValueError("masks.particles_per_tile must be [min, max] with 1 <= min <= max")
        if min(self.masks.tile_size_px) < 16:
            raise ValueError("masks.tile_size_px must be at least 16 px on each side")
        return self

    def section_hash(self, *sections: str) -> str:
        """Hash of the named top-level sections/fields; used to decide whether a stage is stale."""
        dump = self.model_dump(mode="json")
        picked = {name: dump[name] for name in sections}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self, advanced: bool = True) -> str:
        """The config as YAML: every key, or with ``advanced=False`` only :data:`USER_KEYS`."""
        values = self.model_dump(mode="json")
        return yaml.safe_dump(values if advanced else user_settings(values), sort_keys=False)


# Overrides on top of the defaults above. Test-time augmentation is on in the profiles that
# measure (benchmarks/results/archive/tta_quick.md: strict F1 +0.019 for 3.4x the measure time); the
# field's own default stays off, so that code calling the segment functions directly does not pay
# for it unasked. 'quick' refines the renderer's fakes with a CycleGAN: on the same shapes and
# masks it raised strict F1 in every seed (benchmarks/results/archive/workflow_quick_refine.md against
# workflow_quick_render.md: 0.748 -> 0.782 in the mean), while translate + pairs took 1100 s instead of
# 160 s (three seeds sharing two cores); 'demo' keeps the renderer alone, which trains nothing.
# 'paper' keeps the published network sizes and steps but translates with 'refine' too: the paper's
# mask -> image CycleGAN gave strict F1 0.580 against refine's 0.783 at equal steps
# (benchmarks/results/workflow_quick_cyclegan.md against workflow_quick_fresh_loss.md);
# --set translate.method=cyclegan restores the published path.
_PROFILE_OVERRIDES: dict[str, dict[str, Any]] = {
    "quick": {"translate": {"method": "refine"}, "segment": {"tta": True}},
    "demo": {
        "shapes": {"steps": 300, "generator_width": 16, "critic_width": 16, "n_samples": 500, "batch_size": 32},
        "masks": {"n_masks": 24, "tile_size_px": (384, 512)},
        "translate": {"method": "render", "steps": 300, "n_pairs": 48, "tile_size_px": 128, "realism_steps": 100},
        "segment": {"architecture": "unet", "base_width": 8, "steps": 300, "tile_size_px": 192, "val_every": 100,
                    "lr_decay_every": 200},
        # ema_decay 0: an average over ~100 steps would lag far behind a training of 80.
        "classify": {"steps": 80, "tile_size_px": 128, "base_width": 4, "checkpoint_every": 40, "ema_decay": 0.0},
    },
    "paper": {
        "shapes": {"steps": 20000, "generator_width": 64, "critic_width": 64, "latent_dim": 128,
                   "n_samples": 20000, "batch_size": 64, "checkpoint_every": 1000},
        "masks": {"n_masks": 1000},
        "translate": {"method": "refine", "tile_size_px": 256, "generator_width": 64, "discriminator_width": 64, "n_res_blocks": 9,
                      "steps": 100000, "n_pairs": 1000, "pool_size": 50, "checkpoint_every": 5000},
        "segment": {"architecture": "multiresunet", "base_width": 32, "depth": 4, "steps": 20000, "batch_size": 8,
                    "tile_size_px": 256, "lr_decay_every": 5000,
                    "val_every": 1000, "tta": True},
        "classify": {"base_width": 32, "depth": 4, "steps": 5000, "batch_size": 8, "checkpoint_every": 500},
    },
}


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _config_key(loc: tuple[Any, ...]) -> str:
    """The dotted key of a validation error's location, without pydantic's union-member tags
    (``segment.threshold.constrained-float`` -> ``segment.threshold``)."""
    parts: list[str] = []
    model: Any = Config
    for part in loc:
        if isinstance(part, int):  # an item of a list or tuple setting
            parts.append(str(part))
        elif model is not None:  # a section's key, known or not
            parts.append(part)
            field = model.model_fields.get(part)
            annotation = field.annotation if field is not None else None
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        # else: past a setting, a string names one type of a union, not a key
    return ".".join(parts) or "<config>"


#: Keys of earlier versions that measured worse or were never used, and why they went
#: (docs/defaults.md has the runs). A config file naming one is refused with the reason; a model
#: that saved one still loads (:func:`segment_settings` drops them).
REMOVED_KEYS: dict[str, str] = {
    "masks.scale_distribution": "particle scales are drawn from a normal distribution; lognormal measured worse",
    "translate.asymmetric_loss": "never measured better than L1 both ways",
    "translate.disc_noise_sd": "never measured better than none",
    "segment.select_by": "the checkpoint with the lowest validation loss is the model; val_iou chose over-splitting nets",
    "segment.dice_weight": "never measured better than none",
    "classify.contact_balance": "did not help on the workflow benchmark",
    "classify.zoom_range": "did not help on the workflow benchmark",
    "classify.fragment_fraction": "raised the count error on the workflow benchmark",
    "classify.min_ecd_fraction": "dropped real small particles of broad size distributions",
}


def _format_validation_error(exc: ValidationError, source: str) -> str:
    unknown: list[str] = []
    bad: dict[str, tuple[list[str], Any]] = {}
    checks: list[str] = []
    for err in exc.errors():
        key = _config_key(err["loc"])
        if err["type"] == "extra_forbidden":
            unknown.append(key)
        elif err["type"] == "value_error":
            # This module's validators: their messages name the keys (often two) and the fix.
            checks.append(f"{source}: {err['ctx']['error']}")
        elif err["type"] == "model_type":
            checks.append(f"{source}: {key} is a section; set one of its keys (`nanoseg config docs` lists them), "
                          f"not {err.get('input')!r}")
        else:
            bad.setdefault(key, ([], err.get("input")))[0].append(err["msg"])
    lines = [f"{source}: '{key}' was removed ({REMOVED_KEYS[key]}); delete it" if key in REMOVED_KEYS
             else f"{source}: unknown key '{key}' (see `nanoseg config docs` for valid keys)" for key in unknown]
    for key, (messages, value) in bad.items():
        # A union setting fails once per type it allows: one phrase for all of them.
        text = ", or ".join([messages[0]] + [m.removeprefix("Input ") for m in messages[1:]])
        lines.append(f"{source}: bad value for '{key}': {text} (got {value!r})")
    return "; ".join(lines + checks)


def _reject_nonfinite(tree: Any, source: str, prefix: str = "") -> None:
    # pydantic rejects NaN for float fields but would coerce it silently in unions; be explicit.
    if isinstance(tree, dict):
        for key, value in tree.items():
            _reject_nonfinite(value, source, f"{prefix}{key}.")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            _reject_nonfinite(value, source, f"{prefix}{i}.")
    elif isinstance(tree, float) and not math.isfinite(tree):
        raise NanosegError(f"{source}: bad value for '{prefix.rstrip('.')}': {tree} is not a finite number")


def build_config(values: dict[str, Any] | None = None, profile: str | None = None, source: str = "config") -> Config:
    """Validate ``values`` on top of a profile's defaults.

    Parameters
    ----------
    values : dict, optional
        Nested settings, as in the YAML file. ``values["profile"]`` picks the profile unless
        ``profile`` is given.
    profile : {'demo', 'quick', 'paper'}, optional
        Profile whose defaults the values override.
    source : str
        Name used in error messages (usually the YAML path).

    Returns
    -------
    Config
    """
    values = dict(values or {})
    name = profile or values.get("profile") or "quick"
    if name not in PROFILES:
        raise NanosegError(f"{source}: unknown profile '{name}' (choose one of {', '.join(PROFILES)})")
    _reject_nonfinite(values, source)
    merged = deep_merge(_PROFILE_OVERRIDES[name], values)
    merged["profile"] = name
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise NanosegError(_format_validation_error(exc, source)) from None


def without_removed(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """A section's saved settings without the :data:`REMOVED_KEYS` (a model saved by an earlier version)."""
    return {key: value for key, value in values.items() if f"{section}.{key}" not in REMOVED_KEYS}


def segment_settings(values: dict[str, Any], source: str) -> SegmentConfig:
    """The segment settings saved in a model, validated: one clear error naming ``source`` (the model
    file) when they break today's rules, e.g. a model saved by an older nanoseg."""
    try:
        return SegmentConfig.model_validate(without_removed("segment", values))
    except ValidationError as exc:
        raise NanosegError(_format_validation_error(exc, f"{source}: saved segment settings")) from None


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A YAML mapping names one key twice (where the second one is, in ``problem_mark``)."""

    def __init__(self, key: Any, first: yaml.Mark, second: yaml.Mark) -> None:
        super().__init__(problem=f"duplicate key {key!r}", problem_mark=second)
        self.key, self.first_line, self.second_line = key, first.line + 1, second.line + 1


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping, where PyYAML keeps the last silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` keys are meant to be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader says what is wrong with it
                continue
            if first is not key_node.start_mark:
                raise DuplicateKeyError(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML config text safely, refusing duplicate keys (:class:`DuplicateKeyError`)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_config(path: str | Path | None = None, profile: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a YAML config file (optional) on top of a profile, then apply ``overrides``."""
    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise NanosegError(f"{path}: config file not found (create one with `nanoseg config init > {path.name}`)")
        try:
            loaded = load_yaml(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise NanosegError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
        except DuplicateKeyError as exc:
            raise NanosegError(f"{path}: key '{exc.key}' appears twice in one section (lines {exc.first_line} and "
                               f"{exc.second_line}); keep one of them") from None
        except yaml.YAMLError as exc:
            raise NanosegError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise NanosegError(f"{path}: a config file must be a mapping of sections to settings")
        values = loaded
    if overrides:
        values = deep_merge(values, overrides)
    return build_config(values, profile=profile, source=source)


def parse_assignment(text: str) -> dict[str, Any]:
    """Turn ``"segment.steps=500"`` into ``{"segment": {"steps": 500}}`` (value parsed as YAML)."""
    key, _, raw = text.partition("=")
    parts = key.strip().split(".")
    if "=" not in text or not all(parts):
        raise NanosegError(f"--set {text!r}: expected KEY=VALUE, e.g. --set segment.steps=500")
    try:
        value = load_yaml(raw) if raw else None
    except DuplicateKeyError as exc:
        raise NanosegError(f"--set {text!r}: key '{exc.key}' appears twice in the value; keep one of them") from None
    except yaml.YAMLError as exc:
        raise NanosegError(f"--set {text!r}: the value is not valid YAML ({str(exc).splitlines()[0]}); "
                           "write it as YAML, e.g. --set masks.particles_per_tile=[80,120]") from None
    field = Config.model_fields.get(parts[0])
    section = field.annotation if field is not None and len(parts) == 1 else None
    if isinstance(section, type) and issubclass(section, BaseModel) and not isinstance(value, dict):
        example = next(iter(section.model_fields))
        raise NanosegError(f"--set {text!r}: {parts[0]} is a section; set one of its keys, e.g. "
                           f"--set {parts[0]}.{example}=VALUE (`nanoseg config docs` lists them)")
    out: dict[str, Any] = {}
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


#: The settings a user sets. The profiles own the rest (network sizes, training schedules,
#: post-processing tuned on the benchmark): `nanoseg config init` writes only these unless asked
#: for all, and docs/config.md lists the rest apart, as advanced.
USER_KEYS: dict[str, tuple[str, ...]] = {
    "": ("profile", "seed", "device", "num_threads"),
    "data": ("images", "outlines", "pixel_size_nm", "info_bar_rows", "bit_depth", "dark_particles",
             "expected_size_nm"),
    "shapes": ("source", "steps", "n_samples"),
    "masks": ("n_masks", "size_prior", "particles_per_tile"),
    "translate": ("method", "steps", "n_pairs"),
    "segment": ("architecture", "steps", "threshold", "tta", "min_size_px"),
    "adapt": ("rounds",),
    "classify": ("method", "steps", "score_threshold", "exclude_border", "min_feret_px", "min_area_px",
                 "max_area_px", "min_solidity", "intensity_threshold"),
    "measure": ("histogram_bins", "fit_lognormal", "report", "report_rows", "report_overlays"),
}


def is_user_key(key: str) -> bool:
    """Whether a dotted key (``segment.steps``) is one of :data:`USER_KEYS`."""
    section, _, name = key.rpartition(".")
    return name in USER_KEYS.get(section, ())


def user_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The :data:`USER_KEYS` of a nested settings dict (``Config.model_dump()``), in their order."""
    out = {name: values[name] for name in USER_KEYS[""] if name in values}
    for section, names in USER_KEYS.items():
        if section and section in values:
            out[section] = {name: values[section][name] for name in names if name in values[section]}
    return out


def config_reference() -> str:
    """Markdown reference of every config key, generated from the model (docs/config.md): the
    :data:`USER_KEYS` first, then the advanced keys the profiles own."""
    rows: dict[bool, list[str]] = {True: [], False: []}
    default = build_config()

    def walk(model: type[BaseModel], instance: BaseModel, prefix: str) -> None:
        for name, field in model.model_fields.items():
            value = getattr(instance, name)
            if isinstance(value, BaseModel):
                walk(type(value), value, f"{prefix}{name}.")
                continue
            shown = json.dumps(value if not isinstance(value, (Path, tuple)) else (str(value) if isinstance(value, Path) else list(value)))
            after = " *After training: a change re-segments with the trained net.*" \
                if field.json_schema_extra == INFERENCE else ""
            rows[is_user_key(prefix + name)].append(f"| `{prefix}{name}` | `{shown}` | {field.description or ''}{after} |")

    walk(Config, default, "")
    head = ["| key | default (quick) | description |", "| --- | --- | --- |"]
    return "\n".join([
        f"### Settings ({len(rows[True])} keys)", "", *head, *rows[True], "",
        f"### Advanced settings ({len(rows[False])} keys)", "",
        "Network sizes, training schedules and post-processing the profiles set; change them to "
        "experiment, and measure what the change does (docs/defaults.md says how each default was chosen).",
        "", *head, *rows[False],
    ])


def embed_reference(document: str | Path) -> Path:
    """Replace the text between the config-reference markers of ``document`` (docs/config.md)
    with :func:`config_reference`."""
    return embed_section(document, "config-reference", config_reference())
