"""The self-contained HTML report of a measurement: tables, plots and overlays in one file.

Images are embedded as base64 data URIs so the report can be mailed or archived on its own.
Rendered with the standard library only (f-strings and :func:`html.escape`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Particle-table columns shown in the report (those present), in this order.
REPORT_COLUMNS: tuple[str, ...] = (
    "image", "label", "kept", "reason", "score", "ecd_nm", "min_feret_nm", "max_feret_nm", "area_nm2",
    "ecd_px", "min_feret_px", "max_feret_px", "area_px", "aspect_ratio", "circularity", "solidity", "convexity",
    "mean_intensity",
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.85em; }
div.table { overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f0f0f0; } td.text { text-align: left; }
.figs img { max-width: 48%; margin: 0.5%; } .overlay img { max-width: 100%; }
.statement { background: #f6f8fa; border-left: 4px solid #4c72b0; padding: 0.6em 1em; }
.kept { color: #28a050; font-weight: bold; } .discarded { color: #e63c32; font-weight: bold; }
.warnings { background: #fff4e5; border-left: 4px solid #e69500; padding: 0.6em 2em; }
"""


def image_data_uri(path: str | Path, max_width_px: int | None = None) -> str:
    """A ``data:`` URI of a PNG or SVG file.

    With ``max_width_px`` (photo-like overlays) the image is downscaled to that width and
    embedded as JPEG (quality 90), a fraction of the PNG's size.
    """
    path = Path(path)
    if path.suffix.lower() == ".svg":
        return "data:image/svg+xml;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    if max_width_px is None:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.width > max_width_px:
            im = im.resize((max_width_px, round(im.height * max_width_px / im.width)), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "&ndash;"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return html.escape(str(value))


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], text_columns: Sequence[int] = (0,)) -> str:
    """An HTML table with escaped cells; numbers right-aligned, ``text_columns`` left-aligned."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="text">{_fmt(v)}</td>' if i in text_columns else f"<td>{_fmt(v)}</td>" for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    # Wide tables (the particle list) scroll inside their box instead of widening the page.
    return f"<div class='table'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _interval(ci: Sequence[float] | None) -> str | None:
    return None if not ci else f"{ci[0]:.4g} \u2013 {ci[1]:.4g}"


def _summary_table(descriptors: Mapping[str, Any]) -> str:
    header = ["descriptor", "unit", "count", "mean", "mean 95 % CI", "sd", "median", "median 95 % CI", "D10", "D50",
              "D90", "log-normal median", "log-normal GSD"]
    rows = []
    for name, d in descriptors.items():
        ln = d.get("lognormal") or {}
        rows.append([name, d.get("unit", ""), d["count"], d["mean"], _interval(d.get("mean_ci95")), d["sd"],
                     d["median"], _interval(d.get("median_ci95")), d["d10"], d["d50"], d["d90"],
                     ln.get("scale"), ln.get("geometric_sd")])
    return html_table(header, rows, text_columns=(0, 1))


def uncertainty_text(descriptors: Mapping[str, Any]) -> str:
    """One paragraph: how the confidence intervals were computed and when to distrust them."""
    methods = list(dict.fromkeys(d["ci_method"] for d in descriptors.values() if d.get("ci_method")))
    if not methods:
        return ""
    notes = list(dict.fromkeys(n for d in descriptors.values() for n in d.get("ci_notes") or ()))
    text = f"95 % confidence intervals: percentile {'; '.join(methods)}."
    if notes:
        text += " Caution: " + "; ".join(notes) + "."
    return text


def _pixel_text(pixel_size: Any) -> str:
    if isinstance(pixel_size, list):
        return ", ".join(f"{v:g}" for v in pixel_size) + " nm (differs between images)"
    if pixel_size is None:
        return "unknown (sizes in px)"
    return f"{pixel_size:g} nm"


def counting_rule_text(rule: Mapping[str, Any]) -> str:
    """The counting rule in words, from the ``counting_rule`` block of ``summary.json``.

    Says whether particles touching the image border and partly covered particles were
    excluded, which rules and which classifier decided, and the pixel size with its source.
    """
    method = rule.get("method")
    if method is None:
        parts = ["Which particles were counted was not recorded with these results."]
    elif method == "none":
        parts = ["No keep/discard rule or classifier ran: every segmented particle was counted, including "
                 "particles touching the image border (their sizes are truncated) and partly covered ones."]
    else:
        rules = rule.get("rules") or []
        classifier = rule.get("classifier") or {}
        parts = ["Particles touching the image border or the info bar were excluded (their size is unknown)."
                 if rule.get("edge_particles_excluded") else
                 "Particles touching the image border were counted (their sizes may be truncated)."]
        if classifier.get("ran"):
            model = classifier.get("model") or "model file not recorded"
            by_area = classifier.get("score_thresholds_by_area")
            above = (f"{classifier.get('score_threshold'):.3g}" if not by_area else
                     "the threshold of its area (" + ", ".join(f"{t:.3g} from {a:.0f} px" for a, t in by_area) + ")")
            parts.append(f"Partly covered particles were excluded by the keep/discard classifier ({model}): a "
                         f"particle was counted only when its mean keep score was above {above}"
                         + (f" ({classifier['threshold_source']})" if classifier.get("threshold_source") else "") + ".")
        else:
            parts.append("Partly covered particles were not excluded: no classifier ran, and no rule detects "
                         "occlusion.")
        others = [r for r in rules if r["name"] not in ("touches_border", "score_below_threshold")]
        if others:
            parts.append("Also discarded were particles " + "; particles ".join(r["discards"] for r in others) + ".")
        else:
            parts.append("No other rule discarded particles.")
        names = ", ".join(r["name"] for r in rules) or "none"
        parts.append(f"Method: {'classifier and rules' if classifier.get('ran') else 'rules only'} "
                     f"(rule set: {names}).")
    pixel_size = rule.get("pixel_size_nm")
    source = rule.get("pixel_size_source", "unknown")
    if pixel_size is None:
        parts.append(f"No pixel size was known ({source}), so sizes are in px.")
    else:
        parts.append(f"Sizes were converted with a pixel size of {_pixel_text(pixel_size)}, from {source}.")
    return " ".join(parts)


def _particle_table(particles: pd.DataFrame, max_rows: int) -> str:
    cols = [c for c in REPORT_COLUMNS if c in particles.columns and not particles[c].isna().all()]
    shown = particles.head(max_rows)
    rows = shown[cols].itertuples(index=False, name=None)
    return html_table(cols, list(rows), text_columns=(cols.index("image"),) if "image" in cols else ())


def render_report(
    summary: Mapping[str, Any],
    particles: pd.DataFrame,
    *,
    figures: Mapping[str, str | Path] | None = None,
    overlays: Mapping[str, str | Path] | None = None,
    max_rows: int = 50,
    max_overlays: int = 12,
    title: str = "nanoseg particle size report",
) -> str:
    """Render the measurement report as one self-contained HTML page.

    Parameters
    ----------
    summary : mapping
        The content of ``summary.json`` (see :func:`nanoseg.measure.write_results`).
    particles : pandas.DataFrame
        The particles with ``kept`` and ``reason`` (at least the first ``max_rows``, which are
        listed; ``summary['n_particles']`` says how many there are in all).
    figures : mapping of name -> PNG path, optional
        Histograms (and the comparison plot), embedded in order.
    overlays : mapping of image name -> PNG path, optional
        Overlays (kept particles green, discarded red); the first ``max_overlays`` are
        embedded, downscaled to 800 px wide.
    max_rows, max_overlays : int
        Limits that keep the file small; everything is in the files beside it.
    title : str
        Page title.

    Returns
    -------
    str
        The HTML document.
    """
    esc = html.escape
    figures = dict(figures or {})
    overlays = dict(overlays or {})
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f"<p>Generated {esc(_dt.datetime.now().strftime('%Y-%m-%d %H:%M'))} by nanoseg.</p>"]

    pixel_text = _pixel_text(summary.get("pixel_size_nm"))
    prior = summary.get("size_prior", "unknown")
    prior_text = ", ".join(f"{k} = {v}" for k, v in prior.items()) if isinstance(prior, Mapping) else str(prior)
    if summary.get("size_prior_configured"):
        prior_text += f" (configured: masks.size_prior = {summary['size_prior_configured']})"
    reasons = summary.get("discard_reasons") or {}
    overview = [
        ["images", summary.get("n_images")],
        ["particles found", summary.get("n_particles")],
        ["particles kept", summary.get("n_kept")],
        ["particles discarded", summary.get("n_discarded")],
        ["pixel size", pixel_text],
        ["pixel size source", summary.get("pixel_size_source", "unknown")],
        ["size prior of the training masks", prior_text],
    ]
    if summary.get("classify_method"):
        overview.append(["keep/discard method", summary["classify_method"]])
    realism = summary.get("realism")
    if isinstance(realism, Mapping) and realism.get("classifier_accuracy") is not None:
        overview.append(["realism of the training micrographs",
                         f"{realism.get('translator', 'translator')}: a small network tells fake tiles from real "
                         f"ones with {100 * realism['classifier_accuracy']:.0f} % held-out accuracy (50 % = it "
                         f"cannot tell them apart); intensity histogram distance "
                         f"{realism.get('histogram_distance', float('nan')):.3f}, power-spectrum distance "
                         f"{realism.get('spectrum_distance_decades', float('nan')):.2f} decades"])
    adaptation = summary.get("adaptation")
    if isinstance(adaptation, list):
        overview.append(["self-training on these micrographs", "off (adapt.rounds 0)" if not adaptation else "; ".join(
            f"round {r.get('round')}: {r.get('pseudo_labelled')} of {r.get('particles')} particles as pseudo-labels, "
            f"{100 * float(r.get('ignored_fraction') or 0):.0f} % of pixels ignored" for r in adaptation)])
    warnings = summary.get("warnings") or []
    if warnings:
        items = "".join(f"<li>{esc(str(w))}</li>" for w in warnings)
        parts += ["<h2>Warnings</h2>", f"<ul class='warnings' id='warnings'>{items}</ul>"]
    parts += ["<h2>Overview</h2>", html_table(["item", "value"], overview, text_columns=(0, 1))]
    rule = summary.get("counting_rule")
    if rule is not None:
        parts += ["<h2>Counting rule</h2>", f"<p class='statement' id='counting-rule'>{esc(counting_rule_text(rule))}</p>"]

    ec = summary.get("ec_definition") or {}
    parts += ["<h2>EC nanomaterial definition</h2>",
              f"<p class='statement' id='ec-statement'>{esc(ec.get('statement', 'not checked'))}</p>"]

    descriptors = summary.get("descriptors") or {}
    parts += ["<h2>Size distribution (kept particles, number-based)</h2>", _summary_table(descriptors)]
    uncertainty = uncertainty_text(descriptors)
    if uncertainty:
        parts.append(f"<p id='uncertainty'>{esc(uncertainty)}</p>")
    if reasons:
        parts += ["<h3>Why particles were discarded</h3>",
                  html_table(["reason", "particles"], sorted(reasons.items(), key=lambda kv: -kv[1]), text_columns=(0,))]

    comparison = summary.get("comparison")
    if comparison:
        parts += ["<h2>Comparison</h2>",
                  html_table(["", comparison.get("name_a", "a"), comparison.get("name_b", "b")],
                             [["particles", comparison["n_a"], comparison["n_b"]],
                              ["mean", comparison["mean_a"], comparison["mean_b"]],
                              ["median", comparison["median_a"], comparison["median_b"]]]),
                  f"<p>Two-sample Kolmogorov-Smirnov test on {esc(str(comparison.get('column', '')))}: "
                  f"D = {comparison['ks_statistic']:.3f}, p = {comparison['p_value']:.3g}.</p>"]

    if figures:
        imgs = "".join(f"<img src='{image_data_uri(p)}' alt='{esc(name)} histogram'>" for name, p in figures.items())
        parts += ["<h2>Histograms</h2>", f"<div class='figs'>{imgs}</div>"]

    if overlays:
        parts += ["<h2>Overlays</h2>",
                  "<p><span class='kept'>green</span>: kept, <span class='discarded'>red</span>: discarded.</p>"]
        for name, path in list(overlays.items())[:max_overlays]:
            parts.append(f"<figure class='overlay'><img src='{image_data_uri(path, 800)}' alt='overlay {esc(name)}'>"
                         f"<figcaption>{esc(name)}</figcaption></figure>")
        if len(overlays) > max_overlays:
            parts.append(f"<p>{len(overlays) - max_overlays} more overlays are in the overlays/ folder.</p>")

    n = summary.get("n_particles", len(particles))
    parts += [f"<h2>Particles (first {min(max_rows, len(particles), n)} of {n}; all in particles.csv)</h2>",
              _particle_table(particles, max_rows), "</body></html>"]
    return "\n".join(parts)
