"""Stage 1: single-particle shapes, learned from a few outlines with a WGAN-GP or drawn as polygons.

The user gives ~40 rough outlines of single particles (a folder of small binary images, a mask
image with a few painted particles, or an ImageJ ROI set; read by :mod:`nanoseg.io.outlines`). A WGAN with gradient penalty
(Gulrajani et al., 2017) learns their distribution; its samples, cleaned into one filled
particle each, form the shape library the mask assembly (stage 2) draws from.

Outputs of :func:`run_stage` in the stage folder: ``library.npz`` (key ``shapes``, bool
``(N, S, S)``), ``generator.pt``, ``losses.csv``/``losses.png``, ``outlines.png``,
``samples.png`` and ``stats.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi
from skimage import measure
from skimage.morphology import disk

from nanoseg import nets
from nanoseg.atomic import atomic_path, write_json
from nanoseg.checkpoint import fingerprint, load_checkpoint, restore_rng, save_checkpoint
from nanoseg.errors import NanosegError
from nanoseg.grid import working_scale
from nanoseg.io import write_png
from nanoseg.io.outlines import MIN_SHAPE_PX, load_outlines
from nanoseg.plots import LossPanel, contact_sheet, plot_losses
from nanoseg.runtime import progress

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from nanoseg.config import ShapesConfig
    from nanoseg.pipeline import StageContext

logger = logging.getLogger("nanoseg.shapes")

CHECKPOINT = "checkpoint.pt"


# --------------------------------------------------------------------------------------------
# Shape statistics, pictures
# --------------------------------------------------------------------------------------------

def shape_properties(shapes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area in px and solidity (area / convex hull area) of every shape of an ``(N, S, S)`` stack."""
    areas = np.zeros(len(shapes))
    solidity = np.zeros(len(shapes))
    for i, shape in enumerate(shapes):
        props = measure.regionprops(shape.astype(np.uint8))
        if props:
            areas[i], solidity[i] = props[0].area, props[0].solidity
    return areas, solidity


def outline_roughness(shapes: np.ndarray) -> np.ndarray:
    """Perimeter over the perimeter of the equal-area circle, per shape (1 for a disc, larger when ragged).

    The perimeter is scikit-image's Crofton estimate, which does not inflate staircase edges of
    smooth shapes the way a pixel-edge count does.
    """
    out = np.full(len(shapes), np.nan)
    for i, shape in enumerate(shapes):
        props = measure.regionprops(shape.astype(np.uint8))
        if props and props[0].area > 0:
            out[i] = props[0].perimeter_crofton / (np.pi * np.sqrt(4 * props[0].area / np.pi))
    return out


def shape_summary(shapes: np.ndarray) -> dict[str, float]:
    """Median area (px), solidity, equivalent circular diameter (px) and outline roughness of a stack."""
    areas, solidity = shape_properties(shapes)
    return {
        "median_area_px": float(np.median(areas)),
        "median_solidity": float(np.median(solidity)),
        "median_ecd_px": float(np.sqrt(4 * np.median(areas) / np.pi)),
        "median_roughness": float(np.nanmedian(outline_roughness(shapes))),
    }


#: Gaussian sds (px, at the outline scale) tried by :func:`choose_smoothing`.
SMOOTHING_CANDIDATES_PX = (0.0, 0.75, 1.5, 2.25, 3.0, 4.0)


