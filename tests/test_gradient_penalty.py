"""gradient_penalty: parameter gradients (double backward) against the paper's
formula written with autograd only, for every impl; the AMP recipe; errors."""
import contextlib
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import pyfast_gan as pg
from pyfast_gan import _native
from pyfast_gan.ops import _dispatch
from pyfast_gan.ops._dispatch import triton_available
from pyfast_gan.ops.gradient_penalty import penalty_at
from pyfast_gan.testing import SmoothMLPCritic, conv_critic, conv_head_critic, tol

HAS_NATIVE = _native.load("penalty")
HAS_TRITON = triton_available(torch.device("cpu"))[0] or torch.cuda.is_available()
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

IMPLS = [
    pytest.param("reference", "cpu"),
    pytest.param("cpu", "cpu", marks=pytest.mark.skipif(not HAS_NATIVE, reason="native library not built")),
    pytest.param("triton", TRITON_DEVICE, marks=pytest.mark.skipif(not HAS_TRITON, reason="triton unavailable")),
    pytest.param("cuda", "cuda", marks=pytest.mark.cuda),
]


# "head" returns (N, 1, 1, 1), a DCGAN conv head before its .view (issue 15).
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
