"""The penalty core shared by the drop-in penalties (``gradient_penalty``, ``r1_penalty``)
and the trainer's critic objective: the critic's input gradient, the penalty statistic at a
point, and the argument checks they share.

    grad[n]  = d sum_m critic(x)[m] / d x[n]     (``input_gradient``, with ``create_graph``)
    penalty  = mean_n p(||grad[n]||_2)           (``penalty_at``; p from ``gradient_norm_penalty``)

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

A check the drop-ins make (:func:`check_drop_in_args`) and the trainer's
:func:`penalty_at` does not: a critic that normalises with batch statistics gets a
RuntimeWarning, once per critic class (see :mod:`pyfast_gan.ops.batchnorm_check`).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

from ._dispatch import warn_once
from .batchnorm_check import batch_stats_layer
from .gradient_norm_penalty import MODES, penalty_and_norm


def _scale_tensor(scaler) -> torch.Tensor | float:
    # GradScaler keeps its scale as a 1-element device tensor; reading it as a
    # Python float (get_scale) would force a host sync every step.
    get = getattr(scaler, "_get_scale_async", None)
    scale = get() if get is not None else None
    return scale if scale is not None else scaler.get_scale()


def check_weight(weight, device: torch.device, argname: str = "weight") -> float | torch.Tensor:
    """A penalty weight as a float, or as a 0-d tensor to multiply in as is.

    Python and numpy real numbers must be finite. A one-element tensor (on ``device`` or
    the CPU) is accepted without reading its value, so a weight kept on the GPU costs no
    host sync; it is therefore not checked for inf/NaN, and a weight that requires grad
    gets the penalty's gradient.
    """
    if type(weight) is float and math.isfinite(weight):  # the common case, first
        return weight
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
    """The argument checks of the drop-in penalties, and the batch-norm warning. Kept flat:
    it runs at every call, and on a small critic each function call of it shows."""
    if not callable(critic):
        raise ValueError(f"critic must be callable (an nn.Module or function), got {type(critic).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if scaler is not None:
        check_scaler(scaler)
    if torch.compiler.is_compiling():
        # Dynamo cannot trace the weak-keyed cache; the eager calls (and the first one
        # before a compile, if any) warn.
        return
    found = batch_stats_layer(critic)
    if found is None:
        return
    module, name, layer = found
    cls = type(module)
    # stacklevel 4: warnings.warn <- warn_once <- here <- the drop-in <- the user's line.
    warn_once(f"{op}.batchnorm.{cls.__module__}.{cls.__qualname__}",
              f"pyfast_gan.{op}: critic {cls.__qualname__} normalises with batch statistics (its "
              f"{type(layer).__name__} {name!r} is in training mode or keeps no running statistics), so "
              f"each sample's input gradient depends on the rest of the batch and the per-sample penalty "
              f"does not constrain the critic's own gradient; the WGAN-GP paper's critic has no batch norm "
              f"(use LayerNorm or none)", stacklevel=4)


def check_scaler(scaler) -> None:
    if scaler is not None and not (hasattr(scaler, "scale") and hasattr(scaler, "is_enabled")):
        raise ValueError(f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")


def input_gradient(critic: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scaler=None) -> torch.Tensor:
    """``d sum(critic(x)) / d x`` with ``create_graph``, ``x`` a leaf that requires grad; with
    an enabled ``scaler``, of the scaled sum and unscaled out of place (the AMP recipe)."""
    return scores_gradient(critic(x), x, scaler)


def scores_gradient(out, x: torch.Tensor, scaler=None, what: str = "critic output",
                    allow_unused: bool = False) -> torch.Tensor:
    """:func:`input_gradient` from scores ``out`` already computed from ``x``. With
    ``allow_unused``, scores that ``x`` did not go into raise a ValueError that says so."""
    n = x.shape[0]
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"{what} must be a tensor, got {type(out).__name__}")
    # (N,) followed by any 1-sized dims, e.g. a DCGAN conv head's (N, 1, 1, 1): with N > 0,
    # numel == N exactly when every dim after the first is 1.
    if out.dim() == 0 or out.shape[0] != n or out.numel() != n:
        raise ValueError(f"{what} must have one value per sample, shape ({n},) or ({n}, 1, ...); "
                         f"got {tuple(out.shape)}")
    if not out.requires_grad:
        if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            raise ValueError("gradient mode is off (called under torch.no_grad() or torch.inference_mode()): "
                             "the penalty differentiates the critic's output with respect to its input, "
                             "so it needs grad mode on and inference mode off")
        raise ValueError(f"{what} does not depend on its input (it does not require grad)")

    scaled = scaler is not None and scaler.is_enabled()
    if scaled:
        (grad,) = torch.autograd.grad(scaler.scale(out.sum()), x, create_graph=True, allow_unused=allow_unused)
    else:
        # d sum(out) / dx as the vector-Jacobian product with ones: the gradient the sum's
        # backward would hand ``out`` (exactly ones), without recording the sum and its
        # backward in the double-backward graph.
        (grad,) = torch.autograd.grad(out, x, torch.ones_like(out), create_graph=True, allow_unused=allow_unused)
    if grad is None:
        raise ValueError(f"{what} were not computed from real (call real.requires_grad_() before the critic's "
                         f"forward, and pass the scores of that forward)")
    if scaled:
        inv_scale = 1.0 / _scale_tensor(scaler)
        return grad.float() * inv_scale if grad.dtype != torch.float64 else grad * inv_scale
    return grad


def penalty_at(critic: Callable[[torch.Tensor], torch.Tensor], x_hat: torch.Tensor, *, center: float = 1.0,
               mode: str = "two_sided", scaler=None, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(penalty, grad_norm)``: the unweighted mean penalty of ``critic``'s input gradient at
    ``x_hat`` (a leaf that requires grad) and the mean input-gradient norm (a constant).

    The one place the penalty statistic is computed: :func:`~pyfast_gan.gradient_penalty` and
    every mode of the trainer's critic objective (eager, AMP, compiled) use its two steps
    (:func:`input_gradient`, then ``penalty_and_norm``), so ``gp`` and ``grad_norm_x_hat``
    mean the same everywhere. Traceable by ``torch.compile(fullgraph=True)`` with
    ``torch._dynamo.config.trace_autograd_ops`` (the kernels have fake impls).
    """
    grad = input_gradient(critic, x_hat, scaler)
    per_sample, norm = penalty_and_norm(grad, center=center, mode=mode, impl=impl)
    return per_sample.mean(), norm.mean()
