"""RMSpropClip against torch.optim.RMSprop.step() followed by a clamp_ loop."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from pyfast_gan import _native
from pyfast_gan.optim import RMSpropClip
from pyfast_gan.ops import rmsprop_clip as rmsprop_clip_ops
from pyfast_gan.testing import impl_param, make_layout, tol

C = 0.01
needs_native = pytest.mark.skipif(not _native.load(rmsprop_clip_ops.FAMILY), reason="pyfast_gan/_C_clip not built")
DEVICE_IMPLS = [impl_param("cuda", rmsprop_clip_ops), impl_param("triton", rmsprop_clip_ops)]
IMPLS_HERE = [pytest.param("cpu", marks=needs_native), "reference"]

HYPERS = [
    dict(lr=5e-5),  # WGAN's Algorithm 1
    dict(lr=2e-3),
    dict(lr=1e-3, momentum=0.9, centered=True, weight_decay=1e-2),
    dict(lr=1e-3, alpha=0.3, centered=True),  # lerp weight >= 0.5: torch's other branch
    dict(lr=1e-3, momentum=0.5, maximize=True),
]


class TinyCritic(nn.Module):
    """A small DCGAN critic: stride-2 4x4 convs, BatchNorm in the middle, LeakyReLU."""

    def __init__(self, ch=3, base=8):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(ch, base, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(base, 2 * base, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * base), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * base, 1, 4, 1, 0),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x).flatten()


def wgan_critic_loss(critic, real, fake):
    return critic(fake).mean() - critic(real).mean()


def clamp_all(params, c=C):
    with torch.no_grad():
        for p in params:
            p.clamp_(-c, c)


def assert_close_lists(a, b, dtype=torch.float32, **kw):
    t = tol(dtype) | kw
    for i, (x, y) in enumerate(zip(a, b)):
        torch.testing.assert_close(x, y, msg=lambda m: f"tensor {i}: {m}", **t)


def forced_step(model, opt, other, other_opt, real, fake):
    """Step both optimizers with ``model``'s gradients."""
    opt.zero_grad()
    wgan_critic_loss(model, real, fake).backward()
    for p, q in zip(other.parameters(), model.parameters()):
        p.grad = q.grad.clone(memory_format=torch.preserve_format)
    opt.step()
    other_opt.step()


def _batches(n, gen, size=16):
    return [(torch.randn(4, 3, size, size, generator=gen), torch.randn(4, 3, size, size, generator=gen))
            for _ in range(n)]


@pytest.fixture
def one_thread():
    # Tiny convs on a shared 2-core host run ~20x slower with 2 intra-op threads.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("hyper", HYPERS, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
@pytest.mark.parametrize("impl", IMPLS_HERE)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_100_steps_of_a_critic_match_rmsprop_plus_clamp(hyper, impl, layout, one_thread):
    """WGAN's settings: two critics trained side by side for 100 steps, each on its own
    gradients. Larger learning rates make training chaotic (RMSprop's first steps move a
    weight by ~10*lr whatever the gradient's size, so an ulp of difference in a sqrt
    flips later gradients), so there both critics get the reference critic's gradients
    and only the optimizers are compared, still over 100 steps with no re-syncing."""
    free_running = hyper == HYPERS[0]
    gen = torch.Generator().manual_seed(1234)
    torch.manual_seed(5)
    ours = TinyCritic()
    if layout == "channels_last":
        ours = ours.to(memory_format=torch.channels_last)
    theirs = copy.deepcopy(ours)
    opt = RMSpropClip(ours.parameters(), clip_value=C, impl=impl, **hyper)
    ref = torch.optim.RMSprop(theirs.parameters(), foreach=False, **hyper)
    clamp_all(ours.parameters())
    clamp_all(theirs.parameters())
    for step, (real, fake) in enumerate(_batches(100, gen)):
        if layout == "channels_last":
            real, fake = real.contiguous(memory_format=torch.channels_last), fake.contiguous(
                memory_format=torch.channels_last)
        models = ((ours, opt), (theirs, ref)) if free_running else ((theirs, ref),)
        for model, o in models:
            o.zero_grad(set_to_none=True)
            wgan_critic_loss(model, real, fake).backward()
        if not free_running:
            for p, q in zip(ours.parameters(), theirs.parameters()):
                p.grad = q.grad.clone(memory_format=torch.preserve_format)
        opt.step()
        ref.step()
        clamp_all(theirs.parameters())
        if step % 25 == 24:
            assert_close_lists(list(ours.parameters()), list(theirs.parameters()))
    assert not opt.last_step_skipped and opt.skipped_steps == 0
    assert max(p.abs().max().item() for p in ours.parameters()) <= C
    # The clamp is active (weights sit on the bounds) and the weights moved.
    assert sum((p.abs() == torch.tensor(C, dtype=p.dtype)).sum().item() for p in ours.parameters()) > 0
    for p, q in zip(ours.parameters(), theirs.parameters()):
        sa, sb = opt.state[p], ref.state[q]
        assert set(sa) == set(sb)
        assert sa["step"].item() == sb["step"].item() == 100 and sa["step"].dtype == sb["step"].dtype
        for k in sa:
            if k != "step":
                torch.testing.assert_close(sa[k], sb[k], **tol(torch.float32))


