"""IEEE-rounded arithmetic for the Triton kernels, as csrc/cuda/fp_rn.cuh is for the CUDA ones.

Compiled Triton contracts ``a * b + c`` into one FMA (``enable_fp_fusion`` defaults to on)
and divides fp32 approximately, so a kernel written as the reference's formula rounds
differently from it on a GPU. A launch option could turn fusion off for a whole kernel, but
torch.compile's user-kernel path does not forward it; these helpers fix the rounding inside
the kernel instead, on every path: libdevice's ``_rn`` intrinsics on a GPU (``mul.rn`` and
``add.rn`` are never contracted), plain operators in Triton's interpreter (numpy rounds each
operation and never contracts), so both compute the same value.

Scalars: compiled Triton passes a Python float argument as fp32, which would round an fp64
kernel's constant (the interpreter keeps it exact and hides that); :func:`scalar_bits` sends
a float as the integer of its bits in the kernel's compute dtype and :func:`from_bits` turns
it back, exact and without an upload or an extra launch.
"""
from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from . import _launch

# Decided when the kernels are first imported, as triton itself reads TRITON_INTERPRET.
INTERPRETED = tl.constexpr(_launch.INTERPRETED)


@triton.jit
def mul_rn(x, y):
    if INTERPRETED:
        return x * y
    else:
        return libdevice.mul_rn(x, tl.cast(y, x.dtype))


@triton.jit
def add_rn(x, y):
    if INTERPRETED:
        return x + y
    else:
        return libdevice.add_rn(x, tl.cast(y, x.dtype))


@triton.jit
def sub_rn(x, y):
    if INTERPRETED:
        return x - y
    else:
        return libdevice.sub_rn(x, tl.cast(y, x.dtype))


@triton.jit
def div_rn(x, y, COMPUTE: tl.constexpr):
    # tl.div_rn/sqrt_rn are fp32-only; fp64 division and square root are IEEE already.
    if COMPUTE == tl.float64:
        return x / y
    else:
        return tl.div_rn(x, y)


@triton.jit
def sqrt_rn(x, COMPUTE: tl.constexpr):
    if COMPUTE == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


def scalar_bits(value: float, dtype: torch.dtype) -> int:
    """``value`` rounded to ``dtype`` (fp32 or fp64), as the int of its bits; non-negative
    values only (their bits fit a signed integer argument)."""
    if value < 0:
        raise ValueError(f"scalar_bits takes non-negative values, got {value}")
    if dtype == torch.float64:
        return struct.unpack("<q", struct.pack("<d", value))[0]
    return struct.unpack("<i", struct.pack("<f", value))[0]


@triton.jit
def from_bits(bits, COMPUTE: tl.constexpr):
    # Triton types a small int argument as i32 and a large one as i64: widen first.
    if COMPUTE == tl.float64:
        return bits.to(tl.int64).to(tl.float64, bitcast=True)
    else:
        return bits.to(tl.int32).to(tl.float32, bitcast=True)
