"""CUDA-graph capture of the critic and generator steps (CUDA only; skipped here).

The graphed step must equal the eager step given the same inputs (real, z, alpha), leave
no trace of its warm-up on the weights, and fall back with one message where it cannot run.
"""
from __future__ import annotations

import copy

import pytest
import torch

from pyfast_gan.fast.cuda_graphs import GraphedStep, cuda_graphs_unsupported_reason, graph_step
from pyfast_gan.fast.step import FastStep, make_optimizers
from pyfast_gan.models import DCGANCritic, DCGANGenerator


def _step(device, loss="wgan-gp", amp="off", capturable=True, seed=0):
    torch.manual_seed(seed)
    G = DCGANGenerator(32, 3, z_dim=16, base=8).to(device)
    D = DCGANCritic(32, 3, base=8, norm="layer" if loss == "wgan-gp" else "batch").to(device)
    lr = 5e-5 if loss == "wgan" else 1e-4
    opt_g, opt_d, clip = make_optimizers(G, D, loss, lr=lr, capturable=capturable)
    return FastStep(G, D, opt_g, opt_d, loss, z_dim=16, clip_after_step=clip, amp=amp)


def test_cpu_step_falls_back_with_a_message():
    step = _step("cpu", capturable=False)
    assert "CUDA" in cuda_graphs_unsupported_reason(step)
    with pytest.warns(RuntimeWarning, match="CUDA graphs disabled"):
        assert graph_step(step, torch.randn(4, 3, 32, 32)) is step


@pytest.mark.cuda
@pytest.mark.parametrize("loss,amp", [("wgan-gp", "off"), ("wgan-gp", "bf16"), ("wgan", "off"),
                                      ("dcgan", "off")])
def test_graphed_steps_equal_eager_steps(loss, amp):
    dev = torch.device("cuda")
    n = 6
    eager = _step(dev, loss, amp)
    graphed_src = _step(dev, loss, amp)
    start = [p.detach().clone() for p in graphed_src.D.parameters()]
    graphed = graph_step(graphed_src, torch.randn(n, 3, 32, 32, device=dev))
    assert isinstance(graphed, GraphedStep)
    # warm-up and capture leave the weights as they were
    for a, b in zip(start, graphed_src.D.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    tol = dict(atol=1e-4, rtol=1e-3) if amp == "off" else dict(atol=2e-2, rtol=2e-2)
    g = torch.Generator(device=dev).manual_seed(1)
    for _ in range(3):
        real = torch.rand(n, 3, 32, 32, device=dev, generator=g) * 2 - 1
        z = torch.randn(n, 16, device=dev, generator=g)
        zg = torch.randn(n, 16, device=dev, generator=g)
        alpha = torch.rand(n, device=dev, generator=g)
        se = eager.critic_step(real, alpha=alpha, z=z)
        sg = {k: v.clone() for k, v in graphed.critic_step(real, alpha=alpha, z=z).items()}
        torch.testing.assert_close(sg["loss_d"], se["loss_d"], **tol)
        ge = eager.generator_step(n, z=zg)
        gg = {k: v.clone() for k, v in graphed.generator_step(n, z=zg).items()}
        torch.testing.assert_close(gg["loss_g"], ge["loss_g"], **tol)
    for a, b in zip(eager.D.parameters(), graphed_src.D.parameters()):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(eager.G.parameters(), graphed_src.G.parameters()):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.cuda
def test_graphed_step_rejects_other_shapes_and_draws_fresh_noise():
    dev = torch.device("cuda")
    graphed = graph_step(_step(dev), torch.randn(4, 3, 32, 32, device=dev))
    with pytest.raises(ValueError, match="captured shape"):
        graphed.critic_step(torch.randn(3, 3, 32, 32, device=dev))
    with pytest.raises(ValueError, match="batch_size"):
        graphed.generator_step(5)
    real = torch.randn(4, 3, 32, 32, device=dev)
    a = graphed.critic_step(real)["loss_d"].clone()
    b = graphed.critic_step(real)["loss_d"].clone()
    assert torch.isfinite(a) and torch.isfinite(b) and not torch.equal(a, b)


@pytest.mark.cuda
def test_fp16_and_lazy_gp_fall_back():
    dev = torch.device("cuda")
    step = _step(dev, amp="fp16")
    assert "fp16" in cuda_graphs_unsupported_reason(step)
    step2 = _step(dev)
    step2.objective.every = 4
    assert "lazy_gp" in cuda_graphs_unsupported_reason(step2)
    step3 = copy.copy(step2)
    step3.objective = copy.copy(step2.objective)
    step3.objective.every = 1
    assert cuda_graphs_unsupported_reason(step3) is None
