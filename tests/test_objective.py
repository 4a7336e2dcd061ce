"""The critic objective (pyfast_gan/step/objective.py): eager and compiled (penalty included,
with the project's kernels or the inductor-generated reference formula) give the paper's
parameter gradients; real and fake in one forward equal two calls.

Compiling costs tens of seconds per graph on a 2-core CPU, so each compiled test compiles
one small critic once.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

from pyfast_gan.step import objective as fc
from pyfast_gan.losses import get_loss
from pyfast_gan.step.objective import CriticObjective, critic_scores
from pyfast_gan.models import DCGANCritic, MLPCritic
from pyfast_gan.step.graph_passes import ConvWeightGradPass


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
@pytest.mark.slow  # ~30 s of inductor compilation of a conv critic's double backward on 2 cores
def test_compiled_wgan_gp_conv_critic_matches_eager(monkeypatch):
    torch.manual_seed(3)
    critic = DCGANCritic(32, 3, base=4, norm="layer")
    n = 5
    real, fake = torch.rand(n, 3, 32, 32) * 2 - 1, torch.randn(n, 3, 32, 32)
    alpha = torch.rand(n)

    class CountingPass(ConvWeightGradPass):
        """The objective's graph pass, counting its rewrites (no cache key: it always runs)."""
        rewritten = 0

        def __call__(self, graph):
            before = sum(n.target is torch.ops.aten.convolution_backward.default for n in graph.nodes)
            super().__call__(graph)
            CountingPass.rewritten += sum(n.target is torch.ops.aten.convolution_backward.default
                                          for n in graph.nodes) - before

        def uuid(self):
            return None
    monkeypatch.setattr(fc, "COMPILE_OPTIONS", {"post_grad_custom_post_pass": CountingPass()})
    # the project's kernels inside the compiled graph (compile_penalty="kernels", the default)
    objective = CriticObjective(get_loss("wgan-gp"), gp_weight=10.0, compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback allowed here
        loss, grads, stats = _grads_of(objective, critic, real, fake, alpha)
    assert objective.mode == "compile", objective.fallback_reason
    # the double backward's weight gradients of the two layers with output maps of at least 8x8
    # (32 -> 16 and 16 -> 8) ran as convolution_backward; 8 -> 4 and the 4x4 head kept the formula
    assert CountingPass.rewritten == 2
    assert objective.verify_max_rel_diff is not None and objective.verify_max_rel_diff < 1e-3
    assert objective.compile_time_s > 0
    ref_loss, ref_grads = _paper_grads(critic, real, fake, alpha)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-4)
    _assert_grads_close(grads, ref_grads)
    assert set(stats) >= {"wasserstein", "gp", "grad_norm_x_hat"}
    _assert_penalty_stats(stats, critic, real, fake, alpha)

    # a second batch (new values, same shapes) reuses the graph and still matches
    real2, fake2, alpha2 = torch.randn(n, 3, 32, 32), torch.randn(n, 3, 32, 32), torch.rand(n)
    loss2, grads2, _ = _grads_of(objective, critic, real2, fake2, alpha2)
    ref_loss2, ref_grads2 = _paper_grads(critic, real2, fake2, alpha2)
    torch.testing.assert_close(loss2, ref_loss2, atol=1e-5, rtol=1e-4)
    _assert_grads_close(grads2, ref_grads2)


@pytest.mark.skipif(not fc.has_trace_autograd_ops(), reason="torch lacks trace_autograd_ops")
def test_compiled_reference_penalty_mlp_critic_matches_eager():
    torch.manual_seed(4)
    critic = MLPCritic(in_dim=2, hidden=16, depth=2)
    n = 7
    real, fake, alpha = torch.randn(n, 2), torch.randn(n, 2), torch.rand(n)
    objective = CriticObjective(get_loss("wgan-gp"), compile=True, compile_penalty="reference")
    loss, grads, stats = _grads_of(objective, critic, real, fake, alpha)
    assert objective.mode == "compile", objective.fallback_reason
    ref_loss, ref_grads = _paper_grads(critic, real, fake, alpha)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-4)
    _assert_grads_close(grads, ref_grads)
    _assert_penalty_stats(stats, critic, real, fake, alpha)


