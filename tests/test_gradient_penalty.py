"""gradient_penalty: parameter gradients (double backward) against the paper's
formula written with autograd only, for every impl; the AMP recipe; errors."""
import contextlib
import gc
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import pyfast_gan as pg
from pyfast_gan import _native
from pyfast_gan.ops import _dispatch, gradient_norm_penalty
from pyfast_gan.ops._dispatch import triton_available
from pyfast_gan.ops.penalty_core import penalty_at
from pyfast_gan.testing import SmoothMLPCritic, conv_critic, conv_head_critic, tol

HAS_NATIVE = _native.load(gradient_norm_penalty.FAMILY)
HAS_TRITON = triton_available(torch.device("cpu"))[0] or torch.cuda.is_available()
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

IMPLS = [
    pytest.param("reference", "cpu"),
    pytest.param("cpu", "cpu", marks=pytest.mark.skipif(not HAS_NATIVE, reason="native library not built")),
    pytest.param("triton", TRITON_DEVICE, marks=pytest.mark.skipif(not HAS_TRITON, reason="triton unavailable")),
    pytest.param("cuda", "cuda", marks=pytest.mark.cuda),
]


# "head" returns (N, 1, 1, 1), a DCGAN conv head before its .view.
CRITICS = {"conv": (conv_critic, (4, 3, 11, 12)), "mlp": (SmoothMLPCritic, (5, 7)),
           "head": (conv_head_critic, (4, 3, 8, 8))}


def paper_penalty(critic, real, fake, alpha, weight=10.0, center=1.0, mode="two_sided"):
    """Gulrajani et al. 2017, Algorithm 1, in autograd only (per-sample alpha, per-sample norm)."""
    a = alpha.view(-1, *([1] * (real.dim() - 1)))
    x_hat = (a * real + (1 - a) * fake).detach().requires_grad_(True)
    out = critic(x_hat)
    (g,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    norm = g.flatten(1).norm(2, dim=1)
    if mode == "two_sided":
        per = (norm - center) ** 2
    elif mode == "one_sided":
        per = torch.relu(norm - center) ** 2
    else:
        per = norm**2
    return weight * per.mean()


@pytest.mark.parametrize("impl,device", IMPLS)
@pytest.mark.parametrize("critic_name", list(CRITICS))
@pytest.mark.parametrize("mode", ["two_sided", "one_sided", "zero_centered"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_parameter_gradients_match_paper(impl, device, critic_name, mode, dtype):
    make, shape = CRITICS[critic_name]
    critic = make().to(device=device, dtype=dtype)
    params = list(critic.parameters())
    real = torch.randn(shape, device=device, dtype=dtype)
    fake = torch.randn(shape, device=device, dtype=dtype)
    alpha = torch.rand(shape[0], device=device, dtype=dtype)
    center = {"two_sided": 1.0, "zero_centered": 0.0, "one_sided": None}[mode]
    if center is None:
        # Half the samples above the center, half below: both one-sided branches run.
        x = (alpha.view(-1, *([1] * (real.dim() - 1))) * (real - fake) + fake).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x).sum(), x)
        center = float(g.flatten(1).norm(dim=1).mean())
    gp = pg.gradient_penalty(critic, real, fake, weight=10.0, center=center, mode=mode, alpha=alpha, impl=impl)
    ref = paper_penalty(critic, real, fake, alpha, 10.0, center, mode)
    assert gp.dtype == dtype and gp.dim() == 0
    assert gp.item() > 0
    # The last bias does not change d critic / d x: its penalty gradient is zero.
    grads = torch.autograd.grad(gp, params, allow_unused=True, materialize_grads=True)
    ref_grads = torch.autograd.grad(ref, params, allow_unused=True, materialize_grads=True)
    # fp32: the double-backward chain through the critic amplifies rounding a little.
    t = tol(dtype) if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-4}
    torch.testing.assert_close(gp, ref, **t)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **t)


