"""Reading the user's single-particle outlines, the input of the shapes stage.

The user gives ~40 rough outlines of single particles in one of three forms: a folder of small
binary images (one particle each, white on black, or black on white), a mask image with a few
painted particles, or an ImageJ/Fiji ROI file or set. :func:`load_outlines` turns any of them
into a stack of filled, centred particles; :func:`write_outline_folder` writes such a stack as
an outline folder (``nanoseg shapes import``).

scikit-image, SciPy and the image readers are imported when an outline is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nanoseg.errors import NanosegError
from nanoseg.io.write import write_png
from nanoseg.plots import contact_sheet

#: Outline image files (a folder may also hold :data:`ROI_SUFFIXES` files).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".gif")
ROI_SUFFIXES = (".roi", ".zip")
#: Name stem of the contact sheet written beside the outlines (skipped when reading a folder).
CONTACT_SHEET = "contact_sheet"
MIN_SHAPE_PX = 8  # smaller blobs are noise, not particles


def _read_gray(path: Path) -> np.ndarray:
    """Read an image as a 2-D array of raw values (palette indices stay indices)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            image = tifffile.imread(path)
        else:
            import imageio.v3 as iio

            image = iio.imread(path)
    except Exception as exc:  # the readers raise many types for broken files
        raise NanosegError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    image = np.asarray(image)
    image = np.squeeze(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3].max(axis=-1)  # coloured outlines: any bright channel counts
    if image.ndim != 2:
        raise NanosegError(f"{path}: expected a 2-D image, got shape {image.shape}")
    return image


def binarize_outline(image: np.ndarray) -> np.ndarray:
    """Binary foreground of a drawn outline/mask image: white on black, or inverted when drawn black on white.

    Two-level images split between their levels; anything else at Otsu's threshold.
    """
    image = np.asarray(image, dtype=np.float64)
    levels = np.unique(image)
    if levels.size <= 1:
        return np.zeros(image.shape, bool)
    if levels.size == 2:
        binary = image > levels[0]
    else:
        from skimage.filters import threshold_otsu

        binary = image > threshold_otsu(image)
    border = np.concatenate([binary[0], binary[-1], binary[:, 0], binary[:, -1]])
    if border.mean() > 0.5:  # drawn black on white
        binary = ~binary
    return binary


