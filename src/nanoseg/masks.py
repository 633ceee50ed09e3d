"""Stage 2: assemble fake instance masks of agglomerated particles from a shape library.

Each fake mask (a "tile") gets a particle count, and every particle a random shape from the
library, a scale factor (normal or log-normal), a rotation and flips. Particle centres are
drawn from a 2-D Perlin-noise density raised to ``clustering``, so particles agglomerate as
they do on a real sample; a particle that would cover more than ``max_overlap`` of its area
with earlier ones is moved to the next drawn position (agglomerates, not piles). Later particles
lie on top of earlier ones; the binary mask keeps a one-pixel background line between touching
particles, as in the manual masks of the TiO2 dataset, so that 4-connected labelling of the
binary mask gives back the instances (:mod:`nanoseg.labels`: the particle underneath gives up
its edge pixels, the one on top stays whole).

The particle count per tile is set from the real micrographs (foreground fraction from an
automatic threshold) unless ``masks.particles_per_tile`` is configured, and the particle size in
px from ``masks.size_prior``.

Why one module of this size: placement, assembly and the stage's planning (count and size from
the real micrographs and the size prior) are one algorithm with one set of settings; the pieces
are small public functions, tested one by one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi
from skimage import measure

from nanoseg.atomic import atomic_path, write_json
from nanoseg.config import Config, MasksConfig
from nanoseg.errors import NanosegError
from nanoseg.grid import working_scale
from nanoseg.io import load_micrographs
from nanoseg.labels import border_labels, cut_touching
from nanoseg.plots import contact_sheet
from nanoseg.runtime import progress, seed_everything
from nanoseg.shapes import shape_summary

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from nanoseg.pipeline import StageContext

logger = logging.getLogger("nanoseg.masks")

PARTICLE_COLUMNS = ("tile", "label", "area_px", "full_area_px", "visible_fraction", "touches_border", "whole")
WHOLE_VISIBLE_FRACTION = 0.95
# Without micrographs and a configured count: the TiO2 manual masks' density (~10 % foreground).
DEFAULT_FOREGROUND_FRACTION = 0.10


# --------------------------------------------------------------------------------------------
# Placement density
# --------------------------------------------------------------------------------------------

def perlin_density(shape: tuple[int, int], cell_px: float, octaves: int = 2, seed: int = 0) -> np.ndarray:
    """Fractal 2-D Perlin noise scaled to [0, 1] (FastNoise Lite).

    Parameters
    ----------
    shape : (int, int)
        Height and width in px.
    cell_px : float
        Feature size: the noise frequency is ``1 / cell_px``.
    octaves : int
        Octaves of fractal Brownian motion (each adds detail at twice the frequency).
    seed : int

    Returns
    -------
    (H, W) float32 array in [0, 1]
    """
    from pyfastnoiselite.pyfastnoiselite import FastNoiseLite, FractalType, NoiseType

    noise = FastNoiseLite(int(seed) % 2**31)
    noise.noise_type = NoiseType.NoiseType_Perlin
    noise.frequency = 1.0 / cell_px
    noise.fractal_type = FractalType.FractalType_FBm if octaves > 1 else FractalType.FractalType_None
    noise.fractal_octaves = octaves
    rows, cols = np.mgrid[:shape[0], :shape[1]].astype(np.float32)
    values = noise.gen_from_coords(np.stack([cols.ravel(), rows.ravel()])).reshape(shape)
    low, high = values.min(), values.max()
    return ((values - low) / max(high - low, 1e-12)).astype(np.float32)


def sample_positions(density: np.ndarray, n: int, rng: np.random.Generator, clustering: float = 1.0) -> np.ndarray:
    """Draw ``n`` (row, col) positions with probability proportional to ``density ** clustering``.

    ``clustering = 0`` gives uniform placement. Positions are jittered inside their pixel.

    Returns
    -------
    (n, 2) float array
    """
    weights = np.power(density.astype(np.float64), clustering).ravel()
    cdf = np.cumsum(weights)
    if not np.isfinite(cdf[-1]) or cdf[-1] <= 0:
        cdf = np.arange(1, weights.size + 1, dtype=np.float64)
    index = np.minimum(np.searchsorted(cdf, rng.uniform(0, cdf[-1], n), side="right"), weights.size - 1)
    rows, cols = np.divmod(index, density.shape[1])
    return np.stack([rows, cols], axis=1) + rng.uniform(-0.5, 0.5, (n, 2))


def clark_evans_ratio(points: np.ndarray, area_px: float) -> float:
    """Clark-Evans aggregation index: mean nearest-neighbour distance over its value for random points.

    About 1 for uniform random placement, below 1 for clustered and above 1 for regular placement
    (no edge correction).
    """
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64)
    if len(points) < 2:
        return float("nan")
    distances, _ = cKDTree(points).query(points, k=2)
    expected = 0.5 / np.sqrt(len(points) / area_px)
    return float(distances[:, 1].mean() / expected)


# --------------------------------------------------------------------------------------------
# Particles
# --------------------------------------------------------------------------------------------

def draw_scales(n: int, rng: np.random.Generator, sd: float = 0.1, cut_sd: float = 3.0) -> np.ndarray:
    """Per-particle scale factors N(1, sd); draws beyond ``cut_sd`` sd are redrawn."""
    z = rng.standard_normal(n)
    bad = np.abs(z) > cut_sd
    while bad.any():
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > cut_sd
    scales = 1 + sd * z
    return np.clip(scales, 0.05, None)


def transform_shape(shape: np.ndarray, scale: float, angle_rad: float, flip: bool) -> np.ndarray:
    """Scale, rotate (about the centre) and optionally mirror a binary shape; returns its tight crop."""
    rows, cols = np.nonzero(shape)
    if rows.size == 0:
        return np.zeros((0, 0), bool)
    crop = shape[rows.min():rows.max() + 1, cols.min():cols.max() + 1].astype(np.float32)
    if flip:
        crop = crop[:, ::-1]
    h, w = crop.shape
    # Output big enough for any rotation; inverse map output -> input coordinates.
    side = int(np.ceil(np.hypot(h, w) * scale)) + 3
    cos, sin = np.cos(angle_rad), np.sin(angle_rad)
    inverse = np.array([[cos, sin], [-sin, cos]]) / scale
    centre_in = np.array([(h - 1) / 2, (w - 1) / 2])
    centre_out = np.array([(side - 1) / 2, (side - 1) / 2])
    offset = centre_in - inverse @ centre_out
    out = ndi.affine_transform(crop, inverse, offset=offset, output_shape=(side, side), order=1) >= 0.5
    rows, cols = np.nonzero(out)
    if rows.size == 0:
        return np.zeros((0, 0), bool)
    return out[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


@dataclass
class AssembledMask:
    """One fake mask: instance labels, the binary mask and a table of its particles."""

    instances: np.ndarray  # (H, W) uint16, 0 = background, labels 1..n in drawing order
    binary: np.ndarray  # (H, W) bool, 4-connected labelling gives ``instances``
    particles: pd.DataFrame  # one row per label: PARTICLE_COLUMNS without 'tile'
    centres: np.ndarray  # (n_placed, 2) particle centres (row, col) as placed


def assemble_mask(
    shapes: np.ndarray,
    tile_shape: tuple[int, int],
    n_particles: int,
    rng: np.random.Generator,
    cfg: MasksConfig | None = None,
    size_factor: float = 1.0,
) -> AssembledMask:
    """Assemble one fake instance mask of agglomerated particles.

    Parameters
    ----------
    shapes : (N, S, S) bool array
        Shape library (one centred particle per image).
    tile_shape : (int, int)
        Height and width in px.
    n_particles : int
        Particles to draw (some may end up hidden under others and vanish).
    rng : numpy.random.Generator
        Source of every random draw: the same generator state gives the same mask.
    cfg : MasksConfig, optional
        Scale distribution, Perlin settings, clustering, ``max_overlap`` and ``min_visible_px``;
        defaults if omitted.
    size_factor : float
        Multiplies every particle's scale (the size prior, see :func:`size_factor_for`).

    Returns
    -------
    AssembledMask
        Labels are renumbered 1..K in drawing order (higher = on top). Visible parts of a particle
        that another one splits apart become separate labels (not whole); visible parts smaller
        than ``cfg.min_visible_px`` are removed.
    """
    import pandas as pd

    cfg = cfg or MasksConfig()
    height, width = tile_shape
    if len(shapes) == 0:
        raise NanosegError("masks: the shape library is empty; rerun the shapes stage")
    density = perlin_density(tile_shape, cfg.perlin_cell_px, cfg.perlin_octaves, seed=int(rng.integers(2**31)))
    # A pool of candidate centres: a particle covering more than cfg.max_overlap of its area with
    # earlier ones moves to the next candidate, so agglomerates form without piling up.
    candidates = sample_positions(density, n_particles * _PLACEMENT_TRIES, rng, cfg.clustering)
    picks = rng.integers(len(shapes), size=n_particles)
    scales = draw_scales(n_particles, rng, cfg.scale_sd, cfg.scale_cut_sd) * size_factor
    angles = rng.uniform(0, 2 * np.pi, n_particles)
    flips = rng.random(n_particles) < 0.5

    instances = np.zeros(tile_shape, np.int32)
    full_area = np.zeros(n_particles + 1, np.int64)
    centres = np.full((n_particles, 2), np.nan)
    next_candidate = 0
    for k in range(n_particles):
        particle = transform_shape(shapes[picks[k]], scales[k], angles[k], bool(flips[k]))
        if particle.size == 0:
            continue
        full_area[k + 1] = particle.sum()
        best = None
        for _ in range(_PLACEMENT_TRIES):
            if next_candidate >= len(candidates):
                break
            centre = candidates[next_candidate]
            next_candidate += 1
            window = _window(centre, particle.shape, tile_shape)
            if window is None:
                continue
            (r0, r1, c0, c1), piece = window[0], particle[window[1]]
            overlap = np.count_nonzero(instances[r0:r1, c0:c1][piece]) / full_area[k + 1]
            if best is None or overlap < best[0]:
                best = (overlap, centre, r0, r1, c0, c1, piece)
            if overlap <= cfg.max_overlap:
                break
        if best is None:
            continue
        _, centres[k], r0, r1, c0, c1, piece = best
        instances[r0:r1, c0:c1][piece] = k + 1
    on_top = np.bincount(instances.ravel(), minlength=n_particles + 1)

    instances = cut_touching(instances)  # the lower label gives up its pixel: the particle on top stays whole
    binary = instances > 0
    instances, binary, source, main = _split_fragments(instances, binary, cfg.min_visible_px)

    labels = np.arange(1, instances.max() + 1)
    area = np.bincount(instances.ravel(), minlength=labels.size + 1)[1:]
    edge = np.zeros(labels.size + 1, bool)
    edge[border_labels(instances)] = True
    full = full_area[source]
    # Whole-particle visibility is judged before the separation lines were cut out.
    visible = np.where(main, on_top[source], area) / np.maximum(full, 1)
    visible = np.minimum(visible, 1.0)
    touches = edge[1:]
    particles = pd.DataFrame({
        "label": labels, "area_px": area, "full_area_px": full, "visible_fraction": np.round(visible, 4),
        "touches_border": touches, "whole": (visible >= WHOLE_VISIBLE_FRACTION) & ~touches,
    })
    return AssembledMask(instances.astype(np.uint16), binary, particles, centres[~np.isnan(centres[:, 0])])


_PLACEMENT_TRIES = 20


def _window(centre: np.ndarray, particle_shape: tuple[int, int], tile_shape: tuple[int, int]):
    """Tile slice bounds and particle slices of a particle centred at ``centre``; None if outside."""
    ph, pw = particle_shape
    top = int(round(centre[0] - (ph - 1) / 2))
    left = int(round(centre[1] - (pw - 1) / 2))
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + ph, tile_shape[0]), min(left + pw, tile_shape[1])
    if r0 >= r1 or c0 >= c1:
        return None
    return (r0, r1, c0, c1), (slice(r0 - top, r1 - top), slice(c0 - left, c1 - left))


def _split_fragments(instances: np.ndarray, binary: np.ndarray, min_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Give every 4-connected visible piece its own label; drop pieces under ``min_px``.

    Returns the relabelled instances and binary mask, and per new label (index label - 1) the
    particle it came from and whether it is that particle's largest piece.
    """
    components, n = ndi.label(binary)  # default structure = 4-connectivity
    if n == 0:
        empty = np.zeros(0, np.int64)
        return instances, binary, empty, empty.astype(bool)
    comp_area = np.bincount(components.ravel(), minlength=n + 1)[1:]
    # Any pixel of a component tells its particle: components never span two labels.
    first_pixel = ndi.minimum(instances, components, index=np.arange(1, n + 1)).astype(np.int64)
    order = np.lexsort((-comp_area, first_pixel))  # by particle (= drawing order), largest piece first
    keep = comp_area[order] >= min_px
    is_main = np.ones(n, bool)
    is_main[1:] = first_pixel[order][1:] != first_pixel[order][:-1]
    order, is_main = order[keep], is_main[keep]
    new_label = np.zeros(n + 1, np.int64)
    new_label[order + 1] = np.arange(1, order.size + 1)
    relabelled = new_label[components]
    return relabelled, relabelled > 0, first_pixel[order], is_main


