"""clip_weights_ against its reference (one clamp_ per tensor): bit for bit, every impl."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import pyfast_gan
from pyfast_gan import _native
from pyfast_gan.ops import clip_weights as clip_weights_ops
from pyfast_gan.ops.clip_weights import clip_weights_
from pyfast_gan.testing import impl_param, make_layout, poison_

C = 0.01
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}

needs_native = pytest.mark.skipif(not _native.load(clip_weights_ops.FAMILY), reason="pyfast_gan/_C_clip not built")
TRITON = impl_param("triton", clip_weights_ops)


def bits(t: torch.Tensor) -> torch.Tensor:
    """Integer view, so -0.0 != 0.0 (torch.equal would call them equal)."""
    return t.view(_INT_VIEW[t.element_size()])


def assert_bitwise(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    """Bit-identical, NaN payloads aside: torch's own bf16 clamp_ returns 0xFFFF for a NaN in
    its vectorized body and 0x7FC0 in its scalar tail, so only NaN-ness is specified."""
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.stride() == b.stride(), i
        nan = torch.isnan(b)
        assert torch.equal(torch.isnan(a), nan), f"tensor {i} {tuple(a.shape)}: NaN positions differ"
        assert torch.equal(bits(a)[~nan], bits(b)[~nan]), f"tensor {i} {tuple(a.shape)} differs"


def random_tensors(n: int, dtype: torch.dtype, device="cpu", *, small=False, gen=None) -> list[torch.Tensor]:
    """n tensors of odd sizes and layouts, values straddling +-C, plus NaN/inf/-0/+-C."""
    shapes = [(), (1,), (5, 3, 7, 9), (64, 3, 4, 4), (7,), (1, 1, 1, 1), (33, 5), (3, 1, 4, 4)]
    if not small:
        shapes += [(129, 65, 3), (300_001,)]
    layouts = ["contiguous", "channels_last", "strided", "offset"]
    out = []
    for i in range(n):
        shape = shapes[int(torch.randint(len(shapes), (1,), generator=gen))]
        layout = layouts[int(torch.randint(len(layouts), (1,), generator=gen))]
        if len(shape) == 0:
            layout = "contiguous"
        t = torch.randn(shape, generator=gen, dtype=torch.float32).mul_(2 * C).to(dtype)
        flat = t.view(-1)
        if flat.numel() >= 6 and i % 3 == 0:
            flat[0] = float("nan")
            flat[1] = float("inf")
            flat[2] = -float("inf")
            flat[3] = -0.0
            flat[4] = C
            flat[5] = -C
        # the layout is made on the device: .to(device) would make a strided view contiguous
        out.append(make_layout(t.to(device), layout))
    return out


def run_both(tensors, impl, clip_value=C):
    want = [t.clone() for t in tensors]
    # clone() keeps the strides of dense tensors but not of strided views; rebuild those.
    for i, t in enumerate(tensors):
        if want[i].stride() != t.stride():
            w = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
            w.copy_(t)
            want[i] = w
    clip_weights_ops.reference(want, clip_value)
    clip_weights_(tensors, clip_value, impl=impl)
    assert_bitwise(tensors, want)


@needs_native
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("n", [1, 5, 40])
def test_cpu_matches_reference(dtype, n):
    gen = torch.Generator().manual_seed(n * 31 + DTYPES.index(dtype) if dtype in DTYPES else 99)
    run_both(random_tensors(n, dtype, gen=gen), "cpu")


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_many_small_tensors(dtype):
    # 2000 tensors of 1..17 elements: the per-parameter loop's worst case.
    ts = [torch.randn(int(torch.randint(1, 18, (1,))), dtype=dtype) * (2 * C) for _ in range(2000)]
    run_both(ts, "cpu")


@needs_native
def test_cpu_mixed_dtypes_one_call():
    ts = random_tensors(6, torch.float32, small=True) + random_tensors(6, torch.bfloat16, small=True)
    ts += random_tensors(6, torch.float16, small=True)
    run_both(ts, "cpu")


@needs_native
def test_cpu_large_tensor_chunk_boundaries():
    # Several 32K chunks with a ragged tail, split across threads.
    t = torch.randn(3 * 32768 + 17) * (2 * C)
    t[32767:32770] = torch.tensor([float("nan"), 1.0, -1.0])
    run_both([t, torch.randn(1) * 2 * C], "cpu")


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("impl,device", [TRITON])
def test_triton_matches_reference(dtype, impl, device):
    gen = torch.Generator().manual_seed(7)
    run_both(random_tensors(12, dtype, device, small=True, gen=gen), impl)


@pytest.mark.parametrize("impl,device", [TRITON])
def test_triton_many_tensors(impl, device):
    ts = [torch.randn(int(torch.randint(1, 40, (1,))), dtype=torch.float32).mul_(2 * C).to(device)
          for _ in range(300)]
    ts.append(torch.randn(2500, device=device) * 2 * C)  # more than one chunk
    run_both(ts, impl)


def test_reference_impl_and_clip_values():
    for c in (1e-3, 0.5, 3):  # int clip_value too
        run_both(random_tensors(5, torch.float32, small=True), "reference", clip_value=c)


@needs_native
def test_module_and_leaf_params_requiring_grad():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.BatchNorm2d(8), nn.LeakyReLU(0.2), nn.Conv2d(8, 1, 4))
    net = net.to(memory_format=torch.channels_last)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.02)
    want = [p.detach().clone(memory_format=torch.preserve_format) for p in net.parameters()]
    clip_weights_ops.reference(want, C)
    versions = [p._version for p in net.parameters()]
    assert all(p.requires_grad and p.is_leaf for p in net.parameters())
    pyfast_gan.clip_weights_(net, C)  # grad mode on: the op must run without grad
    assert_bitwise([p.detach() for p in net.parameters()], want)
    # A mutation annotated in the schema bumps version counters, so autograd sees it.
    assert all(p._version > v for p, v in zip(net.parameters(), versions))
    # A generator of parameters works as well as a list.
    pyfast_gan.clip_weights_((p for p in net.parameters()), C / 2)
    assert max(p.abs().max().item() for p in net.parameters()) <= C / 2


def test_empty_list_is_a_no_op():
    clip_weights_([], C)
    t = torch.empty(0)
    clip_weights_([t], C, impl="reference")


@pytest.mark.parametrize("bad", [0, -0.01, math.inf, math.nan, "0.01", None, True])
def test_bad_clip_value(bad):
    with pytest.raises(ValueError, match="clip_value"):
        clip_weights_([torch.randn(3)], bad)


def test_bad_tensors():
    with pytest.raises(ValueError, match=r"params\[1\].*floating"):
        clip_weights_([torch.randn(3), torch.arange(3)], C)
    with pytest.raises(ValueError, match="params.*one device"):
        clip_weights_([torch.randn(3), torch.randn(3, device="meta")], C)
    with pytest.raises(ValueError, match=r"params\[0\].*Tensor"):
        clip_weights_([1.0], C)
    with pytest.raises(ValueError, match="params"):
        clip_weights_(3, C)
    with pytest.raises(ValueError, match="impl"):
        clip_weights_([torch.randn(3)], C, impl="fast")
    with pytest.raises(RuntimeError, match="impl='cuda'"):
        clip_weights_([torch.randn(3)], C, impl="cuda")


@pytest.mark.parametrize("impl,device", [("reference", "cpu"), ("auto", "cpu"), impl_param("cpu", clip_weights_ops),
                                         TRITON, impl_param("cuda", clip_weights_ops)])
@pytest.mark.parametrize("layout", [torch.sparse_coo, torch.sparse_csr])
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_tensor_is_a_value_error_naming_it(impl, device, layout):
    # Issue 15: the dispatcher's NotImplementedError, after the reference had already
    # clamped the tensors before the sparse one.
    dense = [torch.randn(50, device=device) * 2 * C, torch.randn(4, 6, device=device) * 2 * C]
    sparse = (torch.randn(5, 5, device=device) * 2 * C).to_sparse(layout=layout)
    before = [t.clone() for t in dense]
    with pytest.raises(ValueError, match=rf"params\[2\] must be a dense \(strided\) tensor, got layout {layout}"):
        clip_weights_(dense + [sparse], C, impl=impl)
    assert_bitwise(dense, before)  # nothing touched
    assert dense[0].abs().max() > C


@needs_native
def test_native_op_checks_its_arguments():
    op = torch.ops.pyfast_gan.clip_weights_
    with pytest.raises(ValueError, match="clip_value"):
        op([torch.randn(3)], -1.0)
    with pytest.raises(ValueError, match="floating"):
        op([torch.randn(3), torch.arange(3)], 0.1)


@needs_native
def test_opcheck():
    ts = random_tensors(4, torch.float32, small=True)
    op = clip_weights_ops.native_ops().clip_weights_.default
    torch.library.opcheck(op, (ts, 0.05))
    ts16 = random_tensors(3, torch.bfloat16, small=True)
    torch.library.opcheck(op, (ts16, 0.05))


@needs_native
def test_torch_compile_traces_the_op():
    torch._dynamo.reset()
    net = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    params = [p.detach() for p in net.parameters()]
    want = [p.clone() for p in params]

    def step(ts):
        clip_weights_(ts, C)
        return ts[0].sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    out = compiled(params)
    clip_weights_ops.reference(want, C)
    assert_bitwise(params, want)
    assert torch.allclose(out, want[0].sum())
    # The mutation is functionalized and written back: a second call on fresh values
    # must clamp them too (not replay a stale graph output).
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.05)
    want = [p.clone() for p in params]
    compiled(params)
    clip_weights_ops.reference(want, C)
    assert_bitwise(params, want)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("impl,device", [impl_param("cuda", clip_weights_ops), TRITON])
def test_device_kernels_match_reference(dtype, impl, device):
    """Many tensors, large ones and misaligned views. On a GPU: more tensors than one CUDA
    argument table holds and tensors of millions of elements; Triton without a GPU runs in the
    interpreter (each program in Python), so there the sizes are small."""
    big = device == "cuda"
    gen = torch.Generator().manual_seed(11)
    run_both(random_tensors(150 if big else 20, dtype, device, small=not big, gen=gen), impl)
    sizes = (1, 3, 65536 * 320 + 5, 10**7 + 1) if big else (1, 3, 3 * 1024 + 5)
    ts = [torch.randn(n, dtype=dtype, device=device) * 2 * C for n in sizes]
    run_both(ts, impl)
    # Misaligned base address: the scalar path.
    base = torch.randn(4099 if big else 1029, dtype=dtype, device=device) * 2 * C
    run_both([base[1:], base[3:100]], impl)


@pytest.mark.cuda
def test_cuda_auto_picks_the_kernel_and_poisoned_views():
    t = poison_(torch.empty(1000, device="cuda"))
    t[::2] = torch.randn(500, device="cuda") * 2 * C
    v = t[::2]
    run_both([v, torch.randn(7, 7, device="cuda")], "auto")
    assert torch.isnan(t[1::2]).all()  # untouched gaps of the strided view