def choose_smoothing(generator: Any, outlines: np.ndarray, device: Any = "cpu", seed: int = 0,
                     min_area_px: int = MIN_SHAPE_PX, n: int = 256) -> tuple[float, list[dict[str, float]]]:
    """The smoothing whose samples' outline roughness matches the user's outlines best.

    A briefly trained WGAN draws ragged, spiky outlines, while real particles (and the outlines
    the user drew) are smooth. Rather than fix a smoothing width, this draws the same ``n``
    samples with each of :data:`SMOOTHING_CANDIDATES_PX` and keeps the one whose median
    roughness (:func:`outline_roughness`) is closest to the outlines'. Ties go to less smoothing.

    Returns
    -------
    sigma_px : float
    trials : list of dict
        Per candidate: ``sigma_px``, ``median_roughness``, ``median_solidity``, ``median_area_px``.
    """
    target = float(np.nanmedian(outline_roughness(outlines)))
    trials = []
    for sigma in SMOOTHING_CANDIDATES_PX:
        shapes, _ = sample_shapes(generator, n, device=device, seed=seed, batch_size=n, min_area_px=min_area_px,
                                  smooth_sigma_px=sigma)
        summary = shape_summary(shapes)
        trials.append({"sigma_px": sigma, **{k: summary[k] for k in ("median_roughness", "median_solidity",
                                                                      "median_area_px")}})
    best = min(trials, key=lambda t: (round(abs(t["median_roughness"] - target), 3), t["sigma_px"]))
    return float(best["sigma_px"]), trials


# --------------------------------------------------------------------------------------------
# WGAN-GP
# --------------------------------------------------------------------------------------------

