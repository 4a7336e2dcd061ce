"""Data parallel on CPU with gloo, through the trainer's GANStep: 2 processes x batch B ==
1 process x batch 2B.

The critic has no batch norm (a batch norm critic differs by construction: statistics per
process) and the per-sample alphas and noise are the same split of one global draw.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from pyfast_gan.step import distributed as fd
from pyfast_gan.losses import get_loss
from pyfast_gan.step.step import GANStep

B = 3  # per-process batch (odd on purpose)
WORLD = 2
KINDS = ("mlp", "conv")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _models(kind: str):
    from pyfast_gan.models import DCGANCritic, MLPCritic, MLPGenerator

    torch.manual_seed(1234)
    G = MLPGenerator(z_dim=4, out_dim=2 if kind == "mlp" else 3 * 32 * 32, hidden=16, depth=2)
    D = MLPCritic(in_dim=2, hidden=16, depth=2) if kind == "mlp" else DCGANCritic(32, 3, base=4, norm="layer")
    return G, D


def _global_batch(kind: str):
    g = torch.Generator().manual_seed(99)
    shape = (WORLD * B, 2) if kind == "mlp" else (WORLD * B, 3, 32, 32)
    real = torch.randn(shape, generator=g)
    z_d = torch.randn(WORLD * B, 4, generator=g)
    z_g = torch.randn(WORLD * B, 4, generator=g)
    alpha = torch.rand(WORLD * B, generator=g)
    return real, z_d, z_g, alpha


class _Gen(torch.nn.Module):
    def __init__(self, inner, kind):
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, z):
        out = self.inner(z)
        return out if self.kind == "mlp" else out.view(-1, 3, 32, 32)


def _train_one_iteration(kind, real, z_d, z_g, alpha, sync):
    """One WGAN-GP critic step and one generator step of GANStep; returns (stats, D params,
    G params)."""
    G, D = _models(kind)
    if fd.is_distributed() and dist_rank() != 0:
        with torch.no_grad():  # different start on rank 1: broadcast must fix it
            for p in list(G.parameters()) + list(D.parameters()):
                p.add_(1.0)
    fd.broadcast_module(G)
    fd.broadcast_module(D)
    # SGD, not Adam: Adam's first step is lr * g/(|g|+eps), which turns rounding noise in a
    # gradient that is exactly zero in theory (the critic's last bias under the WGAN loss)
    # into a full-size step of either sign. fused=True: it applies the step's skip flag.
    opt_d = torch.optim.SGD(D.parameters(), lr=0.1, fused=True)
    opt_g = torch.optim.SGD(G.parameters(), lr=0.1, fused=True)
    step = GANStep(_Gen(G, kind), D, opt_g, opt_d, get_loss("wgan-gp"), z_dim=4, impl="reference", grad_sync=sync)
    stats = [step.critic_step(real, z=z_d, alpha=alpha), step.generator_step(real.shape[0], z=z_g)]
    assert step.health()["total"] == 0
    return ({k: v for s in stats for k, v in s.items() if k in ("loss_d", "loss_g", "grad_norm_d", "grad_norm_g")},
            [p.detach().clone() for p in D.parameters()], [p.detach().clone() for p in G.parameters()])


def dist_rank() -> int:
    return torch.distributed.get_rank()


def _worker(rank, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        r, w, lr = fd.init_distributed(device="cpu")
        assert (r, w, lr) == (rank, WORLD, rank)
        idx = torch.arange(rank * B, (rank + 1) * B)  # this rank's slice of the global batch
        results = {}
        for kind in KINDS:
            real, z_d, z_g, alpha = _global_batch(kind)
            results[kind] = _train_one_iteration(kind, real[idx], z_d[idx], z_g[idx],
                                                 alpha[idx], fd.allreduce_grads_)
        torch.distributed.barrier()
        if rank == 0:
            torch.save(results, out_path)
    finally:
        fd.cleanup()


def test_two_processes_equal_one_process_double_batch(tmp_path):
    out = str(tmp_path / "dist.pt")
    # one spawn for both models: starting a process costs more than the steps
    mp.start_processes(_worker, args=(_free_port(), out), nprocs=WORLD, join=True,
                       start_method="spawn")
    results = torch.load(out)
    for kind in KINDS:
        stats, d_params, g_params = results[kind]
        real, z_d, z_g, alpha = _global_batch(kind)
        ref_stats, ref_d, ref_g = _train_one_iteration(kind, real, z_d, z_g, alpha, None)
        # the all-reduced gradient norms are the one-process norms (rank 0's loss is its
        # own shard's, so losses are not compared)
        for k in ("grad_norm_d", "grad_norm_g"):
            torch.testing.assert_close(stats[k], ref_stats[k], atol=1e-5, rtol=1e-4)
        # fp32 sums over 3+3 samples vs 6 samples differ in rounding (conv weight grads)
        for a, b in zip(d_params + g_params, ref_d + ref_g):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        # the step really moved the weights (penalty gradients included)
        G0, D0 = _models(kind)
        assert all((a - b).abs().max() > 1e-4
                   for a, b in zip(d_params, D0.parameters()) if a.dim() > 1)


def test_allreduce_carries_the_flag_and_is_a_noop_on_one_process():
    m = torch.nn.Linear(3, 2)
    m(torch.randn(4, 3)).sum().backward()
    flag = torch.tensor(1.0)
    assert fd.allreduce_grads_(m.parameters(), flag) is flag


def test_single_process_is_a_noop(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert fd.init_distributed() == (0, 1, 0)
    assert not fd.is_distributed()
    m = torch.nn.Linear(3, 2)
    m(torch.randn(4, 3)).sum().backward()
    before = [p.grad.clone() for p in m.parameters()]
    fd.allreduce_grads_(m.parameters())
    fd.broadcast_module(m)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, m.parameters()))


def test_missing_torchrun_variables_raise(monkeypatch):
    for k, v in dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ValueError, match="MASTER_PORT"):
        fd.init_distributed()