def _random_lists(dtype, shapes, gen, centered, momentum):
    def r(s, scale=1.0):
        return (torch.randn(s, generator=gen) * scale).to(dtype)

    params = [r(s, 0.02) for s in shapes]
    ga = [r(s, 0.01) for s in shapes] if centered else []
    # A reachable state: square_avg >= grad_avg**2 (else the centered variance is negative
    # and both sides return NaN wherever rounding decides the sign).
    sq = [(r(s).abs() * 0.01 + (ga[i].float() ** 2 if centered else 0)).to(dtype) for i, s in enumerate(shapes)]
    mb = [r(s, 0.1) for s in shapes] if momentum else []
    return params, sq, ga, mb


SHAPES = [(), (1,), (5, 3, 7, 9), (33,), (2, 40000 + 3)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl,device", [impl_param("cpu", rmsprop_clip_ops)] + DEVICE_IMPLS)
@pytest.mark.parametrize("centered,momentum", [(False, 0.0), (True, 0.9)])
@pytest.mark.parametrize("layout", ["contiguous", "offset"])
def test_kernel_matches_reference_per_dtype(dtype, impl, device, centered, momentum, layout):
    """10 steps of the op on fixed random grads, every state tensor compared; "offset": every
    tensor starts one element into its storage (unaligned: the kernels' scalar path). The
    reference runs on the same device (torch's own kernels there)."""
    interpreted = impl == "triton" and device == "cpu"
    if impl == "triton":
        from pyfast_gan.kernels.triton import rmsprop_clip as triton_mod
    gen = torch.Generator().manual_seed(17 * DTYPES.index(dtype) + 3 * int(centered) + (impl == "cpu"))
    shapes = SHAPES[:4] + [(700,)] if interpreted else SHAPES
    params, sq, ga, mb = (
        [t.to(device) for t in lst] for lst in _random_lists(dtype, shapes, gen, centered, momentum))
    mine = [[make_layout(t.clone(), layout) for t in lst] for lst in (params, sq, ga, mb)]
    exact = [[t.to(torch.float64, copy=True) for t in lst] for lst in (params, sq, ga, mb)]
    hyper = dict(lr=1e-3, alpha=0.9, eps=1e-8, weight_decay=0.01, momentum=momentum, centered=centered,
                 maximize=False, clip_value=C)
    for _ in range(10):
        grads = [make_layout(torch.randn(s, generator=gen).to(dtype).to(device), layout) for s in shapes]
        rmsprop_clip_ops.reference(params, grads, sq, ga, mb, **hyper)
        rmsprop_clip_ops.reference(exact[0], [g.double() for g in grads], *exact[1:], **hyper)
        if impl == "triton":
            triton_mod.triton_rmsprop_clip_(mine[0], grads, mine[1], mine[2], mine[3], **hyper)
        else:
            torch.ops.pyfast_gan.rmsprop_clip_(mine[0], grads, mine[1], mine[2], mine[3], hyper["lr"], hyper["alpha"],
                                               hyper["eps"], hyper["weight_decay"], momentum, centered, False, C)
    for ours, theirs, ref64 in zip(mine, (params, sq, ga, mb), exact):
        if dtype in (torch.float32, torch.float64):
            assert_close_lists(ours, theirs, dtype)
            continue
        # fp16/bf16: torch keeps the state in the parameter dtype too, and an ulp of
        # difference in a sqrt (torch's CPU sqrt is not correctly rounded) can grow over
        # steps where the centered variance is small. Flash-attention's criterion: our
        # error against an fp64 run is at most twice torch's own low-precision error.
        for i, (a, b, r) in enumerate(zip(ours, theirs, ref64)):
            err_ours = (a.double() - r).abs().max().item()
            err_torch = (b.double() - r).abs().max().item()
            assert err_ours <= 2 * err_torch + tol(dtype)["atol"], (i, err_ours, err_torch)
            # ... and all but a few elements (where a sign or ulp flipped) match torch.
            t = tol(dtype)
            off = ~torch.isclose(a, b, atol=t["atol"], rtol=t["rtol"], equal_nan=True)
            assert off.sum().item() <= max(1, a.numel() // 1000), (i, off.sum().item(), a.numel())


@needs_native
def test_rmsprop_state_dict_loads_into_rmsprop_clip_and_continues(one_thread):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    base = TinyCritic()
    hyper = dict(lr=1e-3, momentum=0.9, centered=True)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    ra = torch.optim.RMSprop(a.parameters(), **hyper)
    batches = _batches(10, gen)
    for real, fake in batches[:5]:
        ra.zero_grad()
        wgan_critic_loss(a, real, fake).backward()
        ra.step()
        clamp_all(a.parameters())
    b.load_state_dict(a.state_dict())
    ours = RMSpropClip(b.parameters(), lr=0.5, clip_value=C)  # lr is taken from the checkpoint
    ours.load_state_dict(copy.deepcopy(ra.state_dict()))  # as a checkpoint would: no shared buffers
    g = ours.param_groups[0]
    assert g["lr"] == 1e-3 and g["centered"] and g["momentum"] == 0.9
    assert g["clip_value"] == C and g["skip_nonfinite"] is True and g["impl"] == "auto"
    # impl is this process's choice, never taken from a checkpoint.
    other = RMSpropClip(b.parameters(), impl="reference")
    other.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert other.param_groups[0]["impl"] == "reference" and other.param_groups[0]["lr"] == 1e-3
    assert all(torch.is_tensor(ours.state[p]["step"]) for p in b.parameters())
    for real, fake in batches[5:]:
        # Both optimizers get critic a's gradients (see the 100-step test on chaos).
        forced_step(a, ra, b, ours, real, fake)
        clamp_all(a.parameters())
    assert_close_lists(list(b.parameters()), list(a.parameters()))
    assert ours.state[next(b.parameters())]["step"].item() == 10


@needs_native
def test_rmsprop_clip_state_dict_loads_into_rmsprop_and_continues(one_thread):
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(2)
    base = TinyCritic()
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    ours = RMSpropClip(a.parameters(), lr=1e-3, momentum=0.5, clip_value=C)
    batches = _batches(10, gen)
    for real, fake in batches[:5]:
        ours.zero_grad()
        wgan_critic_loss(a, real, fake).backward()
        ours.step()
    sd = copy.deepcopy(ours.state_dict())
    b.load_state_dict(a.state_dict())
    theirs = torch.optim.RMSprop(b.parameters(), lr=0.5)
    theirs.load_state_dict(sd)
    assert theirs.param_groups[0]["lr"] == 1e-3 and theirs.param_groups[0]["momentum"] == 0.5
    for real, fake in batches[5:]:
        forced_step(b, theirs, a, ours, real, fake)
        clamp_all(b.parameters())
    assert_close_lists(list(a.parameters()), list(b.parameters()))
    for p, q in zip(a.parameters(), b.parameters()):
        assert set(ours.state[p]) == set(theirs.state[q]) == {"step", "square_avg", "momentum_buffer"}
        torch.testing.assert_close(ours.state[p]["momentum_buffer"], theirs.state[q]["momentum_buffer"],
                                   **tol(torch.float32))


@pytest.mark.parametrize("impl", IMPLS_HERE)
@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -float("inf")])
def test_nonfinite_grad_skips_the_whole_step(impl, bad, one_thread):
    torch.manual_seed(3)
    net = TinyCritic()
    opt = RMSpropClip(net.parameters(), lr=1e-3, momentum=0.9, impl=impl)
    x = torch.randn(2, 3, 16, 16)
    net(x).sum().backward()
    opt.step()
    before_p = [p.detach().clone() for p in net.parameters()]
    before_s = copy.deepcopy(opt.state_dict()["state"])
    opt.zero_grad()
    net(x).sum().backward()
    last = list(net.parameters())[-1]
    last.grad.view(-1)[-1] = bad  # one element of one tensor
    assert opt.step() is None
    assert opt.last_step_skipped and opt.skipped_steps == 1
    for p, q in zip(net.parameters(), before_p):
        assert torch.equal(p, q)
    after_s = opt.state_dict()["state"]
    for k in before_s:
        for key in before_s[k]:
            assert torch.equal(before_s[k][key], after_s[k][key]), (k, key)
    # The next finite step goes through and clears the flag.
    last.grad.view(-1)[-1] = 0.5
    opt.step()
    assert not opt.last_step_skipped and opt.skipped_steps == 1
    assert opt.state[last]["step"].item() == 2
    assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), before_p))


