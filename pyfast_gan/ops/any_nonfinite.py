"""``any_nonfinite``: does any tensor of a list hold inf or NaN? One 0-d bool tensor on the
tensors' device, so a caller can branch on it with one host read per step (RMSpropClip's
``skip_nonfinite``) or keep it on the device.

Reference (the definition): ``torch._foreach_norm(ord=inf)`` per dtype, then ``isfinite``;
the max-abs rather than the 2-norm, which overflows for large finite values. The native
kernels (csrc/cpu/any_nonfinite.cpp, csrc/cuda/any_nonfinite.cu) test exponent bits in one
pass over every tensor; on the DCGAN-64 critic on 2 CPU cores the reference cost 3x the
fused optimizer step it guards. There is no Triton kernel: where the dispatcher picks
Triton the reference runs (its foreach kernels are already multi-tensor launches on CUDA).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from .._families import family_of
from ._dispatch import check_impl_arg, register
from .clip_weights import check_tensors

__all__ = ["any_nonfinite", "reference"]

FAMILY = family_of("any_nonfinite")


def reference(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The definition: is any element of any tensor inf or NaN (a 0-d bool tensor)."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        if t.numel():
            by_dtype.setdefault(t.dtype, []).append(t)
    if not by_dtype:
        return torch.zeros((), dtype=torch.bool, device=tensors[0].device if tensors else "cpu")
    flags = [torch.stack(torch._foreach_norm(lst, math.inf)).isfinite().all() for lst in by_dtype.values()]
    return torch.stack(flags).logical_not().any()


def _any_nonfinite_fake(tensors):
    return torch.empty((), dtype=torch.bool, device=tensors[0].device if len(tensors) else "cpu")


# No Triton kernel: where the dispatcher picks Triton the reference runs.
native_ops, triton_ops, resolve_impl = register("any_nonfinite", FAMILY, fakes={"any_nonfinite": _any_nonfinite_fake})


def any_nonfinite(tensors: Iterable[torch.Tensor], *, impl: str = "auto") -> torch.Tensor:
    """True (a 0-d bool tensor on the tensors' device; CPU for an empty list) if any element
    of any tensor is inf or NaN. Tensors: floating point, strided (any strides), on one device.
    ``impl``: "auto" | "reference" | "cpu" | "cuda" | "triton" (Triton runs the reference)."""
    tensors = list(tensors)
    if not tensors:
        check_impl_arg(impl)
        return torch.zeros((), dtype=torch.bool)
    which = resolve_impl(impl, str(tensors[0].device))
    if which in ("cpu", "cuda"):
        # The kernel checks dtypes itself; the Python check only names the offending tensor
        # (it costs ~1 us per tensor, paid here on every optimizer step otherwise).
        try:
            return torch.ops.pyfast_gan.any_nonfinite(tensors)
        except (ValueError, RuntimeError):
            check_tensors(tensors, "tensors")
            raise
    check_tensors(tensors, "tensors")
    return reference(tensors)
