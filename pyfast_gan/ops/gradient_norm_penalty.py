"""Per-sample gradient-norm penalty: the loss term of WGAN-GP, WGAN-LP and R1/R2.

    norm[n]    = ||grad[n]||_2 over all non-batch dims
    penalty[n] = (norm - center)^2         mode="two_sided"     (WGAN-GP, Gulrajani et al. 2017, eq. 3)
                 max(0, norm - center)^2   mode="one_sided"     (WGAN-LP, Petzka et al. 2018)
                 norm^2                    mode="zero_centered" (R1/R2, Mescheder et al. 2018)

then reduced over the batch ("mean", "sum" or "none").

Precision: norms accumulate in fp32 (fp64 for fp64 input) and the penalty is
returned in that dtype, so an fp16/bf16 gradient does not lose the accumulation
on the way out. The gradient w.r.t. ``grad`` comes back in ``grad``'s dtype.

Zero gradient: no eps is added to the norm (the forward is the paper's exact
norm); the backward uses a safe division, d norm / d grad = grad / norm with 0
where norm == 0, which is the subgradient torch.linalg.vector_norm's own backward
uses, so the reference and every kernel agree there and nothing turns NaN.

Only a first-order backward is provided: in the gradient penalty this op sits on
top of the critic's double-backward graph and is differentiated once.
"""
from __future__ import annotations

import math

import torch

from .._families import family_of
from .._layout import acc_dtype, empty_in_kernel_layout
from ._dispatch import register

FAMILY = family_of("gradient_norm_penalty")
MODES = ("two_sided", "one_sided", "zero_centered")
REDUCTIONS = ("mean", "sum", "none")


def reference(grad: torch.Tensor, center: float = 1.0, mode: str = "two_sided") -> torch.Tensor:
    """The definition every kernel is tested against, in plain PyTorch (autograd gives its
    backward): the per-sample penalty (N,), before the batch reduction."""
    norm = torch.linalg.vector_norm(grad.reshape(grad.shape[0], -1), dim=1, dtype=acc_dtype(grad.dtype))
    return _penalty_of_norm(norm, center, mode)


def _setup_context(ctx, inputs, output):
    grad, center, mode = inputs
    ctx.save_for_backward(grad, output[1])
    ctx.center, ctx.mode = center, mode
    ctx.mark_non_differentiable(output[1])


def _backward_with(backward_op):
    """The one backward of every impl's penalty op: ``backward_op`` (the native or the Triton
    ``gradient_norm_penalty_backward``) scales ``grad`` per sample; the norm is a constant."""

    def backward(ctx, grad_penalty, _grad_norm):
        grad, norm = ctx.saved_tensors
        return backward_op(grad_penalty, grad, norm, ctx.center, ctx.mode), None, None

    return backward


def _gradient_norm_penalty_fake(grad, center, mode):
    n = grad.shape[0]
    acc = acc_dtype(grad.dtype)
    return grad.new_empty((n,), dtype=acc), grad.new_empty((n,), dtype=acc)


def _gradient_norm_penalty_backward_fake(grad_penalty, grad, norm, center, mode):
    return empty_in_kernel_layout(grad)


native_ops, triton_ops, resolve_impl = register(
    "gradient_norm_penalty", FAMILY, triton="gradient_norm_penalty",
    fakes={"gradient_norm_penalty": _gradient_norm_penalty_fake,
           "gradient_norm_penalty_backward": _gradient_norm_penalty_backward_fake},
    autograd=("gradient_norm_penalty",), backward="gradient_norm_penalty_backward",
    backward_with=_backward_with, setup_context=_setup_context)


def _native_backward(grad_penalty, grad, norm, center, mode):
    return torch.ops.pyfast_gan.gradient_norm_penalty_backward(grad_penalty, grad, norm, center, mode)


class _EagerNative(torch.autograd.Function):
    """The native op in eager mode: one autograd.Function around the op called below autograd,
    with the registered op's setup and backward. The registered op is what torch.compile
    traces; in eager mode its generic ``torch.library`` wrapper (a second autograd.Function,
    argument re-packing, a redispatch) costs a few microseconds a call, forward and backward,
    which is a visible share of a small critic's step. The old-style ``forward(ctx,
    ...)``: a separate ``setup_context`` makes ``apply`` bind arguments with ``inspect`` at
    every call (~25 us, measured)."""

    @staticmethod
    def forward(ctx, grad, center, mode):
        with torch._C._AutoDispatchBelowAutograd():
            out = torch.ops.pyfast_gan.gradient_norm_penalty(grad, center, mode)
        _setup_context(ctx, (grad, center, mode), out)
        return out

    backward = staticmethod(_backward_with(_native_backward))


