"""Helpers shared by the benchmark scripts: the TiO2 data paths and split, the smoke settings,
the keep/discard step, run-folder arguments, provenance (commit, machine, load), results files
and timed subprocesses.

Import as ``from benchmarks import common``; run the scripts from the project root as
``python -m benchmarks.NAME``.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg.atomic import write_json, write_text
from nanoseg.config import Config
from nanoseg.errors import NanosegError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "bam-tio2"
RESULTS = ROOT / "benchmarks" / "results"

#: The 30 shared images, sorted.
ALL_IDS: tuple[str, ...] = (
    "1908248", "1908250", "1908252", "1908254", "1908258", "1908260", "1908264", "1908266", "1908270", "1908272",
    "1908274", "1908276", "1908280", "1908284", "1908286", "1908288", "1908290", "1908292", "1908296", "1908298",
    "1908300", "1908302", "1908304", "1908306", "1908308", "1908312", "1908314", "1908316", "1908318", "1908322",
)
#: The fixed validation split of ``bam_tio2.py``: every 5th id from the first, ALL_IDS[0::5]; the
#: other 24 train.
VALIDATION_IDS: tuple[str, ...] = ("1908248", "1908260", "1908274", "1908288", "1908300", "1908312")
TRAIN_IDS: tuple[str, ...] = (
    "1908250", "1908252", "1908254", "1908258", "1908264", "1908266", "1908270", "1908272", "1908276", "1908280",
    "1908284", "1908286", "1908290", "1908292", "1908296", "1908298", "1908302", "1908304", "1908306", "1908308",
    "1908314", "1908316", "1908318", "1908322",
)
assert VALIDATION_IDS == ALL_IDS[0::5] and sorted(TRAIN_IDS + VALIDATION_IDS) == list(ALL_IDS)

#: Rows of the SEM images that hold the image (the bottom 56 of 768 are the info bar).
IMAGE_ROWS = 712
#: Pixel size of the TiO2 images in nm, used when the TIFF metadata cannot be read.
PIXEL_SIZE_NM = 7.34375
#: sampled shapes) by this.
SMOKE_FACTOR = 50


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def manual_mask(image_id: str) -> np.ndarray:
    """The manual mask of an image, cropped to the image rows (bool, 712 x 1024)."""
    from nanoseg.evaluate import read_ground_truth

    return read_ground_truth(DATA / "masks" / f"{image_id}_m.tif")[:IMAGE_ROWS]


def manual_kept_labels(image_id: str) -> np.ndarray:
    """Manual particles (4-connected) that the expert kept for size measurement.

    A particle is kept when more than half of its pixels are white in ``classes/<id>_cm.tif``
    (1024 x 704: the class masks end 8 rows above the info bar; rows below count as discarded).
    """
    from nanoseg.evaluate import read_ground_truth
    from nanoseg.labels import label_binary

    labels = label_binary(manual_mask(image_id), 1)
    classes = read_ground_truth(DATA / "classes" / f"{image_id}_cm.tif") != 0
    kept_px = np.zeros(labels.shape, bool)
    rows = min(classes.shape[0], labels.shape[0])
    kept_px[:rows] = classes[:rows, : labels.shape[1]]
    n = int(labels.max())
    area = np.bincount(labels.ravel(), minlength=n + 1)
    white = np.bincount(labels.ravel(), weights=kept_px.ravel(), minlength=n + 1)
    keep = white > 0.5 * np.maximum(area, 1)
    keep[0] = False
    return np.where(keep[labels], labels, 0)


def pixel_size_nm() -> float:
    """Pixel size from the first validation image's metadata (7.34375 nm for this data set)."""
    try:
        from nanoseg.io import read_pixel_size_nm

        size = read_pixel_size_nm(DATA / "sem" / f"{VALIDATION_IDS[0]}.tif")
    except (ImportError, NanosegError):
        size = None
    return float(size) if size else PIXEL_SIZE_NM


# --------------------------------------------------------------------------------------------
# Settings and keep/discard
# --------------------------------------------------------------------------------------------


def smoke_overrides(config: Config) -> dict[str, Any]:
    """Settings that shrink every step count of ``config`` ~50x (``--smoke``)."""

    def fewer(n: int, minimum: int = 1) -> int:
        return max(minimum, round(n / SMOKE_FACTOR))

    shape_steps, gan_steps = fewer(config.shapes.steps, 5), fewer(config.translate.steps, 10)
    seg_steps, cls_steps = fewer(config.segment.steps, 10), fewer(config.classify.steps, 5)
    # One checkpoint / validation at the end: they cost more than a few training steps. A
    # WGAN-GP after 1/50 of its steps draws mostly empty shapes (the shapes stage refuses
    # them), so the smoke run takes random polygons for the shapes.
    return {
        "shapes": {"source": "polygon", "steps": shape_steps, "checkpoint_every": shape_steps,
                   "n_samples": fewer(config.shapes.n_samples, 64)},
        "masks": {"n_masks": fewer(config.masks.n_masks, 4)},
        "translate": {"steps": gan_steps, "checkpoint_every": gan_steps, "n_pairs": fewer(config.translate.n_pairs, 8)},
        "segment": {"steps": seg_steps, "val_every": seg_steps, "lr_decay_every": fewer(config.segment.lr_decay_every)},
        "classify": {"steps": cls_steps, "checkpoint_every": cls_steps},
    }


def benchmark_config(profile: str, smoke: bool = False, values: dict[str, Any] | None = None) -> Config:
    """The profile's config, shrunk for ``--smoke``, with ``values`` on top."""
    from nanoseg.config import build_config, deep_merge

    overrides = smoke_overrides(build_config(profile=profile)) if smoke else {}
    return build_config(deep_merge(overrides, values or {}), profile=profile, source="benchmarks/common.py")


