"""Network registry: a factory over named architectures whose constructor arguments are the saved config.

>>> net = create("unet", in_channels=1, out_channels=3, base_width=8)           # doctest: +SKIP
>>> save(net, "model.pt", meta={"target": "three_class"}, kind="segmenter")    # doctest: +SKIP
>>> net, meta = load("model.pt", kind="segmenter")                             # doctest: +SKIP

Each architecture lives in its own module and registers itself with :func:`register`; modules
are imported on first use, so importing this package imports no torch.

Every saved file says what it is (``meta['kind']``, one of :data:`KINDS`), and a loader that
names the kind it needs refuses another: a classifier given as a segmentation model (the
architecture is the same) would otherwise fail deep inside, or worse, run.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from nanoseg.atomic import atomic_path
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


#: What each kind of model file is called, and where it is given (for the message that refuses it elsewhere).
KINDS: dict[str, tuple[str, str]] = {
    "segmenter": ("segmentation model", "give it as --model"),
    "classifier": ("classifier", "give it as --classifier"),
    "translator": ("translator (a CycleGAN generator of the translate stage)",
                   "give it to `nanoseg translate generate` or `nanoseg translate segment`"),
    "shape-generator": ("shape generator (the WGAN of the shapes stage)", "give it to `nanoseg shapes sample`"),
}


def kind_of(meta: dict[str, Any]) -> str | None:
    """The kind of model a saved meta describes (a key of :data:`KINDS`), or None if it does not say.

    Files saved before the kind was recorded are recognised by the keys their meta always had.
    """
    if "kind" in meta:
        return meta["kind"]
    if "target" in meta:
        return "segmenter"
    if meta.get("task") == "classify":
        return "classifier"
    if "input" in meta and "output" in meta:
        return "translator"
    if "n_outlines" in meta:
        return "shape-generator"
    return None


def check_kind(path: str | Path, meta: dict[str, Any], kind: str) -> None:
    """Raise unless the model file ``path`` with ``meta`` is of ``kind`` (a key of :data:`KINDS`).

    Raises
    ------
    NanosegError
        Naming the file, what it is, and where it belongs instead.
    """
    found = kind_of(meta)
    if found == kind:
        return
    wanted = KINDS[kind][0]
    if found is None:
        raise NanosegError(f"{path}: this nanoseg model file does not say what it is (no 'kind' in its meta), so it "
                           f"cannot be used as a {wanted}; retrain it with this nanoseg version")
    what, where = KINDS.get(found, (f"'{found}' model", "it is not for this command"))
    raise NanosegError(f"{path} is a nanoseg {what}, not a {wanted}; {where}")


def save(net: Any, path: str | Path, meta: dict[str, Any] | None = None, *, kind: str) -> Path:
    """Save a network made by :func:`create` as a portable state dict with its config and metadata.

    Parameters
    ----------
    net : nn.Module
        Made by :func:`create`.
    path : path-like
        File to write (atomically).
    meta : dict, optional
        What a user of the model needs besides the weights (target, pixel size, threshold, ...).
    kind : str
        What the model is, a key of :data:`KINDS`; saved as ``meta['kind']``.
    """
    import torch


    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r} (known: {', '.join(KINDS)})")
    payload = {
        "format": "nanoseg-net/1",
        "name": net.registry_name,
        "kwargs": net.init_kwargs,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "meta": {**(meta or {}), "kind": kind},
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
    shapes = {"name": str, "kwargs": dict, "state_dict": dict, "meta": dict}
    broken = [key for key, type_ in shapes.items() if not isinstance(payload.get(key), type_)]
    if broken:
        raise NanosegError(f"{path}: nanoseg model file without a valid {', '.join(broken)}; the file is damaged or "
                           "from another nanoseg version: retrain or re-export it")
    return payload


def _weights_mismatch(expected: dict[str, Any], given: dict[str, Any]) -> str:
    """What differs between a network's state dict and the saved one ('' when they fit)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [k for k in expected if k in given
                and tuple(getattr(given[k], "shape", ())) != tuple(expected[k].shape)]
    parts = [f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in
             ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape")) if keys]
    return ", ".join(parts)


def _build(path: str | Path, payload: dict[str, Any]) -> Any:
    """The network a payload's settings describe, checked to fit its saved weights (not loaded yet)."""
    unfit = (f"{path}: weights do not fit the network its settings describe ({{}}); the file is damaged or from "
             "another nanoseg version: retrain or re-export it")
    try:
        net = create(payload["name"], **payload["kwargs"])
    except (TypeError, ValueError, NanosegError) as exc:
        raise NanosegError(unfit.format(f"{payload['name']}: {exc}")) from None
    problem = _weights_mismatch(net.state_dict(), payload["state_dict"])
    if problem:
        raise NanosegError(unfit.format(problem))
    return net


def load(path: str | Path, device: Any = "cpu", *, kind: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Load a network saved by :func:`save`; returns ``(net in eval mode, meta)``.

    Parameters
    ----------
    path : path-like
    device : torch.device or str
    kind : str, optional
        The kind of model the caller needs (a key of :data:`KINDS`); a file of another kind raises.

    Raises
    ------
    NanosegError
        If the file is missing, unreadable, of another kind, or holds weights that do not fit the
        network its settings describe.
    """
    payload = _payload(path, device)
    if kind is not None:
        check_kind(path, payload["meta"], kind)
    net = _build(path, payload)
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:  # what the names and shapes do not show, e.g. a tensor of another type
        raise NanosegError(f"{path}: weights do not fit the network its settings describe "
                           f"({str(exc).splitlines()[0]}); the file is damaged or from another nanoseg version: "
                           "retrain or re-export it") from None
    net.to(device).eval()
    return net, payload["meta"]


def load_meta(path: str | Path, *, kind: str | None = None) -> dict[str, Any]:
    """The metadata of a network saved by :func:`save`, checked like :func:`load` but without reading
    its weights: memory-mapped, the network built on torch's 'meta' device (no memory), so that a
    process that only decides *how* to use a model stays small and still refuses a broken one
    before it starts any work.

    ``kind``, when given, is checked as by :func:`load`.
    """
    import torch

    payload = _payload(path, "cpu", mmap=True)
    if kind is not None:
        check_kind(path, payload["meta"], kind)
    with torch.device("meta"):
        _build(path, payload)
    return payload["meta"]