@pytest.mark.parametrize("impl,device", IMPLS)
def test_channels_last_input(impl, device):
    critic = conv_critic().to(device).to(memory_format=torch.channels_last)
    real = torch.randn(3, 3, 9, 10, device=device).contiguous(memory_format=torch.channels_last)
    fake = torch.randn(3, 3, 9, 10, device=device).contiguous(memory_format=torch.channels_last)
    alpha = torch.rand(3, device=device)
    gp = pg.gradient_penalty(critic, real, fake, alpha=alpha, impl=impl)
    torch.testing.assert_close(gp, paper_penalty(critic, real, fake, alpha), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("impl,device", IMPLS)
def test_random_alpha_and_training_step(impl, device):
    critic = SmoothMLPCritic().to(device)
    opt = torch.optim.SGD(critic.parameters(), lr=1e-2)
    real, fake = torch.randn(6, 7, device=device), torch.randn(6, 7, device=device, requires_grad=True)
    loss = critic(fake).mean() - critic(real).mean() + pg.gradient_penalty(critic, real, fake, impl=impl)
    opt.zero_grad()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in critic.parameters())  # critic(fake) reaches all
    opt.step()


def _amp_setup(seed=0):
    torch.manual_seed(seed)
    critic = conv_critic()
    real, fake = torch.randn(4, 3, 11, 12), torch.randn(4, 3, 11, 12)
    alpha = torch.rand(4)
    ref = paper_penalty(critic, real, fake, alpha)
    ref_grads = torch.autograd.grad(ref, list(critic.parameters()), allow_unused=True, materialize_grads=True)
    return critic, real, fake, alpha, ref, ref_grads


