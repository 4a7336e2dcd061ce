"""One dispatcher for every op: ``impl="auto"|"reference"|"cpu"|"cuda"|"triton"``.

Rules (as in NVlabs' torch_utils ops):
* an explicitly requested impl that cannot run on the tensors' device raises a
  ``RuntimeError`` that says why;
* ``"auto"`` picks the fastest available impl for the device (CUDA kernel, then
  Triton on CUDA; the C++ kernel on CPU) and falls back to the reference with a
  single warning per (op, reason) when the native library is missing.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch

from .. import _native

IMPLS = ("auto", "reference", "cpu", "cuda", "triton")
_warned: set[tuple[str, str]] = set()


def warn_once(key: str, msg: str, stacklevel: int = 3) -> None:
    """A RuntimeWarning, once per process per (key, msg). ``stacklevel`` counts as in
    ``warnings.warn`` called here: the default 3 names the caller of warn_once's caller."""
    if (key, msg) in _warned:
        return
    _warned.add((key, msg))
    warnings.warn(msg, RuntimeWarning, stacklevel=stacklevel)


def triton_available(device: torch.device) -> tuple[bool, str]:
    """Triton runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "triton is not installed"
    if device.type == "cuda":
        return True, ""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True, ""
    return False, f"triton needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors); got device {device}"


def native_available(family: str, device: torch.device) -> tuple[bool, str]:
    if not _native.load(family):
        return False, _native.error(family)
    if device.type == "cpu":
        return True, ""
    if device.type == "cuda":
        if _native.has_cuda_kernels(family):
            return True, ""
        return False, f"pyfast_gan/_C_{family} was built without CUDA kernels"
    return False, f"no native kernel for device type {device.type!r}"


def resolve(op: str, family: str, impl: str, device: torch.device) -> str:
    """Return the concrete impl to run ('reference', 'cpu', 'cuda' or 'triton')."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "reference":
        return impl
    if impl == "cpu":
        if device.type != "cpu":
            raise RuntimeError(f"{op}: impl='cpu' needs CPU tensors, got device {device}")
        ok, why = native_available(family, device)
        if not ok:
            raise RuntimeError(f"{op}: impl='cpu' is unavailable: {why}")
        return impl
    if impl == "cuda":
        if device.type != "cuda":
            raise RuntimeError(f"{op}: impl='cuda' needs CUDA tensors, got device {device}")
        ok, why = native_available(family, device)
        if not ok:
            raise RuntimeError(f"{op}: impl='cuda' is unavailable: {why}")
        return impl
    if impl == "triton":
        ok, why = triton_available(device)
        if not ok:
            raise RuntimeError(f"{op}: impl='triton' is unavailable: {why}")
        return impl
    # auto
    if device.type in ("cpu", "cuda"):
        ok, why = native_available(family, device)
        if ok:
            return device.type
        if device.type == "cuda" and triton_available(device)[0]:
            return "triton"
        warn_once(op, f"pyfast_gan.{op}: native kernel unavailable ({why}); using the PyTorch reference")
    return "reference"


_RESOLVED: dict[tuple[str, str, str, str], str] = {}


@torch.compiler.assume_constant_result
def resolve_cached(op: str, family: str, impl: str, device: str) -> str:
    """:func:`resolve`, memoized per (op, family, impl, device), for ops that dispatch on every
    step (clip_weights_ and RMSpropClip run once per critic step, and ``resolve`` costs more
    than clamping a small critic), and evaluated once at trace time under torch.compile (it
    checks files and environment variables, which dynamo cannot trace). ``device`` is a
    string (``str(t.device)`` or ``t.device.type``) so the result can be a trace constant.
    A request that cannot run raises every time (only answers are cached)."""
    key = (op, family, impl, device)
    which = _RESOLVED.get(key)
    if which is None:
        which = _RESOLVED[key] = resolve(op, family, impl, torch.device(device))
    return which


def native_loader(family: str, fakes: dict):
    """An op module's ``native_ops()``: load ``family``'s library and register the op's fake
    impls (``{"pyfast_gan::name": fn}``) once; returns ``torch.ops.pyfast_gan``, or None when
    the library is unavailable. Called on first dispatch, so ``import pyfast_gan`` loads none."""

    @functools.lru_cache(maxsize=None)
    def native_ops():
        if not _native.load(family):
            return None
        for name, fake in fakes.items():
            torch.library.register_fake(name)(fake)
        return torch.ops.pyfast_gan

    return native_ops


def resolver(op: str, family: str, native_ops, triton_ops=None):
    """An op module's ``resolve_impl(impl, device) -> str``: :func:`resolve`, plus the op's
    one-time set-up for the answer (``native_ops()`` loads the library and registers fake impls
    and autograd; ``triton_ops()`` the Triton ops' autograd), memoized per (impl, device) once
    that set-up ran (only answers are kept: a request that cannot run raises every time). It is
    a trace-time constant under torch.compile, so that set-up, which dynamo cannot trace, runs
    eagerly."""

    ready: dict[tuple[str, str], str] = {}

    @torch.compiler.assume_constant_result
    def resolve_impl(impl: str, device: str) -> str:
        which = ready.get((impl, device))
        if which is None:
            which = resolve(op, family, impl, torch.device(device))
            if which in ("cpu", "cuda"):
                native_ops()
            elif which == "triton" and triton_ops is not None:
                triton_ops()
            ready[(impl, device)] = which
        return which

    return resolve_impl


def check_impl_arg(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
