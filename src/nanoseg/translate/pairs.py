"""Training pairs of stage 4: translate fake masks, filter artifacts, write and read the pairs.

:func:`iter_pairs` makes the pairs on the fly (whole tiles first, then random crops and flips),
:func:`generate_pairs` writes them with ``manifest.csv``, ``filter.json`` and an overlay
contact sheet; :func:`read_pair` reads one back.
"""

from __future__ import annotations

import csv
import io as _stdio
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg.atomic import atomic_path, write_json, write_text
from nanoseg.errors import NanosegError
from nanoseg.io import write_png
from nanoseg.labels import border_labels
from nanoseg.runtime import progress
from nanoseg.translate.artifacts import filter_artifacts
from nanoseg.translate.fakemasks import FakeMask

logger = logging.getLogger("nanoseg.translate")

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
