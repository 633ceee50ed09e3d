"""How real do the fake micrographs look? Numbers to compare translators and their settings.

The segmenter learns from fake micrographs what real ones look like; whatever tells the two
apart is a cue it may learn and then miss on real data. Three measures, each on random tiles of
the real micrographs and of the fake ones:

- :func:`classifier_accuracy`: the held-out accuracy of a small convolutional network trained
  to tell fake tiles from real ones. 0.5 means it cannot tell them apart; 1.0 that every fake
  is recognised. The most complete measure: it finds any difference a network can see.
- :func:`histogram_distance`: the Wasserstein distance between the pixel-intensity
  distributions (grey levels, contrast, particle coverage), in intensity units (0-1).
- :func:`spectrum_distance`: the mean absolute difference of the radially averaged log power
  spectra (blur, noise, texture and edge sharpness), in decades.

:func:`realism_scores` computes all three; the pairs stage writes them to
``RUN/pairs/realism.json`` and the run's report shows them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from nanoseg.tiles import random_tiles

logger = logging.getLogger("nanoseg.realism")


def radial_spectrum(tiles: np.ndarray) -> np.ndarray:
    """Mean radially averaged log10 power spectrum of (n, P, P) tiles; one value per integer frequency."""
    tiles = np.asarray(tiles, np.float64)
    size = tiles.shape[-1]
    window = np.outer(np.hanning(size), np.hanning(size))  # no edge artefacts from the tile border
    centred = (tiles - tiles.mean(axis=(1, 2), keepdims=True)) * window
    power = np.abs(np.fft.fftshift(np.fft.fft2(centred), axes=(1, 2))) ** 2
    yy, xx = np.indices((size, size)) - size // 2
    radius = np.round(np.hypot(yy, xx)).astype(int).ravel()
    n_bins = size // 2
    keep = (radius >= 1) & (radius < n_bins)
    counts = np.bincount(radius[keep], minlength=n_bins)
    mean_power = power.mean(axis=0).ravel()
    sums = np.bincount(radius[keep], weights=mean_power[keep], minlength=n_bins)
    return np.log10(sums[1:] / np.maximum(counts[1:], 1) + 1e-12)


def spectrum_distance(real_tiles: np.ndarray, fake_tiles: np.ndarray) -> float:
    """Mean absolute difference of the two sets' radial log power spectra (decades)."""
    return float(np.mean(np.abs(radial_spectrum(real_tiles) - radial_spectrum(fake_tiles))))


def histogram_distance(real_tiles: np.ndarray, fake_tiles: np.ndarray, max_samples: int = 200_000,
                       rng: np.random.Generator | None = None) -> float:
    """Wasserstein distance between the pixel intensities of the two sets (intensity units)."""
    from scipy.stats import wasserstein_distance

    rng = rng if rng is not None else np.random.default_rng(0)
    real = np.asarray(real_tiles, np.float64).ravel()
    fake = np.asarray(fake_tiles, np.float64).ravel()
    # A subsample keeps it fast on many tiles; the distance of 2e5 samples is stable to ~1e-3.
    if real.size > max_samples:
        real = rng.choice(real, max_samples, replace=False)
    if fake.size > max_samples:
        fake = rng.choice(fake, max_samples, replace=False)
    return float(wasserstein_distance(real, fake))