@pytest.mark.parametrize("impl", IMPLS_HERE)
def test_skip_nonfinite_off_applies_the_step_like_torch(impl):
    p = nn.Parameter(torch.randn(50) * 0.02)
    q = nn.Parameter(p.detach().clone())
    g = torch.randn(50)
    g[3] = float("nan")
    g[7] = float("inf")
    p.grad, q.grad = g.clone(), g.clone()
    opt = RMSpropClip([p], lr=1e-3, skip_nonfinite=False, impl=impl)
    opt.step()
    torch.optim.RMSprop([q], lr=1e-3).step()
    clamp_all([q])
    assert not opt.last_step_skipped
    torch.testing.assert_close(p.detach(), q.detach(), equal_nan=True, **tol(torch.float32))
    assert torch.isnan(p[3]) and torch.isnan(p[7])  # inf/inf in the update is NaN, clamp keeps it


@needs_native
def test_non_dense_params_and_clip_none_and_closure():
    torch.manual_seed(4)
    big = torch.randn(6, 10) * 0.02
    p = nn.Parameter(big.clone()[:, ::3])  # a strided leaf: takes the reference path
    p_ref = nn.Parameter(p.detach().clone())
    d = nn.Parameter(torch.randn(7) * 0.02)
    d_ref = nn.Parameter(d.detach().clone())
    assert not p.is_contiguous()
    opt = RMSpropClip([{"params": [p]}, {"params": [d], "clip_value": None}], lr=1e-2)
    ref = torch.optim.RMSprop([p_ref, d_ref], lr=1e-2)
    for _ in range(3):
        g1, g2 = torch.randn(p.shape), torch.randn(7)
        p.grad, p_ref.grad, d.grad, d_ref.grad = g1.clone(), g1.clone(), g2.clone(), g2.clone()
        loss = opt.step(closure=lambda: torch.tensor(1.5))
        assert loss.item() == 1.5
        ref.step()
        clamp_all([p_ref])  # d has clip_value=None: no clamp
    torch.testing.assert_close(p.detach(), p_ref.detach(), **tol(torch.float32))
    torch.testing.assert_close(d.detach(), d_ref.detach(), **tol(torch.float32))
    assert d.abs().max() > C  # not clipped


