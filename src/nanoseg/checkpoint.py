"""Training checkpoints: one format, one safety check and one way to store the random state.

The four resumable training loops (segmentation net, WGAN-GP shapes, CycleGAN, keep/discard
classifier) save with :func:`save_checkpoint` and resume with :func:`load_checkpoint`:

- a checkpoint carries a :func:`fingerprint` of what its training learns from (the data's bytes
  and the training settings, not the step count nor settings that only change how a trained
  net is applied), and is resumed only under the same fingerprint: a folder reused for other
  data or settings starts fresh, with a warning, instead of silently continuing another model;
- it is written atomically (a kill leaves the old checkpoint or the new one) and read with
  ``torch.load(..., weights_only=True)``, so a file holding anything but tensors, numbers,
  strings and containers of them is refused, never executed;
- a damaged file, or one in another layout (an older nanoseg), is a warning and a fresh start,
  never a traceback;
- the random state is stored one way: the numpy Generator's bit-generator state as a JSON
  string and torch's CPU generator state as a tensor; :func:`restore_rng` puts both back.

Loading restores nothing by itself: each loop loads the state dicts it saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg.atomic import atomic_path, file_sha256

logger = logging.getLogger("nanoseg.checkpoint")

#: Layout tag of the checkpoints :func:`save_checkpoint` writes; a file without it is another layout.
FORMAT = "nanoseg-checkpoint-1"



# --------------------------------------------------------------------------- fingerprint


def fingerprint(*parts: Any) -> str:
    """SHA-256 (hex) of what a training learns from.

    Each part may be a number, string, bool or None, a numpy array or scalar (shape, dtype and
    bytes count), a torch tensor, bytes, a :class:`~pathlib.Path` (the file's bytes: a starting
    model, say), a pydantic model (its JSON dump), or a mapping, list or tuple of these (mappings
    in key order, so insertion order does not matter). Parts are hashed with their types and
    lengths, so different structures never collide by concatenation.

    Raises
    ------
    TypeError
        For a part of another type.
    """
    digest = hashlib.sha256()
    for part in parts:
        _feed(digest, part)
    return digest.hexdigest()


def _feed(digest: Any, part: Any) -> None:
    if part is None or isinstance(part, (bool, int, float, str)):
        digest.update(b"J" + json.dumps(part).encode() + b"\0")
    elif isinstance(part, Path):
        digest.update(b"F" + file_sha256(part).encode() + b"\0")
    elif isinstance(part, (bytes, bytearray, memoryview)):
        data = bytes(part)
        digest.update(b"B%d:" % len(data) + data)
    elif isinstance(part, (np.ndarray, np.generic)):
        array = np.ascontiguousarray(part)
        digest.update(b"A" + repr((array.shape, array.dtype.str)).encode() + b":")
        digest.update(array.reshape(-1).view(np.uint8).data if array.size else b"")
    elif _is_tensor(part):
        tensor = part.detach().cpu().contiguous()
        digest.update(b"T" + repr((tuple(tensor.shape), str(tensor.dtype))).encode() + b":")
        try:
            values = tensor.numpy()
        except TypeError:  # bfloat16 and other dtypes numpy lacks: their float32 values are exact
            values = tensor.float().numpy()
        digest.update(np.ascontiguousarray(values).reshape(-1).view(np.uint8).data if values.size else b"")
    elif isinstance(part, Mapping):
        digest.update(b"D%d:" % len(part))
        for key in sorted(part, key=str):
            _feed(digest, str(key))
            _feed(digest, part[key])
    elif isinstance(part, (list, tuple)):
        digest.update(b"L%d:" % len(part))
        for item in part:
            _feed(digest, item)
    elif hasattr(part, "model_dump"):
        _feed(digest, part.model_dump(mode="json"))
    else:
        raise TypeError(f"fingerprint: cannot hash a {type(part).__name__}")


def _is_tensor(obj: Any) -> bool:
    # Without importing torch: a module that only hashes arrays should not pay for it.
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach") and hasattr(obj, "dtype")


# --------------------------------------------------------------------------- save / load


def save_checkpoint(
    path: str | Path,
    *,
    fingerprint: str,
    step: int,
    nets: Mapping[str, Any] | None = None,
    optimizers: Mapping[str, Any] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    rng: np.random.Generator | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a training checkpoint atomically.

    Parameters
    ----------
    path : path
        The checkpoint file (its folder is created).
    fingerprint : str
        :func:`fingerprint` of what the training learns from; :func:`load_checkpoint` resumes
        the file only under the same one.
    step : int
        Steps done.
    nets, optimizers, schedulers : mapping of str to state dict, optional
        The ``state_dict()`` of each, by a name the loop chooses.
    rng : numpy Generator, optional
        The loop's numpy random source; stored as the JSON of its bit-generator state. torch's
        CPU random state is always stored.
    extra : mapping, optional
        Anything else the loop resumes (loss history, best score, image pools): tensors,
        numbers, strings, None and lists/dicts of them, the only things a safe load accepts.

    Returns
    -------
    Path
    """
    import torch

    state = {
        "format": FORMAT,
        "fingerprint": str(fingerprint),
        "step": int(step),
        "nets": dict(nets or {}),
        "optimizers": dict(optimizers or {}),
        "schedulers": dict(schedulers or {}),
        "rng": rng_to_json(rng) if rng is not None else None,
        "torch_rng": torch.get_rng_state(),
        "extra": dict(extra or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, fingerprint: str, *, what: str, data: str = "data",
                    map_location: Any = "cpu") -> dict[str, Any] | None:
    """The state of a checkpoint to resume, or None to start fresh.

    None, with no message, when ``path`` does not exist; None with a warning naming the file
    when it cannot be read (truncated, damaged, or holding objects a safe load refuses), when
    it is in another layout (written by an older nanoseg), or when its fingerprint is not
    ``fingerprint`` (made from other data or settings). Nothing is restored here: the caller
    loads the state dicts it saved and calls :func:`restore_rng`.

    Parameters
    ----------
    path : path
    fingerprint : str
        The fingerprint of this run's data and training settings.
    what : str
        The training's name for the messages ('segment', 'classify', ...).
    data : str
        What its data are called in the messages ('pairs', 'outlines', ...).
    map_location : torch.device or str
        Where the tensors are loaded.

    Returns
    -------
    dict or None
        ``step``, ``nets``, ``optimizers``, ``schedulers``, ``extra`` as saved, ``rng`` and
        ``torch_rng`` (for :func:`restore_rng`), ``fingerprint`` and ``format``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, damaged, or not a plain checkpoint: a safe load refuses all alike
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        logger.warning("%s: checkpoint %s cannot be read (%s); starting fresh (it will be overwritten)", what, path,
                       reason)
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        logger.warning("%s: checkpoint %s is in another layout (an older nanoseg wrote it) and cannot be checked "
                       "against the %s; starting fresh (it will be overwritten)", what, path, data)
        return None
    if state.get("fingerprint") != fingerprint:
        logger.warning("%s: checkpoint %s was trained on other %s or settings; starting fresh (it will be "
                       "overwritten; use another output folder to keep it)", what, path, data)
        return None
    if not _well_formed(state):
        logger.warning("%s: checkpoint %s is damaged (entries missing or of the wrong type); starting fresh", what,
                       path)
        return None
    return state


def _well_formed(state: dict[str, Any]) -> bool:
    import torch

    return (isinstance(state.get("step"), int) and state["step"] >= 0
            and all(isinstance(state.get(k), dict) for k in ("nets", "optimizers", "schedulers", "extra"))
            and (state.get("rng") is None or isinstance(state["rng"], str))
            and isinstance(state.get("torch_rng"), torch.Tensor))


def restore_rng(state: Mapping[str, Any], rng: np.random.Generator | None = None) -> None:
    """Put back the random state a checkpoint stored: ``rng``'s (when given) and torch's CPU one."""
    import torch

    if rng is not None:
        if state.get("rng") is None:
            raise ValueError("the checkpoint holds no numpy random state")
        rng_from_json(rng, state["rng"])
    torch.set_rng_state(state["torch_rng"].cpu())


def rng_to_json(rng: np.random.Generator) -> str:
    """A numpy Generator's bit-generator state as JSON (the one way checkpoints store it)."""
    return json.dumps(rng.bit_generator.state, default=lambda a: a.tolist())  # MT19937 keeps an array


def rng_from_json(rng: np.random.Generator, text: str) -> None:
    """Set ``rng`` to a state :func:`rng_to_json` wrote."""
    rng.bit_generator.state = json.loads(text)
