"""What the modules of :mod:`nanoseg.io` share: their logger (``nanoseg.io``) and helpers."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nanoseg.runtime import log_once

logger = logging.getLogger("nanoseg.io")


def say_once(level: int, msg: str, *args: Any) -> None:
    """Log ``msg`` on the ``nanoseg.io`` logger once per process (:func:`nanoseg.runtime.log_once`)."""
    # Every stage of a run reads the micrographs again; one warning per stage buries the others.
    log_once(logger, level, msg, *args)


@contextmanager
def quiet(*logger_names: str) -> Iterator[None]:
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

