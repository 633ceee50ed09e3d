"""How the fragment rule (``classify.min_ecd_fraction``) moves the measured size distribution.

Uses the models of the full workflow that ``benchmarks/bam_tio2.py`` trained on simulated data
(baseline (b), kept in ``benchmarks/work/bam_tio2/``), segments the 24 *training* images of
its split -- never the validation images -- applies the keep/discard step with each
``min_ecd_fraction`` of the sweep and compares the kept particles' ECD distribution with the
manual masks + manual classes. Beside each row: the share of the expert's kept particles that
the rule would drop if it were applied to the manual masks themselves (its cost on a clean
segmentation). Writes ``benchmarks/results/fragment_rule.json``.

    python -m benchmarks.bam_tio2            # once, to train the models
    python -m benchmarks.fragment_rule
"""

from __future__ import annotations

import argparse
import logging
import time

from benchmarks import common
from nanoseg.atomic import write_json

SWEEP = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7)
OUT = common.RESULTS / "fragment_rule.json"


def main(argv: list[str] | None = None) -> None:
    import numpy as np

    from nanoseg import io, nets, segment
    from nanoseg.classify import resolve_threshold
    from nanoseg.config import SegmentConfig
    from nanoseg.evaluate import compare_sizes
    from nanoseg.labels import label_binary

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)  # --help; no options
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    run_dir = common.ROOT / "benchmarks" / "work" / "bam_tio2" / "simulated_run"
    if not (run_dir / "classify" / "model.pt").is_file():
        raise SystemExit(f"error: {run_dir} holds no trained workflow; run `python -m benchmarks.bam_tio2` first")
    config = common.benchmark_config("quick")
    net, meta = nets.load(run_dir / "segment" / "model.pt", "cpu")
    seg_cfg = SegmentConfig.model_validate(meta["config"])
    classifier, classifier_meta = nets.load(run_dir / "classify" / "model.pt", "cpu")
    micrographs = {i: io.read_micrograph(common.DATA / "sem" / f"{i}.tif") for i in common.TRAIN_IDS}
    labels = {i: segment.segment_image(net, meta, mg.image, seg_cfg, pixel_size_nm=mg.pixel_size_nm)[0]
              for i, mg in micrographs.items()}
    manual_areas = np.concatenate([np.bincount(label_binary(common.manual_mask(i) > 0, 1).ravel())[1:]
                                   for i in common.TRAIN_IDS])
    manual_kept = {i: common.manual_kept_labels(i) for i in common.TRAIN_IDS}
    kept_areas = np.concatenate([np.bincount(manual_kept[i].ravel())[1:] for i in common.TRAIN_IDS])
    median_area = np.median(manual_areas[manual_areas > 0])
    kept_areas = kept_areas[kept_areas > 0]
    rows = []
    for fraction in SWEEP:
        cfg = resolve_threshold(config.classify.model_copy(update={"min_ecd_fraction": fraction}), classifier_meta)
        kept = common.keep_discard(labels, micrographs, cfg, net=classifier)
        pairs = {i: (kept[i], manual_kept[i]) for i in common.TRAIN_IDS}
        ecd = compare_sizes(pairs, common.pixel_size_nm()).set_index("descriptor").loc["ecd_nm"]
        rows.append({"min_ecd_fraction": fraction, "n_kept": int(ecd.n_pred), "n_manual": int(ecd.n_gt),
                     "mean_rel_error": float(ecd.mean_rel_error), "median_rel_error": float(ecd.median_rel_error),
                     "sd_rel_error": float(ecd.sd_rel_error), "ks_statistic": float(ecd.ks_statistic),
                     "ks_p_value": float(ecd.ks_p_value),
                     "manual_kept_dropped": float(np.mean(kept_areas < fraction**2 * median_area))})
        logging.info("min_ecd_fraction %.1f: %s", fraction, rows[-1])
    write_json(OUT, {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "images": list(common.TRAIN_IDS),
                     "classifier": config.classify.method, "rows": rows})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
