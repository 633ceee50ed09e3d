"""Measure the 30 shared manual TiO2 masks, filtered by the shared manual keep/discard classes.

The manual masks (``masks/<id>_m.tif``, 1024x768, touching particles separated by 1-px lines) are
labelled with 4-connectivity; a particle is kept when most of its pixels are white in the class
mask (``classes/<id>_cm.tif``, 1024x704: the bottom 64 rows are cropped, so rows below 704 count
as not kept). Sizes are in nm with the pixel size from each SEM image's metadata.

The mean minimum Feret diameter of the kept particles is the number to compare with the value
Rühle et al. (Sci. Rep. 11, 4942, 2021) report for the ground-truth masks.

Writes ``benchmarks/results/measure_manual.json``. Skips (exit 0) without the shared data.

Usage: .venv/bin/python -m benchmarks.bench_measure_manual
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from benchmarks import common

DATA = common.DATA
RESULT = common.RESULTS / "measure_manual.json"


def kept_by_class_mask(labels: np.ndarray, class_mask: np.ndarray) -> np.ndarray:
    """Labels (sorted) whose pixels are mostly white in ``class_mask`` (zero-padded to ``labels``' rows)."""
    from scipy import ndimage as ndi

    padded = np.zeros(labels.shape, dtype=float)
    rows = min(labels.shape[0], class_mask.shape[0])
    padded[:rows] = class_mask[:rows]
    ids = np.unique(labels[labels > 0])
    white = np.asarray(ndi.mean(padded, labels=labels, index=ids))
    return ids[white > 0.5]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)  # --help; no options
    if not (DATA / "masks").is_dir():
        print(f"skipped: shared data not found at {DATA}")
        return 0
    import pandas as pd
    from skimage.measure import label

    from nanoseg.atomic import write_json
    from nanoseg.io import pixel_size_with_source, read_mask
    from nanoseg.measure import ec_definition_check, size_summary
    from nanoseg.particles import measure_particles

    t0 = time.perf_counter()
    frames = []
    per_image = []
    for mask_path in sorted((DATA / "masks").glob("*_m.tif")):
        stem = mask_path.name[: -len("_m.tif")]
        labels = label(read_mask(mask_path), connectivity=1)
        class_mask = read_mask(DATA / "classes" / f"{stem}_cm.tif")
        pixel_size, source = pixel_size_with_source(DATA / "sem" / f"{stem}.tif")
        df = measure_particles(labels, None, pixel_size, exclude_border=False)
        df.insert(0, "image", stem)
        df["kept"] = df["label"].isin(kept_by_class_mask(labels, class_mask))
        frames.append(df)
        per_image.append({"image": stem, "particles": len(df), "kept": int(df["kept"].sum()),
                          "touching_border": int(df["touches_border"].sum()), "pixel_size_nm": pixel_size,
                          "pixel_size_source": source})
    seconds = time.perf_counter() - t0
    particles = pd.concat(frames, ignore_index=True)
    kept = particles[particles["kept"]]
    counts = np.array([p["particles"] for p in per_image])
    summary_kept = size_summary(kept, ("min_feret", "max_feret", "ecd", "area"))
    summary_all = size_summary(particles, ("min_feret", "ecd"), fit=False)
    result = {
        "benchmark": "measure_manual",
        "data": str(DATA),
        "n_images": len(per_image),
        "particles_total": int(len(particles)),
        "particles_per_image_mean": float(counts.mean()),
        "particles_per_image_min": int(counts.min()),
        "particles_per_image_max": int(counts.max()),
        "kept_total": int(len(kept)),
        "kept_min_feret_nm": {k: summary_kept["min_feret"][k] for k in ("count", "mean", "sd", "median", "d10", "d90")},
        "kept_max_feret_nm": {k: summary_kept["max_feret"][k] for k in ("mean", "sd", "median")},
        "kept_ecd_nm": {k: summary_kept["ecd"][k] for k in ("mean", "sd", "median")},
        "kept_min_feret_lognormal": summary_kept["min_feret"]["lognormal"],
        "all_min_feret_nm": {k: summary_all["min_feret"][k] for k in ("count", "mean", "sd", "median")},
        "all_ecd_nm": {k: summary_all["ecd"][k] for k in ("mean", "sd", "median")},
        "ec_definition": ec_definition_check(kept),
        "feret_convention": "caliper diameters of the convex hull of the pixel corners (pixels as unit squares)",
        "labelling": "4-connected; kept = majority of pixels white in the class mask (rows >= 704 count as black)",
        "seconds": round(seconds, 2),
        "seconds_per_image": round(seconds / len(per_image), 3),
        "per_image": per_image,
    }
    write_json(RESULT, result)
    mf = result["kept_min_feret_nm"]
    print(f"{len(per_image)} images, {result['particles_per_image_mean']:.1f} particles/image, {len(kept)} kept; "
          f"min Feret (kept) mean {mf['mean']:.2f} nm, sd {mf['sd']:.2f} nm, median {mf['median']:.2f} nm; "
          f"ECD mean {result['kept_ecd_nm']['mean']:.2f} nm; {seconds:.1f} s -> {RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
