"""The WGAN-GP gradient penalty as one drop-in call (Gulrajani et al. 2017, eq. 3):

    x_hat   = alpha * real + (1 - alpha) * fake,  one alpha ~ U[0, 1) per sample
    penalty = weight * mean_n (||d critic(x_hat)[n] / d x_hat[n]||_2 - center)^2

``x_hat`` is built from detached ``real``/``fake`` and made a leaf, so the penalty's
gradient reaches only the critic's parameters, through the double-backward graph
that ``autograd.grad(create_graph=True)`` records. The steps are the penalty core's
(:mod:`pyfast_gan.ops.penalty_core`), the same the trainer runs; its module notes cover
mixed precision (the GradScaler recipe, and the scales at which an fp16 penalty is not
finite) and the warning for a critic that normalises with batch statistics.
"""
from __future__ import annotations

from typing import Callable

import torch

from .gradient_norm_penalty import per_sample_penalty
from .interpolate import interpolate_leaf
from .penalty_core import apply_weight, check_drop_in_args, check_weight, input_gradient


class _DefaultWeight(float):
    """The default weight, 10.0 (the WGAN-GP paper's lambda), told apart by identity from a
    weight the caller passed, so that ``weight`` and ``gp_weight`` given together are refused
    even when ``weight`` is 10.0. It prints as 10.0 in the signature."""
    __slots__ = ()


DEFAULT_GP_WEIGHT = _DefaultWeight(10.0)


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     weight: float | torch.Tensor = DEFAULT_GP_WEIGHT, *, center: float = 1.0, mode: str = "two_sided",
                     alpha: torch.Tensor | None = None, generator: torch.Generator | None = None, scaler=None,
                     impl: str = "auto", gp_weight: float | torch.Tensor | None = None) -> torch.Tensor:
    """Weighted gradient penalty of ``critic`` at random interpolates of ``real`` and ``fake``.

    Returns a scalar (fp32; fp64 for fp64 inputs) ready to add to the critic loss.
    ``critic`` must return one value per sample: shape (N,), or (N,) followed by 1-sized
    dims such as a DCGAN conv head's (N, 1, 1, 1). ``weight`` (positional or keyword; default
    10, the WGAN-GP paper's lambda): see :func:`~pyfast_gan.ops.penalty_core.check_weight`.
    ``gp_weight=``: the same argument under the trainer's name (``--gp-weight``); giving both
    is a TypeError. ``alpha``: the per-sample interpolation weights, (N,), drawn from U[0, 1)
    when None, with ``generator`` when given (see :func:`~pyfast_gan.interpolate` for which
    impls draw it how). Inside ``torch.compile`` dynamo cannot pass a ``torch.Generator`` into
    the graph: there ``generator=`` raises a ValueError that says to pass ``alpha=`` (drawn
    outside the compiled function) instead.
    """
    if not isinstance(real, torch.Tensor) or not isinstance(fake, torch.Tensor):
        raise ValueError("real and fake must be tensors")
    if weight is DEFAULT_GP_WEIGHT:
        weight = 10.0 if gp_weight is None else check_weight(gp_weight, real.device, "gp_weight")
    elif gp_weight is not None:
        raise TypeError("gradient_penalty() got both weight and gp_weight; gp_weight is another name for "
                        "weight (the trainer's --gp-weight): pass one of them")
    weight = check_weight(weight, real.device)
    check_drop_in_args(critic, mode, scaler, "gradient_penalty")
    x_hat = interpolate_leaf(real, fake, alpha, generator=generator, impl=impl)
    grad = input_gradient(critic, x_hat, scaler)
    return apply_weight(per_sample_penalty(grad, center, mode, impl).mean(), weight)
