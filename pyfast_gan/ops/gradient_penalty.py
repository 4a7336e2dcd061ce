"""The WGAN-GP gradient penalty as one drop-in call (Gulrajani et al. 2017, eq. 3):

    x_hat   = alpha * real + (1 - alpha) * fake,  one alpha ~ U[0, 1) per sample
    penalty = weight * mean_n (||d critic(x_hat)[n] / d x_hat[n]||_2 - center)^2

``x_hat`` is built from detached ``real``/``fake`` and made a leaf, so the penalty's
gradient reaches only the critic's parameters, through the double-backward graph
that ``autograd.grad(create_graph=True)`` records.

Mixed precision follows PyTorch's AMP examples ("Gradient penalty"): with a
``GradScaler`` the input gradient is taken of ``scaler.scale(out.sum())`` (so small
fp16 gradients do not underflow), multiplied by 1/scale out of place (the scale
stays a device tensor: no host sync), and the norm is taken in fp32. bf16 autocast
needs no scaler.

The penalty is not finite at every scale. The backward of ``scale * out.sum()``
hands each sample's output the scale itself as its gradient, and a critic layer
that runs in fp16 under autocast holds it in fp16, whose largest value is 65504. So
at GradScaler's default ``init_scale=2**16`` the first fp16 penalty is NaN (the inf
turns NaN in the critic's backward), and so are the critic's parameter gradients;
``scaler.step`` skips that step and ``scaler.update`` halves the scale, as for any
overflow. At a scale the critic's fp16 backward can hold (2**15 for the small conv
critic of tests/test_gradient_penalty.py) the penalty is finite and equals the fp32
penalty within fp16 rounding. The scaler grows back to 2**16 after each
``growth_interval`` (2000) good steps, and skips one more step each time.
``GradScaler(init_scale=2**15)`` saves the first skipped step.

A check the drop-ins make and the trainer's ``penalty_at`` does not: a critic that
normalises with batch statistics (BatchNorm in training mode, or without running
statistics) gets a RuntimeWarning, once per critic class, since its per-sample
input gradient depends on the rest of the batch and the WGAN-GP paper's critic has
no batch norm (Gulrajani et al. 2017, Sec. 4).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ._dispatch import warn_once
from .gradient_norm_penalty import MODES, penalty_and_norm
from .interpolate import interpolate


def _scale_tensor(scaler) -> torch.Tensor | float:
    # GradScaler keeps its scale as a 1-element device tensor; reading it as a
    # Python float (get_scale) would force a host sync every step.
    get = getattr(scaler, "_get_scale_async", None)
    scale = get() if get is not None else None
    return scale if scale is not None else scaler.get_scale()


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor, *,
                     weight: float | torch.Tensor = 10.0, center: float = 1.0, mode: str = "two_sided",
                     alpha: torch.Tensor | None = None, scaler=None, impl: str = "auto") -> torch.Tensor:
    """Weighted gradient penalty of ``critic`` at random interpolates of ``real`` and ``fake``.

    Returns a scalar (fp32; fp64 for fp64 inputs) ready to add to the critic loss.
    ``critic`` must return one value per sample: shape (N,), or (N,) followed by 1-sized
    dims such as a DCGAN conv head's (N, 1, 1, 1). ``weight``: see :func:`check_weight`.
    """
    if not isinstance(real, torch.Tensor) or not isinstance(fake, torch.Tensor):
        raise ValueError("real and fake must be tensors")
    weight = check_weight(weight, real.device)
    check_drop_in_args(critic, mode, scaler, "gradient_penalty")
    x_hat, _ = interpolate(real.detach(), fake.detach(), alpha, impl=impl)
    penalty, _ = penalty_at(critic, x_hat.detach().requires_grad_(True), center=center, mode=mode,
                            scaler=scaler, impl=impl)
    return apply_weight(penalty, weight)


def check_weight(weight, device: torch.device, argname: str = "weight") -> float | torch.Tensor:
    """A penalty weight as a float, or as a 0-d tensor to multiply in as is.

    Python and numpy real numbers must be finite. A one-element tensor (on ``device`` or
    the CPU) is accepted without reading its value, so a weight kept on the GPU costs no
    host sync; it is therefore not checked for inf/NaN, and a weight that requires grad
    gets the penalty's gradient.
    """
    if isinstance(weight, torch.Tensor):
        if weight.numel() != 1:
            raise ValueError(f"{argname} must be a finite number or a one-element tensor, "
                             f"got a tensor of shape {tuple(weight.shape)}")
        if weight.dtype == torch.bool or weight.is_complex():
            raise ValueError(f"{argname} must be a real number, got a tensor of dtype {weight.dtype}")
        if weight.device.type != "cpu" and weight.device != device:
            raise ValueError(f"{argname} must be on the device of real ({device}) or the CPU, got {weight.device}")
        return weight.reshape(())
    # numbers.Real covers numpy's float and int scalars; bool (numpy's too) is refused.
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
        raise ValueError(f"{argname} must be a finite number or a one-element tensor, got {weight!r}")
    return float(weight)


def apply_weight(penalty: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
    if isinstance(weight, torch.Tensor):
        # The penalty's dtype, so an fp64 or integer weight does not change the result's.
        return penalty * weight.to(penalty.dtype)
    return weight * penalty


def check_drop_in_args(critic, mode, scaler, op: str) -> None:
    """The argument checks of the drop-in penalties, and the batch-norm warning."""
    if not callable(critic):
        raise ValueError(f"critic must be callable (an nn.Module or function), got {type(critic).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if scaler is not None and not (hasattr(scaler, "scale") and hasattr(scaler, "is_enabled")):
        raise ValueError(f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")
    if isinstance(critic, torch.nn.Module):
        # BatchNorm uses the batch's statistics in training mode, and in eval mode when it
        # keeps no running statistics.
        name = next((name for name, m in critic.named_modules()
                     if isinstance(m, _BatchNorm) and (m.training or m.running_mean is None)), None)
        if name is not None:
            cls = type(critic)
            # stacklevel 4: warnings.warn <- warn_once <- here <- the drop-in <- the user's line.
            warn_once(f"{op}.batchnorm.{cls.__module__}.{cls.__qualname__}",
                      f"pyfast_gan.{op}: critic {cls.__qualname__} normalises with batch statistics (its "
                      f"{type(critic.get_submodule(name)).__name__} {name!r} is in training mode or keeps no "
                      f"running statistics), so each sample's input gradient depends on the rest of the batch "
                      f"and the per-sample penalty does not constrain the critic's own gradient; the WGAN-GP "
                      f"paper's critic has no batch norm (use LayerNorm or none)", stacklevel=4)


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
    # (N,) followed by any 1-sized dims, e.g. a DCGAN conv head's (N, 1, 1, 1): with N > 0,
    # numel == N exactly when every dim after the first is 1.
    if out.dim() == 0 or out.shape[0] != n or out.numel() != n:
        raise ValueError(f"critic output must have one value per sample, shape ({n},) or ({n}, 1, ...); "
                         f"got {tuple(out.shape)}")
    if not out.requires_grad:
        if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            raise ValueError("gradient mode is off (called under torch.no_grad() or torch.inference_mode()): "
                             "the penalty differentiates the critic's output with respect to its input, "
                             "so it needs grad mode on and inference mode off")
        raise ValueError("critic output does not depend on its input (it does not require grad)")

    if scaler is not None and scaler.is_enabled():
        (grad,) = torch.autograd.grad(scaler.scale(out.sum()), x_hat, create_graph=True)
        inv_scale = 1.0 / _scale_tensor(scaler)
        grad = grad.float() * inv_scale if grad.dtype != torch.float64 else grad * inv_scale
    else:
        (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    per_sample, norm = penalty_and_norm(grad, center=center, mode=mode, impl=impl)
    return per_sample.mean(), norm.mean()
