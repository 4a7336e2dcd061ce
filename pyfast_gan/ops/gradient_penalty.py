"""The WGAN-GP gradient penalty as one drop-in call (Gulrajani et al. 2017, eq. 3):

    x_hat   = alpha * real + (1 - alpha) * fake,  one alpha ~ U[0, 1) per sample
    penalty = weight * mean_n (||d critic(x_hat)[n] / d x_hat[n]||_2 - center)^2

``x_hat`` is built from detached ``real``/``fake`` and made a leaf, so the penalty's
gradient reaches only the critic's parameters, through the double-backward graph
that ``autograd.grad(create_graph=True)`` records.

Mixed precision follows PyTorch's AMP examples ("Gradient penalty"): with a
``GradScaler`` the input gradient is taken of ``scaler.scale(out.sum())`` (so small
fp16 gradients do not underflow), multiplied by 1/scale out of place (the scale
stays a device tensor: no host sync), and the norm is taken in fp32. If the scale
is so large that the critic's own fp16 backward overflows, the penalty is inf like
the critic's other gradients and ``scaler.step`` skips the step and lowers the
scale, exactly as for the rest of the loss. bf16 autocast needs no scaler.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .gradient_norm_penalty import MODES, penalty_and_norm
from .interpolate import interpolate


def _scale_tensor(scaler) -> torch.Tensor | float:
    # GradScaler keeps its scale as a 1-element device tensor; reading it as a
    # Python float (get_scale) would force a host sync every step.
    get = getattr(scaler, "_get_scale_async", None)
    scale = get() if get is not None else None
    return scale if scale is not None else scaler.get_scale()


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor, *,
                     weight: float = 10.0, center: float = 1.0, mode: str = "two_sided",
                     alpha: torch.Tensor | None = None, scaler=None, impl: str = "auto") -> torch.Tensor:
    """Weighted gradient penalty of ``critic`` at random interpolates of ``real`` and ``fake``.

    Returns a scalar (fp32; fp64 for fp64 inputs) ready to add to the critic loss.
    ``critic`` must return one value per sample, shape (N,) or (N, 1).
    """
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"weight must be a finite number, got {weight!r}")
    if not isinstance(real, torch.Tensor) or not isinstance(fake, torch.Tensor):
        raise ValueError("real and fake must be tensors")
    _check_critic_args(critic, mode, scaler)
    x_hat, _ = interpolate(real.detach(), fake.detach(), alpha, impl=impl)
    penalty, _ = penalty_at(critic, x_hat.detach().requires_grad_(True), center=center, mode=mode,
                            scaler=scaler, impl=impl)
    return weight * penalty


def _check_critic_args(critic, mode, scaler) -> None:
    if not callable(critic):
        raise ValueError(f"critic must be callable (an nn.Module or function), got {type(critic).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if scaler is not None and not (hasattr(scaler, "scale") and hasattr(scaler, "is_enabled")):
        raise ValueError(f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")


def penalty_at(critic: Callable[[torch.Tensor], torch.Tensor], x_hat: torch.Tensor, *, center: float = 1.0,
               mode: str = "two_sided", scaler=None, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(penalty, grad_norm)``: the unweighted mean penalty of ``critic``'s input gradient at
    ``x_hat`` (a leaf that requires grad) and the mean input-gradient norm (a constant).

    The one place the penalty statistic is computed: :func:`gradient_penalty` and every mode
    of the trainer's critic objective (eager, AMP, compiled) call it, so ``gp`` and
    ``grad_norm_x_hat`` mean the same everywhere. Traceable by ``torch.compile(fullgraph=True)``
    with ``torch._dynamo.config.trace_autograd_ops`` (the kernels have fake impls).
    """
    out = critic(x_hat)
    n = x_hat.shape[0]
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"critic output must be a tensor, got {type(out).__name__}")
    if not (tuple(out.shape) == (n,) or tuple(out.shape) == (n, 1)):
        raise ValueError(f"critic output must have one value per sample, shape ({n},) or ({n}, 1); "
                         f"got {tuple(out.shape)}")
    if not out.requires_grad:
        raise ValueError("critic output does not depend on its input (it does not require grad)")

    if scaler is not None and scaler.is_enabled():
        (grad,) = torch.autograd.grad(scaler.scale(out.sum()), x_hat, create_graph=True)
        inv_scale = 1.0 / _scale_tensor(scaler)
        grad = grad.float() * inv_scale if grad.dtype != torch.float64 else grad * inv_scale
    else:
        (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    per_sample, norm = penalty_and_norm(grad, center=center, mode=mode, impl=impl)
    return per_sample.mean(), norm.mean()
