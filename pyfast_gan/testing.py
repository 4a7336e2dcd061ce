"""Test helpers shared by the test-suite (and usable by downstream projects)."""
from __future__ import annotations

import torch
from torch import nn

# One tolerance table for every kernel-vs-reference comparison: (atol, rtol) by
# the dtype the kernel computes in. Low precision follows flash-attention's rule
# of thumb: no worse than PyTorch's own low-precision result would be.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1.3e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 1.6e-2),
}


def impl_device(impl: str) -> str:
    """The device type whose tensors ``impl`` runs on in this process: CUDA tensors for
    ``"cuda"``; for ``"triton"`` CUDA tensors when a GPU is present, else CPU tensors (through
    Triton's interpreter, ``TRITON_INTERPRET=1``); CPU tensors otherwise. A test builds its
    inputs *on* this device (and only then gives them a layout: ``.to(device)`` makes a strided
    view contiguous), so the same test runs the kernel it names on a CPU and on a GPU machine."""
    if impl == "cuda":
        return "cuda"
    if impl == "triton":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


def impl_unavailable(impl: str, op) -> str | None:
    """Why ``impl`` of ``op`` (an op module, ``pyfast_gan.ops.<op>``: its ``FAMILY`` names the
    native library) cannot run on :func:`impl_device`'s tensors here, from the dispatcher's own
    checks; None when it can."""
    from .ops._dispatch import native_available, triton_available

    device = torch.device(impl_device(impl))
    if device.type == "cuda" and not torch.cuda.is_available():
        return "needs a CUDA device"
    if impl == "triton":
        ok, why = triton_available(device)
    elif impl in ("cpu", "cuda"):
        ok, why = native_available(op.FAMILY, device)
    else:
        ok, why = True, ""
    return None if ok else why


def impl_param(impl: str, op):
    """``pytest.param(impl, device)`` for tests of ``op`` (an op module) parametrized by
    ``"impl,device"``: the device from :func:`impl_device`, skipped with the dispatcher's reason
    where the impl cannot run, marked ``cuda`` when it runs on the GPU and ``triton`` for the
    Triton impl (so a GPU session can select the device tests with ``-m "cuda or triton"``)."""
    import pytest

    device = impl_device(impl)
    why = impl_unavailable(impl, op)
    marks = [pytest.mark.skipif(why is not None, reason=f"impl={impl!r} unavailable: {why}")]
    if device == "cuda":
        marks.append(pytest.mark.cuda)
    if impl == "triton":
        marks.append(pytest.mark.triton)
    return pytest.param(impl, device, marks=marks, id=f"{impl}-{device}")


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
    'contiguous', 'channels_last' (4-D), 'strided' (a non-contiguous view) or 'offset'
    (contiguous, but starting one element into its storage: the data pointer is not 16-byte
    aligned while the size may still divide the vector width, which sends the CUDA kernels
    to their scalar path)."""
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
    if layout == "offset":
        buf = poison_(torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device))
        view = buf[1:].view(t.shape)
        view.copy_(t)
        assert view.storage_offset() == 1 and view.is_contiguous()
        return view
    raise ValueError(f"unknown layout {layout!r}")


# Small critics for the gradient-penalty tests: each returns one value per sample and has
# non-zero second derivatives, so the double backward through the penalty is exercised.


def conv_critic() -> nn.Sequential:
    """(N, 3, 11, 12) -> (N, 1): strided convs, LeakyReLU, a linear head."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(16 * 3 * 3, 1),
    )


def conv_head_critic() -> nn.Sequential:
    """(N, 3, 8, 8) -> (N, 1, 1, 1): a DCGAN critic's last conv without the ``.view``."""
    return nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.Softplus(), nn.Conv2d(8, 1, 4, 1, 0))


class SmoothMLPCritic(nn.Module):
    """(N, d) -> (N,); softplus and tanh keep second derivatives non-zero."""

    def __init__(self, d: int = 7, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.Softplus(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)
