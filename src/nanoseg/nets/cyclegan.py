"""CycleGAN networks (Zhu et al. 2017): a ResNet-style generator and a PatchGAN discriminator.

Both follow the reference implementation: reflection padding and instance normalisation in the
generator, 4x4 convolutions with stride 2 and LeakyReLU in the discriminator. Images live in
[-1, 1] inside the networks (the generator ends in ``tanh``).
"""

from __future__ import annotations

import torch
from torch import nn

from nanoseg.nets import register


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=True),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=True),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@register("resnet_generator")
class ResnetGenerator(nn.Module):
    """ResNet generator: 7x7 stem, two stride-2 downsamplings, residual blocks, two upsamplings.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and output images.
    width : int
        ngf, channels of the first layer (x2 per downsampling).
    n_res_blocks : int
        Residual blocks at the lowest resolution (6 for 128 px tiles, 9 for 256 px in the paper).
    skip : bool
        Add the input to the last layer's pre-activation (input-output skip), so that the
        network only has to learn a correction of its input. Needs ``in_channels == out_channels``.
    upsample : {'transpose', 'resize'}
        Stride-2 transposed convolutions (the reference implementation), or nearest-neighbour
        resizing followed by a 3x3 convolution (Odena et al. 2016), which cannot paint the
        checkerboard that uneven kernel overlap leaves on a 4-px grid.

    Notes
    -----
    Inputs must have a height and width divisible by 4 (two stride-2 stages).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 64, n_res_blocks: int = 9,
                 skip: bool = False, upsample: str = "transpose") -> None:
        super().__init__()
        if skip and in_channels != out_channels:
            raise ValueError("skip needs in_channels == out_channels")
        if upsample not in ("transpose", "resize"):
            raise ValueError(f"upsample must be 'transpose' or 'resize', not {upsample!r}")
        self.skip = skip
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, width, 7, bias=True),
            nn.InstanceNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        ch = width
        for _ in range(2):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1, bias=True), nn.InstanceNorm2d(ch * 2), nn.ReLU(inplace=True)]
            ch *= 2
        layers += [_ResBlock(ch) for _ in range(n_res_blocks)]
        for _ in range(2):
            if upsample == "transpose":
                layers.append(nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1, bias=True))
            else:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                           nn.Conv2d(ch, ch // 2, 3, bias=True)]
            layers += [nn.InstanceNorm2d(ch // 2), nn.ReLU(inplace=True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_channels, 7)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.skip:
            y = y + x
        return torch.tanh(y)


@register("patch_discriminator")
class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator: one realness score per overlapping patch (70x70 px with 3 layers).

    Parameters
    ----------
    in_channels : int
        Channels of the judged images.
    width : int
        ndf, channels of the first layer (doubling per layer, at most x8).
    n_layers : int
        Stride-2 convolutions; 3 gives the 70x70 receptive field of the paper.
    """

    def __init__(self, in_channels: int = 1, width: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(width * prev, width * mult, 4, stride=stride, padding=1, bias=True),
                nn.InstanceNorm2d(width * mult),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers += [nn.Conv2d(width * mult, 1, 4, stride=1, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
