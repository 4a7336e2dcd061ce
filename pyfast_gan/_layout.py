"""Layout and dtype rules shared by the ops' dispatchers and their kernels (the Python twin of
csrc/sample_layout.h): which tensors a kernel can walk as flat per-sample memory, the dtype
sums accumulate in, and outputs allocated in the layout the kernels write."""
from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation (and alpha, and penalty) dtype: fp64 for fp64 inputs, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def non_overlapping_and_dense(t: torch.Tensor) -> bool:
    """Same rule as c10's is_non_overlapping_and_dense (not exposed to Python): the strides,
    sorted, form a contiguous layout of some permutation of the dims, so ``t`` occupies exactly
    numel consecutive elements of its storage, in some order."""
    expected = 1
    for d in sorted((d for d in range(t.dim()) if t.shape[d] != 1), key=lambda d: t.stride(d)):
        if t.stride(d) != expected:
            return False
        expected *= t.shape[d]
    return True


def is_dense(t: torch.Tensor) -> bool:
    """:func:`non_overlapping_and_dense`, with the two common layouts checked first in C++ (the
    multi-tensor ops ask this of every parameter on every step): the tensors the multi-tensor
    kernels (clip_weights_, rmsprop_clip_) walk as one span of memory."""
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last) or non_overlapping_and_dense(t)


def per_sample_dense(t: torch.Tensor) -> bool:
    """Mirror of the kernels' layout rule: every sample is one dense block of memory
    with the batch dim outermost (contiguous, channels_last, ...), so the tensor can
    be walked as flat [N, M] memory and outputs keep its layout."""
    if t.numel() == 0:
        return True
    if not non_overlapping_and_dense(t):
        return False
    n = t.shape[0]
    return n <= 1 or t.stride(0) == t.numel() // n


def empty_in_kernel_layout(t: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor like ``t`` in the layout the kernels write: ``t``'s own when it
    is per-sample dense, else contiguous."""
    return torch.empty_like(t) if per_sample_dense(t) else torch.empty(t.shape, dtype=t.dtype, device=t.device)


def flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a per-sample-dense tensor's memory, in memory order."""
    return t.as_strided((t.numel(),), (1,))