def test_bad_arguments():
    params = [nn.Parameter(torch.randn(3))]
    for kw, name in [(dict(lr=-1), "lr"), (dict(eps=-1e-8), "eps"), (dict(momentum=-0.1), "momentum"),
                     (dict(alpha=-0.5), "alpha"), (dict(weight_decay=-1), "weight_decay"),
                     (dict(clip_value=0), "clip_value"), (dict(clip_value=-0.01), "clip_value"),
                     (dict(clip_value=math.inf), "clip_value"), (dict(impl="fast"), "impl"),
                     (dict(differentiable=True), "differentiable")]:
        with pytest.raises(ValueError, match=name):
            RMSpropClip(params, **kw)
    ip = torch.zeros(3, dtype=torch.int64)
    opt = RMSpropClip([nn.Parameter(torch.randn(3))])
    opt.param_groups[0]["params"].append(ip)
    ip.grad = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="floating"):
        opt.step()
    with pytest.raises(RuntimeError, match="impl='cuda'"):
        o = RMSpropClip([nn.Parameter(torch.randn(3))], impl="cuda")
        o.param_groups[0]["params"][0].grad = torch.randn(3)
        o.step()


@needs_native
def test_native_op_checks_its_arguments():
    op = torch.ops.pyfast_gan.rmsprop_clip_
    p, g, s = torch.randn(5), torch.randn(5), torch.rand(5)
    with pytest.raises(ValueError, match="grads"):
        op([p], [], [s], [], [], 1e-3, 0.99, 1e-8, 0.0, 0.0, False, False, C)
    with pytest.raises(ValueError, match="momentum_buffers"):
        op([p], [g], [s], [], [], 1e-3, 0.99, 1e-8, 0.0, 0.9, False, False, C)
    with pytest.raises(ValueError, match="square_avgs"):
        op([p], [g], [torch.rand(6)], [], [], 1e-3, 0.99, 1e-8, 0.0, 0.0, False, False, C)
    with pytest.raises(ValueError, match="grads"):
        op([p], [g.double()], [s], [], [], 1e-3, 0.99, 1e-8, 0.0, 0.0, False, False, C)


