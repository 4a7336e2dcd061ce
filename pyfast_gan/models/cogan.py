"""CoGAN's coupled networks (Liu & Tuzel 2016, sec. 3): two generators that share every
layer but the last, two discriminators that share every layer but the first, each a DCGAN
network (dcgan.py) of the run's size and width.

In the trainer's one-step shape the pair is one module each way:

* :class:`CoGANGenerator`: z -> (N, 2C, H, W), domain A's image in channels [0, C) and
  domain B's, from the same z, in [C, 2C);
* :class:`CoGANCritic`: (N, 2C, H, W) -> (2N,) logits, sample-major (A_0, B_0, A_1, B_1, ...):
  per-sample scores as for every loss, so the standard GAN loss over them is the mean of the
  two domains' losses. A real batch pairs *independent* samples of A and B (unpaired data).

Shared layers are single modules called by both branches: one parameter object that
receives the gradients of both domains.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ._common import init_dcgan_weights
from .dcgan import DCGANCritic, DCGANGenerator


class CoGANGenerator(nn.Module):
    def __init__(self, image_size: int, channels: int, z_dim: int = 100, base: int = 64):
        super().__init__()
        g = DCGANGenerator(image_size, channels, z_dim=z_dim, base=base)
        self.image_size, self.channels, self.z_dim = image_size, channels, z_dim
        self.shared = g.net[:-2]  # every layer up to the last transposed conv
        self.head_a = nn.Sequential(g.net[-2], nn.Tanh())
        self.head_b = init_dcgan_weights(nn.Sequential(copy.deepcopy(g.net[-2]), nn.Tanh()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.shared(z.reshape(z.shape[0], self.z_dim, 1, 1))
        return torch.cat([self.head_a(h), self.head_b(h)], dim=1)


class CoGANCritic(nn.Module):
    def __init__(self, image_size: int, channels: int, base: int = 64, norm: str = "batch"):
        super().__init__()
        d = DCGANCritic(image_size, channels, base=base, norm=norm)
        self.image_size, self.channels, self.norm = image_size, channels, norm
        self.stem_a = d.net[0]  # the first conv is each domain's own
        self.stem_b = init_dcgan_weights(copy.deepcopy(d.net[0]))
        self.shared = d.net[1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.channels
        # Two passes through the shared layers (not one of 2N): with batch norm, each
        # discriminator normalises its own domain's batch, as two coupled networks would.
        sa = self.shared(self.stem_a(x[:, :c])).reshape(x.shape[0])
        sb = self.shared(self.stem_b(x[:, c:])).reshape(x.shape[0])
        return torch.stack([sa, sb], dim=1).reshape(-1)


class DomainView(nn.Module):
    """One domain of a :class:`CoGANGenerator`: z -> (N, C, H, W) (for evaluators and
    samplers that expect a plain generator)."""

    def __init__(self, generator: CoGANGenerator, domain: int):
        super().__init__()
        if domain not in (0, 1):
            raise ValueError(f"domain must be 0 (A) or 1 (B), got {domain!r}")
        self.generator, self.domain = generator, domain
        self.z_dim = generator.z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = self.generator.channels
        return self.generator(z)[:, self.domain * c:(self.domain + 1) * c]


def pairs_side_by_side(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, 2C, H, W) pairs -> (2N, C, H, W) ordered A_0, B_0, A_1, B_1, ... so a grid with an
    even row length shows each pair side by side."""
    n, c2, h, w = x.shape
    if c2 != 2 * channels:
        raise ValueError(f"expected {2 * channels} channels (a pair), got {c2}")
    return x.reshape(n, 2, channels, h, w).reshape(2 * n, channels, h, w)
