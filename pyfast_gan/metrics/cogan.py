"""CoGAN's pair correspondence (Liu & Tuzel 2016, sec. 5: the "pixel agreement ratio" of
the digit experiments): for each generated pair (a, b) from one z, apply the domain
transformation T to a and count the pixels where T(a) and b agree within a tolerance.

A high score alone proves little when most pixels are background (two unrelated digits
agree on much of their black border), so it is always reported beside the same score for
*unpaired* samples: pairs formed with shuffled z (:func:`correspondence_scores`).
"""
from __future__ import annotations

import torch

# |T(a) - b| on the [0, 1] pixel scale that still counts as agreement.
TOLERANCE = 0.25


def pair_correspondence(a: torch.Tensor, b: torch.Tensor, transform, tol: float = TOLERANCE) -> float:
    """Fraction of pixels where ``transform(a)`` and ``b`` (images in [-1, 1], same shape)
    differ by at most ``tol`` on the [0, 1] scale."""
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    ta = transform(a.float())
    return float(((ta - b.float()).abs() / 2 <= tol).float().mean())


def shuffled(n: int, seed: int = 0) -> torch.Tensor:
    """A seeded permutation of range(n) with no fixed point (every pair broken)."""
    if n < 2:
        raise ValueError(f"need at least 2 samples to shuffle, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return torch.roll(perm, 1)[torch.argsort(perm)]  # i -> the next element of the cycle perm


def correspondence_scores(a: torch.Tensor, b: torch.Tensor, transform, tol: float = TOLERANCE,
                          seed: int = 0) -> dict:
    """``pair_correspondence`` of the pairs as generated and of pairs with shuffled z (each a
    paired with the b of another z): ``{"paired", "shuffled"}``."""
    return {"paired": pair_correspondence(a, b, transform, tol),
            "shuffled": pair_correspondence(a, b[shuffled(a.shape[0], seed)], transform, tol)}


@torch.no_grad()
def generate_pairs(G: torch.nn.Module, n: int, seed: int = 0, batch_size: int = 500):
    """(A, B) images (float32, CPU) of a CoGAN generator from ``n`` fixed noise vectors."""
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    was = G.training
    G.eval()
    device = next(G.parameters()).device
    try:
        x = torch.cat([G(z[i:i + batch_size].to(device)).float().cpu() for i in range(0, n, batch_size)])
    finally:
        G.train(was)
    c = x.shape[1] // 2
    return x[:, :c], x[:, c:]
