"""Synthetic demo data: SEM-like micrographs of agglomerated particles, with ground truth.

:func:`make_demo_data` writes a folder that looks like a user's data set::

    out/
      README.txt
      images/demo_00.tif ...   8-bit SEM-like micrographs with an info bar at the bottom and the
                               pixel size in the TIFF tags
      outlines/outline_00.tif  40 hand-drawn-like 64x64 outlines of single particles (0/255)
      masks/demo_00_m.tif      ground truth, 0/255, touching particles separated by 1-px lines
                               (same size as the image, info bar rows black)
      labels/demo_00.tif       ground truth instances (uint16), equal to 4-connected labels of the mask

Particles are non-spherical blobs (Fourier-perturbed ellipses, random orientation) grown into
agglomerates, some of them overlapping; the micrographs are rendered with
:func:`nanoseg.translate.render.render_sem`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from nanoseg.atomic import write_text
from nanoseg.io import write_tiff
from nanoseg.labels import cut_touching
from nanoseg.translate.render import RenderParams, render_sem

logger = logging.getLogger("nanoseg.demo")

DEMO_PIXEL_SIZE_NM = 2.5
DEMO_INFO_BAR_ROWS = 48
DEMO_ECD_PX = (20.0, 30.0)
DEMO_PARTICLES_PER_IMAGE = (80, 150)
N_OUTLINES = 40
OUTLINE_SIZE_PX = 64
_MIN_VISIBLE_AREA_PX = 30


def make_demo_data(
    out_dir: str | Path,
    n_images: int = 6,
    seed: int = 0,
    shape: tuple[int, int] = (768, 1024),
) -> Path:
    """Write demo micrographs, user-like outlines and ground truth into ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        Folder to create (existing files of the same names are replaced).
    n_images : int
        Number of micrographs.
    seed : int
        Seed; the same seed gives the same files.
    shape : (int, int)
        Height and width of each micrograph in px, info bar included.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out = Path(out_dir)
    height, width = shape
    if height < DEMO_INFO_BAR_ROWS + 64 or width < 64:
        raise ValueError(f"demo images need at least {DEMO_INFO_BAR_ROWS + 64}x64 px, got {shape}")
    rng = np.random.default_rng(seed)
    sample_shape = (height - DEMO_INFO_BAR_ROWS, width)
    # Fewer particles on smaller images, at the same density as on 768x1024.
    density = sample_shape[0] * sample_shape[1] / (720 * 1024)
    lo, hi = (max(3, round(n * density)) for n in DEMO_PARTICLES_PER_IMAGE)
    for i in range(n_images):
        name = f"demo_{i:02d}"
        n_particles = int(rng.integers(lo, hi + 1))
        labels_full = place_agglomerates(sample_shape, n_particles, rng)
        params = _image_params(rng)
        image = render_sem(labels_full, params, rng)
        labels = separate_instances(labels_full)
        image_u8 = np.round(image * 255).astype(np.uint8)
        full = np.vstack([image_u8, draw_info_bar((DEMO_INFO_BAR_ROWS, width), rng, name)])
        pad = np.zeros((DEMO_INFO_BAR_ROWS, width), np.uint16)
        write_tiff(out / "images" / f"{name}.tif", full, pixel_size_nm=DEMO_PIXEL_SIZE_NM)
        write_tiff(out / "labels" / f"{name}.tif", np.vstack([labels, pad]).astype(np.uint16))
        write_tiff(out / "masks" / f"{name}_m.tif", np.vstack([labels, pad]) > 0)
        logger.debug("%s: %d particles", name, int(labels.max()))
    for j, outline in enumerate(make_outlines(N_OUTLINES, rng)):
        write_tiff(out / "outlines" / f"outline_{j:02d}.tif", outline)
    write_text(out / "README.txt", _README.format(n=n_images, h=height, w=width, bar=DEMO_INFO_BAR_ROWS,
                                                   px=DEMO_PIXEL_SIZE_NM, seed=seed))
    return out


