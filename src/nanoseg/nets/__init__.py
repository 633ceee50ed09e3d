"""Network registry: a factory over named architectures whose constructor arguments are the saved config.

>>> net = create("unet", in_channels=1, out_channels=3, base_width=8)  # doctest: +SKIP
>>> save(net, "model.pt", meta={"pixel_size_nm": 7.34})              # doctest: +SKIP
>>> net, meta = load("model.pt")                                      # doctest: +SKIP

Each architecture lives in its own module and registers itself with :func:`register`; modules
are imported on first use, so importing this package imports no torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from nanoseg.errors import NanosegError

# name -> module that defines (and registers) it
_MODULES: dict[str, str] = {
    "unet": "nanoseg.nets.unet",
    "multiresunet": "nanoseg.nets.multiresunet",
    "wgan_generator": "nanoseg.nets.wgan",
    "wgan_critic": "nanoseg.nets.wgan",
    "resnet_generator": "nanoseg.nets.cyclegan",
    "patch_discriminator": "nanoseg.nets.cyclegan",
}
_REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator adding an ``nn.Module`` subclass to the registry under ``name``."""

    def deco(cls: type) -> type:
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return deco


def available() -> list[str]:
    """Names of all known architectures."""
    return sorted(_MODULES)


def get(name: str) -> type:
    """The class registered under ``name`` (its module is imported on first use)."""
    if name not in _REGISTRY:
        if name not in _MODULES:
            raise NanosegError(f"unknown network '{name}' (known: {', '.join(available())})")
        importlib.import_module(_MODULES[name])
    return _REGISTRY[name]


def create(name: str, **kwargs: Any) -> Any:
    """Build the network ``name`` and remember its constructor arguments for :func:`save`."""
    net = get(name)(**kwargs)
    net.init_kwargs = dict(kwargs)
    return net


def save(net: Any, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Save a network made by :func:`create` as a portable state dict with its config and metadata."""
    import torch

    from nanoseg.atomic import atomic_path

    payload = {
        "format": "nanoseg-net/1",
        "name": net.registry_name,
        "kwargs": net.init_kwargs,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "meta": dict(meta or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _payload(path: str | Path, device: Any, mmap: bool = False) -> dict[str, Any]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise NanosegError(f"{path}: model file not found (check the path, or train the model first)")
    try:
        payload = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises many types for corrupt files
        raise NanosegError(f"{path}: not a readable nanoseg model ({type(exc).__name__}); retrain or re-download it") from None
    if not isinstance(payload, dict) or payload.get("format") != "nanoseg-net/1":
        raise NanosegError(f"{path}: not a nanoseg model file (no 'nanoseg-net/1' header)")
    return payload


def load(path: str | Path, device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load a network saved by :func:`save`; returns ``(net in eval mode, meta)``."""
    payload = _payload(path, device)
    net = create(payload["name"], **payload["kwargs"])
    net.load_state_dict(payload["state_dict"])
    net.to(device).eval()
    return net, payload["meta"]


def load_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a network saved by :func:`save`, without building it or reading its weights
    (memory-mapped, so a process that only decides *how* to use a model stays small)."""
    return _payload(path, "cpu", mmap=True)["meta"]
