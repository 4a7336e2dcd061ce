"""The compiled critic objective (penalty included) gives eager's parameter gradients.

Compiling costs tens of seconds per graph on a 2-core CPU, so each compiled test compiles
one small critic once.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

from pyfast_gan.fast import compile as fc
from pyfast_gan.fast.compile import CriticObjective, make_critic_objective
from pyfast_gan.models import DCGANCritic, MLPCritic


def _paper_grads(critic, real, fake, alpha, weight=10.0):
    """Autograd-only WGAN-GP critic loss of the paper (eq. 3), for comparison."""
    critic = copy.deepcopy(critic)
    a = alpha.view(-1, *([1] * (real.dim() - 1)))
    x_hat = (a * real + (1 - a) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    gp = ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
    loss = critic(fake).mean() - critic(real).mean() + weight * gp
    loss.backward()
    return loss.detach(), [p.grad for p in critic.parameters()]


def _grads_of(objective, critic, real, fake, alpha, step_index=0):
    for p in critic.parameters():
        p.grad = None
    loss, stats = objective(critic, real, fake, step_index, alpha=alpha)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in critic.parameters()], stats


def _assert_grads_close(got, ref, rtol=1e-4):
    top = max(r.abs().max().item() for r in ref)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=rtol * top, rtol=rtol)


@pytest.mark.skipif(not fc.has_trace_autograd_ops(), reason="torch lacks trace_autograd_ops")
def test_compiled_wgan_gp_conv_critic_matches_eager():
    torch.manual_seed(3)
    critic = DCGANCritic(32, 3, base=4, norm="layer")
    n = 5
    real, fake = torch.rand(n, 3, 32, 32) * 2 - 1, torch.randn(n, 3, 32, 32)
    alpha = torch.rand(n)
    objective = make_critic_objective("wgan-gp", gp_weight=10.0, compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback allowed here
        loss, grads, stats = _grads_of(objective, critic, real, fake, alpha)
    assert objective.mode == "compile", objective.fallback_reason
    assert objective.verify_max_rel_diff is not None and objective.verify_max_rel_diff < 1e-3
    assert objective.compile_time_s > 0
    ref_loss, ref_grads = _paper_grads(critic, real, fake, alpha)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-4)
    _assert_grads_close(grads, ref_grads)
    assert set(stats) >= {"wasserstein", "gp", "grad_norm_x_hat"}

    # a second batch (new values, same shapes) reuses the graph and still matches
    real2, fake2, alpha2 = torch.randn(n, 3, 32, 32), torch.randn(n, 3, 32, 32), torch.rand(n)
    loss2, grads2, _ = _grads_of(objective, critic, real2, fake2, alpha2)
    ref_loss2, ref_grads2 = _paper_grads(critic, real2, fake2, alpha2)
    torch.testing.assert_close(loss2, ref_loss2, atol=1e-5, rtol=1e-4)
    _assert_grads_close(grads2, ref_grads2)


@pytest.mark.skipif(not fc.has_trace_autograd_ops(), reason="torch lacks trace_autograd_ops")
def test_func_mode_mlp_critic_matches_eager():
    torch.manual_seed(4)
    critic = MLPCritic(in_dim=2, hidden=16, depth=2)
    n = 7
    real, fake, alpha = torch.randn(n, 2), torch.randn(n, 2), torch.rand(n)
    objective = CriticObjective("wgan-gp", mode="func")
    loss, grads, _ = _grads_of(objective, critic, real, fake, alpha)
    assert objective.mode == "func", objective.fallback_reason
    ref_loss, ref_grads = _paper_grads(critic, real, fake, alpha)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-4)
    _assert_grads_close(grads, ref_grads)


def test_plain_compile_for_losses_without_penalty():
    torch.manual_seed(5)
    critic = MLPCritic(in_dim=3, hidden=8, depth=1)
    real, fake = torch.randn(6, 3), torch.randn(6, 3)
    objective = CriticObjective("hinge", mode="compile")
    loss, grads, _ = _grads_of(objective, critic, real, fake, None)
    assert objective.mode == "compile", objective.fallback_reason
    ref = copy.deepcopy(critic)
    ref_loss = torch.relu(1 - ref(real)).mean() + torch.relu(1 + ref(fake)).mean()
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss.detach())
    _assert_grads_close(grads, [p.grad for p in ref.parameters()])


def test_eager_objective_matches_paper_and_lazy_gp():
    torch.manual_seed(6)
    critic = DCGANCritic(32, 1, base=4, norm="none")
    n = 3
    real, fake, alpha = torch.randn(n, 1, 32, 32), torch.randn(n, 1, 32, 32), torch.rand(n)
    eager = CriticObjective("wgan-gp", mode="eager", impl="reference")
    loss, grads, stats = _grads_of(eager, critic, real, fake, alpha)
    ref_loss, ref_grads = _paper_grads(critic, real, fake, alpha)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-4)
    _assert_grads_close(grads, ref_grads)

    lazy = CriticObjective("wgan-gp", mode="eager", impl="reference", lazy_gp=4)
    loss0, grads0, st0 = _grads_of(lazy, critic, real, fake, alpha, step_index=8)
    ref0, ref_grads0 = _paper_grads(critic, real, fake, alpha, weight=40.0)
    torch.testing.assert_close(loss0, ref0, atol=1e-5, rtol=1e-4)
    _assert_grads_close(grads0, ref_grads0)
    loss1, _, st1 = _grads_of(lazy, critic, real, fake, alpha, step_index=9)
    assert "gp" in st0 and "gp" not in st1
    plain = critic(fake).mean() - critic(real).mean()
    torch.testing.assert_close(loss1, plain.detach())


def test_fallback_when_trace_autograd_ops_is_missing(monkeypatch):
    monkeypatch.setattr(fc, "has_trace_autograd_ops", lambda: False)
    with pytest.warns(RuntimeWarning, match="trace_autograd_ops"):
        objective = CriticObjective("wgan-gp", mode="compile")
    assert objective.mode == "eager" and "trace_autograd_ops" in objective.fallback_reason


def test_fallback_when_gradients_differ(monkeypatch):
    torch.manual_seed(7)
    critic = MLPCritic(in_dim=2, hidden=8, depth=1)
    real, fake, alpha = torch.randn(4, 2), torch.randn(4, 2), torch.rand(4)

    def wrong_compiled(self):  # a "compiled" objective with a wrong penalty weight
        def fn(critic, real, fake, x_hat, **kw):
            return fc._objective_body(critic, real, fake, x_hat, **{**kw, "weight": kw["weight"] * 2})
        return fn

    monkeypatch.setattr(CriticObjective, "_get_compiled", wrong_compiled)
    objective = CriticObjective("wgan-gp", mode="compile")
    before = [p.detach().clone() for p in critic.parameters()]
    with pytest.warns(RuntimeWarning, match="differ from eager"):
        loss, grads, _ = _grads_of(objective, critic, real, fake, alpha)
    assert objective.mode == "eager"
    # the verification ran on a copy: the critic itself is untouched, and the returned
    # loss is the eager one
    assert all(torch.equal(a, b) for a, b in zip(before, critic.parameters()))
    ref_loss, ref_grads = _paper_grads(critic, real, fake, alpha)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-4)


def test_fallback_when_compiling_fails(monkeypatch):
    critic = MLPCritic(in_dim=2, hidden=8, depth=1)

    def broken(self):
        def fn(*a, **k):
            raise RuntimeError("simulated compiler failure")
        return fn

    monkeypatch.setattr(CriticObjective, "_get_compiled", broken)
    objective = CriticObjective("wgan-gp", mode="compile")
    with pytest.warns(RuntimeWarning, match="compiling failed"):
        loss, _ = objective(critic, torch.randn(3, 2), torch.randn(3, 2))
    assert objective.mode == "eager" and torch.isfinite(loss)


def test_fp16_compiled_falls_back_and_bad_arguments():
    with pytest.warns(RuntimeWarning, match="fp16"):
        assert CriticObjective("wgan-gp", mode="compile", amp="fp16").mode == "eager"
    with pytest.raises(ValueError, match="mode"):
        CriticObjective("wgan-gp", mode="jit")
    with pytest.raises(ValueError, match="amp"):
        CriticObjective("wgan-gp", amp="int8")
    with pytest.raises(ValueError, match="lazy_gp"):
        CriticObjective("wgan-gp", lazy_gp=-1)
    with pytest.raises(ValueError, match="real and fake"):
        CriticObjective("wgan-gp", mode="eager")(MLPCritic(2, 4, 1), torch.randn(3, 2), torch.randn(4, 2))
