"""any_nonfinite: the native kernels and the public op against the reference."""
from __future__ import annotations

import pytest
import torch

from pyfast_gan import _native
from pyfast_gan.ops import any_nonfinite as anf
from pyfast_gan.testing import impl_param, make_layout

needs_native = pytest.mark.skipif(not _native.load(anf.FAMILY), reason="pyfast_gan/_C_clip not built")
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
IMPLS = ["reference", pytest.param("cpu", marks=needs_native), "auto"]


def _tensors(dtype, gen, device="cpu"):
    # Views and offsets are made on the device: .to(device) would make them contiguous, and the
    # kernels' fallback for non-dense tensors would go untested there.
    def r(*shape):
        return torch.randn(shape, generator=gen).to(dtype).to(device)

    ts = [r(*s) for s in [(), (1,), (5, 3, 7, 9), (3 * 65536 + 11,)]]
    ts.append(r(8, 6)[:, ::2])  # strided view
    ts.append(torch.full((9,), torch.finfo(dtype).max, dtype=dtype, device=device))  # large but finite
    ts.append(make_layout(r(4, 8), "offset"))
    assert not ts[4].is_contiguous() and ts[6].storage_offset() == 1
    return ts


# (tensor, index) pairs: 0-d, first element, inside a 4-D tensor, in and at the end of the
# last chunk of a large tensor, inside a strided view, in an offset tensor.
_SPOTS = [(0, ()), (1, (0,)), (2, (4, 2, 6, 8)), (3, (2 * 65536 + 3,)), (3, (3 * 65536 + 10,)), (4, (7, 1)),
          (6, (3, 7))]


def _check_finds_every_spot(fn, ts):
    assert fn(ts).dtype == torch.bool and fn(ts).dim() == 0 and not fn(ts).item()
    for i, idx in _SPOTS:
        for bad in (float("inf"), -float("inf"), float("nan")):
            t = ts[i]
            keep = t[idx].clone()
            t[idx] = bad
            assert fn(ts).item(), (i, idx, bad)
            t[idx] = keep
    assert not fn(ts).item()


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel(dtype):
    ops = anf.native_ops()
    _check_finds_every_spot(ops.any_nonfinite, _tensors(dtype, torch.Generator().manual_seed(21)))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_matches_reference(impl, dtype):
    ts = _tensors(dtype, torch.Generator().manual_seed(22))
    _check_finds_every_spot(lambda x: anf.any_nonfinite(x, impl=impl), ts)
    # Mixed dtypes in one call, and tensors with no elements.
    mixed = ts[:3] + [torch.randn(4, dtype=torch.float64), torch.empty(0, 3)]
    assert not anf.any_nonfinite(mixed, impl=impl).item()
    mixed[3][2] = float("nan")
    assert anf.any_nonfinite(mixed, impl=impl).item()
    assert anf.reference(mixed).item()


def test_empty_list_and_errors():
    out = anf.any_nonfinite([])
    assert out.dtype == torch.bool and not out.item()
    with pytest.raises(ValueError, match="impl must be one of"):
        anf.any_nonfinite([torch.randn(3)], impl="gpu")
    with pytest.raises(ValueError, match=r"tensors\[1\] must be a floating-point tensor"):
        anf.any_nonfinite([torch.randn(3), torch.arange(3)], impl="reference")


@needs_native
def test_native_names_the_bad_tensor():
    with pytest.raises(ValueError, match=r"tensors\[1\] must be a floating-point tensor"):
        anf.any_nonfinite([torch.randn(3), torch.arange(3)], impl="cpu")


@pytest.mark.parametrize("impl,device", [impl_param("cpu", anf), impl_param("cuda", anf)])
def test_native_refuses_float8_on_every_device(impl, device):
    """The kernels test the exponent bits of the four float dtypes; a float8 tensor (here with
    a NaN in it) must be refused, not skipped (the CUDA kernel used to return False for it)."""
    f8 = torch.full((4,), float("nan")).to(torch.float8_e5m2).to(device)
    with pytest.raises(ValueError, match=r"tensors: every tensor must be floating point .* at index 1"):
        anf.native_ops().any_nonfinite([torch.randn(3, device=device), f8])


@needs_native
def test_opcheck():
    ts = _tensors(torch.float32, torch.Generator().manual_seed(23))
    torch.library.opcheck(anf.native_ops().any_nonfinite.default, (ts[:3],))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda(dtype):
    _check_finds_every_spot(torch.ops.pyfast_gan.any_nonfinite,
                            _tensors(dtype, torch.Generator().manual_seed(24), "cuda"))
    op = anf.native_ops().any_nonfinite
    ts = [torch.randn(n, device="cuda") for n in (1, 70000, 5)]
    assert not op(ts).item()
    ts[1][69999] = float("nan")
    assert op(ts).item() and op(ts).device.type == "cuda"
