"""The input of stages 3-4: the fake-mask tiles the masks stage wrote (:class:`FakeMask`).

:func:`load_fake_masks` lists a masks folder (``mask_XXXX.tif``, ``instances_XXXX.tif`` and
``particles.csv`` where present); each tile's labels are read only on access.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg.errors import NanosegError
from nanoseg.io import read_labels, read_mask
from nanoseg.labels import border_labels


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
