"""Triton kernels for per-sample interpolation ``x_hat = alpha*real + (1-alpha)*fake``.

One pass over real/fake/x_hat (math in fp32, fp64 for fp64). ``triton_interpolate_rand``
draws alpha[n] inside the kernel with ``tl.rand(seed, n)`` from a seed that lives on
the device, so drawing alpha costs no launch and no host sync; the CPU and CUDA
kernels implement the same Philox stream. Autograd is registered by the op's module,
``pyfast_gan.ops.interpolate``, with the native ops' formula.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ..._layout import acc_dtype, flat, per_sample_dense
from ._launch import launch
from ._rounding import add_rn, mul_rn

BLOCK = 2048


# 1-D grids (program = sample * K + chunk), as the CUDA kernels': a 2-D grid's second axis
# stops at 65,535 programs, i.e. samples of more than ~134M elements. Products and sums are
# rounded one by one (_rounding.py): a GPU build would otherwise contract a*x + (1-a)*y into
# an FMA and round differently from the reference and the CPU/CUDA kernels.
@triton.jit
def _lerp_kernel(r_ptr, f_ptr, o_ptr, alpha_ptr, seed_ptr, M, K, BLOCK: tl.constexpr, RAND: tl.constexpr,
                 FP64: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    n = pid // K
    k = pid % K
    if RAND:
        a = tl.rand(tl.load(seed_ptr), n)
        if k == 0:
            tl.store(alpha_ptr + n, a)
    else:
        a = tl.load(alpha_ptr + n)
    if FP64:
        a = a.to(tl.float64)
    else:
        a = a.to(tl.float32)
    offs = k * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    base = n * M
    x = tl.load(r_ptr + base + offs, mask=mask, other=0.0).to(a.dtype)
    y = tl.load(f_ptr + base + offs, mask=mask, other=0.0).to(a.dtype)
    z = add_rn(mul_rn(a, x), mul_rn(1 - a, y))
    tl.store(o_ptr + base + offs, z.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lerp_backward_kernel(g_ptr, gr_ptr, gf_ptr, alpha_ptr, M, K, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    n = pid // K
    k = pid % K
    a = tl.load(alpha_ptr + n)
    offs = k * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    base = n * M
    g = tl.load(g_ptr + base + offs, mask=mask, other=0.0).to(a.dtype)
    tl.store(gr_ptr + base + offs, mul_rn(a, g).to(gr_ptr.dtype.element_ty), mask=mask)
    tl.store(gf_ptr + base + offs, mul_rn(1 - a, g).to(gf_ptr.dtype.element_ty), mask=mask)


def _common_layout(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r = real if per_sample_dense(real) else real.contiguous()
    f = fake if fake.stride() == r.stride() else torch.empty_like(r).copy_(fake)
    return r, f


def _launch(real, fake, alpha, seed, rand: bool) -> torch.Tensor:
    r, f = _common_layout(real, fake)
    n = r.shape[0]
    m = r.numel() // n
    out = torch.empty_like(r)
    k = max(1, triton.cdiv(m, BLOCK))
    launch(_lerp_kernel)[(n * k,)](
        flat(r), flat(f), flat(out), alpha, seed, m, k, BLOCK=BLOCK, RAND=rand, FP64=r.dtype == torch.float64)
    return out


@triton_op("pyfast_gan::triton_interpolate", mutates_args=())
def interpolate(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    alpha = alpha.contiguous()
    # The seed pointer is unused when RAND is False; alpha stands in for it.
    return _launch(real, fake, alpha, alpha, rand=False)


@triton_op("pyfast_gan::triton_interpolate_rand", mutates_args=())
def interpolate_rand(real: torch.Tensor, fake: torch.Tensor, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    alpha = torch.empty((real.shape[0],), dtype=acc_dtype(real.dtype), device=real.device)
    out = _launch(real, fake, alpha, seed, rand=True)
    return out, alpha


@triton_op("pyfast_gan::triton_interpolate_backward", mutates_args=())
def interpolate_backward(grad_out: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g = grad_out if per_sample_dense(grad_out) else grad_out.contiguous()
    n = g.shape[0]
    m = g.numel() // n
    gr = torch.empty_like(g)
    gf = torch.empty_like(g)
    k = max(1, triton.cdiv(m, BLOCK))
    launch(_lerp_backward_kernel)[(n * k,)](flat(g), flat(gr), flat(gf), alpha.contiguous(), m, k, BLOCK=BLOCK)
    return gr, gf
