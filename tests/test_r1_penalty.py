"""r1_penalty against R1 written with autograd only (Mescheder et al. 2018, eq. 9):
values and parameter gradients over shapes, dtypes and impls; a float64 gradcheck of the
parameter gradient; the scaler recipe; errors."""
import warnings

import numpy as np
import pytest
import torch
from torch.func import functional_call

import pyfast_gan as pg
from pyfast_gan import _native
from pyfast_gan.ops import gradient_norm_penalty
from pyfast_gan.testing import SmoothMLPCritic, conv_critic, conv_head_critic, tol

HAS_NATIVE = _native.load(gradient_norm_penalty.FAMILY)
IMPLS = ["reference", pytest.param("cpu", marks=pytest.mark.skipif(not HAS_NATIVE, reason="native library not built"))]
# (critic, input shape): (N,), (N, 1) and (N, 1, 1, 1) outputs; a batch of one.
CASES = {
    "mlp": (SmoothMLPCritic, (5, 7)),
    "mlp-n1": (SmoothMLPCritic, (1, 7)),
    "conv": (conv_critic, (3, 3, 11, 12)),
    "head": (conv_head_critic, (4, 3, 8, 8)),
}


def r1_autograd(critic, real, gamma):
    """gamma / 2 * E[||grad_x D(x)||^2] at x = real, autograd only."""
    x = real.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return gamma / 2 * g.flatten(1).pow(2).sum(1).mean()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_autograd_formula(impl, case, dtype):
    make, shape = CASES[case]
    critic = make().to(dtype)
    params = list(critic.parameters())
    real = torch.randn(shape, dtype=dtype, requires_grad=True)  # must not receive a gradient
    gamma = float(torch.rand(()) * 10 + 0.1)
    r1 = pg.r1_penalty(critic, real, gamma, impl=impl)
    ref = r1_autograd(critic, real, gamma)
    assert r1.dtype == dtype and r1.shape == () and r1.item() > 0
    t = tol(dtype) if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-4}  # double backward, as for WGAN-GP
    torch.testing.assert_close(r1, ref, **t)
    grads = torch.autograd.grad(r1, params, allow_unused=True, materialize_grads=True, retain_graph=True)
    ref_grads = torch.autograd.grad(ref, params, allow_unused=True, materialize_grads=True)
    assert any(g.abs().sum() > 0 for g in grads)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **t)
    r1.backward()
    assert real.grad is None  # a penalty of the critic only


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_parameter_gradient_float64(impl):
    critic = SmoothMLPCritic(d=3, hidden=4).double()
    names = [n for n, _ in critic.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in critic.parameters())
    real = torch.randn(3, 3, dtype=torch.float64)

    def r1_of_params(*ps):
        def call(x):
            return functional_call(critic, dict(zip(names, ps)), (x,))

        return pg.r1_penalty(call, real, 10.0, impl=impl)

    assert torch.autograd.gradcheck(r1_of_params, params)


@pytest.mark.parametrize("impl", IMPLS)
def test_gamma_numpy_and_tensor(impl):
    critic, real = SmoothMLPCritic(), torch.randn(4, 7)
    one = pg.r1_penalty(critic, real, 1.0, impl=impl)
    w = float(torch.rand(()) * 10)
    gamma = torch.tensor(w, requires_grad=True)
    for g, value in ((np.float32(w), float(np.float32(w))), (np.int64(3), 3.0), (gamma, w)):
        torch.testing.assert_close(pg.r1_penalty(critic, real, g, impl=impl), value * one)
    (dg,) = torch.autograd.grad(pg.r1_penalty(critic, real, gamma, impl=impl), gamma)
    torch.testing.assert_close(dg, one.detach())  # multiplied in as a tensor


@pytest.mark.parametrize("impl", IMPLS)
def test_gamma_defaults_to_10(impl):
    """gamma has StyleGAN2's default, 10 (r1_penalty.DEFAULT_GAMMA), in both spellings."""
    import inspect

    from pyfast_gan.ops.r1_penalty import DEFAULT_GAMMA

    assert DEFAULT_GAMMA == 10.0
    for fn in (pg.r1_penalty, pg.r1_penalty_from_scores):
        assert inspect.signature(fn).parameters["gamma"].default == 10.0
    critic, real = SmoothMLPCritic(), torch.randn(4, 7)
    torch.testing.assert_close(pg.r1_penalty(critic, real, impl=impl), pg.r1_penalty(critic, real, 10.0, impl=impl),
                               rtol=0, atol=0)
    x = real.clone().requires_grad_(True)
    scores = critic(x)
    torch.testing.assert_close(pg.r1_penalty_from_scores(scores, x, impl=impl),
                               pg.r1_penalty_from_scores(scores, x, 10.0, impl=impl), rtol=0, atol=0)
    torch.testing.assert_close(pg.r1_penalty(critic, real, impl=impl), r1_autograd(critic, real, 10.0))


