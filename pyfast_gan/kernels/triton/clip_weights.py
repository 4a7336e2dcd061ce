"""Triton multi-tensor clamp: one launch per dtype over a table of tensor pointers.

Each program owns one chunk of one tensor, looked up in a chunk table
(tensor index, first element); the tensor's base address is an int64 in a pointer
table, cast to a typed pointer in the kernel. This is the apex/PyTorch multi-tensor
apply design, with the table in device memory instead of kernel arguments, so any
number of tensors takes one launch.

Clamp semantics are at::clamp's: bounds rounded to the tensor's dtype, NaN in, NaN
out. ``where(x < lo, lo, x)`` keeps NaN (the comparison is false) and returns either
x or the bound, so the result is bit-identical to ``clamp_``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._layout import acc_dtype

_TL_DTYPE = {
    torch.float32: tl.float32,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float64: tl.float64,
}


def chunk_config(device: torch.device) -> tuple[int, int]:
    """(CHUNK, BLOCK) elements. The interpreter runs programs one by one in Python, so
    on CPU a chunk is a single block; on a GPU a 16K-element chunk per program keeps
    the table small and each program streaming long enough to hide latency."""
    if device.type == "cuda":
        return 16384, 2048
    return 1024, 1024


def tensor_tables(tensor_lists: list[list[torch.Tensor]], chunk: int, device: torch.device):
    """Pointer tables (one row per list) and the chunk table, as int64 device tensors.

    Returns (addr [L, T], numel [T], chunk_tensor [C], chunk_start [C]).

    The table is uploaded from host memory at each call, which a CUDA-graph capture forbids
    (the CUDA kernels pass theirs as kernel arguments instead); the trainer refuses
    ``--cuda-graphs`` with these kernels, and a capture reaching here gets a clear error."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("pyfast_gan: the Triton clip_weights_/RMSpropClip kernels upload a pointer table "
                           "at each call and cannot run inside a CUDA graph capture; use impl='cuda'")
    first = tensor_lists[0]
    numels = [t.numel() for t in first]
    addr = [[t.data_ptr() for t in lst] for lst in tensor_lists]
    chunk_tensor: list[int] = []
    chunk_start: list[int] = []
    for i, n in enumerate(numels):
        c = (n + chunk - 1) // chunk
        chunk_tensor.extend([i] * c)
        chunk_start.extend(range(0, n, chunk))
    flat = [x for row in addr for x in row] + numels + chunk_tensor + chunk_start
    packed = torch.tensor(flat, dtype=torch.int64).to(device, non_blocking=True)
    n_t, n_c = len(numels), len(chunk_tensor)
    L = len(tensor_lists)
    addr_t = packed[: L * n_t].view(L, n_t)
    numel_t = packed[L * n_t : L * n_t + n_t]
    ct = packed[L * n_t + n_t : L * n_t + n_t + n_c]
    cs = packed[L * n_t + n_t + n_c :]
    return addr_t, numel_t, ct, cs


@triton.jit
def _clip_kernel(addr_ptr, numel_ptr, chunk_tensor_ptr, chunk_start_ptr, bounds_ptr, CHUNK: tl.constexpr,
                 BLOCK: tl.constexpr, DTYPE: tl.constexpr, COMPUTE: tl.constexpr):
    pid = tl.program_id(0)
    lo = tl.load(bounds_ptr)
    hi = tl.load(bounds_ptr + 1)
    t = tl.load(chunk_tensor_ptr + pid)
    start = tl.load(chunk_start_ptr + pid)
    base = tl.load(addr_ptr + t).to(tl.pointer_type(DTYPE))
    n = tl.load(numel_ptr + t)
    for off in tl.range(0, CHUNK, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        m = idx < n
        x = tl.load(base + idx, mask=m).to(COMPUTE)
        x = tl.where(x < lo, lo, x)
        x = tl.where(x > hi, hi, x)
        tl.store(base + idx, x.to(DTYPE), mask=m)


def bounds(clip_value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[lo, hi] as at::clamp sees them (rounded to ``dtype``), in the compute dtype
    (a Python float argument would reach the kernel as fp32, wrong for fp64)."""
    b = torch.tensor([-clip_value, clip_value], dtype=torch.float64).to(dtype).to(acc_dtype(dtype))
    return b.to(device, non_blocking=True)


def triton_clip_weights_(tensors: list[torch.Tensor], clip_value: float) -> None:
    """Clamp dense tensors of one device and dtype in place (one launch)."""
    if not tensors:
        return
    dtype = tensors[0].dtype
    device = tensors[0].device
    chunk, block = chunk_config(device)
    addr, numel, ct, cs = tensor_tables([tensors], chunk, device)
    _clip_kernel[(ct.numel(),)](addr, numel, ct, cs, bounds(clip_value, dtype, device), CHUNK=chunk, BLOCK=block,
                                DTYPE=_TL_DTYPE[dtype], COMPUTE=_TL_DTYPE[acc_dtype(dtype)])