def _realism_net() -> Any:
    """The small fake-or-real CNN: three conv levels, global pooling, one logit."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1),
    )


def classifier_accuracy(real_tiles: np.ndarray, fake_tiles: np.ndarray, *, steps: int = 300, batch_size: int = 32,
                        held_out_fraction: float = 0.3, seed: int = 0, device: Any = "cpu") -> float:
    """Held-out accuracy of a small CNN trained to tell fake tiles (label 1) from real ones (0).

    Equal numbers of real and fake tiles are used, so 0.5 is chance. Tiles are flipped and
    rotated at random in training: orientation is no cue in either set.

    Parameters
    ----------
    real_tiles, fake_tiles : (n, P, P) arrays
    steps : int
        Training steps (Adam); a few hundred reach a stable accuracy on 64-px tiles.
    held_out_fraction : float
        Fraction of each set kept for the accuracy.
    seed : int
    device : torch device or str

    Returns
    -------
    float
        Accuracy on the held-out tiles, in [0, 1].
    """
    import torch
    from torch import nn

    n = min(len(real_tiles), len(fake_tiles))
    if n < 8:
        raise ValueError("classifier_accuracy needs at least 8 tiles of each kind")
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):  # seeds the net's initial weights without touching the caller's RNG
        torch.manual_seed(seed)
        net = _realism_net().to(device)
    x = np.concatenate([real_tiles[:n], fake_tiles[:n]]).astype(np.float32)
    y = np.concatenate([np.zeros(n), np.ones(n)]).astype(np.float32)
    order = rng.permutation(2 * n)
    n_test = max(2, int(round(held_out_fraction * 2 * n)))
    test, train = order[:n_test], order[n_test:]
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(steps):
        idx = rng.choice(train, size=min(batch_size, len(train)), replace=False)
        batch = np.rot90(x[idx], int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            batch = batch[:, :, ::-1]
        inputs = torch.from_numpy(np.ascontiguousarray(batch)[:, None]).to(device)
        loss = loss_fn(net(inputs).squeeze(1), torch.from_numpy(y[idx]).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.inference_mode():
        logits = net(torch.from_numpy(x[test][:, None]).to(device)).squeeze(1).cpu().numpy()
    return float(np.mean((logits > 0) == (y[test] > 0.5)))


def realism_scores(real_images: Sequence[np.ndarray], fake_images: Sequence[np.ndarray], *, tile_px: int = 64,
                   n_tiles: int = 256, steps: int = 300, min_foreground_fraction: float = 0.1, seed: int = 0,
                   device: Any = "cpu") -> dict[str, Any]:
    """All three realism measures of fake micrographs against real ones.

    Parameters
    ----------
    real_images, fake_images : sequences of 2-D arrays in [0, 1]
        Real micrographs (info bar cropped) and fake ones.
    tile_px : int
        Side of the tiles compared.
    n_tiles : int
        Tiles of each kind.
    steps : int
        Training steps of the fake-or-real classifier.
    min_foreground_fraction : float
        Tiles hold at least this fraction of particle pixels (see :func:`nanoseg.tiles.random_tiles`).
    seed : int

    Returns
    -------
    dict
        ``classifier_accuracy`` (0.5 = indistinguishable), ``histogram_distance``,
        ``spectrum_distance_decades``, and the settings used.
    """
    rng = np.random.default_rng(seed)
    real = random_tiles(real_images, n_tiles, tile_px, rng, min_foreground_fraction=min_foreground_fraction)
    fake = random_tiles(fake_images, n_tiles, tile_px, rng, min_foreground_fraction=min_foreground_fraction)
    scores = {
        "classifier_accuracy": round(classifier_accuracy(real, fake, steps=steps, seed=seed, device=device), 4),
        "histogram_distance": round(histogram_distance(real, fake, rng=rng), 5),
        "spectrum_distance_decades": round(spectrum_distance(real, fake), 4),
        "tile_px": tile_px, "n_tiles": n_tiles, "classifier_steps": steps,
        "min_foreground_fraction": min_foreground_fraction,
        "meaning": "classifier_accuracy: held-out accuracy of a small CNN telling fake tiles from real ones "
                   "(0.5 = cannot tell them apart); histogram_distance: Wasserstein distance of the pixel "
                   "intensities; spectrum_distance_decades: mean |difference| of the radial log10 power spectra",
    }
    logger.info("realism: a classifier tells fake from real tiles with accuracy %.2f (0.5 = indistinguishable); "
                "histogram distance %.4f, spectrum distance %.3f decades", scores["classifier_accuracy"],
                scores["histogram_distance"], scores["spectrum_distance_decades"])
    return scores
