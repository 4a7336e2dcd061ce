"""The R1 penalty as one drop-in call (Mescheder et al. 2018, eq. 9; StyleGAN's "R1"):

    penalty = gamma / 2 * mean_n ||d critic(x)[n] / d x[n]||_2^2,   x = real

a zero-centred gradient penalty at the real samples only (no interpolation). It runs on
the same kernel as the WGAN-GP penalty (``penalty_and_norm`` with ``mode="zero_centered"``),
with the same ``scaler`` recipe, ``impl`` switch and argument checks; see
:mod:`pyfast_gan.ops.penalty_core`'s module notes on fp16 and GradScaler's scale.

Two spellings:

* ``r1_penalty(critic, real, gamma)`` runs the critic at ``real`` detached and made a leaf,
  so the penalty's gradient reaches only the critic's parameters. That is a forward of its
  own: a critic with batch norm in training mode advances its running statistics once more
  (and gets the one-time batch-statistics warning).
* ``r1_penalty_from_scores(scores, real, gamma)`` takes the scores a loop already has,
  ``scores = critic(real)`` computed after ``real.requires_grad_()``: no second forward, so
  the critic's state (batch-norm running statistics included) is exactly as the loop's own
  forward left it. There is no critic to inspect, so no batch-norm warning. ``real`` then
  receives a gradient from the loss too, as in the loops this replaces.
"""
from __future__ import annotations

from typing import Callable

import torch

from .gradient_norm_penalty import per_sample_penalty
from .interpolate import check_samples
from .penalty_core import apply_weight, check_drop_in_args, check_scaler, check_weight, input_gradient, \
    scores_gradient

# gamma = 10, in this module's convention gamma / 2 * E||grad||^2 (Mescheder et al. 2018, eq. 9):
# the default of StyleGAN's and StyleGAN2's D_logistic_r1 (FFHQ at 1024x1024, same convention)
# and of stylegan2-ada-pytorch's --cfg=stylegan2. Mescheder et al.'s own configs (GAN_stability,
# CelebA-HQ, LSUN, ImageNet) set reg_param 10 but multiply E||grad||^2 by it without the 1/2,
# so theirs is gamma 20 here. The best gamma depends on the data and the resolution:
# stylegan2-ada's paper256 config uses 1, its --cfg=auto 0.0002 * res**2 / batch.
DEFAULT_GAMMA = 10.0


def r1_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
               gamma: float | torch.Tensor = DEFAULT_GAMMA, *, scaler=None, impl: str = "auto") -> torch.Tensor:
    """``gamma / 2 * E[||grad_x critic(x)||^2]`` at ``x = real``: a scalar (fp32; fp64 for fp64
    ``real``) to add to the critic loss.

    ``gamma``: a finite Python/numpy number or a one-element tensor (multiplied in without a
    host sync); default 10, StyleGAN2's (see ``DEFAULT_GAMMA`` for where it comes from; tune it
    to the data). ``critic`` must return one value per sample, shape (N,) or (N, 1, ...).
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
    return _r1(input_gradient(critic, x.requires_grad_(True), scaler), gamma, impl)


def r1_penalty_from_scores(scores: torch.Tensor, real: torch.Tensor, gamma: float | torch.Tensor = DEFAULT_GAMMA,
                           *, scaler=None, impl: str = "auto") -> torch.Tensor:
    """:func:`r1_penalty` from ``scores = critic(real)`` already computed, with ``real``
    requiring grad before that forward: no second forward of the critic.

    ``scores``: one value per sample, shape (N,) or (N, 1, ...), the graph still alive (the
    penalty differentiates it with ``create_graph``, keeping it for the loss's backward).
    Other arguments as for :func:`r1_penalty`.
    """
    check_samples(real, "real")
    gamma = check_weight(gamma, real.device, "gamma")
    check_scaler(scaler)
    if not real.requires_grad:
        raise ValueError("real must require grad: call real.requires_grad_() before the critic's forward "
                         "that gave scores")
    return _r1(scores_gradient(scores, real, scaler, what="scores", allow_unused=True), gamma, impl)


def _r1(grad: torch.Tensor, gamma: float | torch.Tensor, impl: str) -> torch.Tensor:
    per_sample = per_sample_penalty(grad, 0.0, "zero_centered", impl)
    # * 0.5 after the weight: halving is exact, so this equals gamma / 2 * mean bit for bit.
    return apply_weight(per_sample.mean(), gamma) * 0.5
