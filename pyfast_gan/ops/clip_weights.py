"""``clip_weights_``: WGAN weight clipping of a whole critic in one kernel launch.

Reference (the definition): ``for p in params: p.clamp_(-c, c)``; one launch, and one
read and write of each tensor, per parameter. The native and Triton impls clamp every
tensor of a (device, dtype) group in a single multi-tensor launch and are bit-identical to
the reference: the bounds are rounded to the tensor dtype as ``clamp_`` rounds them,
and NaN stays NaN.

Tensors that are dense but not contiguous (channels_last, permuted) are clamped in
their storage order; strided views that are not one span of memory take ``clamp_``.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from .._families import family_of
from .._layout import is_dense
from ._dispatch import check_impl_arg, register

__all__ = ["clip_weights_", "reference"]

FAMILY = family_of("clip_weights")


def collect_tensors(params, argname: str = "params") -> list[torch.Tensor]:
    """A list of tensors from a module (its ``.parameters()``), one tensor, or an iterable."""
    if isinstance(params, torch.nn.Module):
        tensors = list(params.parameters())
    elif isinstance(params, torch.Tensor):
        tensors = [params]
    else:
        try:
            tensors = list(params)
        except TypeError:
            raise ValueError(
                f"{argname} must be an nn.Module, a tensor or an iterable of tensors, got {type(params).__name__}"
            ) from None
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{argname}[{i}] must be a torch.Tensor, got {type(t).__name__}")
    return tensors


def check_clip_value(clip_value, argname: str = "clip_value") -> float:
    if isinstance(clip_value, torch.Tensor):
        if clip_value.numel() != 1:
            raise ValueError(f"{argname} must be a number, got a tensor of shape {tuple(clip_value.shape)}")
        clip_value = clip_value.item()
    if isinstance(clip_value, bool) or not isinstance(clip_value, (int, float)):
        raise ValueError(f"{argname} must be a finite number > 0, got {clip_value!r}")
    c = float(clip_value)
    if not math.isfinite(c) or c <= 0:
        raise ValueError(f"{argname} must be a finite number > 0, got {clip_value!r}")
    return c


def check_tensors(tensors: list[torch.Tensor], argname: str = "params") -> None:
    """Dense (strided) floating-point tensors on one device; the ValueError names the first
    offending tensor."""
    # Set/all() first: this runs on every WGAN critic step, so the common case stays cheap.
    dev = tensors[0].device
    if len({t.device for t in tensors}) == 1 and all(t.is_floating_point() and t.layout == torch.strided
                                                      for t in tensors):
        return
    for i, t in enumerate(tensors):
        if t.device != dev:
            raise ValueError(f"{argname}: all tensors must be on one device, got {dev} and {t.device} (index {i})")
        if not t.is_floating_point():
            raise ValueError(f"{argname}[{i}] must be a floating-point tensor, got dtype {t.dtype}")
        if t.layout != torch.strided:
            # Sparse (and other) layouts have no clamp_ kernel: without this check the
            # dispatcher's NotImplementedError would come out of the middle of the reference
            # loop, after some tensors were already clamped.
            raise ValueError(f"{argname}[{i}] must be a dense (strided) tensor, got layout {t.layout}")


def reference(tensors: Iterable[torch.Tensor], clip_value: float) -> None:
    """The definition: one ``clamp_`` per tensor."""
    with torch.no_grad():
        for t in tensors:
            t.clamp_(-clip_value, clip_value)


@torch.compiler.disable
def _triton_clip(tensors: list[torch.Tensor], c: float) -> None:
    from ..kernels.triton.clip_weights import triton_clip_weights_

    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        if t.numel() == 0:
            continue
        if is_dense(t):
            groups.setdefault(t.dtype, []).append(t)
        else:
            t.clamp_(-c, c)
    for group in groups.values():
        triton_clip_weights_(group, c)


def clip_weights_(params, clip_value, *, impl: str = "auto") -> None:
    """Clamp every tensor of ``params`` to ``[-clip_value, clip_value]`` in place.

    Args:
        params: an ``nn.Module`` (its parameters), a tensor, or an iterable of tensors, all
            dense (strided), floating point and on one device.
        clip_value: the bound c > 0 (finite).
        impl: "auto" | "reference" | "cpu" | "cuda" | "triton" (see ``ops._dispatch``).

    Runs under ``torch.no_grad()``, so leaf parameters that require grad can be clipped.
    On CUDA the dense tensors of each dtype take one launch (several only when the
    argument table overflows: more than 110 tensors or 320 chunks of 64K elements).
    """
    tensors = collect_tensors(params)
    c = check_clip_value(clip_value)
    if not tensors:
        check_impl_arg(impl)
        return
    which = resolve_impl(impl, str(tensors[0].device))
    with torch.no_grad():
        if which == "reference":
            check_tensors(tensors)
            reference(tensors, c)
        elif which == "triton":
            check_tensors(tensors)
            _triton_clip(tensors, c)
        else:
            # The kernel checks dtypes and devices itself (the fake impl too), and the
            # dispatcher refuses a sparse tensor (NotImplementedError, a RuntimeError) before
            # the kernel runs; the Python check runs only to name the offending tensor,
            # saving ~1 us per tensor per step on the common path.
            try:
                torch.ops.pyfast_gan.clip_weights_(tensors, c)
            except (ValueError, RuntimeError):
                check_tensors(tensors)
                raise


def _clip_weights_fake(tensors, clip_value):
    check_tensors(list(tensors), "tensors")
    return None


# No Triton set-up: the Triton kernel is a plain launcher, imported where it runs.
native_ops, triton_ops, resolve_impl = register("clip_weights_", FAMILY, fakes={"clip_weights_": _clip_weights_fake})
