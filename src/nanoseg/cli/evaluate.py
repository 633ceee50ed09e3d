"""``nanoseg evaluate``: score predictions against ground-truth masks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nanoseg.cli import common

#: Columns shown in the terminal table per protocol (the CSV holds all of them).
_SHOWN = {
    "paper": ("image", "n_gt", "n_pred", "image_iou", "instance_iou", "instance_iou_area_gt9", "youden",
              "pixel_error", "split_merge_error", "rand_error", "rand_error_thinned", "info_error_thinned"),
    "strict": ("image", "n_gt", "n_pred", "image_iou", "symmetric_instance_iou", "precision", "recall", "f1",
               "ap50", "ap50_95", "pq", "warping_error", "splits", "merges", "rand_error"),
}


def command(
    pred_dir: Path = typer.Argument(..., help="Predictions: probability maps (float TIFF/.npz), binary masks "
                                    "(0/255) or label images, one per image."),
    gt_dir: Path = typer.Argument(..., help="Ground truth: binary masks (<stem>.tif or <stem>_m.tif) or 16/32-bit "
                                  "label images."),
    protocol: str = typer.Option("paper", "--protocol", help="paper (as Rühle et al. 2021 scored) or strict "
                                 "(fixed threshold, missed particles penalised)."),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0,
                                    help="Probability threshold of the strict protocol."),
    kind: str = typer.Option("auto", "--kind", help="What the predictions hold: auto, probability, binary or "
                             "labels (auto: float/8-bit gray = probability, two values = mask, 16/32-bit = labels)."),
    labels: bool = typer.Option(False, "--labels", help="The ground-truth files are label images (0 = background), "
                                "also 8-bit ones, which are otherwise refused as ambiguous."),
    watershed_binary: bool = typer.Option(False, "--watershed-binary", help="Split binary masks with the "
                                          "paper's watershed too (default: label them 4-connected)."),
    scores: Optional[Path] = typer.Option(None, "--scores", help="strict: folder of probability maps behind label "
                                          "predictions (segment predict --probabilities), for Youden's index."),
    sizes: bool = typer.Option(False, "--sizes", help="Also compare the size distributions (KS test, histograms)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="CSV table to write (a .json beside it); "
                                       "default: evaluation_<protocol>.csv here."),
    pixel_size: Optional[str] = common.PixelSizeOpt,
) -> None:
    """Score predicted masks, label images or probability maps against ground-truth masks.

    Files pair by name (a ground truth 1908248_m.tif pairs with 1908248.tif); a ground truth
    taller than the prediction by the info-bar rows is cropped. Prints the scores per image
    and their mean, and writes them to CSV and JSON.

    Example:

      nanoseg evaluate runs/tio2/segment/binary ../shared/data/bam-tio2/masks

      nanoseg evaluate probs/ masks/ --protocol strict --sizes --pixel-size 7.34nm --out eval/strict.csv

      nanoseg evaluate seg/labels masks/ --protocol strict --scores seg/probabilities

      nanoseg evaluate seg/labels labels8bit/ --labels
    """
    import math

    from nanoseg.atomic import replacing, write_json
    from nanoseg.errors import NanosegError
    from nanoseg.evaluate import (
        PROTOCOLS,
        compare_sizes,
        evaluate_predictions,
        load_pairs,
        load_score_maps,
        summary_row,
    )

    if protocol not in PROTOCOLS:
        raise NanosegError(f"--protocol {protocol!r}: choose 'paper' or 'strict'")
    pixel_size_nm = common.parse_length_nm(pixel_size) if pixel_size is not None else None
    out = out or Path(f"evaluation_{protocol}.csv")
    common.check_out_csv(out, beside=" (the .json is written beside it)")

    if scores is not None and protocol != "strict":
        raise NanosegError("--scores: only the strict protocol uses probability maps beside label images; "
                           "for the paper protocol pass the probability maps as PRED_DIR")
    predictions, ground_truths = load_pairs(pred_dir, gt_dir, kind, "labels" if labels else "auto")
    score_maps = load_score_maps(scores, predictions) if scores is not None else None
    instances: dict = {}
    df = evaluate_predictions(predictions, ground_truths, protocol, threshold=threshold,
                              watershed_binary=watershed_binary, score_maps=score_maps, instances_out=instances)
    mean = summary_row(df)
    report = {"protocol": protocol, "threshold": df.attrs.get("threshold"),
              "thresholds_per_metric": df.attrs.get("thresholds"), "pred_dir": str(pred_dir),
              "gt_dir": str(gt_dir), "mean": mean, "images": df.to_dict(orient="records")}
    size_table = None
    # The table, its JSON and the size files are one result: all of them replace an earlier one, or none.
    with replacing(out.parent) as new:
        df.to_csv(new / out.name, index=False)
        if sizes:
            stem = new / out.stem
            size_table = compare_sizes(instances, pixel_size_nm, plot_stem=f"{stem}_hist")
            size_table.to_csv(f"{stem}_sizes.csv", index=False)
            report["sizes"] = size_table.to_dict(orient="records")
        write_json(new / out.with_suffix(".json").name, _finite(report))

    _print_table(df, mean, _SHOWN[protocol], f"{protocol} protocol, threshold {df.attrs.get('threshold'):.2g}"
                 if not math.isnan(df.attrs.get("threshold", math.nan)) else f"{protocol} protocol")
    if size_table is not None:
        cols = ("descriptor", "n_pred", "n_gt", "mean_pred", "mean_gt", "mean_rel_error", "median_rel_error",
                "sd_rel_error", "ks_statistic", "ks_p_value")
        _print_table(size_table, None, cols, "size distributions (prediction vs ground truth)")
    typer.echo(f"wrote {out} and {out.with_suffix('.json')}")


def _finite(tree):
    """NaN -> None, so the JSON is valid."""
    if isinstance(tree, dict):
        return {k: _finite(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_finite(v) for v in tree]
    if isinstance(tree, float) and tree != tree:
        return None
    return tree


def _print_table(df, mean, columns, title) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = [c for c in columns if c in df.columns]
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col in ("image", "descriptor") else "right", overflow="fold")

    def cell(value) -> str:
        if isinstance(value, float):
            return "-" if value != value else f"{value:.4g}"
        return str(value)

    for record in df[columns].to_dict(orient="records"):
        table.add_row(*(cell(record[c]) for c in columns))
    if mean is not None:
        table.add_section()
        table.add_row(*(cell(mean.get(c, "")) for c in columns), style="bold")
    console = Console()
    if not console.is_terminal:  # piped or redirected: do not squeeze the table into 80 columns
        console = Console(width=240)
    console.print(table)
