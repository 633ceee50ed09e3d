"""Stages 3-4: translate fake masks into fake micrographs, filter artifact particles, write pairs.

Stage 3 (``translate``) either trains a CycleGAN (Zhu et al. 2017) between the domain of fake
binary masks (A) and the domain of real micrographs (B), on random tiles and without any paired
data, or fits the parameters of the physics-inspired SEM renderer (:mod:`nanoseg.render`).

Stage 4 (``pairs``) translates every fake mask into a fake micrograph, drops "artifact"
particles that did not become visible in the fake image (:func:`filter_artifacts`) and writes
aligned training pairs for the segmentation network.

The trained image -> mask generator is also a segmentation model on its own
(:func:`gan_segment`, the "GAN" baseline of Rühle et al. 2021).

Images are float arrays in [0, 1] with bright particles outside this module; inside the
networks both domains are mapped to [-1, 1].
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg.atomic import atomic_path, write_json, write_text
from nanoseg.errors import NanosegError
from nanoseg.labels import border_labels
from nanoseg.plots import LossPanel, plot_losses

logger = logging.getLogger("nanoseg.translate")

CHECKPOINT = "checkpoint.pt"
MASK_TO_IMAGE = "mask_to_image.pt"
IMAGE_TO_MASK = "image_to_mask.pt"
RENDERER = "renderer.json"
SUBSTRATE = "substrate.npz"
MAX_TRAIN_MASKS = 64  # fake-mask tiles held in memory for CycleGAN training crops
THRESHOLD_METHODS = ("li", "otsu", "mean", "median")
_LOSS_KEYS = ("loss_g", "adv_a2b", "adv_b2a", "cycle_a", "cycle_b", "idt_a", "idt_b", "loss_d_a", "loss_d_b")
#: The panels of ``losses.png`` (running means of the loss terms).
LOSS_PLOT = (LossPanel({k: k for k in ("adv_a2b", "adv_b2a")}, title="generators"),
             LossPanel({k: k for k in ("cycle_a", "cycle_b", "idt_a", "idt_b")}, title="cycle / identity"),
             LossPanel({k: k for k in ("loss_d_a", "loss_d_b")}, title="discriminators"))


# --------------------------------------------------------------------------- artifact filter


def artifact_threshold(image: np.ndarray, method: str = "li") -> float:
    """Automatic intensity threshold of ``image`` (``'li'``, ``'otsu'``, ``'mean'`` or ``'median'``)."""
    from skimage import filters

    image = np.asarray(image, dtype=np.float32)
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


# --------------------------------------------------------------------------- image pool


class ImagePool:
    """Buffer of past fakes for the discriminators (Shrivastava et al. 2017, as in CycleGAN).

    While the pool fills, every fake is stored and returned. Once full, each fake is, with
    probability 0.5, swapped against a random stored one (the stored one is returned and the
    new one takes its place), else returned as is. ``size=0`` disables the pool.

    Parameters
    ----------
    size : int
        Number of stored images.
    rng : numpy.random.Generator, optional
        Random source of the choices.
    """

    def __init__(self, size: int, rng: np.random.Generator | None = None) -> None:
        self.size = int(size)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.images: list[Any] = []

    def query(self, images: Any) -> Any:
        """Return a batch of the same shape as ``images`` (a torch tensor, first axis = batch)."""
        import torch

        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif self.rng.random() < 0.5:
                idx = int(self.rng.integers(len(self.images)))
                out.append(self.images[idx].clone().to(image.dtype))
                self.images[idx] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict[str, Any]:
        import torch

        stacked = torch.cat([t.float() for t in self.images], 0) if self.images else torch.zeros(0)
        return {"images": stacked, "rng": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.images = [t.unsqueeze(0) for t in state["images"]] if state["images"].numel() else []
        self.rng.bit_generator.state = json.loads(state["rng"])


# --------------------------------------------------------------------------- tiles


def _dihedral(tile: np.ndarray, k: int, flip: bool) -> np.ndarray:
    tile = np.rot90(tile, k)
    return np.ascontiguousarray(tile[:, ::-1] if flip else tile)


def random_tiles(arrays: Sequence[np.ndarray], tile_px: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Crop ``n`` random square tiles (random image, position, 90-degree rotation and flip).

    Arrays smaller than the tile are reflection-padded first.

    Returns
    -------
    (n, tile_px, tile_px) float32 array
    """
    out = np.empty((n, tile_px, tile_px), np.float32)
    for i in range(n):
        arr = arrays[int(rng.integers(len(arrays)))]
        pad_y, pad_x = max(0, tile_px - arr.shape[0]), max(0, tile_px - arr.shape[1])
        if pad_y or pad_x:
            arr = np.pad(arr, ((0, pad_y), (0, pad_x)), mode="reflect" if min(arr.shape) > 1 else "edge")
        y = int(rng.integers(arr.shape[0] - tile_px + 1))
        x = int(rng.integers(arr.shape[1] - tile_px + 1))
        out[i] = _dihedral(arr[y:y + tile_px, x:x + tile_px], int(rng.integers(4)), bool(rng.integers(2)))
    return out


