"""Registers each stage's command group on the main app.

Every stage's commands live in ``nanoseg/cli/<stage>.py`` as a ``typer.Typer`` named ``app``
(and a few, such as ``measure``, ``evaluate`` and ``compare-sizes``, as top-level commands named ``command``).
"""

from __future__ import annotations

import importlib

import typer

# (module, name on the command line, help)
GROUPS = (
    ("nanoseg.cli.io_cmd", "info", None),
    ("nanoseg.cli.shapes", "shapes", "Stage 1: import outlines, learn shapes (WGAN-GP), sample them."),
    ("nanoseg.cli.masks", "masks", "Stage 2: assemble fake segmentation masks."),
    ("nanoseg.cli.translate", "translate", "Stages 3-4: masks -> micrographs (CycleGAN / renderer), training pairs."),
    ("nanoseg.cli.segment", "segment", "Stage 5: train the segmentation net, segment micrographs."),
    ("nanoseg.cli.classify", "classify", "Stage 6: keep/discard classifier."),
    ("nanoseg.cli.measure", "measure", None),
    ("nanoseg.cli.evaluate", "evaluate", None),
    ("nanoseg.cli.compare_sizes", "compare-sizes", None),
    ("nanoseg.cli.baseline", "baseline", "Baselines the paper compares: TSEM-derived training masks (baseline c)."),
)


def register(app: typer.Typer) -> None:
    """Attach whatever stage command modules exist."""
    for module_name, name, help_text in GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # that stage has no commands yet
            raise
        if hasattr(module, "app"):
            app.add_typer(module.app, name=name, help=help_text)
        else:
            app.command(name)(module.command)
