"""Data parallel on CPU with gloo: 2 processes x batch B == 1 process x batch 2B.

The critic has no batch norm (a batch norm critic differs by construction: statistics per
process) and the per-sample alphas and noise are the same split of one global draw.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from pyfast_gan.fast import distributed as fd
from pyfast_gan.fast.compile import CriticObjective

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


def _train_one_iteration(kind, real, z_d, z_g, alpha, sync):
    """One WGAN-GP critic step and one generator step; returns (D and G grads, D params,
    G params)."""
    G, D = _models(kind)
    if fd.is_distributed() and fd.get_rank() != 0:
        with torch.no_grad():  # different start on rank 1: broadcast must fix it
            for p in list(G.parameters()) + list(D.parameters()):
                p.add_(1.0)
    fd.broadcast_module(G)
    fd.broadcast_module(D)
    # SGD, not Adam: Adam's first step is lr * g/(|g|+eps), which turns rounding noise in a
    # gradient that is exactly zero in theory (the critic's last bias under the WGAN loss)
    # into a full-size step of either sign.
    opt_d = torch.optim.SGD(D.parameters(), lr=0.1)
    opt_g = torch.optim.SGD(G.parameters(), lr=0.1)
    objective = CriticObjective("wgan-gp", mode="eager", impl="reference")

    def gen(z):
        out = G(z)
        return out if kind == "mlp" else out.view(-1, 3, 32, 32)

    with torch.no_grad():
        fake = gen(z_d)
    opt_d.zero_grad(set_to_none=True)
    loss, _ = objective(D, real, fake, 0, alpha=alpha)
    loss.backward()
    sync(D)
    d_grads = [p.grad.clone() for p in D.parameters()]
    opt_d.step()

    for p in D.parameters():
        p.requires_grad_(False)
    opt_g.zero_grad(set_to_none=True)
    g_loss = -D(gen(z_g)).mean()
    g_loss.backward()
    for p in D.parameters():
        p.requires_grad_(True)
    sync(G)
    g_grads = [p.grad.clone() for p in G.parameters()]
    opt_g.step()
    return (d_grads + g_grads, [p.detach().clone() for p in D.parameters()],
            [p.detach().clone() for p in G.parameters()])


def _worker(rank, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        r, w, lr = fd.init_distributed(device="cpu")
        assert (r, w, lr) == (rank, WORLD, rank)
        assert fd.is_main_process() == (rank == 0)
        idx = fd.shard_indices(WORLD * B, B, shuffle=False)[0]
        results = {}
        for kind in KINDS:
            real, z_d, z_g, alpha = _global_batch(kind)
            results[kind] = _train_one_iteration(kind, real[idx], z_d[idx], z_g[idx],
                                                 alpha[idx], fd.allreduce_grads_)
        fd.barrier()
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
        grads, d_params, g_params = results[kind]
        real, z_d, z_g, alpha = _global_batch(kind)
        ref_grads, ref_d, ref_g = _train_one_iteration(kind, real, z_d, z_g, alpha,
                                                       lambda m: None)
        assert len(grads) == len(ref_grads)
        # fp32 sums over 3+3 samples vs 6 samples differ in rounding (conv weight grads)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, atol=2e-5 * max(b.abs().max().item(), 1.0), rtol=1e-4)
        for a, b in zip(d_params + g_params, ref_d + ref_g):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        # the step really moved the weights (penalty gradients included)
        G0, D0 = _models(kind)
        assert all((a - b).abs().max() > 1e-4
                   for a, b in zip(d_params, D0.parameters()) if a.dim() > 1)


def test_shard_indices_partition_and_match_global_batches():
    n, b, w = 23, 3, 3
    shards = [fd.shard_indices(n, b, rank=r, world_size=w, seed=5, epoch=2) for r in range(w)]
    assert all(s.shape == (n // (b * w), b) for s in shards)
    flat = torch.cat([s.reshape(-1) for s in shards])
    assert flat.unique().numel() == flat.numel()  # disjoint
    one = fd.shard_indices(n, b * w, rank=0, world_size=1, seed=5, epoch=2)
    torch.testing.assert_close(torch.cat(shards, dim=1), one)  # rank r = slice r of global batch
    other_epoch = fd.shard_indices(n, b, rank=0, world_size=w, seed=5, epoch=3)
    assert not torch.equal(other_epoch, shards[0])
    with pytest.raises(ValueError, match="rank"):
        fd.shard_indices(n, b, rank=3, world_size=3)
    with pytest.raises(ValueError, match="batch_size"):
        fd.shard_indices(n, 0, rank=0, world_size=1)
    with pytest.raises(ValueError, match="global batch"):
        fd.shard_indices(5, 3, rank=0, world_size=2)


def test_single_process_is_a_noop(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert fd.init_distributed() == (0, 1, 0)
    assert fd.is_main_process() and fd.get_world_size() == 1
    m = torch.nn.Linear(3, 2)
    m(torch.randn(4, 3)).sum().backward()
    before = [p.grad.clone() for p in m.parameters()]
    fd.allreduce_grads_(m)
    fd.broadcast_module(m)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, m.parameters()))


def test_missing_torchrun_variables_raise(monkeypatch):
    for k, v in dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ValueError, match="MASTER_PORT"):
        fd.init_distributed()
