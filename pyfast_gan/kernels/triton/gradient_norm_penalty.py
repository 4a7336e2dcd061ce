"""Triton kernels for the per-sample gradient-norm penalty.

Same math, zero-gradient rule and layout rule as csrc/cpu/gradient_norm_penalty.cpp:
forward = one read of ``grad`` (per-(sample, block) partial sums of squares in
fp32, then a small finalize kernel that adds each sample's partials in a fixed
order: deterministic, no atomics, no memset); backward = one read of ``grad`` and
one write of ``grad_input``. Registered with ``torch.library.triton_op`` so
``torch.compile`` sees the kernels; one fixed config, no autotune (autotune cannot
run under TRITON_INTERPRET=1). Autograd is registered by the op's module,
``pyfast_gan.ops.gradient_norm_penalty``, with the native op's formula.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ..._layout import acc_dtype, flat, per_sample_dense

MODE_IDS = {"two_sided": 0, "one_sided": 1, "zero_centered": 2}
BLOCK = 2048


@triton.jit
def _sumsq_kernel(g_ptr, part_ptr, M, K, BLOCK: tl.constexpr, FP64: tl.constexpr):
    n = tl.program_id(0)
    k = tl.program_id(1)
    offs = k * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    x = tl.load(g_ptr + n.to(tl.int64) * M + offs, mask=mask, other=0.0)
    if FP64:
        x = x.to(tl.float64)
    else:
        x = x.to(tl.float32)
    tl.store(part_ptr + n.to(tl.int64) * K + k, tl.sum(x * x, axis=0))


@triton.jit
def _finalize_kernel(part_ptr, pen_ptr, norm_ptr, N, K, center, MODE: tl.constexpr, BN: tl.constexpr,
                     KP: tl.constexpr, FP64: tl.constexpr):
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    cols = tl.arange(0, KP)
    rmask = rows < N
    p = tl.load(part_ptr + rows[:, None].to(tl.int64) * K + cols[None, :],
                mask=rmask[:, None] & (cols < K)[None, :], other=0.0)
    s = tl.sum(p, axis=1)
    if FP64:
        r = tl.sqrt(s)  # IEEE for fp64
    else:
        r = tl.sqrt_rn(s)  # tl.sqrt is the approximate sqrt for fp32 on GPU
    if MODE == 0:
        pen = (r - center) * (r - center)
    elif MODE == 1:
        d = tl.maximum(r - center, 0.0)
        pen = d * d
    else:
        pen = r * r
    tl.store(norm_ptr + rows, r, mask=rmask)
    tl.store(pen_ptr + rows, pen, mask=rmask)


@triton.jit
def _scale_kernel(g_ptr, out_ptr, gp_ptr, norm_ptr, M, center, MODE: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    k = tl.program_id(1)
    r = tl.load(norm_ptr + n)
    gp = tl.load(gp_ptr + n)
    if MODE == 2:
        coef = gp * 2
    else:
        # Safe division: coef = 0 where the norm is 0 (torch.linalg.vector_norm's subgradient).
        safe = tl.where(r > 0, r, 1.0)
        coef = tl.where(r > 0, gp * 2 * (r - center) / safe, 0.0)
        if MODE == 1:
            coef = tl.where(r > center, coef, 0.0)
    offs = k * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    base = n.to(tl.int64) * M
    x = tl.load(g_ptr + base + offs, mask=mask, other=0.0)
    y = coef * x.to(coef.dtype)
    tl.store(out_ptr + base + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton_op("pyfast_gan::triton_gradient_norm_penalty", mutates_args=())
def gradient_norm_penalty(grad: torch.Tensor, center: float, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = grad if per_sample_dense(grad) else grad.contiguous()
    n = g.shape[0]
    m = g.numel() // n
    acc = acc_dtype(g.dtype)
    k = max(1, triton.cdiv(m, BLOCK))
    part = torch.empty((n, k), dtype=acc, device=g.device)
    penalty = torch.empty((n,), dtype=acc, device=g.device)
    norm = torch.empty((n,), dtype=acc, device=g.device)
    wrap_triton(_sumsq_kernel)[(n, k)](flat(g), part, m, k, BLOCK=BLOCK, FP64=acc == torch.float64)
    kp = triton.next_power_of_2(k)
    bn = max(1, min(triton.next_power_of_2(n), 4096 // kp))
    wrap_triton(_finalize_kernel)[(triton.cdiv(n, bn),)](
        part, penalty, norm, n, k, center, MODE=MODE_IDS[mode], BN=bn, KP=kp, FP64=acc == torch.float64)
    return penalty, norm


@triton_op("pyfast_gan::triton_gradient_norm_penalty_backward", mutates_args=())
def gradient_norm_penalty_backward(grad_penalty: torch.Tensor, grad: torch.Tensor, norm: torch.Tensor,
                                   center: float, mode: str) -> torch.Tensor:
    g = grad if per_sample_dense(grad) else grad.contiguous()
    n = g.shape[0]
    m = g.numel() // n
    out = torch.empty_like(g)
    k = max(1, triton.cdiv(m, BLOCK))
    wrap_triton(_scale_kernel)[(n, k)](
        flat(g), flat(out), grad_penalty.contiguous(), norm.contiguous(), m, center,
        MODE=MODE_IDS[mode], BLOCK=BLOCK)
    return out