# --------------------------------------------------------------------------------------------
# Statistics of real and fake masks
# --------------------------------------------------------------------------------------------

def mask_statistics(binary: np.ndarray, instances: np.ndarray | None = None) -> dict[str, float]:
    """Foreground fraction, particles per megapixel and median ECD (px) of one mask.

    Particles are the 4-connected components of ``binary`` unless ``instances`` is given.
    """
    labels = instances if instances is not None else measure.label(binary, connectivity=1)
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    megapixels = binary.size / 1e6
    return {
        "foreground_fraction": float(np.mean(binary)),
        "particles_per_megapixel": float(areas.size / megapixels),
        "median_ecd_px": float(np.sqrt(4 * np.median(areas) / np.pi)) if areas.size else 0.0,
    }


def estimate_particle_density(images: list[np.ndarray], min_solidity: float = 0.9, min_area_px: int = 30) -> dict[str, Any]:
    """Foreground fraction and typical particle size of real micrographs (particles bright).

    - Foreground fraction: Li's threshold of the lightly smoothed image (on the 30 TiO2 SEM images
      its median, 7.2 %, equals that of the manual masks).
    - Typical size: agglomerated particles merge in any thresholded image, so the size comes from
      the isolated particles only: the median equivalent circular diameter of compact blobs
      (solidity >= ``min_solidity``) of the stricter Otsu foreground (TiO2: 28.8 px, against 28.6 px
      for the particles an expert kept as whole). Without compact blobs, the inscribed diameters
      at the ridge maxima of the distance map are used instead.

    Parameters
    ----------
    images : list of 2-D float arrays
        Cropped micrographs in [0, 1], particles bright.
    min_solidity : float
        Blobs at least this convex count as single particles.
    min_area_px : int
        Smaller blobs are noise.

    Returns
    -------
    dict
        ``foreground_fraction`` (median over images), ``foreground_fractions`` (per image),
        ``typical_ecd_px``, ``n_isolated`` (compact blobs the size came from) and ``size_method``.
    """
    from skimage import filters
    from skimage.feature import peak_local_max

    if not images:
        raise NanosegError("data.images: no micrographs to estimate the particle density from")
    cross = ndi.generate_binary_structure(2, 1)
    fractions, ecds, ridge_diameters = [], [], []
    for image in images:
        smooth = filters.gaussian(np.asarray(image, np.float32), sigma=1.0)
        fractions.append(float(ndi.binary_opening(smooth > filters.threshold_li(smooth), cross).mean()))
        strict = ndi.binary_opening(smooth > filters.threshold_otsu(smooth), cross)
        for region in measure.regionprops(measure.label(strict, connectivity=1)):
            if region.area >= min_area_px and region.solidity >= min_solidity:
                ecds.append(region.equivalent_diameter_area)
        if len(ecds) < 10:
            distance = ndi.distance_transform_edt(strict)
            peaks = peak_local_max(distance, min_distance=7, threshold_abs=2.0, exclude_border=False)
            ridge_diameters.extend(2 * distance[tuple(peaks.T)])
    if len(ecds) >= 10:
        typical, method = float(np.median(ecds)), "isolated compact blobs (Otsu)"
    elif ridge_diameters:
        typical, method = float(np.median(ridge_diameters) * INSCRIBED_TO_ECD), "distance-map ridges (Otsu)"
    else:
        raise NanosegError("data.images: no particles found by an automatic threshold; set masks.size_prior "
                           "and masks.particles_per_tile explicitly")
    return {"foreground_fraction": float(np.median(fractions)), "foreground_fractions": [round(f, 5) for f in fractions],
            "typical_ecd_px": typical,
            "n_isolated": len(ecds), "size_method": method, "threshold": "li (foreground), otsu (size)"}


