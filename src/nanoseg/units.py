"""Lengths and pixel sizes: the unit table and the one check of a pixel size's plausibility.

Light on purpose (no numpy): the config and the command line check pixel sizes before anything
heavy is imported.
"""

from __future__ import annotations

import math

from nanoseg.errors import NanosegError

#: Length units to nm: the one unit table (pixel-size metadata, ``--pixel-size``, ImageJ tables).
#: Keys are lower case, with the spellings ImageJ, OME and RosettaSciIO use.
UNIT_NM: dict[str, float] = {
    "m": 1e9, "meter": 1e9, "metre": 1e9,
    "cm": 1e7, "centimeter": 1e7,
    "mm": 1e6, "millimeter": 1e6,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "microns": 1e3, "micrometer": 1e3, "\\u00b5m": 1e3,
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0,
    "a": 0.1, "å": 0.1, "angstrom": 0.1, "ångström": 0.1,
    "pm": 1e-3, "picometer": 1e-3,
}

#: Pixel sizes an electron micrograph can have, in nm: from atomic-resolution TEM (a few pm) to
#: SEM overviews (a few µm), with a decade to spare either way. Outside it a "pixel size" is a
#: print resolution (72 dpi is 3.5e5 nm), a unit typo or an overflow, never a calibration.
PIXEL_SIZE_RANGE_NM: tuple[float, float] = (1e-4, 1e5)


def check_pixel_size_nm(value: float, what: str) -> float:
    """``value`` as a float when it is a plausible pixel size in nm, else one clear error.

    Parameters
    ----------
    value : float
        Pixel size in nm.
    what : str
        Where it came from, for the message: ``"--pixel-size '2.5um'"``, ``"data.pixel_size_nm"``,
        ``"<file>: pixel size in the metadata"``.

    Raises
    ------
    NanosegError
        If ``value`` is not a finite number inside :data:`PIXEL_SIZE_RANGE_NM`.
    """
    lo, hi = PIXEL_SIZE_RANGE_NM
    try:
        nm = float(value)
    except (TypeError, ValueError, OverflowError):
        raise NanosegError(f"{what}: {value!r} is not a number of nm") from None
    if not math.isfinite(nm) or nm <= 0:
        raise NanosegError(f"{what}: must be a positive, finite length (got {value!r})")
    if not lo <= nm <= hi:
        raise NanosegError(f"{what}: {nm:g} nm per pixel is outside the plausible {lo:g}-{hi:g} nm "
                           "(check the unit, or give the pixel size with --pixel-size / data.pixel_size_nm)")
    return nm
