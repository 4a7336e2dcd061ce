"""gradient_norm_penalty: every impl against the reference (the definition)."""
import os

import pytest
import torch

import pyfast_gan as pg
from pyfast_gan import _native
from pyfast_gan.ops import gradient_norm_penalty as gnp
from pyfast_gan.testing import impl_param, make_layout, tol

HAS_NATIVE = _native.load(gnp.FAMILY)
TRITON = impl_param("triton", gnp)
IMPLS = [impl_param("cpu", gnp), TRITON, impl_param("cuda", gnp)]
# (5,3,7,9): odd sizes; (2,3,50,60): several CPU chunks and Triton blocks per sample;
# (3,17): rank 2; N = 1.
SHAPES = [(1, 3, 4, 5), (5, 3, 7, 9), (3, 17), (2, 3, 50, 60), (1, 2500)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LAYOUTS = ["contiguous", "channels_last", "strided", "offset"]
MODES = ["two_sided", "one_sided", "zero_centered"]


def _grad_input(shape, dtype, layout, device):
    # Norms near 1 so every mode's branches (norm above and below center) are hit.
    g = torch.randn(shape, dtype=torch.float64, device=device)
    g = g / g.flatten(1).norm(dim=1).view(-1, *([1] * (len(shape) - 1)))
    g = g * (0.5 + torch.rand(shape[0], dtype=torch.float64, device=device)).view(-1, *([1] * (len(shape) - 1)))
    return make_layout(g.to(dtype), layout)


def _run(impl, g, center, mode, upstream):
    # A clone keeps a dense layout, but not a strided view's or the "offset" layout's.
    dense = g.is_contiguous() or g.is_contiguous(memory_format=torch.channels_last)
    x = g.detach().clone(memory_format=torch.preserve_format) if dense and g.storage_offset() == 0 else g.detach()
    x.requires_grad_(True)
    per = pg.gradient_norm_penalty(x, center=center, mode=mode, reduction="none", impl=impl)
    (per * upstream).sum().backward()
    return per.detach(), x.grad


@pytest.mark.parametrize("impl,device", IMPLS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference(impl, device, shape, dtype, layout):
    g = _grad_input(shape, dtype, layout, device)
    upstream = torch.randn(shape[0], dtype=gnp.acc_dtype(dtype), device=device)
    for mode, center in (("two_sided", 1.0), ("one_sided", 1.0), ("zero_centered", 0.0)):
        per, grad = _run(impl, g, center, mode, upstream)
        ref_per, ref_grad = _run("reference", g, center, mode, upstream)
        assert per.dtype == gnp.acc_dtype(dtype) and per.shape == (shape[0],)
        torch.testing.assert_close(per, ref_per, **tol(dtype))
        assert grad.dtype == dtype and grad.shape == g.shape
        torch.testing.assert_close(grad, ref_grad, **tol(dtype))
    if layout == "channels_last" and len(shape) == 4:
        # Dense layouts are kept: the kernels walk flat memory, no copy.
        assert grad.stride() == g.stride()


@pytest.mark.parametrize("impl,device", IMPLS + [pytest.param("reference", "cpu")])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zero_gradient_is_finite(impl, device, mode, dtype):
    # The one test on zeros: a zero gradient is the case under test.
    g = torch.zeros(3, 2, 5, 5, dtype=dtype, device=device, requires_grad=True)
    p = pg.gradient_norm_penalty(g, mode=mode, impl=impl)
    p.backward()
    assert torch.isfinite(p) and torch.isfinite(g.grad).all()
    assert p.item() == (0.0 if mode != "two_sided" else 1.0)
    assert (g.grad == 0).all()


@pytest.mark.parametrize("impl,device", IMPLS + [pytest.param("reference", "cpu")])
def test_reductions(impl, device):
    g = torch.randn(4, 3, 6, 5, device=device)
    per = pg.gradient_norm_penalty(g, reduction="none", impl=impl)
    torch.testing.assert_close(pg.gradient_norm_penalty(g, reduction="mean", impl=impl), per.mean())
    torch.testing.assert_close(pg.gradient_norm_penalty(g, reduction="sum", impl=impl), per.sum())
    torch.testing.assert_close(pg.gradient_norm_penalty(g, center=0.5, reduction="none", impl=impl),
                               (g.flatten(1).norm(dim=1) - 0.5) ** 2)


@pytest.mark.parametrize("impl,device", IMPLS + [pytest.param("reference", "cpu")])
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_float64(impl, device, mode):
    g = _grad_input((2, 3, 4), torch.float64, "contiguous", device).requires_grad_(True)
    fn = lambda x: pg.gradient_norm_penalty(x, center=0.9, mode=mode, reduction="none", impl=impl)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (g,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("impl,device", IMPLS + [pytest.param("reference", "cpu")])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_gives_a_non_finite_penalty(impl, device, mode, bad):
    """A NaN or inf in one sample's gradient makes that sample's penalty non-finite in every
    mode (one-sided included: max(NaN - c, 0) is NaN in the reference and the CPU kernel, and a
    kernel that turned it into 0 would hide a broken step from the trainer's skip), and leaves
    the other samples' penalties as the reference computes them."""
    g = _grad_input((3, 2, 5, 7), torch.float32, "contiguous", device)
    g[1, 1, 2, 3] = bad
    center = 0.0 if mode == "zero_centered" else 1.0
    per = pg.gradient_norm_penalty(g, center=center, mode=mode, reduction="none", impl=impl)
    ref = pg.gradient_norm_penalty(g, center=center, mode=mode, reduction="none", impl="reference")
    assert not torch.isfinite(per[1]), per
    assert torch.isnan(per[1]) == torch.isnan(ref[1])
    torch.testing.assert_close(per[[0, 2]], ref[[0, 2]], **tol(torch.float32))
    assert not torch.isfinite(pg.gradient_norm_penalty(g, center=center, mode=mode, impl=impl))


@pytest.fixture
def gpu_scalar_typing(monkeypatch):
    """Make Triton's interpreter type a Python float argument as compiled Triton does (fp32:
    ``triton.runtime.jit.mangle_type(0.1) == "fp32"``); by default it keeps the float exact,
    which would hide a kernel that receives an fp64 constant as a float argument."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import numpy as np
    from triton.runtime import interpreter

    plain = interpreter._implicit_cvt

    def as_compiled(arg):
        if isinstance(arg, float):
            import triton.language as tl

            return tl.tensor(interpreter.TensorHandle(np.array([arg], dtype=np.float32), tl.float32), tl.float32)
        return plain(arg)

    monkeypatch.setattr(interpreter, "_implicit_cvt", as_compiled)


@pytest.mark.parametrize("impl,device", IMPLS + [pytest.param("reference", "cpu")])
@pytest.mark.parametrize("mode", ["two_sided", "one_sided"])
def test_center_keeps_float64_precision(impl, device, mode, gpu_scalar_typing):
    """fp64 gradients get an fp64 center: 0.1 is not an fp32 number (fp32 rounds it by
    1.5e-9), and with norms 1e-7 above it an fp32 center would be off by ~1% in (norm - c)."""
    center = 0.1
    g = _grad_input((4, 3, 5), torch.float64, "contiguous", device)
    g = g / g.flatten(1).norm(dim=1).view(-1, 1, 1) * (center + torch.tensor([1e-7, 3e-7, 2e-6, 5e-7],
                                                                            dtype=torch.float64, device=device)
                                                        ).view(-1, 1, 1)
    upstream = torch.randn(4, dtype=torch.float64, device=device)
    per, grad = _run(impl, g, center, mode, upstream)
    ref_per, ref_grad = _run("reference", g, center, mode, upstream)
    assert (ref_per > 0).all()
    torch.testing.assert_close(per, ref_per, atol=0, rtol=1e-6)
    torch.testing.assert_close(grad, ref_grad, atol=0, rtol=1e-6)


@pytest.mark.skipif(not HAS_NATIVE, reason="native library not built")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_opcheck_native(layout, dtype):
    ops = gnp.native_ops()
    g = _grad_input((3, 4, 5, 6), dtype, layout, "cpu").requires_grad_(True)
    torch.library.opcheck(ops.gradient_norm_penalty, (g, 1.0, "two_sided"))
    norm = g.detach().flatten(1).float().norm(dim=1).to(gnp.acc_dtype(dtype))
    gp = torch.randn(3, dtype=gnp.acc_dtype(dtype))
    torch.library.opcheck(ops.gradient_norm_penalty_backward, (gp, g.detach(), norm, 1.0, "one_sided"))


@pytest.mark.parametrize("impl,device", [TRITON])
def test_opcheck_triton(impl, device):
    tk = gnp.triton_ops()
    g = _grad_input((2, 3, 4, 5), torch.float32, "channels_last", device).requires_grad_(True)
    # Under TRITON_INTERPRET=1 the interpreter touches data pointers, which fake
    # tensors do not have; the fake-tensor check runs where a GPU is present.
    utils = ("test_schema", "test_autograd_registration")
    if g.is_cuda:
        utils += ("test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(tk.gradient_norm_penalty, (g, 1.0, "two_sided"), test_utils=utils)


@pytest.mark.skipif(not HAS_NATIVE, reason="native library not built")
def test_torch_compile_fullgraph_cpu():
    def loss(x):
        return pg.gradient_norm_penalty(x, mode="two_sided", impl="cpu") * 3.0

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    for shape in [(4, 3, 5, 6), (2, 11)]:
        g = torch.randn(shape, requires_grad=True)
        g2 = g.detach().clone().requires_grad_(True)
        out = compiled(g)
        out.backward()
        ref = loss(g2)
        ref.backward()
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(g.grad, g2.grad)


def test_errors():
    g = torch.randn(3, 4)
    with pytest.raises(ValueError, match="grad must be a tensor"):
        pg.gradient_norm_penalty([1.0, 2.0])
    with pytest.raises(ValueError, match=r"grad must have a batch dim and at least one more dim"):
        pg.gradient_norm_penalty(torch.randn(5))
    with pytest.raises(ValueError, match=r"grad has an empty batch"):
        pg.gradient_norm_penalty(torch.randn(0, 3))
    with pytest.raises(ValueError, match="grad must be a floating-point tensor"):
        pg.gradient_norm_penalty(torch.randint(0, 3, (3, 4)))
    with pytest.raises(ValueError, match="center must be a finite number"):
        pg.gradient_norm_penalty(g, center=float("nan"))
    with pytest.raises(ValueError, match="center must be a finite number"):
        pg.gradient_norm_penalty(g, center=-1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        pg.gradient_norm_penalty(g, mode="two-sided")
    with pytest.raises(ValueError, match="reduction must be one of"):
        pg.gradient_norm_penalty(g, reduction="avg")
    with pytest.raises(ValueError, match="impl must be one of"):
        pg.gradient_norm_penalty(g, impl="fast")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_unavailable_impl_raises():
    with pytest.raises(RuntimeError, match="impl='cuda' needs CUDA tensors"):
        pg.gradient_norm_penalty(torch.randn(2, 3), impl="cuda")


@pytest.mark.skipif(not HAS_NATIVE, reason="native library not built")
def test_native_checks_name_arguments():
    ops = gnp.native_ops()
    g = torch.randn(3, 4)
    with pytest.raises(ValueError, match="mode"):
        ops.gradient_norm_penalty(g, 1.0, "both")
    with pytest.raises(ValueError, match="grad_penalty"):
        ops.gradient_norm_penalty_backward(torch.randn(2), g, torch.rand(3), 1.0, "two_sided")
    with pytest.raises(ValueError, match="norm"):
        ops.gradient_norm_penalty_backward(torch.randn(3), g, torch.rand(3, dtype=torch.float64), 1.0, "two_sided")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_NATIVE, reason="native library not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_kernel_bitwise_equals_cpu_kernel(dtype, layout):
    """Both kernels round the norm's sqrt, the penalty and the backward's coefficient and
    products as the reference does (IEEE sqrt and division, one rounding per operation; the
    CUDA build's --use_fast_math is overridden by _rn intrinsics), so they agree bit for bit
    wherever they start from the same sums of squares. The sums are added in different orders
    (AVX2 lanes vs warp shuffles), so the forward's inputs are multiples of 1/16 in [-1/2, 1/2],
    whose sums of squares are exact in fp32 in any order; the backward gets the same norm."""
    ops = gnp.native_ops()
    gen = torch.Generator().manual_seed(3)
    acc = gnp.acc_dtype(dtype)
    for shape in SHAPES + [(3, 70000)]:  # 70000: several CUDA blocks per sample
        g = (torch.randint(-8, 9, shape, generator=gen) / 16).to(dtype)
        g_cpu, g_cuda = make_layout(g, layout), make_layout(g.cuda(), layout)
        for mode, center in (("two_sided", 1.0), ("one_sided", 0.7), ("zero_centered", 0.0)):
            pen_cpu, norm_cpu = ops.gradient_norm_penalty(g_cpu, center, mode)
            pen_cuda, norm_cuda = ops.gradient_norm_penalty(g_cuda, center, mode)
            assert torch.equal(norm_cuda.cpu(), norm_cpu), (shape, mode)
            assert torch.equal(pen_cuda.cpu(), pen_cpu), (shape, mode)
            x = make_layout(torch.randn(shape, generator=gen).to(dtype), layout)
            gp = torch.randn(shape[0], generator=gen).to(acc)
            norm = norm_cpu.clone()
            norm[0] = 0.0  # the safe division's branch
            gi_cpu = ops.gradient_norm_penalty_backward(gp, x, norm, center, mode)
            gi_cuda = ops.gradient_norm_penalty_backward(gp.cuda(), make_layout(x.cuda(), layout), norm.cuda(), center,
                                                         mode)
            assert torch.equal(gi_cuda.cpu(), gi_cpu), (shape, mode)


@pytest.mark.cuda
@pytest.mark.parametrize("impl,device", [TRITON, impl_param("cuda", gnp)])
def test_a_sample_larger_than_a_2d_grid_axis(impl, device):
    """One sample of 65,535 x 2,048 + 7 elements: more chunks than a second grid axis holds
    (65,535), which the Triton kernels' old 2-D grid could not launch."""
    g = torch.randn(1, 65535 * 2048 + 7, device=device)
    g.requires_grad_(True)
    per = pg.gradient_norm_penalty(g, center=1.0, reduction="none", impl=impl)
    per.sum().backward()
    norm = g.detach().double().norm()
    torch.testing.assert_close(per.double(), (norm - 1) ** 2 * torch.ones(1, device=device, dtype=torch.float64),
                               rtol=1e-4, atol=0)
    torch.testing.assert_close(g.grad, (2 * (norm - 1) / norm).float() * g.detach(), rtol=1e-4, atol=1e-6)