def _assert_penalty_stats(stats, critic, real, fake, alpha):
    """gp is the unweighted mean penalty and grad_norm_x_hat the mean input-gradient norm,
    computed here independently with autograd."""
    a = alpha.view(-1, *([1] * (real.dim() - 1)))
    x_hat = (a * real + (1 - a) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat)
    norms = g.flatten(1).norm(2, dim=1)
    torch.testing.assert_close(stats["gp"], ((norms - 1) ** 2).mean(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stats["grad_norm_x_hat"], norms.mean(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_eager_penalty_stats_are_unweighted(impl):
    torch.manual_seed(8)
    critic = DCGANCritic(32, 1, base=4, norm="layer")
    real, fake, alpha = torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32), torch.rand(4)
    for weight in (10.0, 0.5):
        _, _, stats = _grads_of(CriticObjective(get_loss("wgan-gp"), gp_weight=weight, impl=impl),
                                critic, real, fake, alpha)
        _assert_penalty_stats(stats, critic, real, fake, alpha)


@pytest.mark.parametrize("norm,concat", [("layer", True), ("none", True), ("batch", False)])
def test_real_and_fake_in_one_forward_equal_two_calls(norm, concat):
    torch.manual_seed(9)
    critic = DCGANCritic(32, 3, base=4, norm=norm)
    real, fake = torch.randn(5, 3, 32, 32), torch.randn(5, 3, 32, 32)
    assert (not fc.has_batch_norm(critic)) is concat  # batch statistics would mix the two
    one_r, one_f = critic_scores(critic, real, fake, concat=True)
    two_r, two_f = critic(real), critic(fake)
    if concat:
        torch.testing.assert_close(one_r, two_r, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(one_f, two_f, atol=1e-6, rtol=1e-5)
    else:
        assert not torch.allclose(one_r, two_r, atol=1e-4)
    # the objective decides by itself and its loss equals the two-call loss
    eager = CriticObjective(get_loss("wgan"), impl="reference")
    loss, _ = eager(critic, real, fake)
    torch.testing.assert_close(loss, (critic(fake).mean() - critic(real).mean()).detach(),
                               atol=1e-6, rtol=1e-5)


def test_plain_compile_for_losses_without_penalty():
    torch.manual_seed(5)
    critic = MLPCritic(in_dim=3, hidden=8, depth=1)
    real, fake = torch.randn(6, 3), torch.randn(6, 3)
    objective = CriticObjective(get_loss("hinge"), compile=True)
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
    eager = CriticObjective(get_loss("wgan-gp"), impl="reference")
    loss, grads, stats = _grads_of(eager, critic, real, fake, alpha)
    ref_loss, ref_grads = _paper_grads(critic, real, fake, alpha)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-4)
    _assert_grads_close(grads, ref_grads)

    lazy = CriticObjective(get_loss("wgan-gp"), impl="reference", lazy_gp=4)
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
        objective = CriticObjective(get_loss("wgan-gp"), compile=True)
    assert objective.mode == "eager" and "trace_autograd_ops" in objective.fallback_reason


def test_fallback_when_gradients_differ(monkeypatch):
    torch.manual_seed(7)
    critic = MLPCritic(in_dim=2, hidden=8, depth=1)
    real, fake, alpha = torch.randn(4, 2), torch.randn(4, 2), torch.rand(4)

    def wrong_compiled(self):  # a "compiled" objective with a wrong penalty weight
        def fn(critic, real, fake, x_hat, **kw):
            return fc.critic_loss(critic, real, fake, x_hat, **{**kw, "weight": kw["weight"] * 2})
        return fn

    monkeypatch.setattr(CriticObjective, "_get_compiled", wrong_compiled)
    objective = CriticObjective(get_loss("wgan-gp"), compile=True)
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
    objective = CriticObjective(get_loss("wgan-gp"), compile=True)
    with pytest.warns(RuntimeWarning, match="compiling failed"):
        loss, _ = objective(critic, torch.randn(3, 2), torch.randn(3, 2))
    assert objective.mode == "eager" and torch.isfinite(loss)


def test_fp16_compiled_falls_back_and_bad_arguments():
    with pytest.warns(RuntimeWarning, match="fp16"):
        assert CriticObjective(get_loss("wgan-gp"), compile=True, amp="fp16").mode == "eager"
    with pytest.raises(ValueError, match="compile_penalty"):
        CriticObjective(get_loss("wgan-gp"), compile_penalty="jit")
    with pytest.raises(ValueError, match="amp"):
        CriticObjective(get_loss("wgan-gp"), amp="int8")
    with pytest.raises(ValueError, match="lazy_gp"):
        CriticObjective(get_loss("wgan-gp"), lazy_gp=-1)
    with pytest.raises(ValueError, match="real and fake"):
        CriticObjective(get_loss("wgan-gp"))(MLPCritic(2, 4, 1), torch.randn(3, 2), torch.randn(4, 2))


class _Shaped(torch.nn.Module):
    """An MLP critic whose (N,) scores come out as ``shape`` (N, 1), (N, 1, 1, 1)..."""

    def __init__(self, inner, shape):
        super().__init__()
        self.inner, self.shape = inner, shape

    def forward(self, x):
        return self.inner(x).reshape(x.shape[0], *self.shape)


@pytest.mark.parametrize("loss_name", ["wgan-gp", "dcgan", "began"])
@pytest.mark.parametrize("shape", [(1,), (1, 1, 1)])
def test_scores_shaped_as_the_drop_ins_accept_them(loss_name, shape):
    # The drop-in penalties take (N,), (N, 1) and (N, 1, 1, 1) scores: so do the objectives,
    # with the same loss and gradients as the (N,) critic.
    torch.manual_seed(0)
    inner = MLPCritic(2, hidden=16)
    real, fake, alpha = torch.randn(6, 2), torch.randn(6, 2), torch.rand(6)
    ref = _grads_of(CriticObjective(get_loss(loss_name)), inner, real, fake, alpha)
    shaped = _Shaped(copy.deepcopy(inner), shape)
    got = _grads_of(CriticObjective(get_loss(loss_name)), shaped, real, fake, alpha)
    torch.testing.assert_close(got[0], ref[0])
    _assert_grads_close(got[1], ref[1], rtol=1e-6)
    g_loss, _ = fc.GeneratorObjective(get_loss(loss_name))(torch.nn.Identity(), shaped, fake)
    torch.testing.assert_close(g_loss, fc.GeneratorObjective(get_loss(loss_name))(torch.nn.Identity(), inner, fake)[0])
    with pytest.raises(ValueError, match=r"shape \(N,\), got \(6, 2\)"):
        CriticObjective(get_loss(loss_name))(_Shaped(torch.nn.Linear(2, 2), (2,)), real, fake, alpha=alpha)


# ---- conversions in one bf16 channels_last critic step ----

_COPIES = (torch.ops.aten.clone.default, torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default)


def _count_conversions(critic, n: int, concat: bool) -> dict:
    """Dtype casts and layout copies in one WGAN-GP critic step (the objective's forward,
    penalty and the backward through it) under bf16 autocast, channels_last; activations are
    the 4-D tensors of N or 2N samples (N differs from every channel count here)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    counts = Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in _COPIES:
                src, dst = (args[1], args[0]) if func is torch.ops.aten.copy_.default else (args[0], out)
                if isinstance(src, torch.nn.Parameter):
                    counts["weight casts"] += src.dtype != dst.dtype
                elif dst.dim() == 4 and dst.shape[0] in (n, 2 * n):
                    where = "input" if dst.shape[1] == 3 else "hidden"
                    counts[f"{where} casts"] += src.dtype != dst.dtype
                    counts[f"{where} layout copies"] += not dst.is_contiguous(memory_format=torch.channels_last)
            return out

    cl = torch.channels_last
    real, fake = (torch.randn(n, 3, 32, 32).contiguous(memory_format=cl) for _ in range(2))
    x_hat = torch.randn(n, 3, 32, 32).contiguous(memory_format=cl).requires_grad_()
    with Count():
        loss, _ = fc.critic_loss(critic, real, fake, x_hat, loss_fn=get_loss("wgan-gp"), weight=10.0, concat=concat,
                                 dtype=torch.bfloat16)
        loss.backward()
    return {k: v for k, v in counts.items() if v}


@pytest.mark.parametrize("norm", ["layer", "none", "batch"])
def test_bf16_channels_last_critic_step_conversion_count(norm):
    """The count of conversions in one critic step, pinned. Every conv weight and bias is cast
    to bf16 once (autocast's cache: the forward of real and fake and the penalty's forward
    share it); the images are cast on the way in (real+fake, x_hat) and x_hat's gradient on the
    way out; no activation leaves channels_last except where a norm layer makes it: CPU
    autocast runs the norms in fp32 (their outputs are cast back to bf16), batch norm's fp32
    output comes back NCHW, and GroupNorm's double backward is a composite that reshapes its
    input to (N, groups, -1) (NCHW copies) and casts its pieces. A new cast or layout copy in
    the step fails this test."""
    torch.manual_seed(0)
    critic = DCGANCritic(32, 3, base=8, norm=norm).to(memory_format=torch.channels_last)
    n_norm = sum(1 for m in critic.modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d)))
    params = [p for m in critic.modules() if isinstance(m, torch.nn.Conv2d) for p in m.parameters(recurse=False)]
    got = _count_conversions(critic, n=6, concat=norm != "batch")
    # per norm layer: (casts, layout copies) of hidden activations, as measured on torch 2.14
    per_norm = {"layer": (7, 3), "batch": (2, 1), "none": (0, 0)}[norm]
    want = {"weight casts": len(params), "input casts": 5 if norm != "batch" else 6,
            "hidden casts": per_norm[0] * n_norm, "hidden layout copies": per_norm[1] * n_norm}
    assert n_norm == (0 if norm == "none" else 2)
    assert got == {k: v for k, v in want.items() if v}, got


@pytest.mark.skipif(not fc.has_trace_autograd_ops(), reason="torch lacks trace_autograd_ops")
def test_fast_cpu_bf16_objective_stays_within_the_bf16_tolerance(monkeypatch):
    """The objective as --fast builds it on a CPU with native bf16 (compiled through the penalty,
    inductor's penalty formula, bf16 autocast, channels_last), with small layers on the GEMM
    path and the mask-free activation, keeps the documented bf16 tolerance: its loss and
    parameter gradients differ from the paper's fp32 ones by no more than twice what eager bf16
    autocast differs by (flash-attention's criterion), measured here apart from the objective's
    own start-up check."""
    from pyfast_gan.models._common import Conv2d

    monkeypatch.setattr(Conv2d, "GEMM_MIN_REDUCTION", 256)  # this small critic's last two convs
    torch.manual_seed(5)
    critic = DCGANCritic(32, 3, base=16, norm="layer").to(memory_format=torch.channels_last)
    n = 6
    cl = torch.channels_last
    real = (torch.rand(n, 3, 32, 32) * 2 - 1).contiguous(memory_format=cl)
    fake = torch.randn(n, 3, 32, 32).contiguous(memory_format=cl)
    alpha = torch.rand(n)
    with torch.autocast("cpu", torch.bfloat16):
        gemm = [m for m in critic.net if isinstance(m, Conv2d) and m.uses_gemm(torch.randn(1, m.in_channels, 8, 8))]
    assert len(gemm) >= 1
    ref_loss, ref_grads = _paper_grads(critic, real, fake, alpha)
    eager = CriticObjective(get_loss("wgan-gp"), gp_weight=10.0, amp="bf16")
    e_loss, e_grads, _ = _grads_of(eager, critic, real, fake, alpha)
    fast = CriticObjective(get_loss("wgan-gp"), gp_weight=10.0, compile=True, compile_penalty="reference",
                           amp="bf16")
    f_loss, f_grads, _ = _grads_of(fast, critic, real, fake, alpha)
    assert fast.mode == "compile", fast.fallback_reason
    eager_err = fc._rel_diff(e_grads, e_loss.float(), ref_grads, ref_loss)
    fast_err = fc._rel_diff(f_grads, f_loss.float(), ref_grads, ref_loss)
    assert 0 < eager_err and fast_err <= max(2 * eager_err, 1e-3), (fast_err, eager_err)
