"""The CycleGAN of stage 3: its tensors, image pool, model, training loop and saved generators.

Domain A holds fake binary masks, domain B real micrographs (Zhu et al. 2017). This module
holds the conversion between [0, 1] numpy images
and the networks' [-1, 1] tensors (:func:`to_net`, :func:`from_net`), running a trained
generator on whole images of any size (:func:`apply_generator`), the image pool of past fakes
(:class:`ImagePool`), the two generators and two discriminators with their optimisers
(:class:`CycleGAN`) and the resumable training loop (:func:`train_cyclegan`) with its loss log,
loss plot and sample grids. torch is imported inside the functions that need it.
"""

from __future__ import annotations

import csv
import io as _stdio
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg import nets
from nanoseg.atomic import write_text
from nanoseg.checkpoint import fingerprint, load_checkpoint, restore_rng, rng_from_json, rng_to_json, save_checkpoint
from nanoseg.errors import NanosegError
from nanoseg.io import write_png
from nanoseg.plots import LossPanel, plot_losses
from nanoseg.runtime import autocast, progress
from nanoseg.tiles import random_tiles

logger = logging.getLogger("nanoseg.translate")

CHECKPOINT = "checkpoint.pt"
MASK_TO_IMAGE = "mask_to_image.pt"
IMAGE_TO_MASK = "image_to_mask.pt"
_LOSS_KEYS = ("loss_g", "adv_a2b", "adv_b2a", "cycle_a", "cycle_b", "idt_a", "idt_b", "loss_d_a", "loss_d_b")
#: The panels of ``losses.png`` (running means of the loss terms).
LOSS_PLOT = (LossPanel({k: k for k in ("adv_a2b", "adv_b2a")}, title="generators"),
             LossPanel({k: k for k in ("cycle_a", "cycle_b", "idt_a", "idt_b")}, title="cycle / identity"),
             LossPanel({k: k for k in ("loss_d_a", "loss_d_b")}, title="discriminators"))


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
        return {"images": stacked, "rng": rng_to_json(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.images = [t.unsqueeze(0) for t in state["images"]] if state["images"].numel() else []
        rng_from_json(self.rng, state["rng"])


def to_net(batch: np.ndarray, device: Any) -> Any:
    """A batch as the generators take it: (N, H, W) [0, 1] numpy -> (N, 1, H, W) [-1, 1] float32 tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32) * 2 - 1).unsqueeze(1).to(device)


def from_net(tensor: Any) -> np.ndarray:
    """The inverse of :func:`to_net`: (N, 1, H, W) [-1, 1] tensor -> (N, H, W) [0, 1] float32 numpy."""
    return np.clip((tensor.detach().float().cpu().numpy()[:, 0] + 1) / 2, 0, 1).astype(np.float32)


def apply_generator(generator: Any, arrays: Sequence[np.ndarray], device: Any, bf16: bool, batch_size: int) -> list[np.ndarray]:
    """Run a fully convolutional generator on [0, 1] arrays of any shape; same-shape ones are batched.

    Each array is reflection-padded to a multiple of 4 px and the result cropped back; the
    outputs are (H, W) float32 arrays in [0, 1], in the order of ``arrays``.
    """
    import torch


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


        self.cfg = cfg
        self.device = torch.device(device)
        rng = rng if rng is not None else np.random.default_rng()
        gen = {"in_channels": 1, "out_channels": 1, "width": cfg.generator_width, "n_res_blocks": cfg.n_res_blocks,
               "skip": cfg.generator_skip, "upsample": cfg.generator_upsample}
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
            adv_a2b = self._lsgan(self.d_b(fake_b), True)
            adv_b2a = self._lsgan(self.d_a(fake_a), True)
            cycle_a = self._l1(rec_a, real_a)
            cycle_b = self._l1(rec_b, real_b)
            loss_g = adv_a2b + adv_b2a + cfg.cycle_weight * (cycle_a + cycle_b)
            if cfg.identity_weight > 0:
                # A generator fed an image of its target domain should leave it unchanged.
                idt_a = self._l1(self.g_ba(real_a), real_a)
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
            loss_d_b = 0.5 * (self._lsgan(self.d_b(real_b), True) + self._lsgan(self.d_b(pooled_b), False))
            loss_d_a = 0.5 * (self._lsgan(self.d_a(real_a), True) + self._lsgan(self.d_a(pooled_a), False))
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


        net = self.g_ab if direction == "a2b" else self.g_ba
        net.eval()
        with torch.no_grad(), autocast(self.device, self.cfg.bf16):
            return from_net(net(to_net(batch, self.device)))

    def state_dict(self) -> dict[str, Any]:
        """The training state, laid out as :func:`nanoseg.checkpoint.save_checkpoint` takes it."""
        return {
            "step": self.step,
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "optimizers": {"g": self.opt_g.state_dict(), "d": self.opt_d.state_dict()},
            "schedulers": {"g": self.sched_g.state_dict(), "d": self.sched_d.state_dict()},
            "extra": {"pool_a": self.pool_a.state_dict(), "pool_b": self.pool_b.state_dict()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` gave (a loaded checkpoint); not the random state."""
        self.step = int(state["step"])
        for key, net in self.nets.items():
            net.load_state_dict(state["nets"][key])
        self.opt_g.load_state_dict(state["optimizers"]["g"])
        self.opt_d.load_state_dict(state["optimizers"]["d"])
        self.sched_g.load_state_dict(state["schedulers"]["g"])
        self.sched_d.load_state_dict(state["schedulers"]["d"])
        self.pool_a.load_state_dict(state["extra"]["pool_a"])
        self.pool_b.load_state_dict(state["extra"]["pool_b"])


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


#: The settings that change what :func:`train_cyclegan` learns (not ``steps``: more steps resume).
TRAINING_SETTINGS = ("tile_size_px", "generator_width", "discriminator_width", "n_res_blocks", "batch_size",
                     "learning_rate", "decay_start_fraction", "pool_size", "cycle_weight", "identity_weight",
                     "generator_skip", "generator_upsample", "bf16")


def training_fingerprint(masks: Sequence[np.ndarray], images: Sequence[np.ndarray], cfg: Any, binary_a: bool) -> str:
    """Hash of what :func:`train_cyclegan` learns from: both domains' pixels and :data:`TRAINING_SETTINGS`.

    A checkpoint (or generators saved by a finished run) is resumed only under the same one.
    """
    return fingerprint("translate", {k: getattr(cfg, k) for k in TRAINING_SETTINGS}, bool(binary_a),
                       [np.asarray(m) for m in masks], [np.asarray(im) for im in images])


def train_cyclegan(
    masks: Sequence[np.ndarray],
    images: Sequence[np.ndarray],
    cfg: Any,
    out_dir: str | Path,
    device: Any = "cpu",
    rng: np.random.Generator | None = None,
    meta: dict[str, Any] | None = None,
    binary_a: bool = True,
) -> CycleGAN:
    """Train a CycleGAN between fake masks and real micrographs; resumes from ``out_dir``.

    Parameters
    ----------
    masks : sequence of (H, W) arrays
        Domain A: fake binary masks (bool or 0/1), or with ``binary_a=False`` images in
        [0, 1] (rendered fake micrographs: the generator then only learns what the renderer
        misses).
    images : sequence of (H, W) float arrays in [0, 1]
        Real micrographs, info bar cropped, particles bright.
    cfg : nanoseg.config.TranslateConfig
    out_dir : path
        Gets ``checkpoint.pt`` (every ``cfg.checkpoint_every`` steps; removed at the end; resumed
        only when made from the same data and settings, :func:`training_fingerprint`),
        ``losses.csv``, ``losses.png``, ``samples/step_XXXXXX.png``, and finally
        ``mask_to_image.pt`` and ``image_to_mask.pt``.
    device : torch.device or str
    rng : numpy.random.Generator, optional
        Random source of tile crops and pools.
    meta : dict, optional
        Extra metadata saved with the generators.
    binary_a : bool
        Whether domain A is binary (kept as bool to save memory) or grey.

    Returns
    -------
    CycleGAN
        The trained model.
    """


    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = rng if rng is not None else np.random.default_rng()
    if not masks:
        raise NanosegError("translate: no fake masks to train on (run the masks stage first)")
    if not images:
        raise NanosegError("translate: no real micrographs to train on (check data.images)")
    # Binary masks as bool: 1/4 of the memory of float32.
    masks = [np.asarray(m) > 0 if binary_a else np.asarray(m, dtype=np.float32) for m in masks]
    images = [np.asarray(im, dtype=np.float32) for im in images]
    tile = cfg.tile_size_px
    # Fixed tiles for the sample grids, drawn before any resume so they are the same each time.
    sample_a = random_tiles(masks, 4, tile, rng, augment=True, small="pad")
    sample_b = random_tiles(images, 4, tile, rng, augment=True, small="pad")
    model = CycleGAN(cfg, device, rng)
    ckpt_path = out_dir / CHECKPOINT
    fp = training_fingerprint(masks, images, cfg, binary_a)
    log: list[dict[str, float]] = []
    if not ckpt_path.is_file() and (out_dir / MASK_TO_IMAGE).is_file() and (out_dir / IMAGE_TO_MASK).is_file():
        # Killed after the final save but before the stage was marked done: nothing to redo.
        saved = [nets.load(out_dir / name, model.device, kind="translator") for name in (MASK_TO_IMAGE, IMAGE_TO_MASK)]
        if all(meta_.get("training_fingerprint") == fp for _, meta_ in saved):
            for net, (trained, _) in zip((model.g_ab, model.g_ba), saved):
                net.load_state_dict(trained.state_dict())
            model.step = cfg.steps
            logger.info("translate: generators already trained in %s", out_dir)
            return model
        logger.warning("translate: the generators in %s were trained on other data or settings; training afresh",
                       out_dir)
    state = load_checkpoint(ckpt_path, fp, what="translate", map_location=model.device)
    if state is not None:
        model.load_state_dict(state)
        restore_rng(state, rng)
        log = [row for row in _read_loss_log(out_dir / "losses.csv") if row["step"] <= model.step]
        logger.info("translate: resuming CycleGAN training at step %d of %d", model.step, cfg.steps)

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, fingerprint=fp, rng=rng, **model.state_dict())
        _write_loss_log(out_dir / "losses.csv", log)
        plot_losses(log, out_dir / "losses.png", LOSS_PLOT, smooth=True)
        write_sample_grid(model, sample_a, sample_b, out_dir / "samples" / f"step_{model.step:06d}.png")

    bar = progress(range(model.step, cfg.steps), total=cfg.steps - model.step, desc="CycleGAN")
    for _ in bar:
        real_a = to_net(random_tiles(masks, cfg.batch_size, tile, rng, augment=True, small="pad"), model.device)
        real_b = to_net(random_tiles(images, cfg.batch_size, tile, rng, augment=True, small="pad"), model.device)
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
                 "particles": "bright", **(meta or {}), "training_fingerprint": fp}
    source = "binary mask" if binary_a else "rendered micrograph"
    nets.save(model.g_ab, out_dir / MASK_TO_IMAGE, {**base_meta, "input": source, "output": "micrograph"},
              kind="translator")
    nets.save(model.g_ba, out_dir / IMAGE_TO_MASK, {**base_meta, "input": "micrograph", "output": "mask probability"},
              kind="translator")
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
    fake_b = model.translate(sample_a, "a2b")
    rec_a = model.translate(fake_b, "b2a")
    fake_a = model.translate(sample_b, "b2a")
    rec_b = model.translate(fake_a, "a2b")
    rows = [np.concatenate([sample_a[i], fake_b[i], rec_a[i], sample_b[i], fake_a[i], rec_b[i]], axis=1)
            for i in range(len(sample_a))]
    write_png(path, np.concatenate(rows, axis=0))