@pytest.mark.parametrize("impl", IMPLS)
def test_scaler_fp32(impl):
    critic, real = conv_critic(), torch.randn(4, 3, 11, 12)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    torch.testing.assert_close(pg.r1_penalty(critic, real, 5.0, scaler=scaler, impl=impl),
                               r1_autograd(critic, real, 5.0), atol=2e-5, rtol=1e-4)


def test_errors_and_warnings():
    critic, r = SmoothMLPCritic(), torch.randn(4, 7)
    with pytest.raises(ValueError, match="real must be a tensor"):
        pg.r1_penalty(critic, [1.0], 10.0)
    with pytest.raises(ValueError, match="real must have a batch dim"):
        pg.r1_penalty(critic, torch.randn(7), 10.0)
    with pytest.raises(ValueError, match="real has an empty batch"):
        pg.r1_penalty(critic, torch.randn(0, 7), 10.0)
    with pytest.raises(ValueError, match="real must be a floating-point tensor"):
        pg.r1_penalty(critic, torch.ones(4, 7, dtype=torch.int64), 10.0)
    with pytest.raises(ValueError, match="gamma must be a finite number or a one-element tensor"):
        pg.r1_penalty(critic, r, float("nan"))
    with pytest.raises(ValueError, match=r"gamma must be a finite number or a one-element tensor, got a tensor"):
        pg.r1_penalty(critic, r, torch.ones(2))
    with pytest.raises(ValueError, match="critic must be callable"):
        pg.r1_penalty("critic", r, 10.0)
    with pytest.raises(ValueError, match="scaler must be a torch.amp.GradScaler"):
        pg.r1_penalty(critic, r, 10.0, scaler=2.0)
    with pytest.raises(ValueError, match="impl must be one of"):
        pg.r1_penalty(critic, r, 10.0, impl="fast")
    with pytest.raises(ValueError, match=r"critic output must have one value per sample.*got \(4, 2\)"):
        pg.r1_penalty(torch.nn.Linear(7, 2), r, 10.0)
    with torch.no_grad(), pytest.raises(ValueError, match="gradient mode is off"):
        pg.r1_penalty(critic, r, 10.0)
    with torch.inference_mode():
        r_inf = torch.randn(4, 7)
    # A batch made under inference mode is usable outside it.
    torch.testing.assert_close(pg.r1_penalty(critic, r_inf, 10.0), r1_autograd(critic, r_inf.clone(), 10.0))
    bn = torch.nn.Sequential(torch.nn.Linear(7, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    with pytest.warns(RuntimeWarning, match="r1_penalty: critic Sequential normalises with batch statistics"):
        pg.r1_penalty(bn, r, 10.0)


def test_readme_example(readme_example):
    ns = {}
    exec(readme_example("pyfast_gan.r1_penalty("), ns)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ns["critic"].parameters())


# --- R1 from the scores a loop already has --------------------------------------------------

def bn_critic():
    return torch.nn.Sequential(torch.nn.Linear(7, 16), torch.nn.BatchNorm1d(16), torch.nn.Softplus(),
                               torch.nn.Linear(16, 1))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ["mlp", "conv", "head"])