@needs_native
def test_opcheck():
    gen = torch.Generator().manual_seed(9)
    params, sq, ga, mb = _random_lists(torch.float32, [(3, 5), (7,)], gen, True, True)
    grads = [torch.randn(t.shape, generator=gen) for t in params]
    torch.library.opcheck(rmsprop_clip_ops.native_ops().rmsprop_clip_.default,
                          (params, grads, sq, ga, mb, 1e-3, 0.9, 1e-8, 0.0, 0.9, True, False, C))


@pytest.mark.parametrize("impl,device", DEVICE_IMPLS)
@pytest.mark.parametrize("hyper", HYPERS[:3], ids=["wgan", "lr2e-3", "centered_momentum_wd"])
def test_device_steps_match_rmsprop_plus_clamp(impl, device, hyper, one_thread):
    """On a GPU: 100 steps of a base-32 critic. Triton without a GPU runs in the interpreter
    (each program in Python), so there: 20 steps of a base-8 critic. As in the CPU test, only
    WGAN's lr 5e-5 runs free (each critic on its own gradients); at the larger learning rates
    training is chaotic (an ulp in a sqrt flips later gradients), so both optimizers get the
    reference critic's gradients and only the optimizers are compared, with no re-syncing.
    That also keeps the test independent of how torch's own CUDA kernels associate
    ``s + (1 - alpha) * g * g`` (nvcc may contract it into an FMA; ours uses FMAs, the
    documented choice in csrc/cuda/rmsprop_clip.cu)."""
    free_running = hyper == HYPERS[0]
    big = device == "cuda"
    gen = torch.Generator().manual_seed(77)
    torch.manual_seed(6)
    ours = TinyCritic(base=32 if big else 8).to(device)
    theirs = copy.deepcopy(ours)
    opt = RMSpropClip(ours.parameters(), impl=impl, **hyper)
    ref = torch.optim.RMSprop(theirs.parameters(), foreach=False, **hyper)
    for real, fake in _batches(100 if big else 20, gen, size=16):
        real, fake = real.to(device), fake.to(device)
        if free_running:
            for model, o in ((ours, opt), (theirs, ref)):
                o.zero_grad()
                wgan_critic_loss(model, real, fake).backward()
                o.step()
        else:
            forced_step(theirs, ref, ours, opt, real, fake)
        clamp_all(theirs.parameters())
    assert_close_lists(list(ours.parameters()), list(theirs.parameters()))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_kernel_many_tensors_per_dtype(dtype):
    gen = torch.Generator().manual_seed(8)
    shapes = [(int(torch.randint(1, 3000, (1,), generator=gen)),) for _ in range(100)] + [(65536 * 3 + 7,)]
    params, sq, ga, mb = _random_lists(dtype, shapes, gen, True, True)
    lists = [[t.cuda() for t in lst] for lst in (params, sq, ga, mb)]
    mine = [[t.clone() for t in lst] for lst in lists]
    grads = [torch.randn(s, generator=gen).to(dtype).cuda() for s in shapes]
    hyper = dict(lr=1e-3, alpha=0.9, eps=1e-8, weight_decay=0.0, momentum=0.9, centered=True, maximize=False,
                 clip_value=C)
    rmsprop_clip_ops.reference(lists[0], grads, lists[1], lists[2], lists[3], **hyper)
    torch.ops.pyfast_gan.rmsprop_clip_(mine[0], grads, mine[1], mine[2], mine[3], 1e-3, 0.9, 1e-8, 0.0, 0.9, True,
                                       False, C)
    for ours, theirs in zip(mine, lists):
        assert_close_lists(ours, theirs, dtype)


