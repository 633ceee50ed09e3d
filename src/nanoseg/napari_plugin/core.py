"""What the napari plugin does, on arrays and files, without Qt.

Every number comes from the same functions as ``nanoseg measure``: a label image measured here
and the same labels measured by the command line give the same particle table.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nanoseg.errors import NanosegError

logger = logging.getLogger("nanoseg.napari")

#: Columns shown in the widgets' particle table, in this order (those present).
TABLE_COLUMNS = ("label", "kept", "reason", "min_feret_nm", "max_feret_nm", "ecd_nm", "area_nm2", "min_feret_px",
                 "max_feret_px", "ecd_px", "area_px", "score")
#: Steps the segment-and-measure worker reports.
STEPS = ("load models", "segment", "classify and measure")


@dataclass
class Measured:
    """Particles of one image and the decisions behind them."""

    labels: np.ndarray
    particles: pd.DataFrame
    decisions: pd.DataFrame
    counting_rule: dict[str, Any]
    warnings: list[str]


def micrograph_layer(path: str | Path, config: Any = None) -> tuple[np.ndarray, dict[str, Any], str]:
    """A micrograph as napari layer data: info bar cropped off, scale in nm per pixel.

    Returns
    -------
    (image, kwargs, "image")
        ``kwargs`` holds ``name``, ``scale`` and ``units`` (nm when the pixel size is known, px
        otherwise) and ``metadata['nanoseg']`` with the pixel size, its source, the info bar rows
        and the file.
    """
    from nanoseg.config import build_config
    from nanoseg.io import read_micrographs

    config = config or build_config()
    mg = read_micrographs([Path(path)], config.data)[0]
    size = mg.pixel_size_nm
    meta = {"path": str(mg.path), "pixel_size_nm": size, "pixel_size_source": mg.pixel_size_source,
            "info_bar_rows": int(mg.info_bar_rows)}
    kwargs = {"name": Path(path).stem, "scale": (size, size) if size else (1.0, 1.0),
              "units": ("nm", "nm") if size else ("pixel", "pixel"), "metadata": {"nanoseg": meta}}
    return mg.image, kwargs, "image"


def layer_pixel_size_nm(metadata: dict[str, Any] | None, scale: Any, units: Any) -> float | None:
    """The pixel size of a layer in nm: from the plugin's metadata, else from an nm scale."""
    stated = ((metadata or {}).get("nanoseg") or {}).get("pixel_size_nm")
    if stated:
        return float(stated)
    unit_names = [str(u) for u in (units or ())]
    if unit_names and all(u in ("nm", "nanometer") for u in unit_names[-2:]):
        sy, sx = (float(v) for v in tuple(scale)[-2:])
        if sy == sx and sx > 0:
            return sx
    return None


def measure_labels(name: str, labels: np.ndarray, image: np.ndarray | None, pixel_size_nm: float | None,
                   config: Any = None, classifier: str | Path | None = None, device: Any = "cpu") -> Measured:
    """Measure a label image and decide which particles count, as ``nanoseg measure --labels`` does.

    Parameters
    ----------
    name : str
        Image name in the tables.
    labels : (H, W) int array
        Instance labels (0 = background), e.g. a Labels layer after editing.
    image : (H, W) float array in [0, 1], optional
        The micrograph (needed by the intensity rule and the classifier).
    pixel_size_nm : float, optional
    config : Config, optional
        Default: the default profile's.
    classifier : path, optional
        Keep/discard network; without it the rules alone decide.
    """
    from nanoseg.classify import counting_rule
    from nanoseg.config import build_config
    from nanoseg.measure import load_classifier, measure_and_decide

    config = config or build_config()
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise NanosegError(f"{name}: the labels layer has {labels.ndim} dimensions; nanoseg measures 2-D images")
    if image is not None and np.asarray(image).shape != labels.shape:
        raise NanosegError(f"{name}: the image is {np.asarray(image).shape} px but the labels are {labels.shape} px; "
                           "pick the image the labels were drawn on")
    net, cls_cfg, calibration, warnings = load_classifier(classifier, config.classify, device, option="classifier")
    if image is None and cls_cfg.method == "network":
        raise NanosegError(f"{name}: the classifier needs the micrograph; pick an image layer")
    items = [(name, labels.astype(np.int64, copy=False), None if image is None else np.asarray(image, np.float32),
              pixel_size_nm)]
    particles, decisions = measure_and_decide(items, cls_cfg, net=net, device=device)
    rule = counting_rule(cls_cfg, classifier_model=classifier, calibration=calibration,
                         with_micrographs=image is not None)
    return Measured(labels, particles, decisions, rule, warnings)