def check_args(grad, center, mode, reduction) -> None:
    if not isinstance(grad, torch.Tensor):
        raise ValueError(f"grad must be a tensor, got {type(grad).__name__}")
    if grad.dim() < 2:
        raise ValueError("grad must have a batch dim and at least one more dim (N, ...), "
                         f"got shape {tuple(grad.shape)}")
    if grad.shape[0] == 0:
        raise ValueError("grad has an empty batch (N = 0)")
    if not grad.is_floating_point():
        raise ValueError(f"grad must be a floating-point tensor, got {grad.dtype}")
    if isinstance(center, bool) or not isinstance(center, (int, float)) or not math.isfinite(center) or center < 0:
        raise ValueError(f"center must be a finite number >= 0, got {center!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def penalty_and_norm(grad: torch.Tensor, *, center: float = 1.0, mode: str = "two_sided",
                     impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(penalty[n], norm[n])`` of ``grad`` (N, ...): the per-sample penalty (differentiable)
    and the per-sample gradient norm (a constant), from one pass of the kernel. The norm is
    what the trainer logs as ``grad_norm_x_hat``; the penalty what it adds to the loss."""
    check_args(grad, center, mode, "none")
    which = resolve_impl(impl, grad.device.type)
    center = float(center)
    if which == "reference":
        norm = _reference_norm(grad)
        return _penalty_of_norm(norm, center, mode), norm.detach()
    return _kernel(which, grad, center, mode)


def per_sample_penalty(grad: torch.Tensor, center: float, mode: str, impl: str) -> torch.Tensor:
    """``penalty_and_norm(grad, ...)[0]`` for the drop-ins, which discard the norm: ``grad`` is
    autograd's gradient with respect to an input they checked (its shape, a floating dtype),
    so only ``center`` and ``mode`` are checked here, and the reference makes no detached copy
    of the norm. On a small critic each of those calls is a visible share of the step."""
    if type(center) is not float or not 0.0 <= center < math.inf or mode not in MODES:
        check_args(grad, center, mode, "none")
        center = float(center)
    which = resolve_impl(impl, grad.device.type)
    if which == "reference":
        return _penalty_of_norm(_reference_norm(grad), center, mode)
    return _kernel(which, grad, center, mode)[0]


def _reference_norm(grad: torch.Tensor) -> torch.Tensor:
    """The per-sample norm in the accumulation dtype, by torch.linalg.vector_norm."""
    flat = grad if grad.dim() == 2 else grad.reshape(grad.shape[0], -1)  # no view node when already flat
    if grad.dtype == torch.float32 or grad.dtype == torch.float64:  # already the accumulation dtype
        return torch.linalg.vector_norm(flat, dim=1)
    return torch.linalg.vector_norm(flat, dim=1, dtype=acc_dtype(grad.dtype))


def _kernel(which: str, grad: torch.Tensor, center: float, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    if which == "triton":
        return torch.ops.pyfast_gan.triton_gradient_norm_penalty(grad, center, mode)
    if torch.compiler.is_compiling():
        return torch.ops.pyfast_gan.gradient_norm_penalty(grad, center, mode)
    return _EagerNative.apply(grad, center, mode)


def _penalty_of_norm(norm: torch.Tensor, center: float, mode: str) -> torch.Tensor:
    if mode == "two_sided":
        return (norm - center).square()
    if mode == "one_sided":
        return torch.clamp_min(norm - center, 0.0).square()
    return norm.square()


def gradient_norm_penalty(grad: torch.Tensor, *, center: float = 1.0, mode: str = "two_sided",
                          reduction: str = "mean", impl: str = "auto") -> torch.Tensor:
    """Per-sample gradient-norm penalty of ``grad`` (N, ...), reduced over the batch.

    ``impl``: "auto" (fastest available for ``grad.device``), "reference", "cpu",
    "cuda" or "triton". Returns fp32 (fp64 for fp64 ``grad``).
    """
    check_args(grad, center, mode, reduction)
    per_sample, _ = penalty_and_norm(grad, center=center, mode=mode, impl=impl)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample
