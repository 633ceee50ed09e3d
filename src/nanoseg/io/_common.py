"""What the modules of :mod:`nanoseg.io` share: their logger (``nanoseg.io``) and helpers."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger("nanoseg.io")


def _say_once(level: int, msg: str, *args: Any) -> None:
    # Every stage of a run reads the micrographs again; one warning per stage buries the others.
    from nanoseg.runtime import log_once

    log_once(logger, level, msg, *args)


@contextmanager
def _quiet(*logger_names: str) -> Iterator[None]:
    """Silence third-party loggers that report, on stderr, what we raise as one clear error."""
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