def particle_polygon(ecd_px: float, rng: np.random.Generator, n_vertices: int = 64) -> np.ndarray:
    """Outline of one non-spherical particle: a Fourier-perturbed ellipse, randomly oriented.

    Returns
    -------
    ndarray, shape (n_vertices, 2)
        (row, col) vertices around the origin; the enclosed area is about that of a circle of
        diameter ``ecd_px``.
    """
    theta = np.linspace(0.0, 2 * np.pi, n_vertices, endpoint=False)
    aspect = rng.uniform(1.0, 1.6)
    radius = np.ones_like(theta)
    # Low orders make the body lumpy or faceted; higher orders stay small (particles are smooth).
    for k, amp in ((2, 0.06), (3, 0.07), (4, 0.05), (5, 0.03), (6, 0.02)):
        radius += rng.uniform(0, amp) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    x = radius * np.cos(theta) * np.sqrt(aspect)
    y = radius * np.sin(theta) / np.sqrt(aspect)
    angle = rng.uniform(0, np.pi)
    rows = x * np.sin(angle) + y * np.cos(angle)
    cols = x * np.cos(angle) - y * np.sin(angle)
    area = 0.5 * abs(np.dot(rows, np.roll(cols, 1)) - np.dot(cols, np.roll(rows, 1)))
    scale = (np.pi * (ecd_px / 2) ** 2 / area) ** 0.5
    return np.stack([rows, cols], axis=1) * scale


def place_agglomerates(shape: tuple[int, int], n_particles: int, rng: np.random.Generator) -> np.ndarray:
    """Instance labels of particles grown into agglomerates; later particles lie on top.

    Each agglomerate starts at a random seed point; every further particle attaches to a random
    member of a random agglomerate at about contact distance (from slightly apart to clearly
    overlapping). Particles that would hide most of another one are redrawn.
    """
    from skimage.draw import polygon

    labels = np.zeros(shape, np.int32)
    n_clusters = max(1, int(round(n_particles / rng.uniform(6, 14))))
    margin = 20
    clusters: list[list[tuple[float, float, float]]] = [[] for _ in range(n_clusters)]
    visible: dict[int, int] = {}
    label_value = 0
    attempts = 0
    while label_value < n_particles and attempts < n_particles * 20:
        attempts += 1
        ecd = float(np.clip(rng.lognormal(np.log(np.mean(DEMO_ECD_PX)), 0.2), 12.0, 50.0))
        cluster = clusters[int(rng.integers(n_clusters))]
        if not cluster or rng.random() < 0.08:
            centre = (rng.uniform(margin, shape[0] - margin), rng.uniform(margin, shape[1] - margin))
        else:
            r0, c0, d0 = cluster[int(rng.integers(len(cluster)))]
            direction = rng.uniform(0, 2 * np.pi)
            distance = (d0 + ecd) / 2 * rng.uniform(0.7, 1.1)
            centre = (r0 + distance * np.sin(direction), c0 + distance * np.cos(direction))
        poly = particle_polygon(ecd, rng) + np.asarray(centre)
        rr, cc = polygon(poly[:, 0], poly[:, 1], shape=shape)
        if rr.size < _MIN_VISIBLE_AREA_PX:
            continue
        covered = labels[rr, cc]
        ids, counts = np.unique(covered[covered > 0], return_counts=True)
        # Do not bury a neighbour: each covered particle keeps most of its visible area.
        if ids.size and np.any(counts > 0.35 * np.asarray([visible[j] for j in ids])):
            continue
        label_value += 1
        labels[rr, cc] = label_value
        for j, c in zip(ids, counts):
            visible[j] -= int(c)
        visible[label_value] = int(rr.size)
        cluster.append((centre[0], centre[1], ecd))
    return labels


def separate_instances(labels: np.ndarray) -> np.ndarray:
    """Ground-truth instances with 1-px background lines between touching particles.

    Pixels of the upper particle along a contact become background; parts cut off by that
    line and particles with too little visible area are dropped, so that 4-connected labelling
    of ``result > 0`` gives exactly the instances of ``result`` (labels renumbered 1..n).
    """
    from skimage.measure import label as cc_label

    separated = cut_touching(labels, gives_up="upper")
    out = np.zeros(labels.shape, np.int32)
    components = cc_label(separated > 0, connectivity=1)
    # Keep, per instance, its largest 4-connected piece.
    n_comp = int(components.max())
    if n_comp == 0:
        return out
    comp_ids = np.arange(1, n_comp + 1)
    comp_size = np.asarray(ndi.sum(np.ones_like(components), components, comp_ids))
    comp_owner = np.zeros(n_comp + 1, np.int64)
    np.maximum.at(comp_owner, components.ravel(), separated.ravel())
    comp_owner = comp_owner[1:]
    best: dict[int, tuple[float, int]] = {}
    for cid, owner, size in zip(comp_ids, comp_owner, comp_size):
        if size >= _MIN_VISIBLE_AREA_PX and size > best.get(owner, (0, 0))[0]:
            best[owner] = (size, cid)
    keep = np.zeros(n_comp + 1, np.int32)
    for new, (_, cid) in enumerate(sorted(best.values(), key=lambda t: t[1]), start=1):
        keep[cid] = new
    return keep[components]


