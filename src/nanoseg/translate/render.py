"""A physics-inspired renderer: instance masks in, secondary-electron (or transmission) micrographs out.

No training: a handful of intensity parameters, fitted to real micrographs by
:func:`nanoseg.translate.render_fit.fit_render_params`, describe what an InLens/Everhart-Thornley
SE image of particles on a flat substrate looks like:

- a dark substrate with a faint, smooth texture, slightly darker right beside particles
  (fewer SE escape from the substrate next to a particle: the "halo");
- particles brighter than the substrate, each with its own brightness (composition, tilt,
  charging differ from particle to particle) and a faint surface texture;
- the SE edge effect: near a particle's rim the beam's interaction volume reaches the surface
  from the side and more SE escape, so rims are brighter than interiors. The rim is modelled
  as ``edge_gain * exp(-d / edge_width_px)`` with ``d`` the distance to the particle's own
  outline; on top of that the secant law (yield ~ 1/cos(tilt)) shades each particle as a dome;
- overlap: higher labels lie on top of lower ones. The particle on top has its full rim, the one
  underneath is shadowed next to it, so touching and overlapping particles look like two bodies;
- directional shading from the detector's position (faces towards it are brighter);
- the probe's point-spread function (Gaussian blur), and detector noise that grows with the
  square root of the signal (shot noise) and is correlated over neighbouring pixels (scan
  bandwidth).

A transmission image (TEM, STEM or TSEM bright field; :attr:`RenderParams.contrast`
'transmission') has none of the SE effects: what darkens a pixel is the mass thickness the beam
crosses, so a particle is darkest where it is thickest and fades to the substrate at its rim,
and two touching particles merge into one silhouette with no seam or crevice between them. The
reader inverts such images (particles bright), so the renderer draws them inverted too:
``background + (level - background) * (1 - exp(-absorption * t)) / (1 - exp(-absorption))``,
with ``t`` the particle's projected thickness (a dome, in proportion to its size, 1 at the centre
of a median-sized particle); ``absorption`` sets how soon thick particles saturate into flat
silhouettes.

Everything is numpy/scipy; a 768x1024 image renders in a fraction of a second. The parameters
are fitted to real micrographs in :mod:`nanoseg.translate.render_fit`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from nanoseg.atomic import atomic_path
from nanoseg.labels import fill_seams


@dataclass
class RenderParams:
    """Intensities (fractions of the full scale [0, 1]) and lengths (px) of the SEM renderer.

    The defaults resemble the TiO2 InLens SE images of Rühle et al. (2021).
    """

    background_level: float = 0.19
    """Mean substrate intensity."""
    background_texture: float = 0.01
    """Sd of the smooth substrate texture."""
    texture_scale_px: float = 6.0
    """Feature size of the substrate and particle textures."""
    halo_depth: float = 0.03
    """Darkening of the substrate right beside a particle."""
    halo_width_px: float = 3.0
    """Decay length of the halo."""
    particle_level: float = 0.42
    """Mean intensity of particle interiors."""
    brightness_sd: float = 0.18
    """Relative sd of the per-particle brightness."""
    particle_texture: float = 0.02
    """Sd of the smooth texture on particle surfaces."""
    dome_gain: float = 0.35
    """Weight of the secant law: a particle is shaded like a dome, SE yield ~ 1/cos(surface tilt)."""
    edge_gain: float = 0.12
    """Extra intensity at a particle's rim (SE edge effect)."""
    edge_width_px: float = 2.0
    """Decay length of the edge effect inside a particle."""
    shading_gain: float = 0.12
    """Directional shading amplitude (faces towards the detector brighter)."""
    shadow_depth: float = 0.4
    """Relative darkening of a particle right beside a particle lying on top of it."""
    shadow_width_px: float = 2.5
    """Decay length of that shadow."""
    shadow_spread: float = 0.0
    """Per particle, the shadow's depth is ``shadow_depth`` times a uniform draw from
    [1 - shadow_spread, 1]: how deep the crevice between two touching particles looks depends on
    how they touch (a point contact or one lying on the other), and varies within one image."""
    blur_sigma_px: float = 0.8
    """Sd of the Gaussian point-spread function."""
    noise_sd: float = 0.013
    """Noise sd at the substrate level; it scales with sqrt(signal)."""
    noise_corr_px: float = 0.7
    """Sd of the Gaussian that correlates the noise of neighbouring pixels (0: white noise)."""
    contrast: str = "se"
    """'se' (secondary electrons, the effects above) or 'transmission' (mass thickness; the SE
    edge, dome, shading, shadow and halo settings are not used)."""
    absorption: float = 2.0
    """Transmission: attenuation at the centre of a median-sized particle, in units of 1/thickness."""

    def to_dict(self) -> dict[str, float | str]:
        """Plain dict (for JSON)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RenderParams":
        """Inverse of :meth:`to_dict`; unknown keys are ignored, missing ones take defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (str(v) if k == "contrast" else float(v)) for k, v in data.items() if k in names})


