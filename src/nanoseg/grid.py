"""The working grid: the pixel size at which a run learns and segments.

Every length in pixels of the workflow (the settings ending in ``_px``, the networks' receptive
fields, the renderer's blur, the thresholds of the density estimate) was chosen on the TiO2 SEM
micrographs, whose outlines are about :data:`REFERENCE_OUTLINE_ECD_PX` px across. Rather than
scale each of them, a run whose particles are much smaller or larger in pixels resamples its
micrographs and outlines so that the particles are that size again: every stage then sees what
the defaults were made for. The segmentation net records the pixel size it learned at, and
applying it (the run's own images or any other) resamples each micrograph to it and brings the
labels back (:func:`nanoseg.segment.segment_at_model_scale`), so outputs stay on the
micrographs' own pixels and sizes in nm do not depend on the working grid.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from nanoseg.errors import NanosegError
from nanoseg.io import outline_median_ecd_px
from nanoseg.runtime import log_once

logger = logging.getLogger("nanoseg.grid")

#: Median equivalent diameter of the 40 TiO2 outlines (32.2 px at 7.34 nm/px), for which the
#: defaults were chosen.
REFERENCE_OUTLINE_ECD_PX = 32.0
#: Particles within this factor of the reference size are taken as they are: the defaults hold
#: there (measured at 0.5x: +10 % sizes, -22 % count; at 1x the reference), and not resampling
#: keeps such runs exactly as before.
TOLERANCE = 1.25
#: The most a run enlarges its micrographs: 4x is 16x the pixels (a 1024x768 micrograph becomes
#: 4096x3072, 48 MB as float32); smaller particles are too few pixels to learn their outline from.
MAX_UPSCALE = 4.0
#: The most a run shrinks its micrographs.
MAX_DOWNSCALE = 8.0


def working_scale(config: Any) -> float:
    """Factor by which a run resamples its micrographs and outlines (1: not at all).

    ``data.working_scale`` when set to a number; with 'auto' (the default) the factor that brings
    the outlines' median diameter (:func:`nanoseg.io.outline_median_ecd_px`) to
    :data:`REFERENCE_OUTLINE_ECD_PX`, or else ``data.expected_size_nm`` in px of
    ``data.pixel_size_nm``, and 1 when neither is known or the factor is within
    :data:`TOLERANCE` of 1.

    Raises
    ------
    NanosegError
        If the outlines cannot be read, or the particles are so small that more than
        :data:`MAX_UPSCALE` would be needed.
    """
    data = config.data
    if data.working_scale != "auto":
        return float(data.working_scale)
    if data.outlines is not None:
        diameter, source = _outline_diameter(*_signature(Path(data.outlines))), f"the outlines in {data.outlines}"
    elif data.expected_size_nm is not None and data.pixel_size_nm is not None:
        diameter, source = data.expected_size_nm / data.pixel_size_nm, "data.expected_size_nm"
    else:
        return 1.0
    factor = REFERENCE_OUTLINE_ECD_PX / diameter
    if 1 / TOLERANCE <= factor <= TOLERANCE:
        return 1.0
    if factor > MAX_UPSCALE:
        raise NanosegError(
            f"{data.outlines if data.outlines is not None else 'data.expected_size_nm'}: particles about "
            f"{diameter:.1f} px across are too small to learn their shapes from (at least "
            f"{REFERENCE_OUTLINE_ECD_PX / MAX_UPSCALE:g} px): take the micrographs at a higher magnification, or set "
            "data.working_scale to enlarge them more")
    factor = max(factor, 1 / MAX_DOWNSCALE)
    log_once(logger, logging.INFO, "working grid: particles about %.1f px across (%s); the run resamples micrographs "
             "and outlines %.3gx so that they are %g px, as the defaults expect (data.working_scale)",
             diameter, source, factor, REFERENCE_OUTLINE_ECD_PX)
    return float(factor)


def _signature(path: Path) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    """The outlines' path and the name, size and mtime of each file: a changed outline is read again."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path] if path.exists() else []
    return str(path.resolve()), tuple((p.name, (st := p.stat()).st_size, st.st_mtime_ns) for p in files)


# Every stage of a run asks for the scale; reading the outlines takes about a second each time.
@functools.lru_cache(maxsize=8)
def _outline_diameter(path: str, _files: tuple[tuple[str, int, int], ...]) -> float:
    return outline_median_ecd_px(path)