def segment_and_measure(name: str, image: np.ndarray, pixel_size_nm: float | None, model: str | Path,
                        classifier: str | Path | None = None, config: Any = None, device: Any = "cpu") -> Measured:
    """Segment a micrograph with a trained model, then :func:`measure_labels`.

    ``model`` is a nanoseg ``.pt`` model or its ONNX export. The model's own segment settings
    apply (saved with it at training), as in ``nanoseg segment predict``.
    """
    steps = segment_and_measure_steps(name, image, pixel_size_nm, model, classifier, config, device)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def segment_and_measure_steps(name: str, image: np.ndarray, pixel_size_nm: float | None, model: str | Path,
                              classifier: str | Path | None = None, config: Any = None, device: Any = "cpu"
                              ) -> Generator[int, None, Measured]:
    """:func:`segment_and_measure` as a generator that yields the index in :data:`STEPS` of each
    step as it starts (a worker thread's progress) and returns the :class:`Measured`."""
    from nanoseg.config import segment_settings
    from nanoseg.segment import load_segmenter, segment_image

    yield 0
    if not Path(model).is_file():
        raise NanosegError(f"{model}: no such model file (pick the model.pt of a run, e.g. RUN/adapt/model.pt, "
                           "or its ONNX export)")
    net, meta = load_segmenter(model, device)
    if meta.get("task", "segment") != "segment" or "target" not in meta:
        raise NanosegError(f"{model}: not a segmentation model (pick RUN/adapt/model.pt or RUN/segment/model.pt)")
    yield 1
    labels, _ = segment_image(net, meta, np.asarray(image, np.float32), segment_settings(meta["config"], str(model)),
                              pixel_size_nm=pixel_size_nm, device=device, probability=False)
    yield 2
    return measure_labels(name, labels, image, pixel_size_nm, config, classifier, device)


def labels_layer_kwargs(measured: Measured, name: str, scale: Any = (1.0, 1.0), units: Any = None) -> dict[str, Any]:
    """Keyword arguments of a Labels layer: particle table as features, kept green, discarded red."""
    from nanoseg.measure import DISCARDED_RGB, KEPT_RGB

    table = particle_table(measured.particles)
    colors: dict[int | None, Any] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for label, kept in zip(measured.particles["label"].astype(int), measured.particles["kept"].astype(bool)):
        colors[int(label)] = tuple(c / 255 for c in (KEPT_RGB if kept else DISCARDED_RGB)) + (1.0,)
    kwargs = {"name": name, "features": table, "scale": tuple(scale), "colormap": colors,
              "metadata": {"nanoseg": {"counting_rule": measured.counting_rule, "warnings": measured.warnings}}}
    if units is not None:
        kwargs["units"] = tuple(units)
    return kwargs


def particle_table(particles: pd.DataFrame) -> pd.DataFrame:
    """The columns users read first (:data:`TABLE_COLUMNS`), one row per particle."""
    return particles[[c for c in TABLE_COLUMNS if c in particles]].reset_index(drop=True)


def export(measured: Measured, out_dir: str | Path, image: np.ndarray | None, config: Any = None,
           source: str = "none") -> dict[str, Any]:
    """Write ``particles.csv``, ``decisions.csv``, ``summary.json``, histograms and the report, like
    ``nanoseg measure --labels``; returns the summary.

    ``source`` says where the pixel size came from (:attr:`nanoseg.io.Micrograph.pixel_size_source`).
    """
    from types import SimpleNamespace

    from nanoseg.classify import write_decisions
    from nanoseg.config import build_config
    from nanoseg.measure import pixel_size_source, results_settings, write_results

    config = config or build_config()
    sizes = measured.particles["pixel_size_nm"].dropna() if "pixel_size_nm" in measured.particles else []
    where = pixel_size_source([SimpleNamespace(pixel_size_nm=float(sizes.iloc[0]) if len(sizes) else None,
                                               pixel_size_source=source)])
    out_dir = Path(out_dir)
    name = str(measured.particles["image"].iloc[0]) if len(measured.particles) else "image"
    write_decisions(measured.decisions, out_dir / "decisions.csv")
    return write_results(
        measured.particles, out_dir, micrographs=None if image is None else {name: image},
        labels={name: measured.labels}, pixel_size_source=where, size_prior="unknown",
        extra={"classify_method": measured.counting_rule["method"], "failures": [], "realism": None},
        counting_rule=measured.counting_rule, warnings=measured.warnings, **results_settings(config))


def size_histogram(particles: pd.DataFrame, ax: Any, bins: int = 30) -> None:
    """Histogram of the kept particles' min Feret diameters (nm when known) on a matplotlib axis."""
    kept = particles[particles["kept"].astype(bool)]
    column = "min_feret_nm" if "min_feret_nm" in kept and kept["min_feret_nm"].notna().any() else "min_feret_px"
    values = kept[column].dropna().to_numpy()
    ax.clear()
    if values.size:
        ax.hist(values, bins=min(bins, max(1, values.size)), color="#2c8c4c")
    unit = "nm" if column.endswith("_nm") else "px"
    ax.set_xlabel(f"min Feret diameter ({unit})")
    ax.set_ylabel("kept particles")
    ax.set_title(f"{values.size} kept of {len(particles)}")
