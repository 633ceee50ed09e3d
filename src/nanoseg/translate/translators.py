"""The translators of stage 4 (fake mask -> fake micrograph) and the fitting of the SEM renderer.

:class:`GanTranslator` runs the CycleGAN's trained mask -> image generator,
:class:`RenderTranslator` the physics-inspired SEM renderer (:mod:`nanoseg.translate.render`), optionally
on real substrate patches, and :class:`RefineTranslator` the renderer followed by a CycleGAN
generator trained rendered -> real (``translate.method=refine``). :func:`fit_renderer` is stage
3 with ``translate.method=render`` (and its first half with ``refine``); it writes what
:func:`load_renderer` and :func:`load_translator` read back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg import nets
from nanoseg.atomic import write_json
from nanoseg.errors import NanosegError
from nanoseg.io import write_png
from nanoseg.translate.cyclegan import MASK_TO_IMAGE, apply_generator
from nanoseg.translate.fakemasks import FakeMask
from nanoseg.translate.render import RenderParams, SubstrateBank, render_sem, vary_params
from nanoseg.translate.render_fit import fit_render_params

logger = logging.getLogger("nanoseg.translate")

RENDERER = "renderer.json"
SUBSTRATE = "substrate.npz"


class GanTranslator:
    """Mask -> micrograph with a trained generator (whole tiles, padded to a multiple of 4)."""

    def __init__(self, generator: Any, device: Any = "cpu", bf16: bool = False, batch_size: int = 4) -> None:
        self.generator = generator
        self.device = device
        self.bf16 = bf16
        self.batch_size = batch_size

    def __call__(self, instances: Sequence[np.ndarray], rngs: Sequence[np.random.Generator]) -> list[np.ndarray]:
        masks = [(inst > 0).astype(np.float32) for inst in instances]
        return apply_generator(self.generator, masks, self.device, self.bf16, self.batch_size)


class RenderTranslator:
    """Mask -> micrograph with the physics-inspired SEM renderer (:mod:`nanoseg.translate.render`).

    With a :class:`nanoseg.translate.render.SubstrateBank`, each image gets a real substrate quilted from
    the micrographs' own particle-free areas instead of the synthetic one.
    """

    def __init__(self, params: Any, substrate: Any = None, variation: float = 0.0) -> None:
        self.params = params
        self.substrate = substrate
        self.variation = variation

    def __call__(self, instances: Sequence[np.ndarray], rngs: Sequence[np.random.Generator]) -> list[np.ndarray]:
        out = []
        for inst, rng in zip(instances, rngs):
            substrate = self.substrate.compose(inst.shape, rng) if self.substrate is not None else None
            params = vary_params(self.params, self.variation, rng)
            out.append(np.clip(np.asarray(render_sem(inst, params, rng, substrate=substrate), np.float32), 0, 1))
        return out


class RefineTranslator(GanTranslator):
    """Mask -> rendered micrograph -> refined micrograph (renderer, then a trained generator)."""

    def __init__(self, render: RenderTranslator, generator: Any, device: Any = "cpu", bf16: bool = False,
                 batch_size: int = 4) -> None:
        super().__init__(generator, device, bf16, batch_size)
        self.render = render

    def __call__(self, instances: Sequence[np.ndarray], rngs: Sequence[np.random.Generator]) -> list[np.ndarray]:
        return apply_generator(self.generator, self.render(instances, rngs), self.device, self.bf16, self.batch_size)


def load_renderer(translate_dir: str | Path, cfg: Any) -> RenderTranslator:
    """The SEM renderer fitted by the translate stage in ``translate_dir`` (with its real substrate, if any)."""
    path = Path(translate_dir) / RENDERER
    if not path.is_file():
        raise NanosegError(f"{path}: renderer parameters not found (run the translate stage first)")
    # The translate stage writes the patches only when the real substrate was asked for and found.
    bank_path = Path(translate_dir) / SUBSTRATE
    substrate = SubstrateBank.load(bank_path) if bank_path.is_file() else None
    return RenderTranslator(_params_from_json(RenderParams, json.loads(path.read_text())), substrate,
                            cfg.render_variation)


def load_translator(translate_dir: str | Path, cfg: Any,
                    device: Any = "cpu") -> GanTranslator | RenderTranslator | RefineTranslator:
    """The translator a finished translate stage left in ``translate_dir``, per ``cfg.method``."""
    translate_dir = Path(translate_dir)
    if cfg.method == "render":
        return load_renderer(translate_dir, cfg)

    generator, _ = nets.load(translate_dir / MASK_TO_IMAGE, device, kind="translator")
    if cfg.method == "refine":
        return RefineTranslator(load_renderer(translate_dir, cfg), generator, device, bf16=cfg.bf16,
                                batch_size=max(1, cfg.batch_size))
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


def fit_renderer(images: Sequence[np.ndarray], fake_masks: Sequence[FakeMask], out_dir: str | Path, seed: int = 0,
                 substrate: str = "real", contrast: str = "se") -> Any:
    """Fit the renderer to real micrographs; write ``renderer.json`` and ``renderer_sample.png``.

    ``contrast`` is what the micrographs show: 'se' or 'transmission'
    (:attr:`nanoseg.translate.render.RenderParams.contrast`). With ``substrate='real'`` the micrographs' particle-free patches go to ``substrate.npz``
    (the synthetic substrate is used, with a warning, when no micrograph has any).
    """
    out_dir = Path(out_dir)
    params = fit_render_params(list(images), seed=seed, contrast=contrast)
    logger.info("translate: renderer fitted for %s contrast", "transmission" if contrast == "transmission" else "SE")
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
