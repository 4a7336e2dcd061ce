"""One dispatcher for every op: ``impl="auto"|"reference"|"cpu"|"cuda"|"triton"``.

Rules (as in NVlabs' torch_utils ops):
* an explicitly requested impl that cannot run on the tensors' device raises a
  ``RuntimeError`` that says why;
* ``"auto"`` picks the fastest available impl for the device (CUDA kernel, then
  Triton on CUDA; the C++ kernel on CPU) and falls back to the reference with a
  single warning per (op, reason) when the native library is missing.

Every op module (``ops/<op>.py``) has the same parts: the public function, ``reference``
(the plain-PyTorch definition the kernels are tested against), its argument checks,
``FAMILY`` (its native library, from the table in ``pyfast_gan._families``) and
``native_ops, triton_ops, resolve_impl = register(...)``.
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings
from typing import Callable

import torch

from .. import _native
from .._families import FAMILIES

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
    if impl in ("cpu", "cuda"):  # the C++ kernel for CPU tensors, the CUDA kernel for CUDA tensors
        if device.type != impl:
            raise RuntimeError(f"{op}: impl={impl!r} needs {impl.upper()} tensors, got device {device}")
        ok, why = native_available(family, device)
        if not ok:
            raise RuntimeError(f"{op}: impl={impl!r} is unavailable: {why}")
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


def check_impl_arg(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def check_impl(impl: str, device: torch.device | str) -> None:
    """Refuse an ``impl`` that cannot run every op on ``device``'s tensors: a RuntimeError whose
    message ends in the reason (a ValueError for a name not in :data:`IMPLS`). ``"auto"``
    always runs, falling back to the reference. The trainer's config check, made before a run
    starts rather than at its first step."""
    check_impl_arg(impl)
    if impl == "auto":
        return
    device = torch.device(device)
    for family, ops in FAMILIES.items():
        resolve(", ".join(ops), family, impl, device)


def register(op: str, family: str, *, fakes: dict[str, Callable], triton: str | None = None,
             autograd: tuple[str, ...] = (), backward: str | None = None,
             backward_with: Callable | None = None, setup_context: Callable | None = None):
    """An op module's registration: ``(native_ops, triton_ops, resolve_impl)``.

    * ``native_ops()`` loads ``family``'s library and registers, once, the fake impls
      ``fakes`` (``{"name": fn}`` for ``pyfast_gan::name``) and the autograd of the forward
      ops ``autograd``; returns ``torch.ops.pyfast_gan``, or None when the library is
      unavailable.
    * ``triton_ops()`` imports ``pyfast_gan.kernels.triton.<triton>`` (its ``triton_op``s carry
      their own fake impls) and gives its forward ops of the same names the same autograd,
      once; returns the module (None when ``triton`` is None: no Triton set-up).
    * ``resolve_impl(impl, device) -> str`` is :func:`resolve` plus that one-time set-up for
      the answer, memoized per (impl, device) once the set-up ran (only answers are kept: a
      request that cannot run raises every time). ``device`` is a string (``str(t.device)`` or
      ``t.device.type``) so the answer can be a trace-time constant under torch.compile: the
      set-up, which dynamo cannot trace (it reads files and environment variables), runs
      eagerly. Asked on every call, so it must stay cheap.

    The autograd is one formula for both impls: ``backward_with(backward_op)`` makes the
    backward from the impl's own ``backward`` op (the native ``torch.ops.pyfast_gan.<backward>``
    or the Triton module's ``<backward>``), with ``setup_context`` saving what it needs.
    Nothing runs at import, so ``import pyfast_gan`` loads no library.
    """

    @functools.lru_cache(maxsize=None)
    def native_ops():
        if not _native.load(family):
            return None
        for name, fake in fakes.items():
            torch.library.register_fake(f"pyfast_gan::{name}")(fake)
        ops = torch.ops.pyfast_gan
        if autograd:
            fn = backward_with(getattr(ops, backward))
            for name in autograd:
                torch.library.register_autograd(f"pyfast_gan::{name}", fn, setup_context=setup_context)
        return ops

    @functools.lru_cache(maxsize=None)
    def triton_ops():
        if triton is None:
            return None
        tk = importlib.import_module(f"pyfast_gan.kernels.triton.{triton}")
        if autograd:
            fn = backward_with(getattr(tk, backward))
            for name in autograd:
                getattr(tk, name).register_autograd(fn, setup_context=setup_context)
        return tk

    ready: dict[tuple[str, str], str] = {}

    @torch.compiler.assume_constant_result
    def resolve_impl(impl: str, device: str) -> str:
        which = ready.get((impl, device))
        if which is None:
            which = resolve(op, family, impl, torch.device(device))
            if which in ("cpu", "cuda"):
                native_ops()
            elif which == "triton":
                triton_ops()
            ready[(impl, device)] = which
        return which

    return native_ops, triton_ops, resolve_impl