def keep_discard(labels: dict[str, np.ndarray], micrographs: dict[str, Any], classify_cfg: Any, net: Any = None,
                 device: Any = "cpu") -> dict[str, np.ndarray]:
    """Label images holding only the particles the keep/discard step keeps (network or rules)."""
    from nanoseg.classify import classify_images

    items = [(i, labels[i], micrographs[i].image, micrographs[i].pixel_size_nm) for i in labels]
    decisions = classify_images(items, classify_cfg, net=net, device=device)
    kept = {}
    for i, lab in labels.items():
        rows = decisions[(decisions["image"] == i) & decisions["kept"].astype(bool)]
        kept[i] = np.where(np.isin(lab, rows["label"].to_numpy()), lab, 0)
    return kept


def rules_only(config: Config) -> Any:
    """A copy of ``config.classify`` that keeps particles by the rules alone (no network)."""
    cfg = config.classify.model_copy(deep=True)
    cfg.method = "rules"
    return cfg


def unet_config(config: Config) -> Config:
    """A copy of ``config`` with a UNet segmentation network (the supervised baselines' net)."""
    config = config.model_copy(deep=True)
    config.segment.architecture = "unet"
    return config


# --------------------------------------------------------------------------------------------
# Run folders, provenance, results files, timed subprocesses
# --------------------------------------------------------------------------------------------


def shown_path(path: Path) -> str:
    """``path`` as a results file records it: relative to the project root when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def add_run_folder_arguments(parser: Any, holds: str) -> None:
    """``--runs`` (a workflow benchmark's work folder) and ``--seeds`` (parsed to a list of ints),
    for the scripts that re-read that benchmark's run folders; ``holds`` says what they read there."""
    def seed_list(text: str) -> list[int]:
        try:
            return [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 0,1,2") from None

    parser.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "work" / "workflow_quick",
                        help=f"Work folder of a workflow benchmark call (holds {holds}).")
    parser.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="Comma-separated seeds (default 0,1,2).")


def seed_folders(parser: Any, args: Any, sub: str, required: str) -> dict[int, Path]:
    """``--runs``/seed<S>/``sub`` for each of ``--seeds``; a parser error (one line) names the
    first that lacks ``required``, the file a finished workflow benchmark call leaves there."""
    folders = {s: args.runs / f"seed{s}" / sub for s in args.seeds}
    for folder in folders.values():
        if not (folder / required).is_file():
            parser.error(f"{folder}: no finished {sub} folder ({required}); "
                         "pass the --runs of a finished benchmarks/workflow.py call")
    return folders


def provenance(load: tuple[float, float, float]) -> dict[str, str]:
    """Date, commit, machine and load average (at the start: ``os.getloadavg()`` then) of a results file."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit,
            "machine": f"{platform.machine()} ({cpu_model()}), Python {platform.python_version()}, {cpu_count()} CPU cores",
            "load_at_start": " / ".join(f"{v:.2f}" for v in load)}


def run_folder_meta(load: tuple[float, float, float], args: Any) -> dict[str, str]:
    """The ``meta`` of a results file from a script that re-reads run folders: :func:`provenance`,
    ``runs`` and ``note`` (the call's conditions)."""
    return {**provenance(load), "runs": shown_path(args.runs), "note": args.note}


def run_folder_header(script: str, meta: dict[str, Any]) -> str:
    """The provenance sentence of a results file from a script that re-reads run folders
    (``meta``: :func:`provenance` plus ``runs`` and ``note``)."""
    return (f"Generated by `benchmarks/{script}` on {meta['date']}, commit {meta['commit']}, {meta['machine']}; "
            f"load average at start {meta['load_at_start']}; run folders: {meta['runs']}"
            + (f" ({meta['note']})" if meta.get("note") else "") + ".")


def save_results(out: Path, results: dict[str, Any], text: str) -> None:
    """``out`` (Markdown ``text``) and ``out.json`` (``results``); prints the text."""
    write_json(out.with_suffix(".json"), finite(results))
    write_text(out, text + "\n")
    print(text)


def device_name() -> str:
    """The first CUDA device's name, or "no GPU"."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"


def cpu_model() -> str:
    """The CPU's model name: trained weights, and so every score, differ between CPU families
    (an Intel Xeon with AMX and an AMD EPYC give other float rounding), so results name it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_count() -> int:
    """The cores this process may use (:func:`nanoseg.runtime.available_cores`)."""
    from nanoseg.runtime import available_cores

    return available_cores()


def finite(tree: Any) -> Any:
    """numpy scalars to Python, NaN/inf to None: the JSON stays valid."""
    if isinstance(tree, dict):
        return {str(k): finite(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [finite(v) for v in tree]
    if hasattr(tree, "item") and np.ndim(tree) == 0:
        tree = tree.item()
    if isinstance(tree, float) and not np.isfinite(tree):
        return None
    return tree


def tree_rss_mb(pid: int) -> float:
    """Resident memory (MiB) of process ``pid`` and all its children."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def timed_run(cmd: list[str], *, kill_when: Any = None) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, peak RSS of its process tree, and whether ``kill_when()`` killed it."""
    env = dict(os.environ, NANOSEG_NO_PROGRESS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    peak, killed = 0.0, False
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        if kill_when is not None and kill_when():
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    output = proc.communicate()[0]
    if not killed and proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{output[-2000:]}")
    return {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(peak, 1), "killed": killed,
            "output": output}
