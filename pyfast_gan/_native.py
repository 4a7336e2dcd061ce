"""Loading of the native (C++/CUDA) kernel libraries.

Each op family (the table in ``_families``) is its own shared library holding only
TORCH_LIBRARY registrations in the ``pyfast_gan`` namespace; loading it makes
``torch.ops.pyfast_gan.<op>`` available. A family that was not built, or that
fails to load, is reported once and the Python side falls back or raises.
"""
from __future__ import annotations

import functools
import glob
import importlib.machinery
import os
import warnings

import torch

from ._families import FAMILIES

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_errors: dict[str, str] = {}


def _find_library(family: str) -> str | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(_PKG_DIR, f"_C_{family}{suffix}")
        if os.path.exists(path):
            return path
    hits = glob.glob(os.path.join(_PKG_DIR, f"_C_{family}*.so"))
    return hits[0] if hits else None


@functools.lru_cache(maxsize=None)
def load(family: str) -> bool:
    """Load the native library of ``family``; True on success (cached)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown native family {family!r}; known: {tuple(FAMILIES)}")
    if os.environ.get("PYFAST_GAN_NO_NATIVE", "0") == "1":
        _errors[family] = "disabled by PYFAST_GAN_NO_NATIVE=1"
        return False
    path = _find_library(family)
    if path is None:
        _errors[family] = (
            f"pyfast_gan/_C_{family} was not built "
            "(run `pip install --no-build-isolation -e .` with a C++ compiler present)"
        )
        return False
    try:
        torch.ops.load_library(path)
    except OSError as e:  # ABI mismatch, missing CUDA runtime, ...
        _errors[family] = f"failed to load {path}: {e}"
        warnings.warn(f"pyfast_gan: {_errors[family]}", RuntimeWarning, stacklevel=2)
        return False
    return True


def error(family: str) -> str:
    """Why ``family`` is unavailable ('' when it loaded)."""
    load(family)
    return _errors.get(family, "")


@functools.lru_cache(maxsize=None)
def has_cuda_kernels(family: str) -> bool:
    """True if the family's library was built with its CUDA kernels."""
    if not load(family):
        return False
    try:
        return bool(getattr(torch.ops.pyfast_gan, f"{family}_built_with_cuda")())
    except (AttributeError, RuntimeError):
        return False
