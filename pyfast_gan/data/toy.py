"""2-D toy distributions of the WGAN-GP paper (gan_toy.py): 8 Gaussians, 25 Gaussians,
Swiss roll, with the paper's scales."""
from __future__ import annotations

import math

import numpy as np
import torch

TOY_DATASETS = ("8gaussians", "25gaussians", "swissroll")


class ToySampler:
    """``sample(n, generator)`` -> float32 (n, 2) on CPU.

    - 8gaussians: centers at radius 2 on the axes and diagonals, std 0.02, all / 1.414.
    - 25gaussians: centers on the grid {-4, -2, 0, 2, 4}^2, std 0.05, all / 2.828.
    - swissroll: sklearn make_swiss_roll(noise=0.25), coordinates (x, z), / 7.5.

    ``scale`` multiplies every sample (and ``modes``/``std``); 1.0 is the paper's data.
    ``modes`` is the (K, 2) tensor of mode centers (None for the Swiss roll) and ``std`` the
    per-coordinate standard deviation of each mode, for :func:`pyfast_gan.metrics.mode_coverage`.
    """

    def __init__(self, name: str, scale: float = 1.0):
        if name not in TOY_DATASETS:
            raise ValueError(f"name must be one of {TOY_DATASETS}, got {name!r}")
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.name, self.scale = name, float(scale)
        if name == "8gaussians":
            s = 1.0 / math.sqrt(2)
            c = torch.tensor(
                [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)], dtype=torch.float64
            )
            self.modes = (c * 2.0 / 1.414 * self.scale).float()
            self.std = 0.02 / 1.414 * self.scale
        elif name == "25gaussians":
            g = torch.arange(-2, 3, dtype=torch.float64) * 2.0
            c = torch.cartesian_prod(g, g)
            self.modes = (c / 2.828 * self.scale).float()
            self.std = 0.05 / 2.828 * self.scale
        else:
            self.modes = None
            self.std = None

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if self.modes is not None:
            k = torch.randint(self.modes.shape[0], (n,), generator=generator)
            noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
            return (self.modes.double()[k] + noise * self.std).float()
        from sklearn.datasets import make_swiss_roll

        # Seed sklearn's numpy RNG from the torch generator, so one generator drives all data.
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        pts, _ = make_swiss_roll(n_samples=n, noise=0.25, random_state=np.random.RandomState(seed))
        return torch.from_numpy(pts[:, [0, 2]] / 7.5 * self.scale).float()

    def __repr__(self) -> str:
        return f"ToySampler({self.name!r}, scale={self.scale})"
