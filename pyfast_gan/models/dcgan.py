"""DCGAN generator and critic (Radford et al. 2016) for the IMAGE_SIZES: 32 to 128 pixels."""
from __future__ import annotations

import torch
from torch import nn

from ._common import Conv2d, LeakyReLU, check_model_args, critic_norm, init_dcgan_weights, spatial_plan

# Widest layer = base * this; without a cap 128 px would start at base*16 (1024 at base 64)
# for little gain, doubling the generator's parameters.
_MAX_MULT = 8


def _widths(base: int, n: int) -> list[int]:
    """Channel widths from the smallest feature map outwards: n levels, halving each step."""
    return [base * min(2 ** (n - 1 - i), _MAX_MULT) for i in range(n)]


class DCGANGenerator(nn.Module):
    """z (N, z_dim) -> image (N, channels, S, S) in [-1, 1].

    A 1x1 -> start x start transposed conv, then stride-2 transposed convs (k4 s2 p1) with
    batch norm + ReLU, tanh at the output (the paper's architecture guidelines).
    """

    def __init__(self, image_size: int, channels: int, z_dim: int = 100, base: int = 64):
        super().__init__()
        check_model_args(image_size, channels, base, z_dim=z_dim)
        self.image_size, self.channels, self.z_dim = image_size, channels, z_dim
        start, n = spatial_plan(image_size)
        widths = _widths(base, n)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, widths[0], start, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [
                nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.reshape(z.shape[0], self.z_dim, 1, 1))


class DCGANCritic(nn.Module):
    """image (N, channels, S, S) -> raw scores (N,) (no sigmoid: every loss takes logits).

    Stride-2 convs (k4 s2 p1) with LeakyReLU(0.2), no norm on the first layer, then a
    start x start conv to one score.
    """

    def __init__(self, image_size: int, channels: int, base: int = 64, norm: str = "batch"):
        super().__init__()
        check_model_args(image_size, channels, base, norm=norm)
        self.image_size, self.channels, self.norm = image_size, channels, norm
        start, n = spatial_plan(image_size)
        widths = _widths(base, n)[::-1]
        layers: list[nn.Module] = [Conv2d(channels, widths[0], 4, 2, 1), LeakyReLU(0.2, inplace=True)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [
                # A bias right before a norm with its own shift is redundant.
                Conv2d(cin, cout, 4, 2, 1, bias=norm == "none"),
                critic_norm(norm, cout),
                LeakyReLU(0.2, inplace=True),
            ]
        layers.append(Conv2d(widths[-1], 1, start, 1, 0))
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).reshape(x.shape[0])
