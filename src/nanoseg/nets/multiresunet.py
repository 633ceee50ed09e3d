"""MultiResUNet (Ibtehaz & Rahman, Neural Networks 121, 74-87, 2020).

MultiRes blocks replace the U-Net's double convolutions: three chained 3x3 convolutions
(receptive fields 3, 5 and 7 px) with W/6, W/3 and W/2 filters, concatenated, plus a 1x1
residual shortcut, where ``W = alpha * U`` and ``alpha = 1.67``. Res paths (chains of 3x3
convolutions with 1x1 residual shortcuts, shorter towards the bottleneck) replace the plain skip
connections to narrow the semantic gap between encoder and decoder features.

Like :class:`nanoseg.nets.unet.UNet`, the network takes any height and width (reflect padding to
a multiple of ``2**depth``, cropped back) and returns raw logits.
"""

from __future__ import annotations

import torch
from torch import nn

from nanoseg.nets import register
from nanoseg.nets.unet import crop_to, pad_to_multiple

ALPHA = 1.67


def _conv_bn(in_channels: int, out_channels: int, kernel: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def multires_widths(units: int, alpha: float = ALPHA) -> tuple[int, int, int]:
    """Filters of the 3x3, 5x5 and 7x7 branches of a MultiRes block with ``units`` U."""
    w = alpha * units
    return max(1, int(w * 0.167)), max(1, int(w * 0.333)), max(1, int(w * 0.5))


class MultiResBlock(nn.Module):
    """MultiRes block: chained 3x3 convs concatenated, plus a 1x1 residual shortcut."""

    def __init__(self, in_channels: int, units: int, alpha: float = ALPHA) -> None:
        super().__init__()
        w3, w5, w7 = multires_widths(units, alpha)
        self.out_channels = w3 + w5 + w7
        self.shortcut = _conv_bn(in_channels, self.out_channels, 1, relu=False)
        self.conv3 = _conv_bn(in_channels, w3, 3, relu=True)
        self.conv5 = _conv_bn(w3, w5, 3, relu=True)
        self.conv7 = _conv_bn(w5, w7, 3, relu=True)
        self.bn_cat = nn.BatchNorm2d(self.out_channels)
        self.bn_out = nn.BatchNorm2d(self.out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv3(x)
        b = self.conv5(a)
        c = self.conv7(b)
        out = self.bn_cat(torch.cat([a, b, c], dim=1)) + self.shortcut(x)
        return self.bn_out(self.relu(out))


class ResPath(nn.Module):
    """``length`` residual 3x3 convolutions on a skip connection."""

    def __init__(self, in_channels: int, out_channels: int, length: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.shortcuts = nn.ModuleList()
        self.norms = nn.ModuleList()
        channels = in_channels
        for _ in range(length):
            self.shortcuts.append(_conv_bn(channels, out_channels, 1, relu=False))
            self.convs.append(_conv_bn(channels, out_channels, 3, relu=True))
            self.norms.append(nn.BatchNorm2d(out_channels))
            channels = out_channels
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, shortcut, norm in zip(self.convs, self.shortcuts, self.norms):
            x = norm(self.relu(conv(x) + shortcut(x)))
        return x


@register("multiresunet")
class MultiResUNet(nn.Module):
    """MultiResUNet with ``depth`` downsampling levels.

    Parameters
    ----------
    in_channels : int
        Channels of the input image (1 for gray micrographs).
    out_channels : int
        Channels of the output logits.
    base_width : int
        U of the first level (the paper uses 32); doubles per level. A block outputs about
        ``1.67 * U`` channels.
    depth : int
        Number of 2x2 max-pool downsamplings (the paper uses 4). The Res path of level ``i`` has
        ``depth - i`` convolutions.
    alpha : float
        Width multiplier of the MultiRes blocks (1.67 in the paper).
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, base_width: int = 16, depth: int = 4, alpha: float = ALPHA
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.depth = depth
        units = [base_width * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList()
        self.res_paths = nn.ModuleList()
        channels = in_channels
        for level, u in enumerate(units):
            block = MultiResBlock(channels, u, alpha)
            self.encoder.append(block)
            channels = block.out_channels
            if level < depth:
                self.res_paths.append(ResPath(channels, u, depth - level))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for u in reversed(units[:-1]):
            self.up.append(nn.ConvTranspose2d(channels, u, 2, stride=2))
            block = MultiResBlock(2 * u, u, alpha)
            self.decoder.append(block)
            channels = block.out_channels
        self.head = nn.Conv2d(channels, out_channels, 1)

    @property
    def multiple(self) -> int:
        """Input sides are padded to a multiple of this."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, self.multiple)
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < self.depth:
                skips.append(self.res_paths[level](x))
                x = self.pool(x)
        for up, block, skip in zip(self.up, self.decoder, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return crop_to(self.head(x), size)