def render_sem(
    instances: np.ndarray,
    params: RenderParams | None = None,
    rng: np.random.Generator | int | None = None,
    light_angle_rad: float | None = None,
    substrate: np.ndarray | None = None,
) -> np.ndarray:
    """Render an SE micrograph of the particles in an instance label image (or, with
    ``params.contrast`` 'transmission', an inverted transmission micrograph).

    Parameters
    ----------
    instances : ndarray of int, shape (H, W)
        Instance labels, 0 = substrate. Neighbouring labels are drawn as separate bodies; where
        they touch, the higher label is taken to lie on top (SE contrast; in transmission they
        merge).
    params : RenderParams, optional
        Intensities and lengths; default :class:`RenderParams()`.
    rng : numpy Generator or int, optional
        Source of the per-particle brightness, textures and noise.
    light_angle_rad : float, optional
        Direction the detector sees the sample from (0 = from the top of the image); default:
        from the top with a random tilt of up to 45 degrees.
    substrate : ndarray of float, shape (H, W), optional
        A real substrate (e.g. from :meth:`SubstrateBank.compose`) used instead of the smooth
        synthetic one. It already holds the instrument's blur and noise, so those are applied
        to the particles only; the halo still darkens it beside particles.

    Returns
    -------
    ndarray of float32, shape (H, W)
        The image in [0, 1].
    """
    params = params or RenderParams()
    rng = np.random.default_rng(rng)
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"render_sem needs a 2-D label image, got shape {instances.shape}")
    if instances.dtype.kind not in "uib":
        instances = instances.astype(np.int64)
    # Masks keep touching particles apart by 1-px background lines; drawn as substrate, those
    # would be a dark gap that no real agglomerate shows and that a segmenter learns to rely on.
    instances = fill_seams(instances)
    shape = instances.shape
    foreground = instances > 0
    dist_in, dist_front = instance_distances(instances)
    dist_out = ndi.distance_transform_edt(~foreground) if foreground.any() else np.full(shape, np.inf)

    # Substrate with texture and halo.
    if substrate is not None:
        if substrate.shape != shape:
            raise ValueError(f"render_sem: substrate shape {substrate.shape} differs from the labels' {shape}")
        image = np.asarray(substrate, np.float64).copy()
    else:
        image = params.background_level + params.background_texture * _smooth_noise(shape, params.texture_scale_px, rng)
    transmission = params.contrast == "transmission"
    if params.halo_width_px > 0 and not transmission:
        image = image - params.halo_depth * np.exp(-(dist_out - 1.0) / params.halo_width_px) * ~foreground

    if foreground.any():
        n_labels = int(instances.max()) + 1
        brightness = params.particle_level * np.clip(1.0 + params.brightness_sd * rng.standard_normal(n_labels), 0.3, 2.5)
        rel_depth = _relative_depth(dist_in, instances)
    if foreground.any() and transmission:
        image = np.where(foreground, _transmission(instances, dist_in, rel_depth, brightness, params, rng), image)
    elif foreground.any():
        # Secant law on a dome: cos(tilt) = sqrt(1 - (1 - d/R)^2); capped where the rim is vertical.
        secant = 1.0 / np.sqrt(np.clip(1.0 - (1.0 - rel_depth) ** 2, 1.0 / 9.0, 1.0))
        particle = brightness[instances] * (1.0 + params.dome_gain * (secant - 1.0))
        particle = particle + params.particle_texture * _smooth_noise(shape, params.texture_scale_px, rng)
        particle = particle + params.edge_gain * np.exp(-(dist_in - 1.0) / max(params.edge_width_px, 1e-3))
        if params.shading_gain:
            particle = particle + params.shading_gain * _shading(dist_in, rel_depth, rng, light_angle_rad)
        if params.shadow_depth and params.shadow_width_px > 0:
            depth = np.full(n_labels, params.shadow_depth)
            if params.shadow_spread > 0:
                depth = depth * rng.uniform(1.0 - min(params.shadow_spread, 1.0), 1.0, n_labels)
            shadow = depth[instances] * np.exp(-(dist_front - 1.0) / params.shadow_width_px)
            particle = params.background_level + (particle - params.background_level) * (1.0 - shadow)
        image = np.where(foreground, particle, image)

    # With a real substrate, blur and noise go on the particles (and the pixels blur mixes
    # with them) only: the substrate has its own.
    weight = 1.0
    if substrate is not None:
        weight = ndi.gaussian_filter(foreground.astype(np.float64), max(params.blur_sigma_px, 0.5) * 2, mode="reflect")
        weight = np.clip(weight * 2.0, 0.0, 1.0)
    if params.blur_sigma_px > 0:
        blurred = ndi.gaussian_filter(image, params.blur_sigma_px, mode="reflect")
        image = blurred if substrate is None else weight * blurred + (1.0 - weight) * image
    if params.noise_sd > 0:
        noise = _correlated_noise(shape, params.noise_corr_px, rng)
        if params.contrast == "transmission":  # inverted: the detector's signal is 1 - image
            scale = np.sqrt(np.clip(1.0 - image, 1e-4, None) / max(1.0 - params.background_level, 1e-3))
        else:
            scale = np.sqrt(np.clip(image, 1e-4, None) / max(params.background_level, 1e-3))
        image = image + params.noise_sd * scale * noise * weight
    return np.clip(image, 0.0, 1.0).astype(np.float32)