@pytest.mark.parametrize("impl", ["reference", pytest.param("cpu", marks=pytest.mark.skipif(not HAS_NATIVE, reason="no native"))])
@pytest.mark.parametrize("init_scale", [2.0**16, 2.0**24, 2.0**40])
def test_amp_scaler_fp32_large_scale(impl, init_scale):
    critic, real, fake, alpha, ref, ref_grads = _amp_setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    gp = pg.gradient_penalty(critic, real, fake, alpha=alpha, scaler=scaler, impl=impl)
    assert torch.isfinite(gp)
    torch.testing.assert_close(gp, ref, atol=2e-5, rtol=1e-4)
    # The rest of the recipe: scale the loss, unscale before reading gradients.
    opt = torch.optim.SGD(critic.parameters(), lr=0.0)
    scaler.scale(gp).backward()
    scaler.unscale_(opt)
    for p, r in zip(critic.parameters(), ref_grads):
        torch.testing.assert_close(p.grad if p.grad is not None else torch.zeros_like(p), r, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("impl", ["reference", pytest.param("cpu", marks=pytest.mark.skipif(not HAS_NATIVE, reason="no native"))])
@pytest.mark.parametrize("init_scale", [None, 2.0**16, 2.0**32])
def test_amp_bf16_autocast(impl, init_scale):
    critic, real, fake, alpha, ref, _ = _amp_setup()
    scaler = None if init_scale is None else torch.amp.GradScaler("cpu", init_scale=init_scale)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gp = pg.gradient_penalty(critic, real, fake, alpha=alpha, scaler=scaler, impl=impl)
        # PyTorch's own bf16 run of the same formula: ours must be no worse (x2 slack).
        torch_bf16 = paper_penalty(critic, real, fake, alpha)
    assert gp.dtype == torch.float32 and torch.isfinite(gp)
    err, torch_err = (gp - ref).abs().item(), (torch_bf16.float() - ref).abs().item()
    assert err <= 2 * torch_err + 1e-3 * ref.abs().item(), (err, torch_err)
    gp.backward()
    assert all(torch.isfinite(p.grad).all() for p in critic.parameters() if p.grad is not None)


@pytest.mark.parametrize("impl", ["reference", pytest.param("cpu", marks=pytest.mark.skipif(not HAS_NATIVE, reason="no native"))])
def test_amp_fp16_autocast_with_scaler(impl):
    critic, real, fake, alpha, ref, _ = _amp_setup()
    # 2**10: the critic's own fp16 backward stays finite at this scale (the seed
    # gradient of scale*out is the scale itself, and fp16 tops out at 65504).
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with torch.autocast("cpu", dtype=torch.float16):
        gp = pg.gradient_penalty(critic, real, fake, alpha=alpha, scaler=scaler, impl=impl)
    assert gp.dtype == torch.float32 and torch.isfinite(gp)
    torch.testing.assert_close(gp, ref, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("impl", ["reference", pytest.param("cpu", marks=pytest.mark.skipif(not HAS_NATIVE, reason="no native"))])
def test_amp_fp16_default_scale_skips_then_matches_fp32(impl):
    """GradScaler's default init_scale, 2**16, is above fp16's largest value (65504), the
    gradient the critic's fp16 head receives: the penalty is non-finite there, the scaler
    skips the step and halves the scale, and at the scale it backs off to the penalty
    equals fp32's. With growth_interval=2 the scaler grows back to 2**16 and skips again,
    as the module doc says a run does every 2000 steps."""
    critic, real, fake, alpha, ref, _ = _amp_setup()
    scaler = torch.amp.GradScaler("cpu", growth_interval=2)
    assert scaler.get_scale() == 2.0**16  # the default this test is about
    # A small lr: the critic stays near the one the fp32 reference saw.
    opt = torch.optim.SGD(critic.parameters(), lr=1e-4)
    history = []
    for _ in range(6):
        scale = scaler.get_scale()
        before = [p.detach().clone() for p in critic.parameters()]
        with torch.autocast("cpu", dtype=torch.float16):
            gp = pg.gradient_penalty(critic, real, fake, alpha=alpha, scaler=scaler, impl=impl)
        opt.zero_grad(set_to_none=True)
        scaler.scale(gp).backward()
        scaler.step(opt)
        scaler.update()
        moved = any(not torch.equal(p, q) for p, q in zip(critic.parameters(), before))
        history.append((scale, bool(torch.isfinite(gp)), moved))
        if torch.isfinite(gp):
            assert moved and scaler.get_scale() in (scale, 2 * scale), history
            # Only the first finite penalty is compared: later steps moved the critic.
            if sum(f for _, f, _ in history) == 1:
                torch.testing.assert_close(gp, ref, atol=1e-2, rtol=1e-2)
        else:
            assert not moved and scaler.get_scale() == scale / 2, history
    # 2**16 overflows, 2**15 holds; growth to 2**16 overflows again after two good steps.
    assert history == [(2.0**16, False, False), (2.0**15, True, True), (2.0**15, True, True),
                       (2.0**16, False, False), (2.0**15, True, True), (2.0**15, True, True)]


def test_errors():
    critic = SmoothMLPCritic()
    r = torch.randn(4, 7)
    with pytest.raises(ValueError, match="critic must be callable"):
        pg.gradient_penalty("critic", r, r)
    with pytest.raises(ValueError, match="weight must be a finite number"):
        pg.gradient_penalty(critic, r, r, weight=float("inf"))
    with pytest.raises(ValueError, match="mode must be one of"):
        pg.gradient_penalty(critic, r, r, mode="both")
    with pytest.raises(ValueError, match="scaler must be a torch.amp.GradScaler"):
        pg.gradient_penalty(critic, r, r, scaler=1.0)
    with pytest.raises(ValueError, match="real and fake must be tensors"):
        pg.gradient_penalty(critic, r, [1.0])
    with pytest.raises(ValueError, match=r"fake must have the shape of real"):
        pg.gradient_penalty(critic, r, torch.randn(3, 7))
    with pytest.raises(ValueError, match="fake must have the dtype of real"):
        pg.gradient_penalty(critic, r, r.double())
    with pytest.raises(ValueError, match="real has an empty batch"):
        pg.gradient_penalty(critic, torch.randn(0, 7), torch.randn(0, 7))
    for bad in (lambda x: critic(x).unsqueeze(1).expand(4, 2), lambda x: critic(x).repeat(2),
                lambda x: critic(x).view(1, 4), lambda x: critic(x).view(4, 1, 1).expand(4, 1, 3)):
        shape = tuple(bad(r).shape)
        with pytest.raises(ValueError, match=r"critic output must have one value per sample, shape \(4,\) or "
                                             rf"\(4, 1, \.\.\.\); got {re.escape(str(shape))}"):
            pg.gradient_penalty(bad, r, r)
    with pytest.raises(ValueError, match=r"critic output must have one value per sample.*got \(\)"):
        pg.gradient_penalty(lambda x: x.sum(), r, r)
    with pytest.raises(ValueError, match="critic output must be a tensor"):
        pg.gradient_penalty(lambda x: 1.0, r, r)
    with pytest.raises(ValueError, match="critic output does not depend on its input"):
        pg.gradient_penalty(lambda x: torch.ones(4), r, r)
    with pytest.raises(ValueError, match="impl must be one of"):
        pg.gradient_penalty(critic, r, r, impl="fast")


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "inference_mode+enable_grad"])
def test_grad_mode_off_is_named(mode):
    critic, r = SmoothMLPCritic(), torch.randn(4, 7)
    with (torch.no_grad() if mode == "no_grad" else torch.inference_mode()):
        with torch.enable_grad() if "enable_grad" in mode else contextlib.nullcontext():
            with pytest.raises(ValueError, match="gradient mode is off.*needs grad mode on and inference mode off"):
                pg.gradient_penalty(critic, r, r)
    # A critic that ignores its input, under grad mode, keeps the old message.
    with pytest.raises(ValueError, match="critic output does not depend on its input"):
        pg.gradient_penalty(lambda x: torch.randn(4), r, r)


