"""gradient_penalty: parameter gradients (double backward) against the paper's
formula written with autograd only, for every impl; the AMP recipe; errors."""
import pytest
import torch
from torch import nn

import pyfast_gan as pg
from pyfast_gan import _native
from pyfast_gan.ops._dispatch import triton_available
from pyfast_gan.testing import tol

HAS_NATIVE = _native.load("penalty")
HAS_TRITON = triton_available(torch.device("cpu"))[0] or torch.cuda.is_available()
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

IMPLS = [
    pytest.param("reference", "cpu"),
    pytest.param("cpu", "cpu", marks=pytest.mark.skipif(not HAS_NATIVE, reason="native library not built")),
    pytest.param("triton", TRITON_DEVICE, marks=pytest.mark.skipif(not HAS_TRITON, reason="triton unavailable")),
    pytest.param("cuda", "cuda", marks=pytest.mark.cuda),
]


def conv_critic():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(16 * 3 * 3, 1),
    )


class MLPCritic(nn.Module):
    """Returns shape (N,) (the conv critic returns (N, 1)); softplus keeps second derivatives non-zero."""

    def __init__(self, d=7):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 32), nn.Softplus(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x).squeeze(1)


CRITICS = {"conv": (conv_critic, (4, 3, 11, 12)), "mlp": (MLPCritic, (5, 7))}


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
@pytest.mark.parametrize("critic_name", ["conv", "mlp"])
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
    critic = MLPCritic().to(device)
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


def test_errors():
    critic = MLPCritic()
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
    with pytest.raises(ValueError, match=r"critic output must have one value per sample, shape \(4,\) or \(4, 1\); got \(4, 2\)"):
        pg.gradient_penalty(nn.Linear(7, 2), r, r)
    with pytest.raises(ValueError, match=r"critic output must have one value per sample.*got \(\)"):
        pg.gradient_penalty(lambda x: x.sum(), r, r)
    with pytest.raises(ValueError, match="critic output must be a tensor"):
        pg.gradient_penalty(lambda x: 1.0, r, r)
    with pytest.raises(ValueError, match="critic output does not depend on its input"):
        pg.gradient_penalty(lambda x: torch.ones(4), r, r)
    with pytest.raises(ValueError, match="impl must be one of"):
        pg.gradient_penalty(critic, r, r, impl="fast")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_unavailable_impl_raises():
    with pytest.raises(RuntimeError, match="impl='cuda' needs CUDA tensors"):
        pg.gradient_penalty(MLPCritic(), torch.randn(2, 7), torch.randn(2, 7), impl="cuda")
