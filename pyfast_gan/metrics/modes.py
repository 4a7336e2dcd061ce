"""Mode coverage for mixtures of Gaussians (the 8/25-Gaussian toy data), in the spirit of
VEEGAN's and PacGAN's measures (Srivastava et al. 2017; Lin et al. 2018)."""
from __future__ import annotations

import math

import torch


def mode_coverage(
    samples: torch.Tensor,
    modes: torch.Tensor,
    std: float,
    threshold_std: float = 3.0,
    min_fraction: float = 0.1,
) -> dict:
    """How many modes a generator's samples cover.

    A sample is *high quality* when its nearest mode is within ``threshold_std * std``
    (3 std: 99% of a true 2-D Gaussian mode's samples fall inside). A mode is *covered* when
    it has at least ``max(1, ceil(min_fraction * M / K))`` high-quality samples: 10% of the
    share a uniform sampler would give it, so a handful of stray points do not count as a
    covered mode but an unevenly weighted one does. With the usual M = 2500 samples of the 25
    Gaussians that is 10 samples per mode: stricter than VEEGAN's protocol (Srivastava et al.
    2017, Sec. 5: same 3-std quality test, a mode is captured by one high-quality sample),
    which ``min_fraction=0`` reproduces.

    Returns dict(covered, num_modes, high_quality_fraction, min_count, counts).
    """
    samples = torch.as_tensor(samples).detach().to("cpu", torch.float64)
    modes = torch.as_tensor(modes).detach().to("cpu", torch.float64)
    if samples.dim() != 2 or samples.shape[0] == 0:
        raise ValueError(f"samples must be a non-empty (M, D) tensor, got {tuple(samples.shape)}")
    if modes.dim() != 2 or modes.shape[0] == 0 or modes.shape[1] != samples.shape[1]:
        raise ValueError(f"modes must be (K, {samples.shape[1]}), got {tuple(modes.shape)}")
    if not (std > 0 and threshold_std > 0):
        raise ValueError(f"std and threshold_std must be positive, got std={std}, threshold_std={threshold_std}")
    if not (0 <= min_fraction <= 1):
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    m, k = samples.shape[0], modes.shape[0]
    dist, idx = torch.cdist(samples, modes).min(dim=1)
    good = torch.isfinite(dist) & (dist <= threshold_std * std)
    counts = torch.bincount(idx[good], minlength=k)
    min_count = max(1, math.ceil(min_fraction * m / k))
    return {
        "covered": int((counts >= min_count).sum()),
        "num_modes": k,
        "high_quality_fraction": float(good.double().mean()),
        "min_count": min_count,
        "counts": counts.tolist(),
    }
