"""MLPs for 2-D toy data, as in the WGAN-GP paper's gan_toy.py (ReLU, DIM=512, 3 hidden)."""
from __future__ import annotations

import torch
from torch import nn


def _mlp(in_dim: int, out_dim: int, hidden: int, depth: int) -> nn.Sequential:
    for name, v in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden", hidden), ("depth", depth)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
        d = hidden
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class MLPGenerator(nn.Module):
    def __init__(self, z_dim: int = 2, out_dim: int = 2, hidden: int = 512, depth: int = 3):
        super().__init__()
        self.z_dim, self.out_dim = z_dim, out_dim
        self.net = _mlp(z_dim, out_dim, hidden, depth)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class MLPCritic(nn.Module):
    def __init__(self, in_dim: int = 2, hidden: int = 512, depth: int = 3):
        super().__init__()
        self.in_dim = in_dim
        self.net = _mlp(in_dim, 1, hidden, depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).reshape(x.shape[0])