def center_shape(mask: np.ndarray, size: int, margin_px: int = 1) -> np.ndarray:
    """Crop a single particle to its bounding box and centre it in a ``size`` x ``size`` square.

    Particles larger than the square (less ``margin_px`` on each side) are scaled down, keeping
    their aspect ratio; smaller ones are padded, never enlarged, so their size in px is kept.

    Parameters
    ----------
    mask : (H, W) bool array
        One particle (other pixels background).
    size : int
        Side of the output square in px.
    margin_px : int
        Background pixels kept on every side so that the shape does not touch the border.

    Returns
    -------
    (size, size) bool array
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return np.zeros((size, size), bool)
    crop = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    room = size - 2 * margin_px
    if max(crop.shape) > room:
        from skimage.transform import resize

        factor = room / max(crop.shape)
        new_shape = tuple(max(1, round(s * factor)) for s in crop.shape)
        crop = resize(crop.astype(np.float32), new_shape, order=1, anti_aliasing=True) >= 0.5
    out = np.zeros((size, size), bool)
    top, left = (size - crop.shape[0]) // 2, (size - crop.shape[1]) // 2
    out[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
    return out


def _particles_in_mask(binary: np.ndarray, path: Path) -> list[np.ndarray]:
    """Cut a mask with painted particles into single filled particles (border and tiny blobs dropped)."""
    from scipy import ndimage as ndi
    from skimage import measure

    labels = measure.label(binary, connectivity=1)
    out = []
    for region in measure.regionprops(labels):
        r0, c0, r1, c1 = region.bbox
        if region.area < MIN_SHAPE_PX or r0 == 0 or c0 == 0 or r1 == binary.shape[0] or c1 == binary.shape[1]:
            continue
        out.append(ndi.binary_fill_holes(region.image))
    if not out:
        raise NanosegError(f"{path}: no whole particle found (paint particles white on black, not touching the border)")
    return out


def _read_outline_image(path: Path) -> np.ndarray:
    """One small outline image -> one filled particle (the largest blob)."""
    from scipy import ndimage as ndi
    from skimage import measure

    binary = binarize_outline(_read_gray(path))
    labels = measure.label(binary, connectivity=1)
    if labels.max() == 0:
        raise NanosegError(f"{path}: empty outline (no white pixels); draw the particle white on black")
    largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    if largest.sum() < MIN_SHAPE_PX:
        raise NanosegError(f"{path}: outline smaller than {MIN_SHAPE_PX} px; draw the whole particle")
    return ndi.binary_fill_holes(largest)


def _read_rois(path: Path) -> list[np.ndarray]:
    """ImageJ/Fiji ROI (.roi) or ROI set (.zip) -> rasterised particles."""
    import roifile
    from skimage.draw import polygon

    try:
        rois = roifile.roiread(path)
    except Exception as exc:
        raise NanosegError(f"{path}: not a readable ImageJ ROI file ({type(exc).__name__}: {exc})") from None
    rois = rois if isinstance(rois, list) else [rois]
    out = []
    for roi in rois:
        coords = np.asarray(roi.coordinates(), dtype=np.float64)
        if coords.ndim != 2 or len(coords) < 3:
            continue  # points and lines have no area
        coords -= coords.min(axis=0) - 1  # (x, y), one pixel of margin
        shape = (int(np.ceil(coords[:, 1].max())) + 2, int(np.ceil(coords[:, 0].max())) + 2)
        mask = np.zeros(shape, bool)
        rr, cc = polygon(coords[:, 1], coords[:, 0], shape)
        mask[rr, cc] = True
        if mask.sum() >= MIN_SHAPE_PX:
            out.append(mask)
    if not out:
        raise NanosegError(f"{path}: no polygon ROI with an area found (use polygon, freehand, oval or rectangle ROIs)")
    return out


def _read_particles(path: str | Path) -> list[np.ndarray]:
    """The filled single particles of an outline source, at the micrographs' pixel size."""
    path = Path(path)
    if not path.exists():
        raise NanosegError(f"{path}: outlines not found (give a folder of outline images, a mask image or an ImageJ ROI set)")
    particles: list[np.ndarray] = []
    if path.is_dir():
        # The contact sheet that `nanoseg shapes import` writes beside the outlines is no outline.
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith((".", CONTACT_SHEET))
                       and p.suffix.lower() in IMAGE_SUFFIXES + ROI_SUFFIXES)
        if not files:
            raise NanosegError(f"{path}: no outline images ({', '.join(IMAGE_SUFFIXES)}) or ROI files found")
        for file in files:
            if file.suffix.lower() in ROI_SUFFIXES:
                particles += _read_rois(file)
            else:
                particles.append(_read_outline_image(file))
    elif path.suffix.lower() in ROI_SUFFIXES:
        particles = _read_rois(path)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        particles = _particles_in_mask(binarize_outline(_read_gray(path)), path)
    else:
        raise NanosegError(f"{path}: unsupported outline file type (use a folder of images, an image, .roi or .zip)")
    return particles


def load_outlines(path: str | Path, size: int = 64, scale: float = 1.0) -> np.ndarray:
    """Load single-particle outlines in any of the supported forms.

    Parameters
    ----------
    path : path
        A folder of small binary images (one particle each, white on black), a single mask image
        with several painted particles, or an ImageJ/Fiji ROI file (``.roi``) or set (``.zip``).
        A folder may also hold ROI files; files named ``contact_sheet*`` are skipped.
    size : int
        Side of the square outputs in px. Particles are centred and padded, or scaled down if
        they do not fit.
    scale : float
        Resample each particle by this factor first: the outlines at the pixel size a run works
        at (:func:`nanoseg.grid.working_scale`) when that is not the micrographs'.

    Returns
    -------
    (N, size, size) bool array
        Filled single particles.

    Raises
    ------
    NanosegError
        If the path does not exist, holds no usable outline, or a file is unreadable or empty.
    """
    particles = _read_particles(path)
    if scale != 1.0:
        from skimage.transform import resize

        particles = [resize(p.astype(np.float32), tuple(max(1, round(n * scale)) for n in p.shape), order=1,
                            anti_aliasing=scale < 1) >= 0.5 for p in particles]
    return np.stack([center_shape(p, size) for p in particles])


def outline_median_ecd_px(path: str | Path) -> float:
    """Median equivalent circular diameter of the outlines in px of the micrographs they were drawn on.

    Raises
    ------
    NanosegError
        As :func:`load_outlines`.
    """
    areas = [float(p.sum()) for p in _read_particles(path)]
    return float(np.sqrt(4 * np.median(areas) / np.pi))


def write_outline_folder(shapes: np.ndarray, folder: str | Path) -> list[Path]:
    """Write shapes as ``outline_000.png`` ... (0/255) plus ``contact_sheet.png`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, shape in enumerate(shapes):
        paths.append(write_png(folder / f"outline_{i:03d}.png", shape.astype(np.uint8) * 255))
    write_png(folder / f"{CONTACT_SHEET}.png", contact_sheet(shapes))
    return paths