# Equivalent circular diameter over inscribed diameter of the particles of the TiO2 manual masks
# (median over their distance maps).
INSCRIBED_TO_ECD = 1.21


# --------------------------------------------------------------------------------------------
# Size prior and particle count
# --------------------------------------------------------------------------------------------

def size_factor_for(prior: str, library_ecd_px: float, image_ecd_px: float | None = None,
                    expected_ecd_px: float | None = None) -> float:
    """Scale factor applied to the library shapes so their median ECD follows the chosen prior.

    Parameters
    ----------
    prior : {'outlines', 'images', 'expected'}
    library_ecd_px : float
        Median ECD of the library shapes as drawn.
    image_ecd_px, expected_ecd_px : float, optional
        Typical ECD estimated from the micrographs / from ``data.expected_size_nm``.
    """
    if prior == "outlines":
        return 1.0
    target = image_ecd_px if prior == "images" else expected_ecd_px
    if target is None or not target > 0:
        key = "data.images" if prior == "images" else "data.expected_size_nm and the pixel size"
        raise NanosegError(f"masks.size_prior={prior}: needs {key}")
    return float(target / library_ecd_px)


def calibrate_particle_count(shapes: np.ndarray, cfg: MasksConfig, foreground_fraction: float, size_factor: float,
                             rng: np.random.Generator, n_trials: int = 3, max_rounds: int = 5) -> int:
    """Particle count per tile whose fake masks reach ``foreground_fraction`` on average.

    Starts from foreground area / mean particle area, then corrects for the overlap of
    clustered particles by assembling ``n_trials`` test tiles (the same random tiles each round)
    and rescaling the count until the foreground fraction is within 5 % of the target.
    """
    tile_px = cfg.tile_size_px[0] * cfg.tile_size_px[1]
    mean_area = shapes.reshape(len(shapes), -1).sum(axis=1).mean() * size_factor**2
    n = max(1, int(round(foreground_fraction * tile_px / max(mean_area, 1))))
    seeds = rng.integers(2**63, size=n_trials)
    for _ in range(max_rounds):
        reached = np.mean([assemble_mask(shapes, cfg.tile_size_px, n, np.random.default_rng(seed), cfg,
                                         size_factor).binary.mean() for seed in seeds])
        if abs(reached / foreground_fraction - 1) < 0.05:
            break
        n = max(1, int(round(n * foreground_fraction / max(reached, 1e-6))))
    return n


