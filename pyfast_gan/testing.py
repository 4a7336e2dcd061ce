"""Test helpers shared by the test-suite (and usable by downstream projects)."""
from __future__ import annotations

import torch

# One tolerance table for every kernel-vs-reference comparison: (atol, rtol) by
# the dtype the kernel computes in. Low precision follows flash-attention's rule
# of thumb: no worse than PyTorch's own low-precision result would be.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1.3e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 1.6e-2),
}


def tol(dtype: torch.dtype) -> dict[str, float]:
    atol, rtol = TOLERANCES[dtype]
    return {"atol": atol, "rtol": rtol}


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN (floats) so elements a kernel forgets to write are caught."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(-12345)


def make_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """Return ``t`` (same values) in the memory layout named by ``layout``:
    'contiguous', 'channels_last' (4-D) or 'strided' (a non-contiguous view)."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        if t.dim() != 4:
            return t.contiguous()
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        # Embed in a larger buffer along the last dim and view a strided slice.
        big = torch.empty(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype, device=t.device)
        poison_(big)
        view = big[..., ::2]
        view.copy_(t)
        assert not view.is_contiguous() or t.numel() <= 1
        return view
    raise ValueError(f"unknown layout {layout!r}")