def to_net(batch: np.ndarray, device: Any) -> Any:
    """A batch as the generators take it: (N, H, W) [0, 1] numpy -> (N, 1, H, W) [-1, 1] float32 tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32) * 2 - 1).unsqueeze(1).to(device)


def from_net(tensor: Any) -> np.ndarray:
    """The inverse of :func:`to_net`: (N, 1, H, W) [-1, 1] tensor -> (N, H, W) [0, 1] float32 numpy."""
    return np.clip((tensor.detach().float().cpu().numpy()[:, 0] + 1) / 2, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- CycleGAN


def lr_factor(step: int, steps: int, decay_start_fraction: float) -> float:
    """Learning-rate factor: 1 until ``decay_start_fraction * steps``, then linear down to 0."""
    start = int(round(decay_start_fraction * steps))
    if step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start + 1) / (steps - start + 1))


class CycleGAN:
    """Two generators and two PatchGAN discriminators with their optimisers.

    Domain A holds binary masks, domain B micrographs; ``g_ab`` turns masks into images,
    ``g_ba`` images into masks, ``d_a`` judges masks and ``d_b`` judges images.

    Parameters
    ----------
    cfg : nanoseg.config.TranslateConfig
        Widths, depth, losses and optimiser settings.
    device : torch.device or str
    rng : numpy.random.Generator, optional
        Random source of the image pools.
    """

    def __init__(self, cfg: Any, device: Any = "cpu", rng: np.random.Generator | None = None) -> None:
        import torch

        from nanoseg import nets

        self.cfg = cfg
        self.device = torch.device(device)
        rng = rng if rng is not None else np.random.default_rng()
        gen = {"in_channels": 1, "out_channels": 1, "width": cfg.generator_width, "n_res_blocks": cfg.n_res_blocks,
               "skip": cfg.generator_skip}
        disc = {"in_channels": 1, "width": cfg.discriminator_width, "n_layers": _disc_layers(cfg.tile_size_px)}
        self.g_ab = nets.create("resnet_generator", **gen).to(self.device)
        self.g_ba = nets.create("resnet_generator", **gen).to(self.device)
        self.d_a = nets.create("patch_discriminator", **disc).to(self.device)
        self.d_b = nets.create("patch_discriminator", **disc).to(self.device)
        for net in self.nets.values():
            net.apply(_init_weights)
        betas = (0.5, 0.999)
        self.opt_g = torch.optim.Adam([*self.g_ab.parameters(), *self.g_ba.parameters()], lr=cfg.learning_rate, betas=betas)
        self.opt_d = torch.optim.Adam([*self.d_a.parameters(), *self.d_b.parameters()], lr=cfg.learning_rate, betas=betas)

        def factor(step: int) -> float:
            return lr_factor(step, cfg.steps, cfg.decay_start_fraction)

        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, factor)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, factor)
        self.pool_a = ImagePool(cfg.pool_size, np.random.default_rng(rng.integers(2**63)))
        self.pool_b = ImagePool(cfg.pool_size, np.random.default_rng(rng.integers(2**63)))
        self.step = 0

    @property
    def nets(self) -> dict[str, Any]:
        return {"g_ab": self.g_ab, "g_ba": self.g_ba, "d_a": self.d_a, "d_b": self.d_b}

    def _noisy(self, x: Any) -> Any:
        import torch

        if self.cfg.disc_noise_sd > 0:
            return x + self.cfg.disc_noise_sd * torch.randn_like(x)
        return x

    def _loss_to_mask(self, pred: Any, target: Any) -> Any:
        """Loss towards the mask domain: BCE on [0, 1] when asymmetric, else L1."""
        import torch
        import torch.nn.functional as F

        if not self.cfg.asymmetric_loss:
            return F.l1_loss(pred.float(), target.float())
        # BCE is not autocast-safe; compute it in float32 on probabilities clamped away from 0/1.
        with torch.autocast(device_type=self.device.type, enabled=False):
            p = ((pred.float() + 1) / 2).clamp(1e-6, 1 - 1e-6)
            return F.binary_cross_entropy(p, (target.float() + 1) / 2)

    @staticmethod
    def _l1(pred: Any, target: Any) -> Any:
        import torch.nn.functional as F

        return F.l1_loss(pred.float(), target.float())

    @staticmethod
    def _lsgan(pred: Any, real: bool) -> Any:
        import torch
        import torch.nn.functional as F

        pred = pred.float()
        return F.mse_loss(pred, torch.full_like(pred, 1.0 if real else 0.0))

    def train_step(self, real_a: Any, real_b: Any) -> dict[str, float]:
        """One iteration: generators (adversarial + cycle + identity), then discriminators.

        Parameters
        ----------
        real_a, real_b : (N, 1, H, W) tensors in [-1, 1]
            Mask tiles and micrograph tiles.

        Returns
        -------
        dict
            The loss terms as floats, and the learning rate.
        """
        from nanoseg.runtime import autocast

        cfg = self.cfg
        amp = autocast(self.device, cfg.bf16)
        for net in self.nets.values():
            net.train()
        _set_requires_grad((self.d_a, self.d_b), False)
        self.opt_g.zero_grad(set_to_none=True)
        with amp:
            fake_b = self.g_ab(real_a)
            rec_a = self.g_ba(fake_b)
            fake_a = self.g_ba(real_b)
            rec_b = self.g_ab(fake_a)
            adv_a2b = self._lsgan(self.d_b(self._noisy(fake_b)), True)
            adv_b2a = self._lsgan(self.d_a(self._noisy(fake_a)), True)
            cycle_a = self._loss_to_mask(rec_a, real_a)
            cycle_b = self._l1(rec_b, real_b)
            loss_g = adv_a2b + adv_b2a + cfg.cycle_weight * (cycle_a + cycle_b)
            if cfg.identity_weight > 0:
                # A generator fed an image of its target domain should leave it unchanged.
                idt_a = self._loss_to_mask(self.g_ba(real_a), real_a)
                idt_b = self._l1(self.g_ab(real_b), real_b)
                loss_g = loss_g + cfg.cycle_weight * cfg.identity_weight * (idt_a + idt_b)
            else:
                idt_a = idt_b = loss_g.new_zeros(())
        loss_g.backward()
        self.opt_g.step()

        _set_requires_grad((self.d_a, self.d_b), True)
        self.opt_d.zero_grad(set_to_none=True)
        with amp:
            pooled_b = self.pool_b.query(fake_b.detach().float())
            pooled_a = self.pool_a.query(fake_a.detach().float())
            loss_d_b = 0.5 * (self._lsgan(self.d_b(self._noisy(real_b)), True) + self._lsgan(self.d_b(self._noisy(pooled_b)), False))
            loss_d_a = 0.5 * (self._lsgan(self.d_a(self._noisy(real_a)), True) + self._lsgan(self.d_a(self._noisy(pooled_a)), False))
        (loss_d_a + loss_d_b).backward()
        self.opt_d.step()
        lr = self.opt_g.param_groups[0]["lr"]
        self.sched_g.step()
        self.sched_d.step()
        self.step += 1
        values = {"loss_g": loss_g, "adv_a2b": adv_a2b, "adv_b2a": adv_b2a, "cycle_a": cycle_a, "cycle_b": cycle_b,
                  "idt_a": idt_a, "idt_b": idt_b, "loss_d_a": loss_d_a, "loss_d_b": loss_d_b}
        out = {k: float(v.detach()) for k, v in values.items()}
        out["lr"] = float(lr)
        return out

    def translate(self, batch: np.ndarray, direction: str = "a2b") -> np.ndarray:
        """Translate (N, H, W) [0, 1] arrays (H, W multiples of 4) with ``g_ab`` or ``g_ba``."""
        import torch

        from nanoseg.runtime import autocast

        net = self.g_ab if direction == "a2b" else self.g_ba
        net.eval()
        with torch.no_grad(), autocast(self.device, self.cfg.bf16):
            return from_net(net(to_net(batch, self.device)))

    def state_dict(self) -> dict[str, Any]:
        import torch

        return {
            "step": self.step,
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "pool_a": self.pool_a.state_dict(),
            "pool_b": self.pool_b.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import torch

        self.step = int(state["step"])
        for key, net in self.nets.items():
            net.load_state_dict(state["nets"][key])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        self.pool_a.load_state_dict(state["pool_a"])
        self.pool_b.load_state_dict(state["pool_b"])
        torch.set_rng_state(state["torch_rng"].cpu())


def _disc_layers(tile_px: int) -> int:
    # 3 stride-2 layers (70x70 patches) need tiles of at least ~64 px; fewer for tiny tiles.
    return 3 if tile_px >= 64 else 2


def _set_requires_grad(nets: Iterable[Any], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def _init_weights(module: Any) -> None:
    # N(0, 0.02) as in the CycleGAN reference implementation.
    from torch import nn

    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- training loop


def train_cyclegan(
    masks: Sequence[np.ndarray],
    images: Sequence[np.ndarray],
    cfg: Any,
    out_dir: str | Path,
    device: Any = "cpu",
    rng: np.random.Generator | None = None,
    meta: dict[str, Any] | None = None,
) -> CycleGAN:
    """Train a CycleGAN between fake masks and real micrographs; resumes from ``out_dir``.

    Parameters
    ----------
    masks : sequence of (H, W) arrays
        Fake binary masks (bool or 0/1).
    images : sequence of (H, W) float arrays in [0, 1]
        Real micrographs, info bar cropped, particles bright.
    cfg : nanoseg.config.TranslateConfig
    out_dir : path
        Gets ``checkpoint.pt`` (every ``cfg.checkpoint_every`` steps; removed at the end),
        ``losses.csv``, ``losses.png``, ``samples/step_XXXXXX.png``, and finally
        ``mask_to_image.pt`` and ``image_to_mask.pt``.
    device : torch.device or str
    rng : numpy.random.Generator, optional
        Random source of tile crops and pools.
    meta : dict, optional
        Extra metadata saved with the generators.

    Returns
    -------
    CycleGAN
        The trained model.
    """
    import torch

    from nanoseg import nets
    from nanoseg.runtime import progress

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = rng if rng is not None else np.random.default_rng()
    if not masks:
        raise NanosegError("translate: no fake masks to train on (run the masks stage first)")
    if not images:
        raise NanosegError("translate: no real micrographs to train on (check data.images)")
    masks = [np.asarray(m) > 0 for m in masks]  # bool: 1/4 of the memory of float32
    images = [np.asarray(im, dtype=np.float32) for im in images]
    tile = cfg.tile_size_px
    # Fixed tiles for the sample grids, drawn before any resume so they are the same each time.
    sample_a = random_tiles(masks, tile, 4, rng)
    sample_b = random_tiles(images, tile, 4, rng)
    model = CycleGAN(cfg, device, rng)
    ckpt_path = out_dir / CHECKPOINT
    log: list[dict[str, float]] = []
    if not ckpt_path.is_file() and (out_dir / MASK_TO_IMAGE).is_file() and (out_dir / IMAGE_TO_MASK).is_file():
        # Killed after the final save but before the stage was marked done: nothing to redo.
        for net, name in ((model.g_ab, MASK_TO_IMAGE), (model.g_ba, IMAGE_TO_MASK)):
            net.load_state_dict(nets.load(out_dir / name, model.device)[0].state_dict())
        model.step = cfg.steps
        logger.info("translate: generators already trained in %s", out_dir)
        return model
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=model.device, weights_only=True)
        model.load_state_dict(state)
        rng.bit_generator.state = json.loads(state["rng"])
        log = [row for row in _read_loss_log(out_dir / "losses.csv") if row["step"] <= model.step]
        logger.info("translate: resuming CycleGAN training at step %d of %d", model.step, cfg.steps)

    def checkpoint() -> None:
        state = model.state_dict()
        state["rng"] = json.dumps(rng.bit_generator.state)
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)
        _write_loss_log(out_dir / "losses.csv", log)
        plot_losses(log, out_dir / "losses.png", LOSS_PLOT, smooth=True)
        write_sample_grid(model, sample_a, sample_b, out_dir / "samples" / f"step_{model.step:06d}.png")

    bar = progress(range(model.step, cfg.steps), total=cfg.steps - model.step, desc="CycleGAN")
    for _ in bar:
        real_a = to_net(random_tiles(masks, tile, cfg.batch_size, rng), model.device)
        real_b = to_net(random_tiles(images, tile, cfg.batch_size, rng), model.device)
        losses = model.train_step(real_a, real_b)
        if not all(math.isfinite(v) for v in losses.values()):
            raise NanosegError(f"translate: CycleGAN losses became non-finite at step {model.step}; "
                               "lower translate.learning_rate or set translate.bf16=false")
        log.append({"step": model.step, **losses})
        if model.step % cfg.checkpoint_every == 0 and model.step < cfg.steps:
            checkpoint()
    _write_loss_log(out_dir / "losses.csv", log)
    plot_losses(log, out_dir / "losses.png", LOSS_PLOT, smooth=True)
    write_sample_grid(model, sample_a, sample_b, out_dir / "samples" / f"step_{model.step:06d}.png")
    base_meta = {"tile_size_px": tile, "steps": model.step, "domain": "[-1, 1] inside the net; [0, 1] outside",
                 "particles": "bright", **(meta or {})}
    nets.save(model.g_ab, out_dir / MASK_TO_IMAGE, {**base_meta, "input": "binary mask", "output": "micrograph"})
    nets.save(model.g_ba, out_dir / IMAGE_TO_MASK, {**base_meta, "input": "micrograph", "output": "mask probability"})
    ckpt_path.unlink(missing_ok=True)  # the generators are saved; Adam state is no longer needed
    return model


def _write_loss_log(path: Path, log: list[dict[str, float]]) -> None:
    buf = _stdio.StringIO()
    fields = ["step", *_LOSS_KEYS, "lr"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in log:
        writer.writerow({k: (f"{row[k]:.6g}" if k != "step" else int(row[k])) for k in fields})
    write_text(path, buf.getvalue())


def _read_loss_log(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: (int(v) if k == "step" else float(v)) for k, v in row.items()} for row in csv.DictReader(fh)]


def write_sample_grid(model: CycleGAN, sample_a: np.ndarray, sample_b: np.ndarray, path: str | Path) -> None:
    """PNG grid, one row per sample: mask, G(mask), F(G(mask)) | image, F(image), G(F(image))."""
    from nanoseg.io import write_png

    fake_b = model.translate(sample_a, "a2b")
    rec_a = model.translate(fake_b, "b2a")
    fake_a = model.translate(sample_b, "b2a")
    rec_b = model.translate(fake_a, "a2b")
    rows = [np.concatenate([sample_a[i], fake_b[i], rec_a[i], sample_b[i], fake_a[i], rec_b[i]], axis=1)
            for i in range(len(sample_a))]
    write_png(path, np.concatenate(rows, axis=0))


# --------------------------------------------------------------------------- fake masks


@dataclass
class FakeMask:
    """One tile of the masks stage: its instance labels and which of them are whole particles.

    Parameters
    ----------
    index : int
        Tile number (``mask_0007.tif`` -> 7), as in ``particles.csv``.
    source : ndarray or Path
        The instance labels, or the ``mask_XXXX.tif`` they are read from on access (so that
        hundreds of tiles need not sit in memory).
    whole_labels : frozenset of int, optional
        Labels of whole, unoccluded particles; ``None``: every particle not touching the border.
    """

    index: int
    source: np.ndarray | Path
    whole_labels: frozenset[int] | None = None

    @property
    def instances(self) -> np.ndarray:
        """Instance labels (int32, 0 = background)."""
        if isinstance(self.source, np.ndarray):
            return self.source
        return _read_instances(Path(self.source))

    def whole_pixels(self, instances: np.ndarray) -> np.ndarray:
        """Bool mask of the pixels of whole particles in ``instances`` (this tile's labels)."""
        if self.whole_labels is None:
            labels = set(np.unique(instances).tolist()) - set(border_labels(instances).tolist()) - {0}
        else:
            labels = self.whole_labels
        return np.isin(instances, list(labels))


def _read_instances(mask_path: Path) -> np.ndarray:
    from skimage.measure import label

    from nanoseg.io import read_labels, read_mask

    inst_path = mask_path.with_name("instances_" + mask_path.name[len("mask_"):])
    if inst_path.is_file():
        return read_labels(inst_path).astype(np.int32)
    return label(read_mask(mask_path), connectivity=1).astype(np.int32)


def load_fake_masks(masks_dir: str | Path) -> list[FakeMask]:
    """List the tiles of a masks folder (``mask_*.tif``; ``instances_*.tif`` and ``particles.csv`` where present).

    The labels are read on access. Without ``instances_XXXX.tif`` the mask is labelled
    (4-connected); without ``particles.csv`` every particle not touching the tile border counts
    as whole.
    """
    masks_dir = Path(masks_dir)
    paths = sorted(masks_dir.glob("mask_*.tif"))
    if not paths:
        raise NanosegError(f"{masks_dir}: no mask_*.tif files (run `nanoseg masks` or the masks stage first)")
    whole_by_tile: dict[int, set[int]] | None = None
    csv_path = masks_dir / "particles.csv"
    if csv_path.is_file():
        import pandas as pd

        table = pd.read_csv(csv_path)
        missing = {"tile", "label", "whole"} - set(table.columns)
        if missing:
            raise NanosegError(f"{csv_path}: missing columns {', '.join(sorted(missing))} (rerun the masks stage)")
        whole_by_tile = {}
        for tile, label_id, whole in zip(table["tile"], table["label"], table["whole"]):
            if _truthy(whole):
                whole_by_tile.setdefault(int(tile), set()).add(int(label_id))
    out = []
    for path in paths:
        match = re.search(r"(\d+)$", path.stem)
        index = int(match.group(1)) if match else len(out)
        whole = frozenset(whole_by_tile.get(index, set())) if whole_by_tile is not None else None
        out.append(FakeMask(index=index, source=path, whole_labels=whole))
    return out


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


# --------------------------------------------------------------------------- translators


class GanTranslator:
    """Mask -> micrograph with a trained generator (whole tiles, padded to a multiple of 4)."""

    def __init__(self, generator: Any, device: Any = "cpu", bf16: bool = False, batch_size: int = 4) -> None:
        self.generator = generator
        self.device = device
        self.bf16 = bf16
        self.batch_size = batch_size

    def __call__(self, instances: Sequence[np.ndarray], rngs: Sequence[np.random.Generator]) -> list[np.ndarray]:
        masks = [(inst > 0).astype(np.float32) for inst in instances]
        return _apply_generator(self.generator, masks, self.device, self.bf16, self.batch_size)


class RenderTranslator:
    """Mask -> micrograph with the physics-inspired SEM renderer (:mod:`nanoseg.render`).

    With a :class:`nanoseg.render.SubstrateBank`, each image gets a real substrate quilted from
    the micrographs' own particle-free areas instead of the synthetic one.
    """

    def __init__(self, params: Any, substrate: Any = None, variation: float = 0.0) -> None:
        self.params = params
        self.substrate = substrate
        self.variation = variation

    def __call__(self, instances: Sequence[np.ndarray], rngs: Sequence[np.random.Generator]) -> list[np.ndarray]:
        from nanoseg.render import render_sem, vary_params

        out = []
        for inst, rng in zip(instances, rngs):
            substrate = self.substrate.compose(inst.shape, rng) if self.substrate is not None else None
            params = vary_params(self.params, self.variation, rng)
            out.append(np.clip(np.asarray(render_sem(inst, params, rng, substrate=substrate), np.float32), 0, 1))
        return out


def _apply_generator(generator: Any, arrays: Sequence[np.ndarray], device: Any, bf16: bool, batch_size: int) -> list[np.ndarray]:
    """Run a fully convolutional generator on [0, 1] arrays of any shape; same-shape ones are batched."""
    import torch

    from nanoseg.runtime import autocast

    generator.eval()
    out: list[np.ndarray | None] = [None] * len(arrays)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, arr in enumerate(arrays):
        by_shape.setdefault(arr.shape, []).append(i)
    for (h, w), idxs in by_shape.items():
        pad_y, pad_x = (-h) % 4, (-w) % 4
        for start in range(0, len(idxs), batch_size):
            chunk = idxs[start:start + batch_size]
            batch = np.stack([arrays[i] for i in chunk])
            if pad_y or pad_x:
                batch = np.pad(batch, ((0, 0), (0, pad_y), (0, pad_x)), mode="reflect")
            with torch.no_grad(), autocast(device, bf16):
                result = from_net(generator(to_net(batch, device)))
            for i, res in zip(chunk, result):
                out[i] = res[:h, :w]
    return out  # type: ignore[return-value]


def load_translator(translate_dir: str | Path, cfg: Any, device: Any = "cpu") -> GanTranslator | RenderTranslator:
    """The translator a finished translate stage left in ``translate_dir``, per ``cfg.method``."""
    translate_dir = Path(translate_dir)
    if cfg.method == "render":
        path = translate_dir / RENDERER
        if not path.is_file():
            raise NanosegError(f"{path}: renderer parameters not found (run the translate stage first)")
        from nanoseg.render import RenderParams, SubstrateBank

        # The translate stage writes the patches only when the real substrate was asked for and found.
        bank_path = translate_dir / SUBSTRATE
        substrate = SubstrateBank.load(bank_path) if bank_path.is_file() else None
        return RenderTranslator(_params_from_json(RenderParams, json.loads(path.read_text())), substrate,
                                cfg.render_variation)
    from nanoseg import nets

    generator, _ = nets.load(translate_dir / MASK_TO_IMAGE, device)
    return GanTranslator(generator, device, bf16=cfg.bf16, batch_size=max(1, cfg.batch_size))


def _params_to_json(params: Any) -> dict[str, Any]:
    if hasattr(params, "to_dict"):
        return params.to_dict()
    import dataclasses

    if dataclasses.is_dataclass(params):
        return dataclasses.asdict(params)
    return dict(params)


def _params_from_json(cls: Any, data: dict[str, Any]) -> Any:
    if hasattr(cls, "from_dict"):
        return cls.from_dict(data)
    return cls(**data)


# --------------------------------------------------------------------------- pairs


def _crop_and_flip(fm: FakeMask, instances: np.ndarray, rng: np.random.Generator,
                   crop_fraction: float = 0.75) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """A random crop (fixed size, multiple of 4) with random flips; particles cut by it are not whole."""
    h, w = instances.shape
    ch = max(4, int(h * crop_fraction) // 4 * 4)
    cw = max(4, int(w * crop_fraction) // 4 * 4)
    y = int(rng.integers(h - ch + 1))
    x = int(rng.integers(w - cw + 1))
    flip_y, flip_x = bool(rng.integers(2)), bool(rng.integers(2))
    inst = instances[y:y + ch, x:x + cw]
    whole = fm.whole_pixels(instances)[y:y + ch, x:x + cw] & ~np.isin(inst, border_labels(inst))
    if flip_y:
        inst, whole = inst[::-1], whole[::-1]
    if flip_x:
        inst, whole = inst[:, ::-1], whole[:, ::-1]
    info = {"crop_y": y, "crop_x": x, "flip_y": int(flip_y), "flip_x": int(flip_x)}
    return np.ascontiguousarray(inst), np.ascontiguousarray(whole), info


def iter_pairs(
    fake_masks: Sequence[FakeMask],
    translator: Any,
    n_pairs: int,
    seed: int = 0,
    method: str = "li",
    batch_size: int = 4,
) -> Iterator[dict[str, Any]]:
    """Yield training pairs on the fly: translate fake masks, filter artifacts, align the targets.

    The first ``len(fake_masks)`` pairs use the whole tiles; after that the masks are reused
    with random crops (3/4 of the tile) and flips. Each pair's randomness comes from
    ``(seed, pair index)``, so a pair does not depend on how many were made before it.

    Parameters
    ----------
    fake_masks : sequence of FakeMask
        From :func:`load_fake_masks`.
    translator : callable
        ``translator(instances_list, rngs) -> images_list`` ([0, 1] float, bright particles),
        e.g. :class:`GanTranslator` or :class:`RenderTranslator`.
    n_pairs : int
        Number of pairs to yield.
    seed : int
        Seed of the crops, flips and renderer noise.
    method : str
        Threshold of :func:`filter_artifacts`.
    batch_size : int
        Masks translated together.

    Yields
    ------
    dict
        ``image`` (float32 [0, 1]), ``instances`` (int32; 4-connected labels of ``binary``),
        ``binary`` (uint8 0/1), ``whole`` (uint8 0/1 per pixel), and bookkeeping: ``pair``,
        ``source_tile``, ``n_instances``, ``n_dropped``, ``dropped_labels``, crop/flip info.
    """
    from skimage.measure import label

    if not fake_masks:
        raise NanosegError("translate: no fake masks to translate (run the masks stage first)")
    n_masks = len(fake_masks)
    for start in range(0, n_pairs, batch_size):
        idxs = range(start, min(n_pairs, start + batch_size))
        rngs = [np.random.default_rng([seed, i]) for i in idxs]
        insts, wholes, infos = [], [], []
        for i, rng in zip(idxs, rngs):
            fm = fake_masks[i % n_masks]
            inst = fm.instances
            if i < n_masks:
                whole = fm.whole_pixels(inst)
                info = {"crop_y": 0, "crop_x": 0, "flip_y": 0, "flip_x": 0}
            else:
                inst, whole, info = _crop_and_flip(fm, inst, rng)
            insts.append(inst)
            wholes.append(whole)
            infos.append({"source_tile": fm.index, **info})
        images = translator(insts, rngs)
        for i, inst, whole, info, image in zip(idxs, insts, wholes, infos, images):
            kept, dropped = filter_artifacts(image, inst, method=method)
            binary = kept > 0
            # Relabel so that the instances are exactly the 4-connected components of the binary
            # mask (a crop can split one particle into pieces).
            instances = label(binary, connectivity=1).astype(np.int32)
            n_before = int(len(np.unique(inst)) - (1 if (inst == 0).any() else 0))
            yield {
                "pair": i,
                "image": np.asarray(image, dtype=np.float32),
                "instances": instances,
                "binary": binary.astype(np.uint8),
                "whole": (whole & binary).astype(np.uint8),
                "n_instances": int(instances.max()),
                "n_before_filter": n_before,
                "n_dropped": len(dropped),
                "dropped_labels": dropped,
                **info,
            }


def write_pair(pairs_dir: str | Path, pair: dict[str, Any], fmt: str = "npz") -> list[Path]:
    """Write one pair as ``pair_XXXX.npz`` (compressed; what the later stages read).

    With ``fmt='tiff'`` the four arrays are also written as ``tiff/pair_XXXX_<key>.tif`` for
    other tools (Fiji, napari).
    """
    pairs_dir = Path(pairs_dir)
    stem = f"pair_{pair['pair']:04d}"
    arrays = {"image": pair["image"].astype(np.float32), "instances": pair["instances"].astype(np.int32),
              "binary": pair["binary"].astype(np.uint8), "whole": pair["whole"].astype(np.uint8)}
    path = pairs_dir / f"{stem}.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    written = [path]
    if fmt == "tiff":
        from nanoseg.io import write_tiff

        written += [write_tiff(pairs_dir / "tiff" / f"{stem}_{key}.tif", arr) for key, arr in arrays.items()]
    return written


def read_pair(pairs_dir: str | Path, index: int) -> dict[str, np.ndarray]:
    """Read pair ``index`` written by :func:`write_pair`: ``image``, ``instances``, ``binary``, ``whole``."""
    path = Path(pairs_dir) / f"pair_{index:04d}.npz"
    if not path.is_file():
        raise NanosegError(f"{path}: training pair not found (run the pairs stage / `nanoseg translate generate`)")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def overlay(image: np.ndarray, instances: np.ndarray, whole: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 image with instance contours: green for whole particles, red for the others."""
    from skimage.segmentation import find_boundaries

    gray = np.clip(image, 0, 1)
    rgb = np.repeat((gray * 255).astype(np.uint8)[..., None], 3, axis=2)
    edges = find_boundaries(instances, mode="inner")
    whole_edges = edges & (whole > 0) if whole is not None else np.zeros_like(edges)
    rgb[edges & ~whole_edges] = (255, 40, 40)
    rgb[whole_edges] = (40, 230, 40)
    return rgb


def write_contact_sheet(pairs: Sequence[dict[str, Any]], path: str | Path, n_cols: int = 3, panel_px: int = 384) -> None:
    """Overlay contact sheet of up to ``n_cols**2`` pairs (full-resolution top-left crops)."""
    from nanoseg.io import write_png

    pairs = list(pairs)[: n_cols * n_cols]
    if not pairs:
        return
    ph = min(panel_px, max(p["image"].shape[0] for p in pairs))
    pw = min(panel_px, max(p["image"].shape[1] for p in pairs))
    n_rows = math.ceil(len(pairs) / n_cols)
    sheet = np.full((n_rows * (ph + 4), min(n_cols, len(pairs)) * (pw + 4), 3), 255, np.uint8)
    for k, p in enumerate(pairs):
        rgb = overlay(p["image"], p["instances"], p["whole"])[:ph, :pw]
        r, c = divmod(k, n_cols)
        sheet[r * (ph + 4): r * (ph + 4) + rgb.shape[0], c * (pw + 4): c * (pw + 4) + rgb.shape[1]] = rgb
    write_png(path, sheet)


def generate_pairs(
    fake_masks: Sequence[FakeMask],
    translator: Any,
    out_dir: str | Path,
    n_pairs: int,
    seed: int = 0,
    method: str = "li",
    fmt: str = "npz",
    batch_size: int = 4,
) -> dict[str, Any]:
    """Write ``n_pairs`` pairs, ``manifest.csv``, ``filter.json`` and ``contact_sheet.png`` into ``out_dir``.

    Returns
    -------
    dict
        The filter summary written to ``filter.json``.
    """
    from nanoseg.runtime import progress

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, per_pair, sheet = [], [], []
    columns = ("pair", "file", "source_tile", "height", "width", "n_instances", "n_whole", "n_before_filter",
               "n_dropped", "crop_y", "crop_x", "flip_y", "flip_x")
    pairs = iter_pairs(fake_masks, translator, n_pairs, seed=seed, method=method, batch_size=batch_size)
    for pair in progress(pairs, total=n_pairs, desc="pairs"):
        files = write_pair(out_dir, pair, fmt)
        from skimage.measure import label

        n_whole = int(label(pair["whole"], connectivity=1).max())
        rows.append({"pair": pair["pair"], "file": files[0].name,
                     "source_tile": pair["source_tile"], "height": pair["image"].shape[0], "width": pair["image"].shape[1],
                     "n_instances": pair["n_instances"], "n_whole": n_whole, "n_before_filter": pair["n_before_filter"],
                     "n_dropped": pair["n_dropped"], "crop_y": pair["crop_y"], "crop_x": pair["crop_x"],
                     "flip_y": pair["flip_y"], "flip_x": pair["flip_x"]})
        per_pair.append({"pair": pair["pair"], "source_tile": pair["source_tile"], "n_before_filter": pair["n_before_filter"],
                         "n_dropped": pair["n_dropped"], "dropped_labels": pair["dropped_labels"]})
        if len(sheet) < 9:
            sheet.append(pair)
    buf = _stdio.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "manifest.csv", buf.getvalue())
    total_before = sum(p["n_before_filter"] for p in per_pair)
    total_dropped = sum(p["n_dropped"] for p in per_pair)
    summary = {"threshold_method": method, "n_pairs": len(per_pair), "instances_before_filter": total_before,
               "instances_dropped": total_dropped,
               "dropped_fraction": round(total_dropped / total_before, 4) if total_before else 0.0, "pairs": per_pair}
    write_json(out_dir / "filter.json", summary)
    write_contact_sheet(sheet, out_dir / "contact_sheet.png")
    logger.info("pairs: %d pairs, artifact filter (%s) dropped %d of %d instances", len(per_pair), method,
                total_dropped, total_before)
    return summary


# --------------------------------------------------------------------------- GAN segmentation


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
    return _apply_generator(generator, [image], device, bf16, 1)[0]


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


# --------------------------------------------------------------------------- stages


def _median_pixel_size(micrographs: Sequence[Any]) -> float | None:
    sizes = [m.pixel_size_nm for m in micrographs if m.pixel_size_nm is not None]
    return float(np.median(sizes)) if sizes else None


def fit_renderer(images: Sequence[np.ndarray], fake_masks: Sequence[FakeMask], out_dir: str | Path, seed: int = 0,
                 substrate: str = "real") -> Any:
    """Fit the SEM renderer to real micrographs; write ``renderer.json`` and ``renderer_sample.png``.

    With ``substrate='real'`` the micrographs' particle-free patches go to ``substrate.npz``
    (the synthetic substrate is used, with a warning, when no micrograph has any).
    """
    from nanoseg.io import write_png
    from nanoseg.render import SubstrateBank, fit_render_params

    out_dir = Path(out_dir)
    params = fit_render_params(list(images), seed=seed)
    write_json(out_dir / RENDERER, _params_to_json(params))
    bank = None
    if substrate == "real":
        bank = SubstrateBank.from_images(list(images), seed=seed)
        if bank is None:
            logger.warning("translate: no particle-free patch in any micrograph; the renderer draws a synthetic "
                           "substrate instead (set translate.substrate=synthetic to silence this)")
        else:
            logger.info("translate: %d substrate patches from %d micrographs", sum(len(p) for p in bank.patches),
                        len(bank.patches))
            bank.save(out_dir / SUBSTRATE)
    translator = RenderTranslator(params, bank)
    samples = [fm.instances for fm in fake_masks[:2]]
    rendered = translator(samples, [np.random.default_rng([seed, i]) for i in range(len(samples))])
    rows = [np.concatenate([(inst > 0).astype(np.float32), img], axis=1) for inst, img in zip(samples, rendered)]
    rows.append(_fit_width(np.asarray(images[0], np.float32), rows[0].shape[1]))
    write_png(out_dir / "renderer_sample.png", np.concatenate(rows, axis=0))
    return params


def _fit_width(image: np.ndarray, width: int) -> np.ndarray:
    if image.shape[1] >= width:
        return image[:, :width]
    return np.pad(image, ((0, 0), (0, width - image.shape[1])), constant_values=1.0)


def train_translator(config: Any, masks_dir: str | Path, out_dir: str | Path, device: Any = "cpu") -> None:
    """Train the CycleGAN or fit the SEM renderer (per ``config.translate.method``) into ``out_dir``.

    Parameters
    ----------
    config : nanoseg.config.Config
        Uses ``data`` (the real micrographs), ``translate`` and ``seed``.
    masks_dir : path
        Output folder of the masks stage (``mask_*.tif``).
    out_dir : path
        Gets the generators (or ``renderer.json``), checkpoints, loss log, plots and samples.
    device : torch.device or str
    """
    from nanoseg.io import load_micrographs
    from nanoseg.runtime import seed_everything

    cfg = config.translate
    rng = seed_everything(config.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    micrographs = load_micrographs(config.data)
    if not micrographs:
        raise NanosegError(f"data.images: no micrographs found in {config.data.images}")
    fake_masks = load_fake_masks(masks_dir)
    images = [m.image for m in micrographs]
    if cfg.method == "render":
        fit_renderer(images, fake_masks, out_dir, seed=config.seed, substrate=cfg.substrate)
        return
    meta = {"pixel_size_nm": _median_pixel_size(micrographs), "dark_particles_inverted": config.data.dark_particles}
    # A random subset of the tiles gives enough variety for random crops and bounds the memory.
    chosen = np.sort(rng.choice(len(fake_masks), size=min(len(fake_masks), MAX_TRAIN_MASKS), replace=False))
    masks = [fake_masks[int(i)].instances > 0 for i in chosen]
    train_cyclegan(masks, images, cfg, out_dir, device, rng, meta)


def make_pairs(config: Any, masks_dir: str | Path, translate_dir: str | Path, out_dir: str | Path, device: Any = "cpu",
               n_pairs: int | None = None) -> dict[str, Any]:
    """Translate the fake masks of ``masks_dir`` with the translator in ``translate_dir``; write pairs.

    Returns the artifact-filter summary (also written to ``out_dir/filter.json``).
    """
    cfg = config.translate
    fake_masks = load_fake_masks(masks_dir)
    translator = load_translator(translate_dir, cfg, device)
    summary = generate_pairs(fake_masks, translator, out_dir, n_pairs or cfg.n_pairs, seed=config.seed,
                             method=cfg.artifact_threshold, fmt=cfg.pair_format, batch_size=max(1, cfg.batch_size))
    if cfg.realism_steps > 0 and config.data.images is not None:
        write_realism(config, out_dir, device)
    return summary


#: Fake micrographs compared with the real ones by :func:`write_realism` (more add little).
_REALISM_MAX_PAIRS = 40


def write_realism(config: Any, pairs_dir: str | Path, device: Any = "cpu") -> dict[str, Any] | None:
    """Score how real the written pairs' micrographs look (:mod:`nanoseg.realism`); ``realism.json``.

    Returns None (and writes nothing) when the micrographs or pairs are too small for the tiles.
    """
    from nanoseg.io import load_micrographs
    from nanoseg.realism import realism_scores

    pairs_dir = Path(pairs_dir)
    real = [mg.image for mg in load_micrographs(config.data)]
    fakes = []
    for path in sorted(pairs_dir.glob("pair_*.npz"))[:_REALISM_MAX_PAIRS]:
        with np.load(path) as pair:
            fakes.append(pair["image"])
    tile_px = min(64, *(min(im.shape) for im in real + fakes)) if real and fakes else 0
    if tile_px < 16:
        logger.warning("pairs: micrographs too small to score the fakes' realism; skipped")
        return None
    scores = realism_scores(real, fakes, tile_px=tile_px, steps=config.translate.realism_steps, seed=config.seed,
                            device=device)
    scores["translator"] = config.translate.method
    write_json(pairs_dir / "realism.json", scores)
    return scores


def run_train_stage(ctx: Any) -> None:
    """Stage ``translate``: train the CycleGAN or fit the SEM renderer (per ``translate.method``)."""
    train_translator(ctx.config, ctx.stage_dir("masks"), ctx.out_dir, ctx.device)


def run_pairs_stage(ctx: Any) -> None:
    """Stage ``pairs``: translate every fake mask, filter artifacts, write the training pairs."""
    make_pairs(ctx.config, ctx.stage_dir("masks"), ctx.stage_dir("translate"), ctx.out_dir, ctx.device)