#: Parameters :func:`vary_params` varies: how particles look, not the grey levels fitted to the data.
VARIED_PARAMS = ("edge_gain", "dome_gain", "shading_gain", "brightness_sd", "particle_texture", "blur_sigma_px",
                 "noise_sd")


def vary_params(params: RenderParams, variation: float, rng: np.random.Generator) -> RenderParams:
    """A copy of ``params`` for one image, its appearance varied around the fitted values.

    Fitted parameters are medians over the real micrographs; one value for every fake image
    teaches the segmenter that single look, while real images differ in focus, noise and edge
    contrast, and touching particles in how deep the crevice between them looks. Each parameter
    of :data:`VARIED_PARAMS` is multiplied by a uniform draw from [1 - v, 1 + v], and every
    particle's shadow depth by one from [1 - v, 1] (``shadow_spread``), with v = ``variation``.

    Parameters
    ----------
    params : RenderParams
    variation : float
        0 returns ``params`` unchanged; 1 lets every varied parameter range from 0 to twice its value.
    rng : numpy Generator

    Returns
    -------
    RenderParams
    """
    if variation <= 0:
        return params
    factors = rng.uniform(1.0 - variation, 1.0 + variation, len(VARIED_PARAMS))
    changes = {name: getattr(params, name) * f for name, f in zip(VARIED_PARAMS, factors)}
    return dataclasses.replace(params, **changes, shadow_spread=min(variation, 1.0))