def make_outlines(n: int, rng: np.random.Generator, size_px: int = OUTLINE_SIZE_PX) -> list[np.ndarray]:
    """Single-particle outlines like a user would draw: rough, a bit larger and smoother, centred."""
    from skimage.draw import polygon

    outlines = []
    for _ in range(n):
        # Users pick clearly visible, slightly larger than typical particles ...
        ecd = float(np.clip(rng.lognormal(np.log(1.02 * np.mean(DEMO_ECD_PX)), 0.15), 14.0, 50.0))
        poly = particle_polygon(ecd, rng)
        # ... and draw a few px generously, with wobble, from far fewer clicks.
        step = int(rng.integers(4, 9))
        poly = poly[::step] * rng.uniform(1.04, 1.12)
        poly = poly + rng.normal(0, 0.6, poly.shape)
        centre = (size_px - 1) / 2
        rr, cc = polygon(poly[:, 0] + centre, poly[:, 1] + centre, shape=(size_px, size_px))
        mask = np.zeros((size_px, size_px), np.float64)
        mask[rr, cc] = 1.0
        mask = ndi.gaussian_filter(mask, 1.0) > 0.5
        outlines.append(mask.astype(np.uint8) * np.uint8(255))
    return outlines


def draw_info_bar(shape: tuple[int, int], rng: np.random.Generator, name: str) -> np.ndarray:
    """A black instrument info bar with white text-like blocks and a scale bar (uint8)."""
    height, width = shape
    bar = np.zeros(shape, np.uint8)
    # Two lines of "text": words as short blocks of glyph-sized rectangles.
    for top in (height // 5, height // 5 + height // 2):
        col = int(rng.integers(8, 20))
        while col < width * 0.7:
            n_glyphs = int(rng.integers(2, 9))
            for _ in range(n_glyphs):
                glyph_w = int(rng.integers(3, 7))
                glyph_h = int(rng.integers(max(3, height // 5), max(4, height // 3)))
                bar[top: top + glyph_h, col: col + glyph_w] = 235
                col += glyph_w + 2
            col += int(rng.integers(8, 40))
    # Scale bar: a thin line with end ticks on the right.
    left, right = int(width * 0.82), int(width * 0.82) + max(8, width // 12)
    mid = height // 2
    bar[mid: mid + 2, left:right] = 255
    bar[mid - 5: mid + 7, left: left + 2] = 255
    bar[mid - 5: mid + 7, right - 2: right] = 255
    return bar


def _image_params(rng: np.random.Generator) -> RenderParams:
    """Renderer settings with a little variation between demo images (like different sessions)."""
    return RenderParams(
        background_level=float(rng.uniform(0.16, 0.22)),
        particle_level=float(rng.uniform(0.38, 0.46)),
        brightness_sd=float(rng.uniform(0.12, 0.2)),
        edge_gain=float(rng.uniform(0.10, 0.16)),
        noise_sd=float(rng.uniform(0.010, 0.016)),
        background_texture=float(rng.uniform(0.004, 0.008)),
    )


_README = """nanoseg demo data (synthetic; generated by `nanoseg make-demo-data`, seed {seed})

What it is: {n} SEM-like micrographs ({w}x{h} px, 8-bit) of agglomerated, non-spherical
particles rendered by nanoseg's physics-inspired SEM renderer, plus the inputs a user provides
and the ground truth for evaluating the workflow. No real measurement is involved.

images/     the micrographs. The bottom {bar} rows are a fake instrument info bar (black with
            white text blocks and a scale bar). Pixel size {px} nm, stored as ImageJ resolution
            tags (unit micron).
outlines/   40 rough 64x64 outlines of single particles (white on black), drawn slightly larger
            and smoother than the particles, as a user would draw them. The only user input.
masks/      ground truth masks <name>_m.tif, 0/255, same size as the image (info bar rows black);
            touching particles are separated by 1-px black lines, so 4-connected labelling gives
            one label per particle.
labels/     ground truth instance labels <name>.tif (uint16), equal to that labelling.

Run the workflow on it:  nanoseg run {{this folder}} --profile demo
"""
