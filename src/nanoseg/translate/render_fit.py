"""Fitting the renderer (:mod:`nanoseg.translate.render`) to real micrographs: analysis by synthesis.

Intensity statistics of the real images (substrate, particle interiors, rims, spread, noise) are
measured, the renderer draws the same particles, and its parameters are corrected until the
rendered statistics match: for SE contrast the levels, edge effect, dome, halo, shading and noise;
for transmission contrast the levels, absorption, spread and noise.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage as ndi

from nanoseg.labels import separation_lines
from nanoseg.translate.render import RenderParams, render_sem


def fit_render_params(
    images: list[np.ndarray],
    masks: list[np.ndarray] | None = None,
    n_iterations: int = 4,
    seed: int = 0,
    max_images: int = 6,
    contrast: str = "se",
) -> RenderParams:
    """Estimate renderer parameters from real micrographs (particles bright, values in [0, 1]).

    Particles are found by an Otsu threshold of the lightly smoothed image unless ``masks`` are
    given. Intensity statistics are measured on the real images (substrate median, interior
    median, rim median, per-particle spread, noise of the substrate), then the renderer is run
    on the same particle masks and its parameters are corrected until the rendered statistics
    match the measured ones (analysis by synthesis; a few iterations).

    Parameters
    ----------
    images : list of ndarray, shape (H, W)
        Micrographs with bright particles, info bar cropped.
    masks : list of bool ndarray, optional
        Particle masks matching ``images`` (touching particles may be separated by 1-px lines).
    n_iterations : int
        Synthesis-correction rounds.
    seed : int
        Seed of the renders used for the correction.
    max_images : int
        At most this many images (evenly spread over the list) are used; more add little.
    contrast : {'se', 'transmission'}
        What the images are (:attr:`RenderParams.contrast`). In transmission the rim over the
        deep interior sets the absorption, and the SE effects stay off.

    Returns
    -------
    RenderParams
    """
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    if not images:
        raise ValueError("fit_render_params needs at least one image")
    if len(images) > max_images:
        keep = np.linspace(0, len(images) - 1, max_images).round().astype(int)
        images = [images[i] for i in keep]
        masks = [masks[i] for i in keep] if masks is not None else None
    labels_list = []
    for i, image in enumerate(images):
        image = np.asarray(image, dtype=np.float64)
        if masks is not None:
            mask = np.asarray(masks[i]) > 0
        else:
            smooth = ndi.gaussian_filter(image, 1.0)
            mask = smooth > threshold_otsu(smooth)
            mask = ndi.binary_opening(mask, iterations=1)
        labels_list.append(label(mask, connectivity=1))

    images64 = [np.asarray(im, dtype=np.float64) for im in images]
    target = _pooled_stats(images64, labels_list)
    params = RenderParams(
        background_level=target["background"],
        particle_level=max(target["interior"], target["background"] + 0.02),
        edge_gain=max(target["rim"] - target["shoulder"], 0.0),
        brightness_sd=target["brightness_sd"],
        noise_sd=target["noise"],
        background_texture=target["texture"],
        halo_depth=max(target["background"] - target["halo"], 0.0),
    )
    rng = np.random.default_rng(seed)
    if contrast == "transmission":
        return _fit_transmission(params, images64, labels_list, n_iterations, rng)
    for _ in range(n_iterations):
        rendered = [render_sem(lab, params, rng, light_angle_rad=0.0).astype(np.float64) for lab in labels_list]
        got = _pooled_stats(rendered, labels_list)
        params.background_level = float(np.clip(params.background_level + target["background"] - got["background"], 0, 1))
        params.particle_level = float(np.clip(params.particle_level + target["interior"] - got["interior"], 0, 1))
        # The rim (d ~ 2 px) over the shoulder (d ~ 4-6 px) is the narrow edge effect; the
        # shoulder over the deep interior is the broad dome shading.
        gap_target = target["rim"] - target["shoulder"]
        gap_got = got["rim"] - got["shoulder"]
        dome_target = target["shoulder"] - target["deep"]
        dome_got = got["shoulder"] - got["deep"]
        if np.isfinite(dome_target) and np.isfinite(dome_got) and dome_got > 1e-3:
            params.dome_gain = float(np.clip(params.dome_gain * max(dome_target, 0.0) / dome_got, 0.0, 2.0))
        params.edge_gain = float(np.clip(params.edge_gain + gap_target - gap_got, 0, 1))
        params.halo_depth = float(np.clip(params.halo_depth + got["halo"] - target["halo"], 0, 1))
        if got["noise"] > 0:
            params.noise_sd = float(params.noise_sd * target["noise"] / got["noise"])
        if got["brightness_sd"] > 0:
            params.brightness_sd = float(np.clip(params.brightness_sd * target["brightness_sd"] / got["brightness_sd"], 0, 1))
        if got["within_sd"] > 1e-3 and np.isfinite(target["within_sd"]):
            # Brightness changes across a particle beyond its rim come from its shape (shading).
            params.shading_gain = float(np.clip(params.shading_gain * target["within_sd"] / got["within_sd"], 0, 1))
        if got["texture"] > 0:
            params.background_texture = float(np.clip(params.background_texture * target["texture"] / got["texture"], 0, 0.2))
    return params


#: Single particles that a transmission fit needs before it leaves out the agglomerates.
_MIN_COMPACT_BLOBS = 10
#: Solidity above which a blob counts as one particle (the TiO2 outlines: median 0.96).
_COMPACT_SOLIDITY = 0.9


def _compact_blobs(labels: np.ndarray) -> np.ndarray:
    """``labels`` with only its convex-looking blobs (single particles) left."""
    from skimage.measure import regionprops

    keep = np.zeros(int(labels.max()) + 1, bool)
    for region in regionprops(labels):
        keep[region.label] = region.area >= 20 and region.solidity >= _COMPACT_SOLIDITY
    return np.where(keep[labels], labels, 0)


#: Absorptions :func:`fit_render_params` tries for transmission images, from nearly linear to saturated.
_ABSORPTIONS = np.geomspace(0.1, 30.0, 9)


def _fit_transmission(params: RenderParams, images: list[np.ndarray], labels_list: list[np.ndarray],
                      n_iterations: int, rng: np.random.Generator) -> RenderParams:
    """:func:`fit_render_params` for transmission images: levels, absorption, spread, noise, texture.

    Touching particles are one blob in a thresholded transmission image, and a blob's rim is
    thinner for its size than a particle's: the statistics come from the compact blobs (single
    particles) when there are enough of them.
    """
    compact = [_compact_blobs(lab) for lab in labels_list]
    if sum(int(np.count_nonzero(np.bincount(lab.ravel())[1:])) for lab in compact) >= _MIN_COMPACT_BLOBS:
        labels_list = compact
    target = _pooled_stats(images, labels_list)
    params = dataclasses.replace(params, contrast="transmission", edge_gain=0.0, dome_gain=0.0, shading_gain=0.0,
                                 shadow_depth=0.0, halo_depth=0.0)

    def rim_share(stats: dict[str, float]) -> float:
        # How far up from the substrate the rim already is: near 1 for saturated, flat silhouettes.
        return (stats["rim"] - stats["background"]) / max(stats["deep"] - stats["background"], 1e-3)

    def stats_of(p: RenderParams) -> dict[str, float]:
        return _pooled_stats([render_sem(lab, p, rng).astype(np.float64) for lab in labels_list], labels_list)

    for k in range(n_iterations):
        if k == 1 and np.isfinite(rim_share(target)):
            # The rim's share grows monotonically with the absorption: read it off a coarse scan.
            shares = np.array([rim_share(stats_of(dataclasses.replace(params, absorption=float(mu))))
                               for mu in _ABSORPTIONS])
            order = np.argsort(shares)
            log_mu = np.interp(rim_share(target), shares[order], np.log(_ABSORPTIONS[order]))
            params.absorption = float(np.exp(log_mu))
        got = stats_of(params)
        params.background_level = float(np.clip(params.background_level + target["background"] - got["background"], 0, 1))
        params.particle_level = float(np.clip(params.particle_level + target["deep"] - got["deep"], 0, 1))
        if got["noise"] > 0:
            params.noise_sd = float(params.noise_sd * target["noise"] / got["noise"])
        if got["brightness_sd"] > 0:
            params.brightness_sd = float(np.clip(params.brightness_sd * target["brightness_sd"] / got["brightness_sd"], 0, 1))
        if got["texture"] > 0:
            params.background_texture = float(np.clip(params.background_texture * target["texture"] / got["texture"], 0, 0.2))
    return params


def _pooled_stats(images: list[np.ndarray], labels_list: list[np.ndarray]) -> dict[str, float]:
    """Medians over all images of the statistics :func:`fit_render_params` matches."""
    keys = ("background", "interior", "rim", "shoulder", "deep", "halo", "noise", "brightness_sd", "within_sd",
            "texture")
    per_image = [_image_stats(im, lab) for im, lab in zip(images, labels_list)]
    out = {}
    for key in keys:
        values = [s[key] for s in per_image if np.isfinite(s[key])]
        out[key] = float(np.median(values)) if values else float(getattr(RenderParams(), _STAT_DEFAULT[key]))
    return out


_STAT_DEFAULT = {"background": "background_level", "interior": "particle_level", "rim": "particle_level",
                 "shoulder": "particle_level", "deep": "particle_level", "within_sd": "shading_gain",
                 "halo": "background_level", "noise": "noise_sd", "brightness_sd": "brightness_sd",
                 "texture": "background_texture"}


def _image_stats(image: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    foreground = labels > 0
    inside = foreground & ~separation_lines(labels)  # none when the labels are 4-connected components
    dist_in = ndi.distance_transform_edt(inside)
    dist_out = ndi.distance_transform_edt(~foreground) if foreground.any() else np.full(image.shape, np.inf)
    far = dist_out > 6

    def median(sel: np.ndarray) -> float:
        return float(np.median(image[sel])) if sel.sum() > 20 else float("nan")

    residual = image - ndi.gaussian_filter(image, 2.0)
    far_eroded = ndi.binary_erosion(far, iterations=3)
    noise = float(np.std(residual[far_eroded])) if far_eroded.sum() > 100 else float("nan")
    texture = float(np.std(ndi.gaussian_filter(image, 4.0)[far_eroded])) if far_eroded.sum() > 100 else float("nan")
    n = int(labels.max())
    if n >= 3:
        deep = dist_in > 3
        idx = np.arange(1, n + 1)
        counts = np.asarray(ndi.sum(deep, labels, idx))
        sums = np.asarray(ndi.sum(image * deep, labels, idx))
        keep = counts >= 5
        means = sums[keep] / counts[keep]
        brightness_sd = float(np.std(means) / np.mean(means)) if means.size >= 3 and np.mean(means) > 0 else float("nan")
        squares = np.asarray(ndi.sum(image**2 * deep, labels, idx))[keep]
        within = np.sqrt(np.clip(squares / counts[keep] - means**2, 0, None))
        within_sd = float(np.median(within)) if within.size >= 3 else float("nan")
    else:
        brightness_sd = within_sd = float("nan")
    return {
        "background": median(far),
        "interior": median(dist_in > 4),
        "rim": median((dist_in > 1.5) & (dist_in <= 2.5)),
        "shoulder": median((dist_in > 3.5) & (dist_in <= 6.5)),
        "deep": median(dist_in > 8),
        "halo": median((dist_out > 1.5) & (dist_out <= 4)),
        "noise": noise,
        "brightness_sd": brightness_sd,
        "within_sd": within_sd,
        "texture": texture,
    }