def gradient_penalty(critic: Any, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP penalty: mean of ``(||grad critic(x_hat)|| - 1)^2`` at random interpolates.

    ``x_hat = eps * real + (1 - eps) * fake`` with one ``eps ~ U[0, 1]`` per sample
    (Gulrajani et al., 2017, Algorithm 1). The graph is kept so the penalty can be minimised.

    Parameters
    ----------
    critic : callable
        Maps a batch ``(N, ...)`` to scores ``(N,)`` or ``(N, 1)``.
    real, fake : torch.Tensor
        Batches of the same shape.

    Returns
    -------
    torch.Tensor
        Scalar penalty (not yet multiplied by its weight).
    """
    import torch

    eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return ((norms - 1) ** 2).mean()


def dihedral_augment(shapes: np.ndarray) -> np.ndarray:
    """All 8 flips/90-degree rotations of every shape: ``(N, S, S)`` -> ``(8 N, S, S)``."""
    out = []
    for k in range(4):
        rotated = np.rot90(shapes, k, axes=(1, 2))
        out += [rotated, rotated[:, :, ::-1]]
    return np.ascontiguousarray(np.concatenate(out))


#: The settings that change what :func:`train_wgan` learns (not ``steps``: more steps resume).
TRAINING_SETTINGS = ("outline_size_px", "latent_dim", "generator_width", "critic_width", "critic_steps", "gp_weight",
                     "learning_rate", "batch_size")


def training_fingerprint(outlines: np.ndarray, cfg: ShapesConfig, seed: int) -> str:
    """Hash of what :func:`train_wgan` learns from: the outlines, :data:`TRAINING_SETTINGS` and the seed."""
    return fingerprint("shapes", {k: getattr(cfg, k) for k in TRAINING_SETTINGS}, int(seed),
                       np.asarray(outlines, dtype=bool))


def train_wgan(
    outlines: np.ndarray,
    cfg: ShapesConfig,
    out_dir: str | Path | None = None,
    device: Any = "cpu",
    seed: int = 0,
) -> tuple[Any, list[dict[str, float]]]:
    """Train a WGAN-GP generator on binary outlines.

    Each generator step follows ``cfg.critic_steps`` critic steps on batches of outlines
    augmented by flips and 90-degree rotations. With ``out_dir``, a checkpoint is written every
    ``cfg.checkpoint_every`` steps (and at the end) together with ``losses.csv``/``losses.png``,
    and training resumes from ``out_dir/checkpoint.pt`` when it was made from the same outlines,
    settings and seed (:func:`training_fingerprint`; another checkpoint: a warning, a fresh start).

    Parameters
    ----------
    outlines : (N, S, S) bool array
        Training shapes, ``S == cfg.outline_size_px``.
    cfg : ShapesConfig
        Sizes, steps and optimiser settings.
    out_dir : path, optional
        Where checkpoints and the loss log go.
    device : torch.device or str
    seed : int
        Seed of the training's random draws.

    Returns
    -------
    generator : nn.Module
        In eval mode, on ``device``; made with :func:`nanoseg.nets.create` (savable with ``nets.save``).
    losses : list of dict
        One row per generator step: step, critic_loss, wasserstein, gradient_penalty, generator_loss.
    """
    import torch

    size = cfg.outline_size_px
    if outlines.ndim != 3 or outlines.shape[1:] != (size, size):
        raise NanosegError(f"shapes.outline_size_px: outlines are {outlines.shape[1:]}, config says {size}")
    device = torch.device(device)
    torch.manual_seed(seed)
    kwargs = {"size": size, "latent_dim": cfg.latent_dim}
    gen = nets.create("wgan_generator", width=cfg.generator_width, **kwargs).to(device)
    critic = nets.create("wgan_critic", width=cfg.critic_width, **kwargs).to(device)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.learning_rate, betas=(0.5, 0.9))
    opt_c = torch.optim.Adam(critic.parameters(), lr=cfg.learning_rate, betas=(0.5, 0.9))
    data = torch.from_numpy(dihedral_augment(outlines.astype(bool))).float().mul(2).sub(1).unsqueeze(1).to(device)
    fp = training_fingerprint(outlines, cfg, seed)

    step, losses = 0, []
    ckpt_path = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    state = (load_checkpoint(ckpt_path, fp, what="shapes", data="outlines", map_location=device)
             if ckpt_path is not None else None)
    if state is not None:
        gen.load_state_dict(state["nets"]["generator"])
        critic.load_state_dict(state["nets"]["critic"])
        opt_g.load_state_dict(state["optimizers"]["generator"])
        opt_c.load_state_dict(state["optimizers"]["critic"])
        restore_rng(state)
        step, losses = state["step"], state["extra"]["losses"]
        logger.info("shapes: resuming WGAN-GP training at step %d/%d", step, cfg.steps)

    def checkpoint() -> None:
        if ckpt_path is None:
            return
        save_checkpoint(ckpt_path, fingerprint=fp, step=step, nets={"generator": gen.state_dict(),
                                                                     "critic": critic.state_dict()},
                        optimizers={"generator": opt_g.state_dict(), "critic": opt_c.state_dict()},
                        extra={"losses": losses})
        write_loss_log(losses, Path(out_dir))

    batch = min(cfg.batch_size, len(data))
    gen.train()
    critic.train()
    bar = progress(total=cfg.steps, desc="WGAN-GP", initial=step)
    while step < cfg.steps:
        for _ in range(cfg.critic_steps):
            real = data[torch.randint(len(data), (batch,), device=device)]
            with torch.no_grad():
                fake = gen(torch.randn(batch, cfg.latent_dim, device=device))
            wasserstein = critic(real).mean() - critic(fake).mean()
            penalty = gradient_penalty(critic, real, fake)
            critic_loss = -wasserstein + cfg.gp_weight * penalty
            opt_c.zero_grad(set_to_none=True)
            critic_loss.backward()
            opt_c.step()
        for p in critic.parameters():
            p.requires_grad_(False)
        gen_loss = -critic(gen(torch.randn(batch, cfg.latent_dim, device=device))).mean()
        opt_g.zero_grad(set_to_none=True)
        gen_loss.backward()
        opt_g.step()
        for p in critic.parameters():
            p.requires_grad_(True)
        step += 1
        losses.append({"step": step, "critic_loss": critic_loss.item(), "wasserstein": wasserstein.item(),
                       "gradient_penalty": penalty.item(), "generator_loss": gen_loss.item()})
        bar.update(1)
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            checkpoint()
    bar.close()
    checkpoint()
    gen.eval()
    return gen, losses


#: The curves of ``losses.png``.
LOSS_PLOT = (LossPanel({"wasserstein": "Wasserstein estimate (critic)", "gradient_penalty": "gradient penalty",
                        "generator_loss": "generator loss"}),)


def write_loss_log(losses: list[dict[str, float]], out_dir: Path) -> None:
    """``losses.csv`` and ``losses.png`` (running means, so the trend is visible) in ``out_dir``."""
    import pandas as pd

    if not losses:
        return
    frame = pd.DataFrame(losses)
    with atomic_path(out_dir / "losses.csv") as tmp:
        frame.to_csv(tmp, index=False)
    plot_losses(losses, out_dir / "losses.png", LOSS_PLOT, xlabel="generator step", smooth=True)


# --------------------------------------------------------------------------------------------
# Sampling and clean-up
# --------------------------------------------------------------------------------------------

def clean_shapes(raw: np.ndarray, threshold: float = 0.0, min_area_px: int = MIN_SHAPE_PX,
                 smooth_radius_px: int = 1, smooth_sigma_px: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Turn generated images into single filled particles.

    Smooth the generator's continuous output with a Gaussian of ``smooth_sigma_px`` (so the
    outline is traced at sub-pixel precision: a jagged staircase and thin spikes go, the
    particle's size stays), binarise at ``threshold``, open with a disk of
    ``smooth_radius_px`` (removes speckle), keep the largest 4-connected component, fill its
    holes, and mark samples that are (nearly) empty or touch the border as dropped.

    Parameters
    ----------
    raw : (N, S, S) float array
        Generator output (in [-1, 1] for the WGAN generator, hence threshold 0).
    threshold : float
    min_area_px : int
        Samples with a smaller largest component count as empty.
    smooth_radius_px : int
        Radius of the opening; 0 disables it.
    smooth_sigma_px : float
        Sd of the Gaussian applied before thresholding; 0 disables it.

    Returns
    -------
    shapes : (M, S, S) bool array
        The kept shapes.
    kept : (N,) bool array
        Which samples were kept (``N - kept.sum()`` were dropped).
    """
    raw = np.asarray(raw)
    shapes = np.zeros(raw.shape, bool)
    kept = np.zeros(len(raw), bool)
    footprint = disk(smooth_radius_px) if smooth_radius_px > 0 else None
    for i, image in enumerate(raw):
        if smooth_sigma_px > 0:
            image = ndi.gaussian_filter(np.asarray(image, np.float32), smooth_sigma_px, mode="nearest")
        binary = image > threshold
        if footprint is not None:
            binary = ndi.binary_opening(binary, structure=footprint)
        labels = measure.label(binary, connectivity=1)
        if labels.max() == 0:
            continue
        largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
        filled = ndi.binary_fill_holes(largest)
        touches = filled[0].any() or filled[-1].any() or filled[:, 0].any() or filled[:, -1].any()
        if filled.sum() >= min_area_px and not touches:
            shapes[i], kept[i] = filled, True
    return shapes[kept], kept


def sample_shapes(generator: Any, n: int, device: Any = "cpu", seed: int = 0, batch_size: int = 256,
                  min_area_px: int = MIN_SHAPE_PX, smooth_sigma_px: float = 0.0) -> tuple[np.ndarray, int]:
    """Draw ``n`` clean shapes from a trained generator.

    Drawing continues until ``n`` samples survive :func:`clean_shapes` (at most 20 n draws,
    each smoothed with ``smooth_sigma_px``); samples smaller than ``min_area_px`` count as empty.

    Returns
    -------
    shapes : (n, S, S) bool array
    n_dropped : int
        Samples discarded as empty or touching the border.
    """
    import torch

    gen_rng = torch.Generator(device="cpu").manual_seed(seed)
    kept_parts: list[np.ndarray] = []
    n_kept = n_dropped = 0
    generator.eval()
    with torch.no_grad():
        while n_kept < n:
            if n_kept + n_dropped > 20 * n:
                raise NanosegError("shapes: the generator gives almost only empty or border-touching shapes; "
                                   "train longer (shapes.steps) or use shapes.source=polygon")
            z = torch.randn(batch_size, generator.latent_dim, generator=gen_rng).to(device)
            raw = generator(z).squeeze(1).float().cpu().numpy()
            shapes, kept = clean_shapes(raw, min_area_px=min_area_px, smooth_sigma_px=smooth_sigma_px)
            kept_parts.append(shapes)
            n_kept += len(shapes)
            n_dropped += int((~kept).sum())
    shapes = np.concatenate(kept_parts)[:n]
    return shapes, n_dropped


def random_polygons(
    n: int,
    size: int,
    rng: np.random.Generator,
    mean_area_px: float | None = None,
    n_vertices: tuple[int, int] = (5, 12),
    vertex_noise: float = 0.25,
    elongation_sd: float = 0.15,
) -> np.ndarray:
    """Random star-shaped polygons with noisy vertices, centred in ``size`` x ``size`` squares.

    Each polygon has a random number of vertices at sorted random angles; their radii vary by
    ``vertex_noise`` (relative sd) around a common radius, and the whole polygon is stretched
    along a random axis by a log-normal factor (sd ``elongation_sd``).

    Parameters
    ----------
    n : int
        Number of polygons.
    size : int
        Side of each square in px.
    rng : numpy.random.Generator
    mean_area_px : float, optional
        Area of every polygon in px (before rasterisation; the mask assembly varies the size);
        default: a disc of diameter ``size / 2.5``.
    n_vertices : (int, int)
        Inclusive range of the vertex count.
    vertex_noise : float
        Relative sd of the vertex radii.
    elongation_sd : float
        Sd of the log aspect ratio.

    Returns
    -------
    (n, size, size) bool array
    """
    from skimage.draw import polygon

    if mean_area_px is None:
        mean_area_px = np.pi * (size / 5) ** 2
    radius = np.sqrt(mean_area_px / np.pi)
    out = np.zeros((n, size, size), bool)
    centre = (size - 1) / 2
    limit = size / 2 - 1.5  # keep a background margin
    for i in range(n):
        k = int(rng.integers(n_vertices[0], n_vertices[1] + 1))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = radius * np.clip(1 + vertex_noise * rng.standard_normal(k), 0.3, None)
        stretch = np.exp(elongation_sd * rng.standard_normal())
        axis = rng.uniform(0, np.pi)
        x, y = radii * np.cos(angles - axis), radii * np.sin(angles - axis)
        x, y = x * stretch, y / stretch
        x, y = x * np.cos(axis) - y * np.sin(axis), x * np.sin(axis) + y * np.cos(axis)
        # Shoelace area: random vertices cover less than the circle of their radius.
        area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
        x, y = x * np.sqrt(mean_area_px / area), y * np.sqrt(mean_area_px / area)
        reach = np.abs(np.concatenate([x, y])).max()
        if reach > limit:
            x, y = x * limit / reach, y * limit / reach
        rr, cc = polygon(centre + y, centre + x, (size, size))
        out[i, rr, cc] = True
    return out


# --------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------

def build_library(
    cfg: ShapesConfig,
    out_dir: str | Path,
    outlines: np.ndarray | None,
    device: Any = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Make the shape library and every stage-1 output in ``out_dir`` (used by the stage and the CLI).

    Parameters
    ----------
    cfg : ShapesConfig
    out_dir : path
        Output folder; a ``checkpoint.pt`` there from an interrupted run is resumed.
    outlines : (N, S, S) bool array or None
        The user's outlines. Required for ``cfg.source == 'wgan'``; for ``'polygon'`` they only
        set the typical size.
    device : torch.device or str
    seed : int

    Returns
    -------
    dict
        The statistics also written to ``stats.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = cfg.outline_size_px
    stats: dict[str, Any] = {"source": cfg.source, "outline_size_px": size}
    outline_summary = shape_summary(outlines) if outlines is not None and len(outlines) else None
    if outlines is not None:
        write_png(out_dir / "outlines.png", contact_sheet(outlines))
    if cfg.source == "wgan":
        if outlines is None or len(outlines) < 2:
            raise NanosegError("data.outlines: the WGAN needs at least 2 outlines (or set shapes.source=polygon)")

        generator, losses = train_wgan(outlines, cfg, out_dir, device=device, seed=seed)
        nets.save(generator, out_dir / "generator.pt", meta={"threshold": 0.0, "steps": cfg.steps,
                                                             "n_outlines": int(len(outlines))},
                  kind="shape-generator")
        # Specks far below any outline's size are failed samples, not small particles.
        min_area = max(MIN_SHAPE_PX, int(0.1 * outline_summary["median_area_px"]))
        sigma = cfg.smooth_sigma_px
        if sigma == "auto":
            sigma, stats["smoothing_trials"] = choose_smoothing(generator, outlines, device=device, seed=seed + 2,
                                                                min_area_px=min_area)
        shapes, n_dropped = sample_shapes(generator, cfg.n_samples, device=device, seed=seed + 1, min_area_px=min_area,
                                          smooth_sigma_px=float(sigma))
        stats["smooth_sigma_px"] = float(sigma)
        stats["steps"] = cfg.steps
        stats["final_wasserstein"] = float(np.mean([r["wasserstein"] for r in losses[-20:]]))
    else:
        rng = np.random.default_rng(seed)
        area = outline_summary["median_area_px"] if outline_summary else None
        shapes, n_dropped = random_polygons(cfg.n_samples, size, rng, mean_area_px=area), 0
    with atomic_path(out_dir / "library.npz") as tmp:
        np.savez_compressed(tmp, shapes=shapes)
    write_png(out_dir / "samples.png", contact_sheet(shapes))
    sample_summary = shape_summary(shapes)
    stats.update({
        "n_outlines": int(len(outlines)) if outlines is not None else 0,
        "n_shapes": int(len(shapes)),
        "n_dropped": int(n_dropped),
        "dropped_fraction": float(n_dropped / (n_dropped + len(shapes))),
        "outline_median_area_px": outline_summary["median_area_px"] if outline_summary else None,
        "outline_median_solidity": outline_summary["median_solidity"] if outline_summary else None,
        "outline_median_ecd_px": outline_summary["median_ecd_px"] if outline_summary else None,
        "outline_median_roughness": outline_summary["median_roughness"] if outline_summary else None,
        "shape_median_area_px": sample_summary["median_area_px"],
        "shape_median_solidity": sample_summary["median_solidity"],
        "shape_median_ecd_px": sample_summary["median_ecd_px"],
        "shape_median_roughness": sample_summary["median_roughness"],
    })
    write_json(out_dir / "stats.json", stats)
    logger.info("shapes: %d shapes (median area %.0f px, solidity %.2f, roughness %.3f; outlines %s), "
                "%d samples dropped", len(shapes), sample_summary["median_area_px"], sample_summary["median_solidity"],
                sample_summary["median_roughness"],
                f"{outline_summary['median_roughness']:.3f}" if outline_summary else "-", n_dropped)
    return stats


def run_stage(ctx: StageContext) -> None:
    """Pipeline stage 1: outlines -> ``shapes/library.npz`` (see the module docstring for all outputs)."""
    cfg = ctx.config.shapes
    outlines_path = ctx.config.data.outlines
    outlines = None
    if outlines_path is not None:
        outlines = load_outlines(outlines_path, cfg.outline_size_px, scale=working_scale(ctx.config))
    elif cfg.source == "wgan":
        raise NanosegError("data.outlines: not set; give a folder of outlines, or set shapes.source=polygon")
    build_library(cfg, ctx.out_dir, outlines, device=ctx.device, seed=ctx.config.seed)
