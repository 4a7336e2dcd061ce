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
from torch.library import triton_op

from ..._layout import acc_dtype, flat, per_sample_dense
from ._launch import launch
from ._rounding import div_rn, from_bits, mul_rn, scalar_bits, sqrt_rn, sub_rn

MODE_IDS = {"two_sided": 0, "one_sided": 1, "zero_centered": 2}
BLOCK = 2048


# Grids are 1-D (program = sample * K + chunk), as the CUDA kernels': a 2-D grid's second
# axis stops at 65,535 programs, i.e. samples of more than ~134M elements.
@triton.jit
def _sumsq_kernel(g_ptr, part_ptr, M, K, BLOCK: tl.constexpr, FP64: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    n = pid // K
    k = pid % K
    offs = k * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    x = tl.load(g_ptr + n * M + offs, mask=mask, other=0.0)
    if FP64:
        x = x.to(tl.float64)
    else:
        x = x.to(tl.float32)
    tl.store(part_ptr + pid, tl.sum(x * x, axis=0))


@triton.jit(do_not_specialize=["center_bits"])
def _finalize_kernel(part_ptr, pen_ptr, norm_ptr, N, K, center_bits, MODE: tl.constexpr, BN: tl.constexpr,
                     KP: tl.constexpr, COMPUTE: tl.constexpr):
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    cols = tl.arange(0, KP)
    rmask = rows < N
    p = tl.load(part_ptr + rows[:, None].to(tl.int64) * K + cols[None, :],
                mask=rmask[:, None] & (cols < K)[None, :], other=0.0)
    s = tl.sum(p, axis=1)
    r = sqrt_rn(s, COMPUTE)  # tl.sqrt is the approximate sqrt for fp32 on a GPU
    c = from_bits(center_bits, COMPUTE)
    if MODE == 0:
        d = sub_rn(r, c)
        pen = mul_rn(d, d)
    elif MODE == 1:
        # max(r - c, 0) as the CPU kernel and the reference: a NaN norm stays NaN (a step
        # with a NaN gradient must not look finite); tl.maximum would return 0 for it.
        d = tl.where(r <= c, 0.0, sub_rn(r, c))
        pen = mul_rn(d, d)
    else:
        pen = mul_rn(r, r)
    tl.store(norm_ptr + rows, r, mask=rmask)
    tl.store(pen_ptr + rows, pen, mask=rmask)


@triton.jit(do_not_specialize=["center_bits"])
def _scale_kernel(g_ptr, out_ptr, gp_ptr, norm_ptr, M, K, center_bits, MODE: tl.constexpr, BLOCK: tl.constexpr,
                  COMPUTE: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    n = pid // K
    k = pid % K
    r = tl.load(norm_ptr + n)
    gp2 = mul_rn(tl.load(gp_ptr + n), 2.0)
    if MODE == 2:
        coef = gp2
    else:
        # gp * 2 * (r - c) / r left to right, IEEE division as the CPU kernel; coef = 0 where
        # the norm is 0 (torch.linalg.vector_norm's subgradient).
        c = from_bits(center_bits, COMPUTE)
        safe = tl.where(r > 0, r, 1.0)
        coef = tl.where(r > 0, div_rn(mul_rn(gp2, sub_rn(r, c)), safe, COMPUTE), 0.0)
        if MODE == 1:
            coef = tl.where(r > c, coef, 0.0)
    offs = k * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    base = n * M
    x = tl.load(g_ptr + base + offs, mask=mask, other=0.0)
    y = mul_rn(coef, x.to(coef.dtype))
    tl.store(out_ptr + base + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _compute(acc: torch.dtype):
    return tl.float64 if acc == torch.float64 else tl.float32


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
    launch(_sumsq_kernel)[(n * k,)](flat(g), part, m, k, BLOCK=BLOCK, FP64=acc == torch.float64)
    kp = triton.next_power_of_2(k)
    bn = max(1, min(triton.next_power_of_2(n), 4096 // kp))
    launch(_finalize_kernel)[(triton.cdiv(n, bn),)](
        part, penalty, norm, n, k, scalar_bits(center, acc), MODE=MODE_IDS[mode], BN=bn, KP=kp,
        COMPUTE=_compute(acc))
    return penalty, norm


@triton_op("pyfast_gan::triton_gradient_norm_penalty_backward", mutates_args=())
def gradient_norm_penalty_backward(grad_penalty: torch.Tensor, grad: torch.Tensor, norm: torch.Tensor,
                                   center: float, mode: str) -> torch.Tensor:
    g = grad if per_sample_dense(grad) else grad.contiguous()
    n = g.shape[0]
    m = g.numel() // n
    out = torch.empty_like(g)
    k = max(1, triton.cdiv(m, BLOCK))
    acc = acc_dtype(g.dtype)
    launch(_scale_kernel)[(n * k,)](
        flat(g), flat(out), grad_penalty.contiguous(), norm.contiguous(), m, k, scalar_bits(center, acc),
        MODE=MODE_IDS[mode], BLOCK=BLOCK, COMPUTE=_compute(acc))
    return out