@pytest.mark.parametrize("impl", ["reference", pytest.param("cpu", marks=pytest.mark.skipif(not HAS_NATIVE, reason="no native"))])
def test_weight_numpy_and_tensor(impl, monkeypatch):
    critic = SmoothMLPCritic()
    real, fake, alpha = torch.randn(5, 7), torch.randn(5, 7), torch.rand(5)
    unweighted = pg.gradient_penalty(critic, real, fake, alpha=alpha, weight=1.0, impl=impl)
    w = float(torch.rand(()) * 20)
    for weight in (np.float32(w), np.float64(w), np.int64(3), torch.tensor(w), torch.tensor(w, dtype=torch.float64),
                   torch.tensor([w]), torch.tensor(3)):
        gp = pg.gradient_penalty(critic, real, fake, alpha=alpha, weight=weight, impl=impl)
        want = float(weight) * unweighted
        assert gp.shape == () and gp.dtype == torch.float32, type(weight)
        torch.testing.assert_close(gp, want, rtol=2e-7, atol=0, msg=lambda m: f"{weight!r}: {m}")
    # A tensor weight is multiplied in as a tensor: it is never read on the host (a GPU
    # weight costs no sync) and, if it requires grad, gets the penalty as its gradient.
    def no_host_read(*args, **kwargs):
        raise AssertionError("the weight was read on the host")

    weight = torch.tensor(w, requires_grad=True)
    monkeypatch.setattr(torch.Tensor, "item", no_host_read)
    monkeypatch.setattr(torch.Tensor, "__float__", no_host_read)
    gp = pg.gradient_penalty(critic, real, fake, alpha=alpha, weight=weight, impl=impl)
    monkeypatch.undo()
    (g,) = torch.autograd.grad(gp, weight)
    torch.testing.assert_close(g, unweighted.detach())


@pytest.mark.parametrize("impl", ["reference", pytest.param("cpu", marks=pytest.mark.skipif(not HAS_NATIVE, reason="no native"))])
def test_gp_weight_is_another_name_for_weight(impl):
    """``gp_weight=``, the trainer's name (--gp-weight), is the same argument as ``weight``;
    the default stays 10 and both together are refused, even when ``weight`` is 10."""
    critic = SmoothMLPCritic()
    real, fake, alpha = torch.randn(5, 7), torch.randn(5, 7), torch.rand(5)
    for w in (3.5, np.float32(2.0), torch.tensor(4.0)):
        torch.testing.assert_close(pg.gradient_penalty(critic, real, fake, alpha=alpha, gp_weight=w, impl=impl),
                                   pg.gradient_penalty(critic, real, fake, alpha=alpha, weight=w, impl=impl),
                                   rtol=0, atol=0)
    torch.testing.assert_close(pg.gradient_penalty(critic, real, fake, alpha=alpha, impl=impl),
                               pg.gradient_penalty(critic, real, fake, 10.0, alpha=alpha, impl=impl), rtol=0, atol=0)
    for given in (dict(weight=5.0), dict(weight=10.0)):
        with pytest.raises(TypeError, match=r"got both weight and gp_weight; gp_weight is another name for weight "
                                            r"\(the trainer's --gp-weight\): pass one of them"):
            pg.gradient_penalty(critic, real, fake, gp_weight=5.0, **given)
    with pytest.raises(TypeError, match="got both weight and gp_weight"):
        pg.gradient_penalty(critic, real, fake, 10.0, gp_weight=5.0)
    with pytest.raises(ValueError, match="gp_weight must be a finite number"):
        pg.gradient_penalty(critic, real, fake, gp_weight=float("nan"))


