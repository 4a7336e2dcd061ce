"""BEGAN's networks (Berthelot et al. 2017, sec. 3.5 and fig. 1): the critic is an
auto-encoder, the generator has the shape of its decoder (its own weights).

Encoder: 3x3 conv + ELU, then per scale two 3x3 conv + ELU and a stride-2 3x3 conv that
adds ``n`` filters (n, 2n, 3n, ...), then a linear map to the embedding h. Decoder and
generator: a linear map to n x S0 x S0 (S0 = 8 at 32/64/128 px, 6 at 96), then per scale
two 3x3 conv + ELU and nearest-neighbour x2 upsampling, and a 3x3 conv to the image. The
generator ends in tanh (images in [-1, 1] as every pyfast_gan generator); the decoder's
output is linear, as in the paper.

:class:`BEGANCritic` returns the per-sample reconstruction error L(v) = mean |v - D(v)| over
(C, H, W), shape (N,): the "scores" :class:`pyfast_gan.losses.BEGANLoss` takes.
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import check_image_args, spatial_plan


def _plan(image_size: int) -> tuple[int, int]:
    start, n = spatial_plan(image_size)
    return 2 * start, n - 1  # (S0, upsamplings): 32 -> 8 and 2, 96 -> 6 and 4


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1)


def _check(image_size: int, channels: int, n: int, h: int) -> None:
    check_image_args(image_size, channels)
    if n < 1 or h < 1:
        raise ValueError(f"filters and embedding must be positive, got filters={n}, embed={h}")


class _Decoder(nn.Module):
    """h (N, h) -> (N, channels, S, S)."""

    def __init__(self, image_size: int, channels: int, n: int, h: int):
        super().__init__()
        self.start, ups = _plan(image_size)
        self.n = n
        self.fc = nn.Linear(h, n * self.start * self.start)
        layers: list[nn.Module] = []
        for i in range(ups + 1):
            layers += [_conv(n, n), nn.ELU(inplace=True), _conv(n, n), nn.ELU(inplace=True)]
            if i < ups:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        layers.append(_conv(n, channels))
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(h).reshape(h.shape[0], self.n, self.start, self.start))


class _Encoder(nn.Module):
    """(N, channels, S, S) -> h (N, h)."""

    def __init__(self, image_size: int, channels: int, n: int, h: int):
        super().__init__()
        start, downs = _plan(image_size)
        layers: list[nn.Module] = [_conv(channels, n), nn.ELU(inplace=True)]
        for i in range(downs + 1):
            w = n * (i + 1)
            layers += [_conv(w, w), nn.ELU(inplace=True), _conv(w, w), nn.ELU(inplace=True)]
            if i < downs:
                layers += [_conv(w, w + n, stride=2), nn.ELU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(n * (downs + 1) * start * start, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).flatten(1))


class BEGANGenerator(nn.Module):
    """z (N, z_dim) -> image (N, channels, S, S) in [-1, 1]; the decoder's shape."""

    def __init__(self, image_size: int, channels: int, z_dim: int = 64, base: int = 64):
        super().__init__()
        _check(image_size, channels, base, z_dim)
        self.image_size, self.channels, self.z_dim = image_size, channels, z_dim
        self.decoder = _Decoder(image_size, channels, base, z_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.decoder(z.reshape(z.shape[0], self.z_dim)))


class BEGANCritic(nn.Module):
    """image (N, channels, S, S) -> reconstruction error L(x) (N,), fp32.

    ``base``: the paper's n (filters), ``embed``: its h (embedding size)."""

    def __init__(self, image_size: int, channels: int, base: int = 64, embed: int = 64):
        super().__init__()
        _check(image_size, channels, base, embed)
        self.image_size, self.channels, self.embed = image_size, channels, embed
        self.encoder = _Encoder(image_size, channels, base, embed)
        self.decoder = _Decoder(image_size, channels, base, embed)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The error in fp32 under autocast: it is a mean of small differences.
        return (x.float() - self.reconstruct(x).float()).abs().flatten(1).mean(1)
