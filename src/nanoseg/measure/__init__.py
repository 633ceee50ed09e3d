"""Stage 7: calibrated particle measurements, number-based size distributions and the report.

The particles of each label image are measured by :mod:`nanoseg.particles` (its docstring
states the geometry conventions: Feret diameters, perimeter, ECD); this module pools them
into size distributions with bootstrap confidence intervals, applies the classify
decisions, and writes the tables, figures, overlays and the HTML report.

The package's modules: :mod:`nanoseg.measure.distributions` (size statistics: descriptor
columns, the log-normal fit, the bootstrap confidence intervals, :func:`size_summary`, the EC
definition check and the KS comparison), :mod:`nanoseg.measure.figures` (histograms,
comparison plots and the kept/discarded overlays), :mod:`nanoseg.measure.table` (measuring and
classifying a set of label images, joining the classify decisions, the keep/discard network and
settings, :class:`ParticleTable`), :mod:`nanoseg.measure.batch` (one task per micrograph, in this
process or on Dask workers, with per-image markers so a batch resumes),
:mod:`nanoseg.measure.report` (the HTML report), :mod:`nanoseg.measure.stage` (writing the
results and the report, the pipeline stage :func:`run_stage`, :func:`measure_files` for
``nanoseg measure`` and :func:`read_particles_csv`) and :mod:`nanoseg.measure.tables` (size tables
of any source, a particles.csv or an ImageJ/Fiji Results table: :func:`read_size_table`, and
:func:`compare_size_tables` for ``nanoseg compare-sizes``). Everything is imported
from ``nanoseg.measure`` itself.
"""

from nanoseg.measure.batch import measure_batch, pooled_table
from nanoseg.measure.distributions import (
    BOOTSTRAP_RESAMPLES,
    EC_LIMIT_NM,
    MAIN_DESCRIPTORS,
    MIN_IMAGES_CLUSTER_BOOTSTRAP,
    MIN_PARTICLES_STABLE_MEDIAN,
    bootstrap_ci,
    compare_distributions,
    descriptor_column,
    ec_definition_check,
    fit_lognormal,
    median_window,
    pooled_statistics,
    resample_counts,
    size_summary,
)
from nanoseg.measure.figures import DISCARDED_RGB, KEPT_RGB, overlay_kept, plot_comparison, plot_histogram
from nanoseg.measure.stage import (
    left_out_warning,
    logger,
    measure_files,
    pixel_size_source,
    read_particles_csv,
    results_settings,
    run_stage,
    size_prior_fallbacks,
    write_results,
)
from nanoseg.measure.table import (
    KEPT_COLUMNS,
    ParticleTable,
    classifier_settings,
    join_decisions,
    load_classifier,
    measure_and_decide,
)
from nanoseg.measure.tables import IMAGEJ_COLUMNS, SIZE_DESCRIPTORS, compare_size_tables, read_size_table, size_column

__all__ = [
    "KEPT_COLUMNS",
    "ParticleTable",
    "BOOTSTRAP_RESAMPLES",
    "DISCARDED_RGB",
    "EC_LIMIT_NM",
    "KEPT_RGB",
    "MAIN_DESCRIPTORS",
    "MIN_IMAGES_CLUSTER_BOOTSTRAP",
    "MIN_PARTICLES_STABLE_MEDIAN",
    "bootstrap_ci",
    "IMAGEJ_COLUMNS",
    "SIZE_DESCRIPTORS",
    "compare_distributions",
    "compare_size_tables",
    "descriptor_column",
    "ec_definition_check",
    "fit_lognormal",
    "join_decisions",
    "left_out_warning",
    "classifier_settings",
    "load_classifier",
    "logger",
    "measure_and_decide",
    "measure_batch",
    "pooled_table",
    "measure_files",
    "median_window",
    "overlay_kept",
    "pixel_size_source",
    "plot_comparison",
    "plot_histogram",
    "pooled_statistics",
    "read_particles_csv",
    "read_size_table",
    "resample_counts",
    "results_settings",
    "run_stage",
    "size_prior_fallbacks",
    "size_column",
    "size_summary",
    "write_results",
]
