"""CUDA-graph capture of the critic and generator steps (CUDA only; skipped here).

The graphed step must equal the eager GANStep given the same inputs (real, z, alpha), leave
no trace of its warm-up on the weights, skip a non-finite step as the eager one does, and
fall back with one message where it cannot run.
"""
from __future__ import annotations

import copy

import pytest
import torch

from pyfast_gan import _native
from pyfast_gan.step.cuda_graphs import (GraphedStep, _restore, _snapshot, _training_state,
                                         cuda_graphs_unsupported_reason, graph_step, uses_triton_multi_tensor)
from pyfast_gan.step.step import GANStep, build_optimizers
from pyfast_gan.losses import PRESETS, get_loss
from pyfast_gan.models import EMA, build_models


def _step(device, loss="wgan-gp", amp="off", capturable=True, seed=0, ema=False, impl="auto"):
    torch.manual_seed(seed)
    G, D = build_models("dcgan", image_size=32, channels=3, z_dim=16, base=8,
                        critic_norm="layer" if loss == "wgan-gp" else "batch")
    G, D = G.to(device), D.to(device)
    p, loss = PRESETS[loss], get_loss(loss)
    opt_g, opt_d, clip = build_optimizers(G, D, loss=loss, optimizer=p["optimizer"], lr=p["lr"],
                                          betas=p.get("betas", (0.0, 0.9)), capturable=capturable, impl=impl)
    return GANStep(G, D, opt_g, opt_d, loss, z_dim=16, clip_after=clip, amp=amp, impl=impl,
                   ema=EMA(G, 0.9) if ema else None)


def _state(step):
    return [t.detach().clone() for t in _training_state(step)]


@pytest.mark.parametrize("loss", ["wgan-gp", "began"])
def test_snapshot_covers_everything_a_step_moves(loss):
    """The warm-up before a capture runs real steps; restoring the snapshot must undo every
    change they make: weights and optimizer state, and also the EMA weights, the non-finite
    counters (a skipped warm-up step) and BEGAN's k_t (it moves after each generator step)."""
    step = _step("cpu", loss=loss, capturable=False, ema=True)
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    step.critic_step(real)
    step.generator_step(4)  # optimizer state exists before the snapshot, as after a resume
    before = _state(step)
    snap = _snapshot(step)
    step.critic_step(real)
    step.critic_step(torch.full_like(real, float("nan")))  # skipped: counters move
    step.generator_step(4)
    moved = [not torch.equal(a, b) for a, b in zip(before, _state(step))]
    assert any(moved)
    ema = step.ema.module
    assert not all(torch.equal(a, b) for a, b in zip(ema.parameters(), step.G.parameters()))
    _restore(step, snap)
    for i, (a, b) in enumerate(zip(before, _state(step))):
        assert torch.equal(a, b), i
    assert step.health()["total"] == 0


def test_triton_clip_kernels_are_refused_for_capture():
    """The Triton clip/RMSprop kernels upload a pointer table per call, which a capture
    forbids: a step that would run them on a GPU is not captured, with that reason."""
    pytest.importorskip("triton")
    assert uses_triton_multi_tensor(_step("cpu", loss="wgan", capturable=False, impl="triton"))
    assert not uses_triton_multi_tensor(_step("cpu", loss="wgan-gp", capturable=False, impl="triton"))
    if _native.has_cuda_kernels("clip"):
        assert not uses_triton_multi_tensor(_step("cpu", loss="wgan", capturable=False, impl="auto"))


def test_peek_leaves_no_gather_in_flight():
    """``peek`` (the capture's example batch) must not leave the batcher's background gather
    running: a capture that starts while it pins memory or copies to the device fails."""
    import threading
    import time

    from pyfast_gan.data.batch import MappedBatcher, peek

    done = threading.Event()

    class SlowRows:
        def gather(self, idx, pin=False):
            time.sleep(0.2)
            out = data.index_select(0, idx)
            done.set()
            return out

    data = torch.randint(0, 255, (40, 1, 4, 4), dtype=torch.uint8)
    bt = MappedBatcher(data, torch.device("cpu"), torch.Generator().manual_seed(0), rows=SlowRows(), say=lambda m: 0)
    first = peek(bt, 8)
    assert done.is_set() and bt._ahead is None
    done.clear()
    assert torch.equal(bt.next(8), first)  # peek did not move the data position


def test_cpu_step_falls_back_with_a_message():
    step = _step("cpu", capturable=False)
    assert "CUDA" in cuda_graphs_unsupported_reason(step)
    assert isinstance(step, GANStep)
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
        sg = graphed.critic_step(real, alpha=alpha, z=z)
        torch.testing.assert_close(sg["loss_d"], se["loss_d"], **tol)
        ge = eager.generator_step(n, z=zg)
        gg = graphed.generator_step(n, z=zg)
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
    a = graphed.critic_step(real)["loss_d"]
    b = graphed.critic_step(real)["loss_d"]
    assert torch.isfinite(a) and torch.isfinite(b) and not torch.equal(a, b)
    # a NaN batch is skipped inside the graph as in the eager step, and counted
    before = [p.detach().clone() for p in graphed.D.parameters()]
    s = graphed.critic_step(torch.full_like(real, float("nan")))
    assert float(s["skipped"]) == 1.0 and graphed.health()["total"] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, graphed.D.parameters()))


@pytest.mark.cuda
def test_fp16_lazy_gp_and_non_capturable_fall_back():
    dev = torch.device("cuda")
    assert "capturable" in cuda_graphs_unsupported_reason(_step(dev, capturable=False))
    step = _step(dev, amp="fp16")
    assert "fp16" in cuda_graphs_unsupported_reason(step)
    step2 = _step(dev)
    step2.objective.every = 4
    assert "lazy_gp" in cuda_graphs_unsupported_reason(step2)
    step3 = copy.copy(step2)
    step3.objective = copy.copy(step2.objective)
    step3.objective.every = 1
    assert cuda_graphs_unsupported_reason(step3) is None


@pytest.mark.cuda
def test_graph_capture_leaves_ema_and_counters_untouched():
    dev = torch.device("cuda")
    step = _step(dev, ema=True)
    ema_before = [t.detach().clone() for t in step.ema.module.state_dict().values()]
    graphed = graph_step(step, torch.randn(4, 3, 32, 32, device=dev))
    assert isinstance(graphed, GraphedStep)
    for a, b in zip(ema_before, step.ema.module.state_dict().values()):
        assert torch.equal(a, b)
    assert step.health() == {"streak_d": 0, "streak_g": 0, "total": 0}


@pytest.mark.cuda
def test_triton_clip_step_is_not_captured():
    pytest.importorskip("triton")
    step = _step(torch.device("cuda"), loss="wgan", impl="triton")
    assert "Triton" in cuda_graphs_unsupported_reason(step)