def test_from_scores_matches_the_plain_formula(impl, case):
    """StudioGAN's R1 (scores of a forward with real.requires_grad_(), gradient of their sum,
    0.5 * sum of squares per sample, times gamma): the same value and parameter gradients;
    bit for bit for impl="reference" against the norm-squared spelling of the same formula."""
    make, shape = CASES[case]
    critic = make()
    params = list(critic.parameters())
    real = torch.randn(shape).requires_grad_(True)
    scores = critic(real)
    r1 = pg.r1_penalty_from_scores(scores, real, 10.0, impl=impl)
    (g,) = torch.autograd.grad(scores.sum(), real, create_graph=True)
    studiogan = 10.0 * (0.5 * g.pow(2).contiguous().view(shape[0], -1).sum(1).mean(0))
    norm_squared = 10.0 / 2 * (g.flatten(1).norm(2, dim=1) ** 2).mean()
    assert r1.item() > 0
    if impl == "reference":
        assert torch.equal(r1, norm_squared)
    torch.testing.assert_close(r1, studiogan, atol=2e-5, rtol=1e-4)
    grads = torch.autograd.grad(r1, params, allow_unused=True, materialize_grads=True, retain_graph=True)
    ref_grads = torch.autograd.grad(studiogan, params, allow_unused=True, materialize_grads=True)
    assert any(x.abs().sum() > 0 for x in grads)
    for x, y in zip(grads, ref_grads):
        torch.testing.assert_close(x, y, atol=2e-5, rtol=1e-4)
    # The critic's own r1_penalty at the same reals (its own leaf) agrees.
    torch.testing.assert_close(r1, pg.r1_penalty(critic, real, 10.0, impl=impl), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_from_scores_leaves_batch_norm_statistics_alone(impl):
    """One forward in the loop, one update of the running statistics: r1_penalty_from_scores
    adds none (r1_penalty runs a forward of its own and adds one)."""
    critic = bn_critic()
    real = torch.randn(8, 7).requires_grad_(True)
    scores = critic(real)
    after_forward = {k: v.clone() for k, v in critic.state_dict().items()}
    loss = torch.nn.functional.softplus(-scores).mean() + pg.r1_penalty_from_scores(scores, real, 10.0, impl=impl)
    loss.backward()
    state = critic.state_dict()
    assert int(state["1.num_batches_tracked"]) == 1
    assert all(torch.equal(state[k], v) for k, v in after_forward.items())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the batch-statistics warning, once per process
        pg.r1_penalty(critic, real, 10.0, impl=impl)
    assert int(critic.state_dict()["1.num_batches_tracked"]) == 2
    assert not torch.equal(critic.state_dict()["1.running_mean"], after_forward["1.running_mean"])


def test_from_scores_errors():
    critic, r = SmoothMLPCritic(), torch.randn(4, 7)
    with pytest.raises(ValueError, match=r"real must require grad: call real.requires_grad_\(\) before"):
        pg.r1_penalty_from_scores(critic(r), r, 10.0)
    x = r.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="scores were not computed from real"):
        pg.r1_penalty_from_scores(critic(torch.randn(4, 7)), x, 10.0)
    with pytest.raises(ValueError, match="scores does not depend on its input"):
        pg.r1_penalty_from_scores(torch.randn(4), x, 10.0)
    with pytest.raises(ValueError, match=r"scores must have one value per sample, shape \(4,\) or \(4, 1, \.\.\.\); "
                                         r"got \(2, 2\)"):
        pg.r1_penalty_from_scores(critic(x).view(2, 2), x, 10.0)
    with pytest.raises(ValueError, match="scores must be a tensor"):
        pg.r1_penalty_from_scores([1.0], x, 10.0)
    with pytest.raises(ValueError, match="gamma must be a finite number"):
        pg.r1_penalty_from_scores(critic(x), x, float("inf"))
    with pytest.raises(ValueError, match="scaler must be a torch.amp.GradScaler"):
        pg.r1_penalty_from_scores(critic(x), x, 10.0, scaler=2.0)
    with pytest.raises(ValueError, match="impl must be one of"):
        pg.r1_penalty_from_scores(critic(x), x, 10.0, impl="fast")
    with pytest.raises(ValueError, match="real has an empty batch"):
        pg.r1_penalty_from_scores(critic(x), torch.randn(0, 7), 10.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_from_scores_scaler_fp32(impl):
    critic = conv_critic()
    real = torch.randn(4, 3, 11, 12).requires_grad_(True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    r1 = pg.r1_penalty_from_scores(critic(real), real, 5.0, scaler=scaler, impl=impl)
    torch.testing.assert_close(r1, r1_autograd(critic, real, 5.0), atol=2e-5, rtol=1e-4)


def test_readme_example_from_scores(readme_example):
    ns = {}
    exec(readme_example("pyfast_gan.r1_penalty_from_scores("), ns)
    assert int(ns["critic"][2].num_batches_tracked) == 2  # real and fake: one forward each
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ns["critic"].parameters())
