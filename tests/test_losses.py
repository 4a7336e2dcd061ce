import math

import pytest
import torch

from pyfast_gan.losses import LOSSES, PRESETS, get_loss


def _sigmoid(x):
    return 1.0 / (1.0 + torch.exp(-x))


# The formulas as the papers write them, evaluated independently in float64.
def _critic_formula(name, r, f):
    if name == "began":  # a fresh BEGAN loss has k_0 = 0: L_D = L(x) - 0 * L(G(z))
        return r.mean() - 0.0 * f.mean()
    if name in ("dcgan", "cogan"):
        return -(torch.log(_sigmoid(r)).mean() + torch.log(1 - _sigmoid(f)).mean())
    if name in ("wgan", "wgan-gp"):
        return -(r.mean() - f.mean())
    if name == "lsgan":
        return 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f**2).mean()
    if name == "hinge":
        return torch.clamp(1 - r, min=0).mean() + torch.clamp(1 + f, min=0).mean()
    raise AssertionError(name)


def _generator_formula(name, f):
    if name == "began":
        return f.mean()
    if name in ("dcgan", "cogan"):
        return -torch.log(_sigmoid(f)).mean()
    if name in ("wgan", "wgan-gp", "hinge"):
        return -f.mean()
    if name == "lsgan":
        return 0.5 * ((f - 1) ** 2).mean()
    raise AssertionError(name)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("n", [1, 7, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_loss_matches_formula(name, n, dtype):
    loss = get_loss(name)
    r = (torch.randn(n, dtype=torch.float64) * 2).to(dtype)
    f = (torch.randn(n, dtype=torch.float64) * 2 - 0.5).to(dtype)
    r64, f64 = r.double(), f.double()
    c, cs = loss.critic(r, f)
    g, gs = loss.generator(f)
    assert c.dim() == 0 and g.dim() == 0
    # Computed in fp32 whatever the score dtype (autocast safety).
    assert c.dtype == torch.float32 and g.dtype == torch.float32
    t = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c.double(), _critic_formula(name, r64, f64), **t)
    torch.testing.assert_close(g.double(), _generator_formula(name, f64), **t)
    torch.testing.assert_close(cs["wasserstein"].double(), r64.mean() - f64.mean(), **t)
    assert cs["wasserstein"].dtype == torch.float32
    for v in list(cs.values()) + list(gs.values()):
        assert v.dim() == 0 and not v.requires_grad


@pytest.mark.parametrize("name", LOSSES)
def test_loss_gradients_match_formula(name):
    loss = get_loss(name)
    r = torch.randn(9, dtype=torch.float64, requires_grad=True)
    f = torch.randn(9, dtype=torch.float64, requires_grad=True)
    c, _ = loss.critic(r, f)
    gr, gf = torch.autograd.grad(c, (r, f))
    er, ef = torch.autograd.grad(_critic_formula(name, r.double(), f.double()), (r, f))
    # fp32 inside the loss: fp32 tolerances.
    torch.testing.assert_close(gr, er, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gf, ef, atol=1e-6, rtol=1e-5)


def test_dcgan_loss_is_stable_for_large_logits():
    loss = get_loss("dcgan")
    r = torch.tensor([80.0, -80.0, 30.0])
    f = torch.tensor([-90.0, 90.0, 0.0])
    c, _ = loss.critic(r, f)
    g, _ = loss.generator(f)
    assert torch.isfinite(c) and torch.isfinite(g)
    # -log sigmoid(f) = softplus(-f): 90 for f=-90, ~0 for f=90, log 2 for f=0.
    assert math.isclose(g.item(), (90.0 + math.log(2)) / 3, rel_tol=1e-5)
    # -log sigmoid(r) - log(1 - sigmoid(f)) = softplus(-r) + softplus(f), averaged per term.
    assert math.isclose(c.item(), (80 + 0 + 0) / 3 + (0 + 90 + math.log(2)) / 3, rel_tol=1e-5)


def test_loss_flags():
    assert get_loss("wgan-gp").uses_gp and not get_loss("wgan-gp").uses_clipping
    assert get_loss("wgan").uses_clipping and not get_loss("wgan").uses_gp
    for n in ("dcgan", "lsgan", "hinge", "began", "cogan"):
        assert not get_loss(n).uses_gp and not get_loss(n).uses_clipping
    assert all(get_loss(n).name == n for n in LOSSES)


def test_loss_bad_input():
    with pytest.raises(ValueError, match="loss must be one of"):
        get_loss("wasserstein")
    with pytest.raises(ValueError, match="real_out"):
        get_loss("wgan").critic(torch.randn(4, 1), torch.randn(4))


def test_presets_match_papers():
    assert set(PRESETS) == set(LOSSES)
    w = PRESETS["wgan"]
    assert (w["optimizer"], w["lr"], w["clip_value"], w["n_critic"], w["batch_size"]) == ("rmsprop", 5e-5, 0.01, 5, 64)
    gp = PRESETS["wgan-gp"]
    assert (gp["optimizer"], gp["lr"], gp["betas"], gp["gp_weight"], gp["n_critic"]) == ("adam", 1e-4, (0.0, 0.9), 10.0, 5)
    assert gp["critic_norm"] != "batch"
    d = PRESETS["dcgan"]
    assert (d["optimizer"], d["lr"], d["betas"], d["n_critic"], d["batch_size"]) == ("adam", 2e-4, (0.5, 0.999), 1, 128)
