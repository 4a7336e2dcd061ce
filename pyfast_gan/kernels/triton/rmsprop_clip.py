"""Triton fused RMSprop + clamp: one launch per dtype over a table of tensor pointers.

Same chunk table as ``clip_weights`` (see there). Per element, torch's single-tensor
RMSprop op by op, rounding to the storage dtype wherever torch writes a tensor, with
IEEE division and square root (``div_rn``/``sqrt_rn``; Triton's default fp32 division is
approximate), FMAs where torch's kernels contract them and nowhere else (products that feed a
sum are rounded on their own with ``mul_rn``: a GPU build contracts ``a * b + c`` otherwise).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._layout import acc_dtype
from ._rounding import div_rn, mul_rn, sqrt_rn
from .clip_weights import _TL_DTYPE, bounds, chunk_config, tensor_tables


@triton.jit
def _rnd(x, DTYPE: tl.constexpr, COMPUTE: tl.constexpr):
    """Round to the storage dtype and back (where torch stores a tensor)."""
    if DTYPE == tl.bfloat16:
        # Round-to-nearest-even by hand: the Triton interpreter's fp32 -> bf16 cast
        # truncates, a GPU's rounds; this makes both round (the later cast is exact).
        u = x.to(tl.uint32, bitcast=True)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        return tl.where(x != x, x, u.to(tl.float32, bitcast=True))
    elif DTYPE == COMPUTE:
        return x
    else:
        return x.to(DTYPE).to(COMPUTE)


@triton.jit
def _rmsprop_clip_kernel(addr_ptr, numel_ptr, chunk_tensor_ptr, chunk_start_ptr, hyper_ptr, found_ptr, n_tensors,
                         CHUNK: tl.constexpr, BLOCK: tl.constexpr, DTYPE: tl.constexpr, COMPUTE: tl.constexpr,
                         CENTERED: tl.constexpr, MOMENTUM: tl.constexpr, USE_WD: tl.constexpr,
                         MAXIMIZE: tl.constexpr, LERP_SMALL: tl.constexpr, HAS_FOUND: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(chunk_tensor_ptr + pid)
    start = tl.load(chunk_start_ptr + pid)
    n = tl.load(numel_ptr + t)
    if HAS_FOUND:
        # GradScaler's found_inf on the device: a nonzero flag turns the step into a no-op
        # (every lane masked) without the host reading it.
        n = tl.where(tl.load(found_ptr) != 0.0, 0, n)
    p_ptr = tl.load(addr_ptr + t).to(tl.pointer_type(DTYPE))
    g_ptr = tl.load(addr_ptr + n_tensors + t).to(tl.pointer_type(DTYPE))
    s_ptr = tl.load(addr_ptr + 2 * n_tensors + t).to(tl.pointer_type(DTYPE))
    alpha = tl.load(hyper_ptr + 0)
    oma = tl.load(hyper_ptr + 1)
    lerp_coeff = tl.load(hyper_ptr + 2)
    eps = tl.load(hyper_ptr + 3)
    neg_lr = tl.load(hyper_ptr + 4)
    wd = tl.load(hyper_ptr + 5)
    mom = tl.load(hyper_ptr + 6)
    lo = tl.load(hyper_ptr + 7)
    hi = tl.load(hyper_ptr + 8)
    for off in tl.range(0, CHUNK, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        m = idx < n
        g = tl.load(g_ptr + idx, mask=m, other=0.0).to(COMPUTE)
        p = tl.load(p_ptr + idx, mask=m, other=0.0).to(COMPUTE)
        if MAXIMIZE:
            g = -g
        if USE_WD:
            g = _rnd(tl.fma(wd, p, g), DTYPE, COMPUTE)
        s = tl.load(s_ptr + idx, mask=m, other=1.0).to(COMPUTE)  # masked lanes: no 0/0
        s = _rnd(mul_rn(s, alpha), DTYPE, COMPUTE)
        s = _rnd(tl.fma(oma * g, g, s), DTYPE, COMPUTE)
        tl.store(s_ptr + idx, s.to(DTYPE), mask=m)
        if CENTERED:
            a_ptr = tl.load(addr_ptr + 3 * n_tensors + t).to(tl.pointer_type(DTYPE))
            a = tl.load(a_ptr + idx, mask=m, other=0.0).to(COMPUTE)
            d = g - a
            if LERP_SMALL:
                a = _rnd(tl.fma(lerp_coeff, d, a), DTYPE, COMPUTE)
            else:
                a = _rnd(tl.fma(lerp_coeff, d, g), DTYPE, COMPUTE)
            tl.store(a_ptr + idx, a.to(DTYPE), mask=m)
            var = _rnd(tl.fma(-a, a, s), DTYPE, COMPUTE)
            # Masked lanes hold 0; sqrt of a negative variance is NaN as in torch.
            avg = _rnd(sqrt_rn(var, COMPUTE), DTYPE, COMPUTE)
        else:
            avg = _rnd(sqrt_rn(s, COMPUTE), DTYPE, COMPUTE)
        avg = _rnd(avg + eps, DTYPE, COMPUTE)
        if MOMENTUM:
            b_ptr = tl.load(addr_ptr + (3 + CENTERED) * n_tensors + t).to(tl.pointer_type(DTYPE))
            b = tl.load(b_ptr + idx, mask=m, other=0.0).to(COMPUTE)
            b = _rnd(mul_rn(b, mom), DTYPE, COMPUTE)
            b = _rnd(b + div_rn(g, avg, COMPUTE), DTYPE, COMPUTE)
            tl.store(b_ptr + idx, b.to(DTYPE), mask=m)
            p = _rnd(tl.fma(neg_lr, b, p), DTYPE, COMPUTE)
        else:
            p = _rnd(tl.fma(neg_lr, div_rn(g, avg, COMPUTE), p), DTYPE, COMPUTE)
        p = tl.where(p < lo, lo, p)
        p = tl.where(p > hi, hi, p)
        tl.store(p_ptr + idx, p.to(DTYPE), mask=m)


def triton_rmsprop_clip_(params, grads, square_avgs, grad_avgs, momentum_buffers, *, lr, alpha, eps, weight_decay,
                         momentum, centered, maximize, clip_value, found_inf=None) -> None:
    """One fused step over dense tensors of one device and dtype (lists as in the native op).
    ``clip_value`` may be ``inf`` (no clamp); ``found_inf`` (a 1-element fp32 device tensor,
    nonzero = skip) as the native op's."""
    if not params:
        return
    dtype, device = params[0].dtype, params[0].device
    compute_t = acc_dtype(dtype)
    chunk, block = chunk_config(device)
    lists = [params, grads, square_avgs]
    if centered:
        lists.append(grad_avgs)
    if momentum > 0:
        lists.append(momentum_buffers)
    addr, numel, ct, cs = tensor_tables(lists, chunk, device)
    w = 1.0 - alpha
    # Scalars as torch's kernels see them: rounded to the compute dtype (fp32 for
    # fp32/fp16/bf16), the clamp bounds rounded to the parameter dtype.
    lerp_small = abs(w) < 0.5
    if clip_value == float("inf"):
        lo, hi = -float("inf"), float("inf")
        b = torch.tensor([lo, hi], dtype=compute_t)
    else:
        b = bounds(clip_value, dtype, torch.device("cpu"))
    w_c = torch.tensor(w, dtype=compute_t)
    coeff = w_c if lerp_small else w_c - 1
    hyper = torch.stack([
        torch.tensor(alpha, dtype=compute_t), w_c, coeff, torch.tensor(eps, dtype=compute_t),
        torch.tensor(-lr, dtype=compute_t), torch.tensor(weight_decay, dtype=compute_t),
        torch.tensor(momentum, dtype=compute_t), b[0], b[1],
    ]).to(device, non_blocking=True)
    _rmsprop_clip_kernel[(ct.numel(),)](
        addr, numel, ct, cs, hyper, hyper if found_inf is None else found_inf, len(params), CHUNK=chunk, BLOCK=block,
        DTYPE=_TL_DTYPE[dtype], COMPUTE=_TL_DTYPE[compute_t], CENTERED=bool(centered),
        MOMENTUM=momentum > 0, USE_WD=weight_decay != 0, MAXIMIZE=bool(maximize), LERP_SMALL=lerp_small,
        HAS_FOUND=found_inf is not None)
