"""interpolate: every impl against the reference; random alphas; errors."""
import pytest
import torch

import pyfast_gan as pg
from pyfast_gan import _native
from pyfast_gan.ops import interpolate as interp
from pyfast_gan.ops._dispatch import triton_available
from pyfast_gan.testing import impl_device, impl_param, make_layout, tol

HAS_NATIVE = _native.load(interp.FAMILY)
HAS_TRITON = triton_available(torch.device(impl_device("triton")))[0]
TRITON_DEVICE = impl_device("triton")
IMPLS = [impl_param("cpu", interp), impl_param("triton", interp), impl_param("cuda", interp)]
SHAPES = [(1, 3, 4, 5), (5, 3, 7, 9), (3, 17), (2, 3, 50, 60)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LAYOUTS = ["contiguous", "channels_last", "strided", "offset"]


def _inputs(shape, dtype, layout, device):
    real = make_layout(torch.randn(shape, device=device).to(dtype), layout)
    fake = make_layout(torch.randn(shape, device=device).to(dtype), layout)
    alpha = torch.rand(shape[0], device=device, dtype=interp.alpha_dtype(dtype))
    return real, fake, alpha


def _fwd_bwd(impl, real, fake, alpha, upstream):
    r = real.detach().requires_grad_(True)
    f = fake.detach().requires_grad_(True)
    x, a = pg.interpolate(r, f, alpha, impl=impl)
    (x.float() * upstream).sum().backward()
    return x.detach(), a, r.grad, f.grad


@pytest.mark.parametrize("impl,device", IMPLS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference(impl, device, shape, dtype, layout):
    real, fake, alpha = _inputs(shape, dtype, layout, device)
    upstream = torch.randn(shape, device=device)
    x, a, gr, gf = _fwd_bwd(impl, real, fake, alpha, upstream)
    rx, ra, rgr, rgf = _fwd_bwd("reference", real, fake, alpha, upstream)
    assert x.dtype == dtype and x.shape == real.shape
    torch.testing.assert_close(a, alpha, rtol=0, atol=0)
    torch.testing.assert_close(x, rx, **tol(dtype))
    torch.testing.assert_close(gr, rgr, **tol(dtype))
    torch.testing.assert_close(gf, rgf, **tol(dtype))
    if layout == "channels_last" and len(shape) == 4:
        assert x.stride() == real.stride()  # the layout is kept, no copy


@pytest.mark.parametrize("impl,device", IMPLS)
def test_mixed_layouts(impl, device):
    real, _, alpha = _inputs((3, 4, 5, 6), torch.float32, "channels_last", device)
    _, fake, _ = _inputs((3, 4, 5, 6), torch.float32, "strided", device)
    x, _ = pg.interpolate(real, fake, alpha, impl=impl)
    torch.testing.assert_close(x, interp.reference(real, fake, alpha), **tol(torch.float32))


@pytest.mark.parametrize("impl,device", IMPLS + [pytest.param("reference", "cpu")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_alpha(impl, device, dtype):
    real, fake, _ = _inputs((64, 2, 3, 3), dtype, "contiguous", device)
    x, a = pg.interpolate(real, fake, impl=impl)
    assert a.shape == (64,) and a.dtype == torch.float32
    assert (a >= 0).all() and (a <= 1).all()
    assert a.unique().numel() == 64  # one alpha per sample, not one per batch
    assert 0.25 < a.mean().item() < 0.75
    torch.testing.assert_close(x, interp.reference(real, fake, a), **tol(dtype))
    # The same generator seed draws the same alphas (per impl).
    g1 = torch.Generator(device=device).manual_seed(7)
    g2 = torch.Generator(device=device).manual_seed(7)
    _, a1 = pg.interpolate(real, fake, generator=g1, impl=impl)
    _, a2 = pg.interpolate(real, fake, generator=g2, impl=impl)
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)


@pytest.mark.skipif(not (HAS_NATIVE and HAS_TRITON and TRITON_DEVICE == "cpu"), reason="needs both CPU impls")
def test_in_kernel_philox_matches_triton():
    # csrc/cpu and csrc/cuda implement Triton's tl.rand stream; checking the C++ copy
    # against Triton here checks the CUDA copy's algorithm on a host without a GPU.
    real, fake, _ = _inputs((37, 3, 5), torch.float32, "contiguous", "cpu")
    seed = torch.randint(0, 2**62, (1,), dtype=torch.int64)
    x_c, a_c = interp.native_ops().interpolate_rand(real, fake, seed)
    x_t, a_t = interp.triton_ops().interpolate_rand(real, fake, seed)
    torch.testing.assert_close(a_c, a_t, rtol=0, atol=0)
    torch.testing.assert_close(x_c, x_t, **tol(torch.float32))
    torch.testing.assert_close(x_c, interp.reference(real, fake, a_c), **tol(torch.float32))


@pytest.mark.parametrize("impl,device", IMPLS + [pytest.param("reference", "cpu")])
def test_alpha_shapes_accepted(impl, device):
    real, fake, alpha = _inputs((4, 3, 2, 2), torch.float32, "contiguous", device)
    x1, a1 = pg.interpolate(real, fake, alpha.view(4, 1, 1, 1), impl=impl)
    x2, a2 = pg.interpolate(real, fake, alpha.double(), impl=impl)
    torch.testing.assert_close(x1, interp.reference(real, fake, alpha))
    torch.testing.assert_close(x2, x1)
    assert a1.shape == a2.shape == (4,)


@pytest.mark.parametrize("impl,device", IMPLS + [pytest.param("reference", "cpu")])
def test_gradcheck_float64(impl, device):
    real, fake, alpha = _inputs((3, 2, 5), torch.float64, "contiguous", device)
    fn = lambda r, f: pg.interpolate(r, f, alpha, impl=impl)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (real.requires_grad_(True), fake.requires_grad_(True)))


@pytest.mark.skipif(not HAS_NATIVE, reason="native library not built")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_native(layout, dtype):
    ops = interp.native_ops()
    real, fake, alpha = _inputs((3, 4, 5, 6), dtype, layout, "cpu")
    real.requires_grad_(True)
    fake.requires_grad_(True)
    torch.library.opcheck(ops.interpolate, (real, fake, alpha))
    torch.library.opcheck(ops.interpolate_rand, (real, fake, torch.tensor([1234])))
    torch.library.opcheck(ops.interpolate_backward, (torch.randn_like(real), alpha))


@pytest.mark.skipif(not HAS_NATIVE, reason="native library not built")
def test_torch_compile_fullgraph_cpu():
    def fn(r, f, a):
        x, _ = pg.interpolate(r, f, a, impl="cpu")
        return (x * x).sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    real, fake, alpha = _inputs((4, 3, 5, 6), torch.float32, "contiguous", "cpu")
    r1, f1 = real.clone().requires_grad_(True), fake.clone().requires_grad_(True)
    r2, f2 = real.clone().requires_grad_(True), fake.clone().requires_grad_(True)
    out = compiled(r1, f1, alpha)
    out.backward()
    ref = fn(r2, f2, alpha)
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(r1.grad, r2.grad)
    torch.testing.assert_close(f1.grad, f2.grad)


def test_errors():
    r = torch.randn(4, 3)
    with pytest.raises(ValueError, match="real must be a tensor"):
        pg.interpolate(None, r)
    with pytest.raises(ValueError, match="fake must be a tensor"):
        pg.interpolate(r, 3.0)
    with pytest.raises(ValueError, match="real must have a batch dim"):
        pg.interpolate(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match="real has an empty batch"):
        pg.interpolate(torch.randn(0, 3), torch.randn(0, 3))
    with pytest.raises(ValueError, match="real must be a floating-point tensor"):
        pg.interpolate(torch.ones(4, 3, dtype=torch.int64), torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"fake must have the shape of real \(4, 3\)"):
        pg.interpolate(r, torch.randn(4, 2))
    with pytest.raises(ValueError, match="fake must have the dtype of real"):
        pg.interpolate(r, r.double())
    with pytest.raises(ValueError, match="fake must be on the device of real"):
        pg.interpolate(r, torch.empty(4, 3, device="meta"))
    with pytest.raises(ValueError, match="alpha must have one value per sample"):
        pg.interpolate(r, r, torch.rand(3))
    with pytest.raises(ValueError, match="alpha must have one value per sample"):
        pg.interpolate(r, r, torch.rand(4, 3))
    with pytest.raises(ValueError, match="alpha must have one value per sample"):
        pg.interpolate(r, r, torch.tensor(0.5))
    with pytest.raises(ValueError, match="alpha must be a tensor"):
        pg.interpolate(r, r, 0.5)
    with pytest.raises(ValueError, match="alpha must be a floating-point tensor"):
        pg.interpolate(r, r, torch.ones(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="alpha must be on the device of real"):
        pg.interpolate(r, r, torch.empty(4, device="meta"))
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        pg.interpolate(r, r, generator=7)
    with pytest.raises(ValueError, match="impl must be one of"):
        pg.interpolate(r, r, impl="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_unavailable_impl_raises():
    with pytest.raises(RuntimeError, match="impl='cuda' needs CUDA tensors"):
        pg.interpolate(torch.randn(2, 3), torch.randn(2, 3), impl="cuda")


@pytest.mark.skipif(not HAS_NATIVE, reason="native library not built")
def test_native_checks_name_arguments():
    ops = interp.native_ops()
    r = torch.randn(4, 3)
    with pytest.raises(ValueError, match="alpha"):
        ops.interpolate(r, r, torch.rand(3))
    with pytest.raises(ValueError, match="alpha"):
        ops.interpolate(r, r, torch.rand(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="fake"):
        ops.interpolate(r, torch.randn(4, 2), torch.rand(4))
    with pytest.raises(ValueError, match="seed"):
        ops.interpolate_rand(r, r, torch.tensor([1.0]))


@pytest.mark.parametrize("impl,device", IMPLS + [pytest.param("reference", "cpu")])
def test_x_hat_requires_grad_only_through_its_inputs(impl, device):
    # What the README states: x_hat is not a leaf made for the penalty, alpha is a constant.
    real, fake, alpha = _inputs((3, 2, 4), torch.float32, "contiguous", device)
    for a in (None, alpha.clone().requires_grad_(True)):
        x, out_alpha = pg.interpolate(real, fake, a, impl=impl)
        assert not x.requires_grad and not out_alpha.requires_grad
        x, out_alpha = pg.interpolate(real, fake.clone().requires_grad_(True), a, impl=impl)
        assert x.requires_grad and not x.is_leaf and not out_alpha.requires_grad
        with torch.no_grad():
            assert not pg.interpolate(real.clone().requires_grad_(True), fake, a, impl=impl)[0].requires_grad


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_NATIVE, reason="native library not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_kernel_bitwise_equals_cpu_kernel(dtype, layout):
    """With alpha given, both kernels compute a*real + (1-a)*fake as the reference rounds it
    (two products and a sum, no FMA: the CUDA build's --use_fast_math contraction is
    overridden by _rn intrinsics), and the backward as two products: bit for bit equal."""
    ops = interp.native_ops()
    gen = torch.Generator().manual_seed(5)
    for shape in SHAPES + [(3, 20000)]:  # 20000: several CUDA blocks per sample
        real, fake, g = (torch.randn(shape, generator=gen).to(dtype) for _ in range(3))
        alpha = torch.rand(shape[0], generator=gen, dtype=interp.alpha_dtype(dtype))
        on_cpu = [make_layout(t, layout) for t in (real, fake, g)]
        on_cuda = [make_layout(t.cuda(), layout) for t in (real, fake, g)]
        assert torch.equal(ops.interpolate(*on_cuda[:2], alpha.cuda()).cpu(), ops.interpolate(*on_cpu[:2], alpha))
        for a, b in zip(ops.interpolate_backward(on_cuda[2], alpha.cuda()), ops.interpolate_backward(on_cpu[2], alpha)):
            assert torch.equal(a.cpu(), b), shape


def test_readme_example(readme_example, capsys):
    ns = {}
    exec(readme_example("pyfast_gan.interpolate("), ns)
    assert capsys.readouterr().out.startswith("torch.Size([8]) False")
    assert ns["x_hat"].is_leaf and ns["x_hat"].requires_grad


@pytest.mark.cuda
@pytest.mark.parametrize("impl,device", [impl_param("triton", interp), impl_param("cuda", interp)])
def test_a_sample_larger_than_a_2d_grid_axis(impl, device):
    """One sample of 65,535 x 2,048 + 7 elements: more chunks than a second grid axis holds."""
    real = torch.randn(2, 65535 * 2048 + 7, device=device)
    fake = torch.randn_like(real)
    alpha = torch.rand(2, device=device)
    x, _ = pg.interpolate(real, fake, alpha, impl=impl)
    want, _ = pg.interpolate(real, fake, alpha, impl="reference")
    torch.testing.assert_close(x, want, **tol(torch.float32))
