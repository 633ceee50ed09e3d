"""Generator and critic of the WGAN-GP that learns single-particle shapes (Gulrajani et al., 2017).

Both are DCGAN-like and sized for square single-channel masks whose side is a power of two
(64 px by default). The critic has no batch normalisation: the gradient penalty is computed
per sample, and batch statistics would couple the samples of a batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nanoseg.nets import register

_BASE_PX = 4  # side of the smallest feature map


def _n_levels(size: int) -> int:
    levels = math.log2(size / _BASE_PX)
    if size < 2 * _BASE_PX or levels != int(levels):
        raise ValueError(f"size must be a power of two >= {2 * _BASE_PX}, got {size}")
    return int(levels)


@register("wgan_generator")
class WganGenerator(nn.Module):
    """Latent vector -> ``(N, 1, size, size)`` mask in [-1, 1].

    Parameters
    ----------
    size : int
        Side of the generated masks in px (power of two).
    latent_dim : int
        Length of the noise vector.
    width : int
        Channels of the last feature map; each coarser level has twice as many.
    """

    def __init__(self, size: int = 64, latent_dim: int = 64, width: int = 32) -> None:
        super().__init__()
        levels = _n_levels(size)
        self.size, self.latent_dim = size, latent_dim
        channels = [width * 2 ** (levels - 1 - i) for i in range(levels)]  # coarse -> fine
        self.project = nn.Sequential(
            nn.Linear(latent_dim, channels[0] * _BASE_PX * _BASE_PX),
            nn.BatchNorm1d(channels[0] * _BASE_PX * _BASE_PX),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            blocks += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        blocks += [nn.ConvTranspose2d(channels[-1], 1, 4, stride=2, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*blocks)
        self._first_channels = channels[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(-1, self._first_channels, _BASE_PX, _BASE_PX)
        return self.body(x)


@register("wgan_critic")
class WganCritic(nn.Module):
    """``(N, 1, size, size)`` mask -> one unbounded score per sample (higher = more real).

    Parameters
    ----------
    size : int
        Side of the input masks in px (power of two).
    latent_dim : int
        Unused; accepted so that generator and critic share one set of keyword arguments.
    width : int
        Channels of the first feature map; each coarser level has twice as many.
    """

    def __init__(self, size: int = 64, latent_dim: int = 64, width: int = 32) -> None:
        super().__init__()
        levels = _n_levels(size)
        self.size = size
        layers: list[nn.Module] = []
        c_in = 1
        for i in range(levels):
            c_out = width * 2**i
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * _BASE_PX * _BASE_PX, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1)).squeeze(1)
