"""Reading and writing micrographs, masks and label images, with their pixel size.

Every micrograph enters the workflow through :func:`read_micrograph`: a 2-D float32 image in
[0, 1] with the instrument's info bar cropped off, plus the pixel size in nm and where it came
from. Formats: TIFF (8/16/32-bit integer, float), PNG, JPEG, BMP; RGB(A) is converted to gray;
and the transmission vendors' formats through RosettaSciIO (:mod:`nanoseg.io.vendor`): Gatan
DigitalMicrograph (.dm3, .dm4), EMD (Velox, Berkeley), TIA (.ser; .emi by name) and MRC, each
holding one 2-D image (a stack, a spectrum or several images is refused with what the file holds).

Pixel size, first found wins:

1. an explicit override (``data.pixel_size_nm``, ``--pixel-size``);
2. the vendor metadata that RosettaSciIO's TIFF reader understands (Zeiss tag 34118,
   FEI/Thermo Fisher tag 34682, Olympus, JEOL, Hitachi, ImageJ in microns, ...);
3. OME-TIFF ``PhysicalSizeX`` (+ ``PhysicalSizeXUnit``, default µm);
4. ImageJ resolution tags with the ``unit=`` of the ImageJ description (nm, micron, ...);
5. baseline TIFF resolution tags in centimetres;
6. a Hitachi or JEOL text file beside the image (same name, ``.txt``), for any image format.

Vendor files take their pixel size from the image's calibrated axes instead of 2.-5. (source
'dm', 'emd', 'tia' or 'mrc'), checked alike.

Inch-based resolution tags are print settings (72 dpi and the like), never a pixel size, and are
ignored. Without any of these a warning is logged and sizes are reported in px. A pixel size found
in the metadata must be plausible (:func:`nanoseg.units.check_pixel_size_nm`) and, where the
metadata has both axes, square (x and y within 1 %); otherwise reading that file fails with one
clear error that asks for ``--pixel-size`` / ``data.pixel_size_nm``, which is taken as square.

Images read through Pillow (PNG, JPEG, BMP) are turned upright by their EXIF orientation.

The package's modules: :mod:`nanoseg.io.read` (the :class:`Micrograph`, listing and loading a
run's images, reading one), :mod:`nanoseg.io.raw` (the stored pixel values: TIFF, Pillow and vendor
readers, info bar detection), :mod:`nanoseg.io.scale` (one intensity scale for a series: bit
depths, :func:`robust_range`, :func:`to_float01`), :mod:`nanoseg.io.pixel_size` (the search above:
:func:`read_pixel_size_nm`, :func:`pixel_size_with_source`, :data:`UNIT_NM`),
:mod:`nanoseg.io.annotations` (masks, label images, :func:`read_annotation`) and
:mod:`nanoseg.io.write` (:func:`write_tiff`, :func:`write_png`), :mod:`nanoseg.io.resample` (an image
at another pixel size) and :mod:`nanoseg.io.outlines` (the user's single-particle outlines:
:func:`load_outlines`, :func:`outline_median_ecd_px`, :func:`write_outline_folder`); ``_common``
holds the logger and helpers they share. Everything is imported from ``nanoseg.io`` itself.
"""

from nanoseg.io._common import logger
from nanoseg.io.annotations import (
    ANNOTATION_KINDS,
    AnnotationKind,
    label_image_doubt,
    looks_antialiased,
    read_annotation,
    read_labels,
    read_mask,
)
from nanoseg.io.outlines import (
    MIN_SHAPE_PX,
    ROI_SUFFIXES,
    binarize_outline,
    center_shape,
    load_outlines,
    outline_median_ecd_px,
    write_outline_folder,
)
from nanoseg.io.pixel_size import UNIT_NM, pixel_size_with_source, read_pixel_size_nm
from nanoseg.io.raw import IMAGE_SUFFIXES, MIN_SIDE_PX, detect_info_bar, read_raw
from nanoseg.io.read import (
    BLANK_STD,
    Micrograph,
    list_images,
    load_micrographs,
    nothing_usable,
    read_in_series,
    read_micrograph,
    read_micrographs,
    scan_micrograph,
    skip_or_raise,
)
from nanoseg.io.resample import resample
from nanoseg.io.scale import (
    DARK_BRIGHT_FRACTION,
    FrameStats,
    SeriesScale,
    bits_for_max,
    bright_fraction,
    robust_range,
    series_scale,
    to_float01,
)
from nanoseg.io.vendor import VENDOR_SUFFIXES
from nanoseg.io.write import write_png, write_tiff

__all__ = [
    "DARK_BRIGHT_FRACTION",
    "ANNOTATION_KINDS",
    "AnnotationKind",
    "binarize_outline",
    "bits_for_max",
    "BLANK_STD",
    "bright_fraction",
    "center_shape",
    "detect_info_bar",
    "FrameStats",
    "IMAGE_SUFFIXES",
    "list_images",
    "load_micrographs",
    "load_outlines",
    "logger",
    "label_image_doubt",
    "looks_antialiased",
    "Micrograph",
    "MIN_SHAPE_PX",
    "MIN_SIDE_PX",
    "nothing_usable",
    "outline_median_ecd_px",
    "pixel_size_with_source",
    "read_annotation",
    "read_in_series",
    "read_labels",
    "read_mask",
    "read_micrograph",
    "read_micrographs",
    "read_pixel_size_nm",
    "read_raw",
    "resample",
    "robust_range",
    "ROI_SUFFIXES",
    "scan_micrograph",
    "series_scale",
    "SeriesScale",
    "skip_or_raise",
    "to_float01",
    "UNIT_NM",
    "VENDOR_SUFFIXES",
    "write_outline_folder",
    "write_png",
    "write_tiff",
]