def test_weight_errors():
    critic, r = SmoothMLPCritic(), torch.randn(4, 7)
    for bad in (np.float32("inf"), np.float64("nan"), float("-inf"), np.bool_(True), True, "10", None, 1j):
        with pytest.raises(ValueError, match="weight must be a finite number or a one-element tensor"):
            pg.gradient_penalty(critic, r, r, weight=bad)
    with pytest.raises(ValueError, match=r"weight must be a finite number or a one-element tensor, got a tensor "
                                         r"of shape \(2,\)"):
        pg.gradient_penalty(critic, r, r, weight=torch.tensor([10.0, 1.0]))
    with pytest.raises(ValueError, match="weight must be a real number, got a tensor of dtype torch.bool"):
        pg.gradient_penalty(critic, r, r, weight=torch.tensor(True))
    with pytest.raises(ValueError, match=r"weight must be on the device of real \(cpu\) or the CPU, got meta"):
        pg.gradient_penalty(critic, r, r, weight=torch.tensor(10.0, device="meta"))


def bn_critic(track_running_stats=True):
    return nn.Sequential(nn.Linear(7, 16), nn.BatchNorm1d(16, track_running_stats=track_running_stats), nn.Softplus(),
                         nn.Linear(16, 1))


class BNCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = bn_critic()

    def forward(self, x):
        return self.net(x)


def test_batch_norm_critic_warns_once_per_class(monkeypatch):
    monkeypatch.setattr(_dispatch, "_warned", set())  # a fresh process's state
    r = torch.randn(6, 7)
    msg = r"gradient_penalty: critic \w+ normalises with batch statistics \(its BatchNorm1d '(net\.)?1' is in training"
    with pytest.warns(RuntimeWarning, match=msg + r".*critic has no batch norm") as rec:
        pg.gradient_penalty(bn_critic(), r, r)
        pg.gradient_penalty(bn_critic(), r, r)  # another instance of the class: no second warning
        pg.gradient_penalty(BNCritic(), r, r)  # another class: its own warning
    assert [str(w.message).split(": critic ")[1].split()[0] for w in rec] == ["Sequential", "BNCritic"]
    assert all(w.filename == __file__ for w in rec)  # points at the caller's line
    monkeypatch.setattr(_dispatch, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pg.gradient_penalty(bn_critic().eval(), r, r)  # running statistics: per sample
        pg.gradient_penalty(SmoothMLPCritic(), r, r)
        pg.gradient_penalty(lambda x: bn_critic()(x), r, r)  # not a module: not inspected
        # The trainer's entry point decides for itself.
        x = r.clone().requires_grad_(True)
        penalty_at(bn_critic(), x)
    # Eval mode without running statistics still normalises with the batch's.
    with pytest.warns(RuntimeWarning, match="normalises with batch statistics"):
        pg.gradient_penalty(bn_critic(track_running_stats=False).eval(), r, r)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_unavailable_impl_raises():
    with pytest.raises(RuntimeError, match="impl='cuda' needs CUDA tensors"):
        pg.gradient_penalty(SmoothMLPCritic(), torch.randn(2, 7), torch.randn(2, 7), impl="cuda")


# --- the drop-in as other loops call it ------------------------------------------------------

def plain_loop_penalty(critic, real, fake, weight):
    """The penalty as PyTorch-GAN's and caogang's WGAN-GP loops write it, alpha from the global RNG."""
    n = real.shape[0]
    alpha = torch.rand(n, *[1] * (real.dim() - 1))
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return weight * ((g.view(n, -1).norm(2, dim=1) - 1) ** 2).mean()


@pytest.mark.parametrize("critic_name", ["mlp", "conv", "head"])
def test_positional_weight_reference_is_bitwise_the_plain_loop(critic_name):
    """gradient_penalty(D, real, fake, 10.0, impl="reference") in place of a loop's own penalty:
    the same losses and the same parameters, bit for bit, over a few SGD steps."""
    make, shape = CRITICS[critic_name]
    ours, theirs = make(), make()
    theirs.load_state_dict(ours.state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=1e-2) for m in (ours, theirs)]
    for step in range(3):
        real, fake = torch.randn(shape), torch.randn(shape)
        torch.manual_seed(100 + step)
        a = pg.gradient_penalty(ours, real, fake, 10.0, impl="reference")
        torch.manual_seed(100 + step)
        b = plain_loop_penalty(theirs, real, fake, 10.0)
        assert a.item() > 0 and torch.equal(a, b), (step, a, b)
        for opt, loss in zip(opts, (a, b)):
            opt.zero_grad()
            loss.backward()
            opt.step()
        for p, q in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(p, q), step


