"""Classic U-Net (Ronneberger et al. 2015) for images of any size.

The network pads its input (reflect) to a multiple of ``2**depth`` and crops the output back, so
callers never have to think about tile sizes. Its output is raw logits with ``out_channels``
channels at the input's height and width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanoseg.nets import register


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``x`` (N, C, H, W) at the bottom/right to a multiple of ``multiple``.

    Reflect padding avoids the dark frame that zero padding would show the network; inputs
    smaller than the padding fall back to replicate (reflect needs pad < size).

    Returns
    -------
    padded : Tensor
    size : (int, int)
        The original height and width, for :func:`crop_to`.
    """
    h, w = x.shape[-2], x.shape[-1]
    pad_h = (multiple - h % multiple) % multiple
    pad_w = (multiple - w % multiple) % multiple
    if pad_h == 0 and pad_w == 0:
        return x, (h, w)
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode), (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`."""
    return x[..., : size[0], : size[1]]


class _DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


@register("unet")
class UNet(nn.Module):
    """U-Net with ``depth`` downsampling levels; channels ``base_width * 2**level``.

    Parameters
    ----------
    in_channels : int
        Channels of the input image (1 for gray micrographs).
    out_channels : int
        Channels of the output logits (1 for a binary mask, 3 for the three-class target).
    base_width : int
        Channels of the first level.
    depth : int
        Number of 2x2 max-pool downsamplings; inputs are padded to a multiple of ``2**depth``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_width: int = 16, depth: int = 4) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.depth = depth
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        channels = in_channels
        for width in widths:
            self.down.append(_DoubleConv(channels, width))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(channels, width, 2, stride=2))
            self.merge.append(_DoubleConv(2 * width, width))
            channels = width
        self.head = nn.Conv2d(channels, out_channels, 1)

    @property
    def multiple(self) -> int:
        """Input sides are padded to a multiple of this."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, self.multiple)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth:
                skips.append(x)
                x = self.pool(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(torch.cat([up(x), skip], dim=1))
        return crop_to(self.head(x), size)
