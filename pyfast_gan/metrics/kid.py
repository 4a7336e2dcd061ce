"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs").

KID is the unbiased estimate of the squared MMD between real and generated features under
the cubic polynomial kernel. Unlike FID it has an unbiased estimator, so it is meaningful
for the small sample sizes a GAN run can afford; averaging over random subsets, as
torch-fidelity and clean-fid do, bounds the O(n^2) kernel cost and gives a spread.
"""
from __future__ import annotations

import numpy as np


def _as_features(f, name: str) -> np.ndarray:
    a = np.asarray(f.detach().cpu() if hasattr(f, "detach") else f, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"{name} must be (N, D) with N >= 2, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds non-finite values")
    return a


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> float:
    """Unbiased MMD^2: the within-set kernel means skip the diagonal (i == j); the cross
    term uses all m^2 pairs, which is already unbiased since x and y are independent."""
    m = x.shape[0]
    kxx = (gamma * (x @ x.T) + coef0) ** degree
    kyy = (gamma * (y @ y.T) + coef0) ** degree
    kxy = (gamma * (x @ y.T) + coef0) ** degree
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.sum() / (m * m))


def kernel_inception_distance(
    feats_real,
    feats_fake,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> dict:
    """KID between two feature sets (N, D) with kernel k(x, y) = (gamma x.y + coef0)^degree.

    ``gamma`` defaults to 1/D. Each of ``num_subsets`` rounds draws
    m = min(subset_size, n_real, n_fake) rows of each set without replacement
    (``numpy.random.Generator(seed)``, so results are reproducible) and computes the unbiased
    MMD^2. Returns ``{"mean", "std", "num_subsets", "subset_size"}``, std over subsets with
    ddof=0 as torch-fidelity reports it; ``subset_size`` is the m actually used. The mean can
    be slightly negative when the distributions match (the estimator is unbiased).
    """
    x = _as_features(feats_real, "feats_real")
    y = _as_features(feats_fake, "feats_fake")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"need num_subsets >= 1 and subset_size >= 2, got {num_subsets}, {subset_size}")
    gamma = 1.0 / x.shape[1] if gamma is None else float(gamma)
    m = min(subset_size, x.shape[0], y.shape[0])
    rng = np.random.default_rng(seed)
    mmds = np.empty(num_subsets)
    for i in range(num_subsets):
        xs = x[rng.choice(x.shape[0], m, replace=False)]
        ys = y[rng.choice(y.shape[0], m, replace=False)]
        mmds[i] = _mmd2_unbiased(xs, ys, degree, gamma, coef0)
    return {"mean": float(mmds.mean()), "std": float(mmds.std()), "num_subsets": num_subsets, "subset_size": m}