@pytest.mark.parametrize("impl", ["auto", pytest.param("cpu", marks=pytest.mark.skipif(not HAS_NATIVE, reason="no native"))])
def test_positional_weight_kernels_match_the_plain_loop(impl):
    critic = SmoothMLPCritic()
    real, fake = torch.randn(6, 7), torch.randn(6, 7)
    torch.manual_seed(3)
    gp = pg.gradient_penalty(critic, real, fake, 10.0, impl=impl)
    torch.manual_seed(3)  # "cpu" draws alpha with torch.rand too: the same alpha
    ref = plain_loop_penalty(critic, real, fake, 10.0)
    # The last bias does not change d critic / d x: its penalty gradient is zero.
    grads = torch.autograd.grad(gp, list(critic.parameters()), allow_unused=True, materialize_grads=True)
    ref_grads = torch.autograd.grad(ref, list(critic.parameters()), allow_unused=True, materialize_grads=True)
    assert any(g.abs().sum() > 0 for g in grads)
    torch.testing.assert_close(gp, ref, atol=2e-5, rtol=1e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=2e-5, rtol=1e-4)
    # Positional and keyword weight are one argument.
    torch.manual_seed(3)
    torch.testing.assert_close(pg.gradient_penalty(critic, real, fake, weight=10.0, impl=impl), gp, rtol=0, atol=0)
    with pytest.raises(TypeError):
        pg.gradient_penalty(critic, real, fake, 10.0, 1.0)  # center stays keyword-only


@pytest.mark.parametrize("impl", ["reference", pytest.param("cpu", marks=pytest.mark.skipif(not HAS_NATIVE, reason="no native"))])
def test_generator_draws_alpha_like_the_loop(impl):
    """generator= reproduces a loop that draws alpha from its own generator, and leaves the
    global RNG alone."""
    critic = SmoothMLPCritic()
    real, fake = torch.randn(5, 7), torch.randn(5, 7)
    state = torch.get_rng_state()
    gp = pg.gradient_penalty(critic, real, fake, 10.0, generator=torch.Generator().manual_seed(11), impl=impl)
    assert torch.equal(torch.get_rng_state(), state)
    alpha = torch.rand(5, generator=torch.Generator().manual_seed(11))
    ref = paper_penalty(critic, real, fake, alpha, 10.0)
    if impl == "reference":
        assert torch.equal(gp, ref)
    else:
        torch.testing.assert_close(gp, ref, atol=2e-5, rtol=1e-4)
    other = pg.gradient_penalty(critic, real, fake, 10.0, generator=torch.Generator().manual_seed(12), impl=impl)
    assert not torch.equal(other, gp)
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        pg.gradient_penalty(critic, real, fake, generator=11)


def test_batch_norm_scan_once_per_critic(monkeypatch):
    """The batch-norm layers are found by one walk per critic object; train()/eval() (of the
    critic or of one layer) are read live; registering a module anywhere makes the next
    check walk again."""
    from pyfast_gan.ops import batchnorm_check as bnc

    walks = []
    scan = bnc.scan_batch_norm
    monkeypatch.setattr(bnc, "scan_batch_norm", lambda m: walks.append(m) or scan(m))
    monkeypatch.setattr(_dispatch, "_warned", set())
    critic, r = bn_critic(), torch.randn(6, 7)
    with pytest.warns(RuntimeWarning, match="normalises with batch statistics"):
        for _ in range(3):
            pg.gradient_penalty(critic, r, r, 10.0)
    assert walks == [critic]
    assert bnc.batch_stats_layer(critic)[1] == "1"
    critic.eval()
    assert bnc.batch_stats_layer(critic) is None
    critic[1].train()  # one layer back to training mode
    assert bnc.batch_stats_layer(critic)[1] == "1"
    critic.train()
    with pytest.warns(RuntimeWarning, match="r1_penalty: critic Sequential normalises with batch statistics"):
        pg.r1_penalty(critic, r, 1.0)
    assert walks == [critic]  # one walk per critic, whichever drop-in asks
    # A module added to a critic without batch norm: the next check walks again and finds it.
    plain, nested = SmoothMLPCritic(), SmoothMLPCritic()
    for _ in range(2):
        assert bnc.batch_stats_layer(plain) is None and bnc.batch_stats_layer(nested) is None
    assert walks == [critic, plain, nested]
    plain.norm = nn.BatchNorm1d(7)
    nested.net.append(nn.BatchNorm1d(1))  # a registration inside, through Sequential.append
    assert bnc.batch_stats_layer(plain)[1] == "norm" and bnc.batch_stats_layer(nested)[1] == "net.5"
    assert walks == [critic, plain, nested, plain, nested]
    # The record of a collected critic leaves with it; a new critic is walked, never handed
    # an old record (even were it to get the old one's id).
    key = id(plain)
    walks.clear()
    del plain
    gc.collect()
    assert key not in bnc._BN_LAYERS
    fresh = SmoothMLPCritic()
    assert bnc.batch_stats_layer(fresh) is None and walks == [fresh]


