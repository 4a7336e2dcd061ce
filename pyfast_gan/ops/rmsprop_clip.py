"""``rmsprop_clip_``: WGAN's critic update (RMSprop, then clamp to [-c, c]) fused into one
pass over memory: reference, dispatch and fake registration. The optimizer around it is
:class:`pyfast_gan.optim.RMSpropClip`.

Reference (the definition): torch's ``_single_tensor_rmsprop`` (torch 2.14) op by op, then
``clamp_``. The kernels (csrc/cpu/rmsprop_clip.cpp, csrc/cuda/rmsprop_clip.cu,
kernels/triton/rmsprop_clip.py) read param, grad and state once and write param and state
once, rounding intermediates to the parameter dtype where torch stores them.

Tensors the kernels cannot walk as one span (not dense, or state whose strides differ from
the param's) take the reference, as do empty ones; with ``found_inf`` the reference step is
undone element-wise where the flag is set, so every path skips on the device.
"""
from __future__ import annotations

import math

import torch

from .._families import family_of
from .._layout import is_dense
from ._dispatch import check_impl_arg, register

__all__ = ["rmsprop_clip_", "reference"]

FAMILY = family_of("rmsprop_clip")


def reference(params, grads, square_avgs, grad_avgs, momentum_buffers, *, lr, alpha, eps, weight_decay, momentum,
              centered, maximize, clip_value, found_inf=None) -> None:
    """The definition: torch's ``_single_tensor_rmsprop`` (torch 2.14), then ``clamp_``.

    With ``found_inf`` the update is computed and then undone element-wise where the flag is
    set (torch.where, no host sync): the definition of a skipped step, at the cost of a copy
    (the reference is for checking, not speed)."""
    hyper = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered,
                 maximize=maximize, clip_value=clip_value)
    if found_inf is None:
        _update(params, grads, square_avgs, grad_avgs, momentum_buffers, **hyper)
        return
    mutated = [t for lst in (params, square_avgs, grad_avgs, momentum_buffers) for t in lst]
    saved = [t.clone() for t in mutated]
    _update(params, grads, square_avgs, grad_avgs, momentum_buffers, **hyper)
    skip = found_inf.reshape(()) != 0
    for t, old in zip(mutated, saved):
        t.copy_(torch.where(skip, old, t))


def _update(params, grads, square_avgs, grad_avgs, momentum_buffers, *, lr, alpha, eps, weight_decay, momentum,
            centered, maximize, clip_value) -> None:
    for i, param in enumerate(params):
        grad = grads[i] if not maximize else -grads[i]
        square_avg = square_avgs[i]
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        if centered:
            grad_avg = grad_avgs[i]
            grad_avg.lerp_(grad, 1 - alpha)
            avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        else:
            avg = square_avg.sqrt()
        avg = avg.add_(eps)
        if momentum > 0:
            buf = momentum_buffers[i]
            buf.mul_(momentum).addcdiv_(grad, avg)
            param.add_(buf, alpha=-lr)
        else:
            param.addcdiv_(grad, avg, value=-lr)
        if clip_value != math.inf:
            param.clamp_(-clip_value, clip_value)


def kernel_ok(p: torch.Tensor, others: list[torch.Tensor]) -> bool:
    """The kernels walk param, grad and state as one span each, in the same order."""
    if p.numel() == 0 or not is_dense(p):
        return False
    for t in others:
        if t.dtype != p.dtype or t.device != p.device or t.stride() != p.stride() or t.shape != p.shape:
            return False
    return True


def _rmsprop_clip_fake(params, grads, square_avgs, grad_avgs, momentum_buffers, lr, alpha, eps, weight_decay,
                       momentum, centered, maximize, clip_value, found_inf=None):
    return None


# No Triton set-up: the Triton kernel is a plain launcher, imported where it runs.
native_ops, triton_ops, resolve_impl = register("rmsprop_clip_", FAMILY, fakes={"rmsprop_clip_": _rmsprop_clip_fake})


def _pick(lists, idx: list[int]):
    return tuple([lst[i] for i in idx] if lst else [] for lst in lists)


def rmsprop_clip_(params, grads, square_avgs, grad_avgs, momentum_buffers, *, lr: float, alpha: float, eps: float,
                  weight_decay: float, momentum: float, centered: bool, maximize: bool, clip_value: float = math.inf,
                  found_inf: torch.Tensor | None = None, impl: str = "auto") -> None:
    """One fused RMSprop + clamp step over tensors on one device, in place.

    ``grad_avgs`` holds one tensor per param when ``centered`` (else is empty),
    ``momentum_buffers`` one when ``momentum > 0``. ``clip_value``: the bound c, ``inf`` for
    no clamp. ``found_inf``: None, or GradScaler's 1-element fp32 flag on the device (nonzero
    = leave everything as it is), read by the kernels themselves. ``impl``: "auto" |
    "reference" | "cpu" | "cuda" | "triton".
    """
    if not params:
        check_impl_arg(impl)
        return
    which = resolve_impl(impl, str(params[0].device))
    hyper = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered,
                 maximize=maximize, clip_value=clip_value)
    lists = (params, grads, square_avgs, grad_avgs, momentum_buffers)
    fast: list[int] = []
    slow: list[int] = []
    for i, p in enumerate(params):
        others = [grads[i], square_avgs[i]]
        if centered:
            others.append(grad_avgs[i])
        if momentum > 0:
            others.append(momentum_buffers[i])
        (fast if which != "reference" and kernel_ok(p, others) else slow).append(i)
    if slow:
        reference(*_pick(lists, slow), **hyper, found_inf=found_inf)
    if not fast:
        return
    if which == "triton":
        from ..kernels.triton.rmsprop_clip import triton_rmsprop_clip_

        by_dtype: dict[torch.dtype, list[int]] = {}
        for i in fast:
            by_dtype.setdefault(params[i].dtype, []).append(i)
        for idx in by_dtype.values():
            triton_rmsprop_clip_(*_pick(lists, idx), **hyper, found_inf=found_inf)
    else:
        torch.ops.pyfast_gan.rmsprop_clip_(*_pick(lists, fast), lr, alpha, eps, weight_decay, momentum, centered,
                                           maximize, clip_value, found_inf)