class SubstrateBank:
    """Patches of real, particle-free substrate, stitched into new backgrounds of any size.

    A real SE micrograph's substrate is not smooth noise: it carries its own grain, contamination
    and small particle-like blobs, which a segmenter must learn to ignore. The bank keeps square
    patches of the micrographs that lie away from every particle (outside a dilated automatic
    threshold) and :meth:`compose` quilts a new background from patches of one micrograph (so
    the grey level stays that image's), with narrow linear seams.

    Parameters
    ----------
    patches : list of (N_i, P, P) float32 arrays
        Per micrograph, its substrate patches.
    """

    def __init__(self, patches: list[np.ndarray]) -> None:
        self.patches = [np.asarray(p, np.float32) for p in patches if len(p)]
        if not self.patches:
            raise ValueError("SubstrateBank needs at least one patch")
        self.patch_px = int(self.patches[0].shape[-1])

    @classmethod
    def from_images(cls, images: list[np.ndarray], patch_px: int = 96, margin_px: int = 8,
                    max_per_image: int = 64, seed: int = 0) -> "SubstrateBank | None":
        """Collect up to ``max_per_image`` patches per micrograph (particles bright, [0, 1]).

        A patch qualifies when no pixel of it lies within ``margin_px`` of the Li-threshold
        foreground (halo and blur included). Returns None when no micrograph has such a patch.
        """
        from skimage.filters import threshold_li

        rng = np.random.default_rng(seed)
        out = []
        for image in images:
            image = np.asarray(image, np.float32)
            if min(image.shape) < patch_px:
                continue
            smooth = ndi.gaussian_filter(image, 1.0)
            foreground = ndi.binary_dilation(smooth > threshold_li(smooth), iterations=margin_px)
            # Foreground pixels in each patch-sized window, via an integral image.
            integral = np.pad(foreground.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            p = patch_px
            counts = integral[p:, p:] - integral[:-p, p:] - integral[p:, :-p] + integral[:-p, :-p]
            free = np.argwhere(counts == 0)
            if not len(free):
                continue
            picks = free[rng.choice(len(free), size=min(max_per_image, len(free)), replace=False)]
            out.append(np.stack([image[r:r + p, c:c + p] for r, c in picks]))
        return cls(out) if out else None

    def compose(self, shape: tuple[int, int], rng: np.random.Generator, overlap_px: int = 16) -> np.ndarray:
        """A substrate of ``shape`` quilted from random patches of one randomly chosen micrograph."""
        bank = self.patches[int(rng.integers(len(self.patches)))]
        p = self.patch_px
        overlap = min(overlap_px, p // 2)
        step = p - overlap
        ramp = np.ones(p, np.float32)
        if overlap:
            ramp[:overlap] = np.linspace(0.0, 1.0, overlap + 2, dtype=np.float32)[1:-1]
            ramp[-overlap:] = ramp[:overlap][::-1]
        window = np.outer(ramp, ramp)
        n_rows, n_cols = -(-(shape[0] - overlap) // step), -(-(shape[1] - overlap) // step)
        height, width = n_rows * step + overlap, n_cols * step + overlap
        total = np.zeros((height, width), np.float32)
        weight = np.zeros((height, width), np.float32)
        for r in range(n_rows):
            for c in range(n_cols):
                patch = bank[int(rng.integers(len(bank)))]
                patch = np.rot90(patch, int(rng.integers(4)))
                if rng.integers(2):
                    patch = patch[:, ::-1]
                total[r * step:r * step + p, c * step:c * step + p] += window * patch
                weight[r * step:r * step + p, c * step:c * step + p] += window
        return (total / np.maximum(weight, 1e-6))[: shape[0], : shape[1]]

    def save(self, path) -> None:
        """Write the patches to an ``.npz`` file (atomically)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **{f"image_{i:03d}": p for i, p in enumerate(self.patches)})

    @classmethod
    def load(cls, path) -> "SubstrateBank":
        """Read a bank written by :meth:`save`."""
        with np.load(path) as data:
            return cls([data[k] for k in sorted(data.files)])


def instance_distances(instances: np.ndarray, pad: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Per particle pixel: distance to its own rim, and to the nearest particle lying on top of it.

    Higher labels lie on top of lower ones. A particle's rim is where it borders the substrate or
    a particle below it; where a particle on top hides part of it, its outline is taken to go on
    underneath (no rim there, a shadow instead), so overlapping particles look like two bodies.

    Parameters
    ----------
    instances : (H, W) int array
        Instance labels, 0 = background.
    pad : int
        Margin in px around each particle's bounding box within which distances are computed.

    Returns
    -------
    dist_rim : (H, W) float array
        Distance to the particle's own rim (0 off particles).
    dist_front : (H, W) float array
        Distance to the nearest pixel of a particle lying on top (inf where there is none).
    """
    dist_rim = np.zeros(instances.shape)
    dist_front = np.full(instances.shape, np.inf)
    height, width = instances.shape
    for index, box in enumerate(ndi.find_objects(instances), start=1):
        if box is None:
            continue
        rows = slice(max(box[0].start - pad, 0), min(box[0].stop + pad, height))
        cols = slice(max(box[1].start - pad, 0), min(box[1].stop + pad, width))
        crop = instances[rows, cols]
        own = crop == index
        # Substrate and particles underneath are "outside"; this particle and those on top are not.
        rim = ndi.distance_transform_edt(crop >= index)
        dist_rim[rows, cols][own] = rim[own]
        above = crop > index
        if above.any():
            front = ndi.distance_transform_edt(~above)
            dist_front[rows, cols][own] = front[own]
    return dist_rim, dist_front


def _smooth_noise(shape: tuple[int, ...], scale_px: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise with unit sd and a feature size of about ``scale_px``."""
    # Draw on a grid coarser by up to scale/2 and interpolate: same look, a fraction of the cost.
    factor = max(1, int(scale_px / 2))
    coarse = tuple(-(-n // factor) + 2 for n in shape)
    field = ndi.gaussian_filter(rng.standard_normal(coarse), max(scale_px / factor, 0.1), mode="wrap")
    if factor > 1:
        field = ndi.zoom(field, factor, order=1, grid_mode=False)[: shape[0], : shape[1]]
    sd = field.std()
    return field / sd if sd > 0 else field


def _correlated_noise(shape: tuple[int, ...], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(shape)
    if sigma_px > 0:
        noise = ndi.gaussian_filter(noise, sigma_px, mode="wrap")
        noise /= noise.std() if noise.std() > 0 else 1.0
    return noise


def _relative_depth(dist_in: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """Distance to the rim divided by the particle's largest such distance (0 at the rim, 1 at the top)."""
    n = int(instances.max())
    radius = np.zeros(n + 1)
    np.maximum.at(radius, instances.ravel(), dist_in.ravel())
    radius = np.maximum(radius, 1.0)
    return np.clip((dist_in - 0.5) / radius[instances], 0.0, 1.0)


def _transmission(instances: np.ndarray, dist_in: np.ndarray, rel_depth: np.ndarray, brightness: np.ndarray,
                  params: RenderParams, rng: np.random.Generator) -> np.ndarray:
    """Inverted transmission intensity of every particle pixel (see the module docstring)."""
    n = int(instances.max())
    radius = np.zeros(n + 1)
    np.maximum.at(radius, instances.ravel(), dist_in.ravel())
    present = radius[1:][radius[1:] > 0]
    typical = float(np.median(present)) if present.size else 1.0
    # Where a particle touches another, the beam crosses both: measured from the substrate
    # rather than from its own rim, the thickness does not drop to zero at the contact, so the
    # two merge into one silhouette as in real transmission images.
    from_substrate = ndi.distance_transform_edt(instances > 0)
    depth = np.maximum(rel_depth, np.clip((from_substrate - 0.5) / np.maximum(radius, 1.0)[instances], 0.0, 1.0))
    # A dome's projected thickness, in proportion to the particle's size.
    thickness = np.sqrt(1.0 - (1.0 - depth) ** 2) * (radius / typical)[instances]
    mu = max(params.absorption, 1e-3)
    attenuation = (1.0 - np.exp(-mu * thickness)) / (1.0 - np.exp(-mu))
    particle = params.background_level + (brightness[instances] - params.background_level) * attenuation
    return particle + params.particle_texture * _smooth_noise(instances.shape, params.texture_scale_px, rng)


def _shading(dist_in: np.ndarray, rel_depth: np.ndarray, rng: np.random.Generator,
             light_angle_rad: float | None) -> np.ndarray:
    """Component of a dome's outward surface normal towards the detector, in [-1, 1]."""
    if light_angle_rad is None:
        light_angle_rad = float(rng.uniform(-np.pi / 4, np.pi / 4))
    smooth = ndi.gaussian_filter(dist_in, 1.0)
    gy, gx = np.gradient(smooth)
    norm = np.hypot(gy, gx) + 1e-6
    # The distance gradient points inwards; the outward normal is its negative. Light from the
    # top of the image (angle 0) is the direction (-1, 0) in (row, col).
    ly, lx = -np.cos(light_angle_rad), np.sin(light_angle_rad)
    facing = -(gy * ly + gx * lx) / norm
    # On a dome the normal's horizontal part is sin(tilt) = 1 - relative depth.
    return facing * (1.0 - rel_depth) * (dist_in > 0)