class CondCritic(nn.Module):
    """A conditional critic D(x, label) with batch norm: the callables below wrap it."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(3, 7)
        self.net = bn_critic()

    def forward(self, x, label):
        return self.net(x * self.embed(label)).squeeze(1)

    def score(self, x):
        return self(x, torch.zeros(x.shape[0], dtype=torch.long))


class GAN(nn.Module):
    """A wrapper holding a generator with batch norm and a critic without."""

    def __init__(self):
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(7, 7), nn.BatchNorm1d(7))
        self.critic = SmoothMLPCritic()


def test_critic_callables_are_seen_through(monkeypatch):
    import functools

    r, labels = torch.randn(6, 7), torch.randint(0, 3, (6,))
    d = CondCritic()
    seen = {"bound method": d.score, "partial": functools.partial(d, label=labels),
            "lambda closing over the module": lambda x: d(x, labels),
            "nested function": (lambda m: (lambda x: m(x, labels)))(d)}
    for what, critic in seen.items():
        monkeypatch.setattr(_dispatch, "_warned", set())
        with pytest.warns(RuntimeWarning, match=r"critic CondCritic normalises with batch statistics \(its "
                                                r"BatchNorm1d 'net\.1'") as rec:
            pg.gradient_penalty(critic, r, r, 10.0)
        assert len(rec) == 1 and rec[0].filename == __file__, what
    d.eval()
    for what, critic in seen.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pg.gradient_penalty(critic, r, r, 10.0)
    # A lambda over a wrapper is narrowed to the submodule it reads: the wrapper's generator
    # (batch norm, training mode) is not the critic.
    gan = GAN()
    monkeypatch.setattr(_dispatch, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pg.gradient_penalty(lambda x: gan.critic(x), r, r, 10.0)
    # Not seen (README): a module reached through a plain container.
    held = {"critic": bn_critic()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pg.gradient_penalty(lambda x: held["critic"](x), r, r, 10.0)


@pytest.mark.parametrize("impl", ["reference", pytest.param("cpu", marks=pytest.mark.skipif(not HAS_NATIVE, reason="no native"))])
def test_penalty_at_unchanged_for_the_trainer(impl):
    """The trainer's entry point: (mean penalty, mean norm) of the same kernels."""
    critic, x = SmoothMLPCritic(), torch.randn(5, 7, requires_grad=True)
    gp, norm = penalty_at(critic, x, impl=impl)
    (g,) = torch.autograd.grad(critic(x).sum(), x)
    ref_norm = g.norm(dim=1)
    torch.testing.assert_close(norm, ref_norm.mean())
    torch.testing.assert_close(gp, ((ref_norm - 1) ** 2).mean())
    assert gp.requires_grad and not norm.requires_grad


def test_readme_drop_in_loop(readme_example):
    """The README's drop-in loop, with the names it leaves to the reader."""
    critic = SmoothMLPCritic(d=4)
    generator = nn.Linear(3, 4)
    ns = {"loader": [torch.randn(8, 4) for _ in range(2)], "z_dim": 3, "generator": generator, "critic": critic,
          "opt_d": torch.optim.SGD(critic.parameters(), lr=1e-3)}
    before = [p.detach().clone() for p in critic.parameters()]
    exec(readme_example("for real in loader:"), ns)
    # Every weight moves; the last bias cancels out of the Wasserstein loss and the penalty.
    params = list(critic.parameters())
    assert all(not torch.equal(p, q) for p, q in zip(params[:-1], before[:-1]))
    assert all(torch.isfinite(p).all() for p in params)
