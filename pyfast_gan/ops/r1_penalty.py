"""The R1 penalty as one drop-in call (Mescheder et al. 2018, eq. 9; StyleGAN's "R1"):

    penalty = gamma / 2 * mean_n ||d critic(x)[n] / d x[n]||_2^2,   x = real

a zero-centred gradient penalty at the real samples only (no interpolation). ``x`` is
``real`` detached and made a leaf, so the penalty's gradient reaches only the critic's
parameters. It runs on the same kernel as the WGAN-GP penalty
(:func:`~pyfast_gan.ops.gradient_penalty.penalty_at` with ``mode="zero_centered"``),
with the same ``scaler`` recipe, ``impl`` switch and argument checks (including the
one-time warning for a critic with batch norm in training mode); see
``gradient_penalty``'s module notes on fp16 and GradScaler's scale.
"""
from __future__ import annotations

from typing import Callable

import torch

from .gradient_penalty import apply_weight, check_drop_in_args, check_weight, penalty_at
from .interpolate import check_samples


def r1_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, gamma: float | torch.Tensor, *,
               scaler=None, impl: str = "auto") -> torch.Tensor:
    """``gamma / 2 * E[||grad_x critic(x)||^2]`` at ``x = real``: a scalar (fp32; fp64 for fp64
    ``real``) to add to the critic loss.

    ``gamma``: a finite Python/numpy number or a one-element tensor (multiplied in without a
    host sync). ``critic`` must return one value per sample, shape (N,) or (N, 1, ...).
    ``scaler``: the fp16 ``GradScaler``, as for ``gradient_penalty``. ``impl``: "auto" |
    "reference" | "cpu" | "cuda" | "triton".
    """
    check_samples(real, "real")
    gamma = check_weight(gamma, real.device, "gamma")
    check_drop_in_args(critic, "zero_centered", scaler, "r1_penalty")
    x = real.detach()
    if x.is_inference():
        # An inference-mode tensor cannot require grad outside inference mode; a copy can.
        x = x.clone()
    penalty, _ = penalty_at(critic, x.requires_grad_(True), center=0.0, mode="zero_centered", scaler=scaler,
                            impl=impl)
    return apply_weight(penalty, gamma) * 0.5