@needs_native
def test_native_step_bumps_version_counters():
    # As torch's in-place updates do: autograd must notice params changed after a save.
    p = nn.Parameter(torch.randn(10) * 0.02)
    p.grad = torch.randn(10)
    opt = RMSpropClip([p], lr=1e-3, impl="cpu")
    y = (p * p).sum()  # saves p for backward
    v = p._version
    opt.step()
    assert p._version > v
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@needs_native
@pytest.mark.parametrize("hyper", [h for h in HYPERS if not h.get("momentum")],
                         ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_cpu_step_within_4_ulp_of_rmsprop_plus_clamp(hyper):
    """The README's bound. impl="cpu" rounds the square root correctly and torch's
    vectorized CPU sqrt does not (1 ulp off on 17% of random fp32 inputs, AVX2, torch
    2.14.1), so one step from the same weights and state differs from RMSprop + clamp_ on
    some weights, by at most 4 ulp of the larger of the old and new weight (measured)."""
    gen = torch.Generator().manual_seed(29)
    ours = [nn.Parameter(torch.randn(s, generator=gen) * C) for s in ((64, 3, 4, 4), (4099,))]
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    opt = RMSpropClip(ours, clip_value=C, impl="cpu", **hyper)
    ref = torch.optim.RMSprop(theirs, foreach=False, **hyper)
    worst = 0.0
    for _ in range(20):
        scale = 10.0 ** float(torch.empty(()).uniform_(-4, 0, generator=gen))
        for p, q in zip(ours, theirs):
            p.grad = torch.randn(p.shape, generator=gen) * scale
            q.grad = p.grad.clone()
        old = [q.detach().clone() for q in theirs]
        opt.step()
        ref.step()
        clamp_all(theirs)
        for p, q, o in zip(ours, theirs, old):
            larger = torch.maximum(o.abs(), q.detach().abs())
            ulp = torch.nextafter(larger, torch.tensor(math.inf)) - larger
            worst = max(worst, ((p - q).abs() / ulp).max().item())
        # Each step starts from torch's weights and state, so differences do not compound.
        with torch.no_grad():
            for p, q in zip(ours, theirs):
                p.copy_(q)
                for k, v in ref.state[q].items():
                    if k != "step":
                        opt.state[p][k].copy_(v)
    assert worst <= 4, worst


@pytest.mark.parametrize("impl", IMPLS_HERE)
@pytest.mark.parametrize("flag", [1.0, 0.0])
def test_found_inf_flag_skips_on_the_device(impl, flag, one_thread):
    """``opt.found_inf`` (GradScaler's convention, a device flag): 1 leaves parameters, state
    and step counters exactly as they were, 0 is an ordinary step; either way no host check
    runs (the gradients here are finite and a NaN one is stepped only when the flag says so)."""
    torch.manual_seed(4)
    net = TinyCritic()
    twin = copy.deepcopy(net)
    opt = RMSpropClip(net.parameters(), lr=1e-3, momentum=0.9, centered=True, impl=impl)
    ref = RMSpropClip(twin.parameters(), lr=1e-3, momentum=0.9, centered=True, impl=impl)
    x = torch.randn(2, 3, 16, 16)
    for o, m in ((opt, net), (ref, twin)):
        m(x).sum().backward()
        o.step()
        o.zero_grad()
        m(x).square().sum().backward()
    before_p = [p.detach().clone() for p in net.parameters()]
    before_s = copy.deepcopy(opt.state_dict()["state"])
    opt.found_inf = torch.tensor(flag)
    opt.step()
    del opt.found_inf
    assert opt.last_step_skipped is None and opt.skipped_steps == 0
    if flag:
        assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before_p))
        after_s = opt.state_dict()["state"]
        for k in before_s:
            for key in before_s[k]:
                assert torch.equal(before_s[k][key].cpu(), after_s[k][key].cpu()), (k, key)
    else:  # the same step as the host-checked one
        ref.step()
        for p, q in zip(net.parameters(), twin.parameters()):
            assert torch.equal(p, q)
        assert all(float(opt.state[p]["step"]) == 2 for p in net.parameters())


@pytest.mark.parametrize("impl", IMPLS_HERE)
def test_grad_scaler_step_without_a_host_sync(impl):
    """GradScaler.step hands a fused-capable optimizer found_inf and grad_scale instead of
    checking on the host: an overflow skips the step and halves the scale."""
    p = nn.Parameter(torch.randn(20) * 0.01)
    q = nn.Parameter(p.detach().clone())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt = RMSpropClip([p], lr=1e-3, impl=impl)
    g = torch.randn(20)
    scaler.scale((p * g).sum()).backward()  # p.grad = g * 2**10
    scaler.step(opt)
    scaler.update()
    q.grad = g.clone()
    torch.optim.RMSprop([q], lr=1e-3).step()
    clamp_all([q])
    torch.testing.assert_close(p.detach(), q.detach(), **tol(torch.float32))
    before = p.detach().clone()
    p.grad = None
    scaler.scale((p * torch.full((20,), float("inf"))).sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(p.detach(), before) and scaler.get_scale() == 2.0**9