# --------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------

def simulate_masks(
    shapes: np.ndarray,
    cfg: MasksConfig,
    out_dir: str | Path,
    count_range: tuple[int, int],
    rng: np.random.Generator,
    size_factor: float = 1.0,
    count_levels: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Write ``cfg.n_masks`` tiles (``mask_0000.tif``, ``instances_0000.tif``), ``particles.csv``, ``tiles.csv`` and ``contact_sheet.png``.

    Each tile draws its particle count uniformly from ``count_range``, or, with
    ``count_levels``, picks one level (e.g. one per real micrograph, see :func:`plan_masks`)
    and varies it by up to +-15 %, so the fakes span the real images' range of coverage.

    ``tiles.csv`` lists per tile the particles drawn, the labels written (hidden particles
    vanish; split ones count once per visible piece) and the foreground fraction.

    Tiles already written by an interrupted attempt are kept: every tile has its own seed drawn
    up front from ``rng``, so resuming gives the same tiles as an uninterrupted run.

    Returns
    -------
    pandas.DataFrame
        The particle table (also written to ``particles.csv``).
    """
    import pandas as pd
    import tifffile

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tile_seeds = rng.integers(2**63, size=cfg.n_masks)
    tables, tiles, previews = [], [], []
    for i in progress(range(cfg.n_masks), total=cfg.n_masks, desc="masks"):
        mask_path, inst_path = out_dir / f"mask_{i:04d}.tif", out_dir / f"instances_{i:04d}.tif"
        part_path = out_dir / f".particles_{i:04d}.csv"
        tile_rng = np.random.default_rng(tile_seeds[i])
        if count_levels:
            level = count_levels[int(tile_rng.integers(len(count_levels)))]
            n_drawn = max(1, int(round(level * tile_rng.uniform(0.85, 1.15))))
        else:
            n_drawn = int(tile_rng.integers(count_range[0], count_range[1] + 1))
        if mask_path.is_file() and inst_path.is_file() and part_path.is_file():
            table = pd.read_csv(part_path)
            binary = tifffile.imread(mask_path) > 0
        else:
            result = assemble_mask(shapes, cfg.tile_size_px, n_drawn, tile_rng, cfg, size_factor)
            table = result.particles
            table.insert(0, "tile", i)
            binary = result.binary
            with atomic_path(inst_path) as tmp:
                tifffile.imwrite(tmp, result.instances, compression="zlib")
            with atomic_path(mask_path) as tmp:
                tifffile.imwrite(tmp, binary.astype(np.uint8) * 255, compression="zlib")
            with atomic_path(part_path) as tmp:
                table.to_csv(tmp, index=False)
        tables.append(table)
        tiles.append({"tile": i, "n_drawn": n_drawn, "n_labels": len(table),
                      "foreground_fraction": round(float(binary.mean()), 5)})
        if len(previews) < 12:
            previews.append(binary)
    particles = pd.concat(tables, ignore_index=True)[list(PARTICLE_COLUMNS)]
    with atomic_path(out_dir / "particles.csv") as tmp:
        particles.to_csv(tmp, index=False)
    with atomic_path(out_dir / "tiles.csv") as tmp:
        pd.DataFrame(tiles).to_csv(tmp, index=False)
    for i in range(cfg.n_masks):
        (out_dir / f".particles_{i:04d}.csv").unlink(missing_ok=True)
    _write_contact_sheet(previews, out_dir / "contact_sheet.png")
    return particles


def _write_contact_sheet(binaries: list[np.ndarray], path: Path, n_cols: int = 4, width_px: int = 1600) -> None:
    """Downscaled tiles in a grid (particles white, gray gaps) so a person can check them at a glance."""
    import imageio.v3 as iio
    from skimage.transform import resize

    if not binaries:
        return
    n_cols = min(n_cols, len(binaries))
    factor = min(1.0, width_px / (n_cols * binaries[0].shape[1]))
    small_shape = tuple(max(1, int(s * factor)) for s in binaries[0].shape)
    small = np.stack([resize(b.astype(np.float32), small_shape, order=1, anti_aliasing=True) for b in binaries])
    sheet = contact_sheet(small, n_cols=n_cols)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, sheet, extension=".png")


def load_library(shapes_dir: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """The shapes stage's library: ``library.npz`` (bool shapes) and ``stats.json`` of ``shapes_dir``.

    Returns
    -------
    shapes : (N, S, S) bool array
    stats : dict
        The shape statistics, ``{}`` when ``stats.json`` is missing.

    Raises
    ------
    NanosegError
        If there is no ``library.npz`` or it holds no ``shapes`` array.
    """
    import json

    library = shapes_dir / "library.npz"
    if not library.is_file():
        raise NanosegError(f"{library}: shape library not found; run the shapes stage first (`nanoseg shapes train`)")
    with np.load(library) as data:
        if "shapes" not in data:
            raise NanosegError(f"{library}: no 'shapes' array; rerun the shapes stage")
        shapes = data["shapes"].astype(bool)
    stats_path = shapes_dir / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    return shapes, stats


def configured_pixel_size(config: Config) -> float | None:
    """``data.pixel_size_nm`` on the run's working grid (:func:`nanoseg.grid.working_scale`)."""
    size = config.data.pixel_size_nm
    return size / working_scale(config) if size is not None else None


def real_image_statistics(config: Config) -> tuple[dict[str, Any] | None, float | None]:
    """Density estimate of the configured micrographs and their pixel size (``None`` when there are none)."""
    if config.data.images is None:
        return None, configured_pixel_size(config)

    micrographs = load_micrographs(config.data, scale=working_scale(config))
    if not micrographs:
        raise NanosegError(f"{config.data.images}: no micrographs found")
    estimate = estimate_particle_density([m.image for m in micrographs])
    sizes = [m.pixel_size_nm for m in micrographs if m.pixel_size_nm]
    pixel_size = configured_pixel_size(config) or (float(np.median(sizes)) if sizes else None)
    estimate["n_images"] = len(micrographs)
    estimate["particles_per_megapixel"] = float(
        estimate["foreground_fraction"] / (np.pi / 4 * estimate["typical_ecd_px"] ** 2) * 1e6)
    return estimate, pixel_size


def count_levels_for(shapes: np.ndarray, cfg: MasksConfig, fractions: Sequence[float], median_fraction: float,
                     median_count: int, size_factor: float, rng: np.random.Generator) -> list[int]:
    """Particle counts per tile that reproduce each real image's foreground fraction.

    Real micrographs of one sample differ widely in coverage (``stats.json`` of the masks stage
    lists each image's foreground fraction), and a segmenter trained only on tiles of the median
    coverage has never seen a dense agglomerate.
    The count for the densest image is calibrated like the median one; overlap grows with
    density, so counts in between are interpolated piecewise linearly through
    (0, 0), (median, its count) and (densest, its count).
    """
    fractions = np.asarray(fractions, float)
    top = float(fractions.max())
    knots_f, knots_n = [0.0, median_fraction], [0.0, float(median_count)]
    if top > median_fraction * 1.05:
        knots_f.append(top)
        knots_n.append(float(calibrate_particle_count(shapes, cfg, top, size_factor, rng)))
    counts = np.interp(fractions, knots_f, knots_n,
                       right=knots_n[-1] * top / max(knots_f[-1], 1e-9))
    return [max(1, int(round(c))) for c in counts]


def plan_masks(shapes: np.ndarray, shape_stats: dict[str, Any], config: Config, rng: np.random.Generator) -> dict[str, Any]:
    """Decide the size factor and the particle counts for the fake masks.

    Returns a dict with ``size_factor``, ``count_range``, ``count_levels`` (one particle count
    per real micrograph, matching its foreground fraction; None when the counts come from the
    config or no images are given), ``real`` (image estimate or None), ``size_prior`` and the
    target foreground fraction.
    """
    cfg = config.masks
    needs_images = (cfg.particles_per_tile is None or cfg.size_prior == "images"
                    or (cfg.size_prior == "expected" and config.data.pixel_size_nm is None))
    real, pixel_size_nm = real_image_statistics(config) if needs_images else (None, configured_pixel_size(config))
    library_ecd = shape_summary(shapes)["median_ecd_px"]
    expected_ecd = None
    if config.data.expected_size_nm is not None and pixel_size_nm:
        expected_ecd = config.data.expected_size_nm / pixel_size_nm
    elif cfg.size_prior == "expected":
        raise NanosegError("masks.size_prior=expected: needs data.expected_size_nm and a pixel size "
                           "(image metadata or data.pixel_size_nm)")
    prior = cfg.size_prior
    if prior == "images" and real is None:
        logger.warning("masks.size_prior=images but data.images is not set: using the outlines' size")
        prior = "outlines"
    factor = size_factor_for(prior, library_ecd, real["typical_ecd_px"] if real else None, expected_ecd)
    target_fraction = real["foreground_fraction"] if real else DEFAULT_FOREGROUND_FRACTION
    count_levels = None
    if cfg.particles_per_tile is not None:
        count_range = tuple(cfg.particles_per_tile)
        source = "config"
    else:
        n = calibrate_particle_count(shapes, cfg, target_fraction, factor, rng)
        count_range = (max(1, int(round(0.85 * n))), max(1, int(round(1.15 * n))))
        source = "micrographs" if real else "default foreground fraction"
        if real and len(real["foreground_fractions"]) > 1:
            count_levels = count_levels_for(shapes, cfg, real["foreground_fractions"], target_fraction, n, factor, rng)
            count_range = (max(1, int(round(0.85 * min(count_levels)))), max(1, int(round(1.15 * max(count_levels)))))
            source = "micrographs (one level per image)"
    return {"count_levels": count_levels,"size_prior": prior, "size_prior_configured": cfg.size_prior, "size_factor": factor, "library_median_ecd_px": library_ecd,
            "resulting_median_ecd_px": library_ecd * factor, "expected_ecd_px": expected_ecd,
            "target_foreground_fraction": target_fraction, "count_range": count_range,
            "count_source": source, "real": real, "outline_median_area_px": shape_stats.get("outline_median_area_px")}


def run_stage(ctx: StageContext) -> None:
    """Pipeline stage 2: shape library -> fake masks, ``particles.csv``, ``contact_sheet.png``, ``stats.json``."""
    shapes, shape_stats = load_library(ctx.stage_dir("shapes"))
    rng = seed_everything(ctx.config.seed)
    plan = plan_masks(shapes, shape_stats, ctx.config, rng)
    particles = simulate_masks(shapes, ctx.config.masks, ctx.out_dir, plan["count_range"], rng, plan["size_factor"],
                               plan["count_levels"])
    write_json(ctx.out_dir / "stats.json", summarize(ctx.out_dir, particles, plan, ctx.config.masks))


def summarize(out_dir: Path, particles: pd.DataFrame, plan: dict[str, Any], cfg: MasksConfig) -> dict[str, Any]:
    """Statistics of the written fake masks beside the real-image estimate, for ``stats.json``."""
    import tifffile

    per_tile = []
    for i in range(cfg.n_masks):
        per_tile.append(mask_statistics(tifffile.imread(out_dir / f"mask_{i:04d}.tif") > 0,
                                        tifffile.imread(out_dir / f"instances_{i:04d}.tif")))
    fake = {key: float(np.median([t[key] for t in per_tile])) for key in per_tile[0]}
    fake["median_ecd_px"] = float(np.sqrt(4 * particles["area_px"].median() / np.pi))
    fake["whole_fraction"] = float(particles["whole"].mean())
    fake["particles_per_tile_median"] = float(particles.groupby("tile").size().median())
    fake["n_masks"] = cfg.n_masks
    return {**{k: v for k, v in plan.items() if k != "real"}, "tile_size_px": list(cfg.tile_size_px),
            "fake": fake, "real": plan["real"]}
