"""`torchrun --nproc_per_node=2 -m pyfast_gan.train` on CPU (gloo): outputs written once by
rank 0, the data consumed in global batches, per-rank noise, and a resume of that run on
one process. (2 processes x B == 1 process x 2B is tests/test_distributed.py.)"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyfast_gan.train import main

B, N_CRITIC, STEPS, WORLD = 8, 2, 8, 2
TINY = ["--base", "4", "--z-dim", "8", "--batch-size", str(B), "--n-critic", str(N_CRITIC),
        "--n-samples", "9", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_jsonl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    # One thread per process: two processes already fill the shared 2-core runner.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
           "--nnodes", "1", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "pyfast_gan.train", "--steps", str(STEPS), "--log-every", "4",
           "--sample-every", "4", "--checkpoint-every", "4", "--out", str(out), *TINY]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    return out, r.stdout + r.stderr


def test_two_process_cli_writes_outputs_once(two_process_run):
    out, log = two_process_run
    # rank 0 alone prints and writes
    assert log.count("resolved config:") == 1 and log.count("done: ") == 1
    assert f"{WORLD} processes (global batch {WORLD * B})" in log
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["batch_size"] == B and cfg["steps"] == STEPS
    recs = [r for r in _read_jsonl(out / "metrics.jsonl") if "loss_d" in r]
    assert [r["step"] for r in recs] == [4, 8]  # one line per log step, not one per rank
    assert all(math.isfinite(r["loss_d"]) and math.isfinite(r["loss_g"]) for r in recs)
    assert recs[0]["img_per_s"] is None and recs[-1]["img_per_s"] > 0
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_000004.png", "step_000008.png"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "latest.pt", "step_000004.pt", "step_000008.pt"]
    ck = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    assert ck["step"] == STEPS and ck["critic_steps"] == STEPS * N_CRITIC and ck["world_size"] == WORLD
    # the data position counts global batches: both ranks' shards of every critic step
    assert ck["data"]["offset"] == STEPS * N_CRITIC * B * WORLD
    # each rank has its own noise stream, all of them kept for an exact same-size resume
    assert len(ck["rng_ranks"]) == WORLD
    assert not torch.equal(ck["rng_ranks"][0]["torch_cpu"], ck["rng_ranks"][1]["torch_cpu"])
    assert all(torch.isfinite(v).all() for v in ck["G"].values() if v.is_floating_point())


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_resume_two_process_checkpoint_on_one_process(two_process_run, tmp_path, one_thread):
    src, _ = two_process_run
    out = tmp_path / "resumed"
    before = torch.load(src / "checkpoints" / "latest.pt", weights_only=False)
    seen = {}

    def on_start(run):
        seen["G"] = {k: v.clone() for k, v in run.G.state_dict().items()}
        seen["opt_d_steps"] = [float(s["step"]) for s in run.opt_d.state.values()]

    assert main(["--resume", str(src), "--steps", str(STEPS + 4), "--out", str(out),
                 "--log-every", "2", "--no-progress"], hooks={"on_start": on_start}) == 0
    # the checkpoint's single model and optimizer state is what the run continued from
    for k, v in before["G"].items():
        assert torch.equal(seen["G"][k], v), k
    assert seen["opt_d_steps"] and all(s == STEPS * N_CRITIC for s in seen["opt_d_steps"])
    recs = [r for r in _read_jsonl(out / "metrics.jsonl") if "loss_d" in r]
    assert [r["step"] for r in recs] == [STEPS + 2, STEPS + 4]
    ck = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    assert ck["step"] == STEPS + 4 and ck["world_size"] == 1
    # one process continues the same permutation with batches of B
    assert ck["data"]["offset"] == STEPS * N_CRITIC * B * WORLD + 4 * N_CRITIC * B
    assert ck["config"]["batch_size"] == B


def _skip_worker(rank, port, out_path):
    from pyfast_gan.step import distributed as fd
    from pyfast_gan.losses import get_loss
    from pyfast_gan.step.step import GANStep
    from pyfast_gan.models import MLPCritic, MLPGenerator

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        fd.init_distributed(device="cpu")
        torch.manual_seed(0)
        G, D = MLPGenerator(z_dim=2, hidden=8, depth=1), MLPCritic(in_dim=2, hidden=8, depth=1)
        opt_g = torch.optim.Adam(G.parameters(), lr=0.1, fused=True)
        opt_d = torch.optim.Adam(D.parameters(), lr=0.1, fused=True)
        step = GANStep(G, D, opt_g, opt_d, get_loss("wgan-gp"), z_dim=2, grad_sync=fd.allreduce_grads_)
        torch.manual_seed(100 + rank)
        skipped = []
        # step 0: only rank 1's batch is non-finite: both ranks must skip (the flag travels
        # with the all-reduced gradients). step 1: all finite, both apply.
        for i in range(2):
            real = torch.randn(4, 2)
            if i == 0 and rank == 1:
                real[0, 0] = float("nan")
            skipped.append(float(step.critic_step(real)["skipped"]))
        params = torch.cat([p.detach().reshape(-1) for p in D.parameters()])
        gathered = [torch.zeros_like(params) for _ in range(WORLD)]
        torch.distributed.all_gather(gathered, params)
        if rank == 0:
            torch.save({"skipped": skipped, "params": gathered, "health": step.health()}, out_path)
    finally:
        fd.cleanup()


def test_nonfinite_skip_is_agreed_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "skip.pt")
    mp.start_processes(_skip_worker, args=(_free_port(), out), nprocs=WORLD, join=True,
                       start_method="spawn")
    r = torch.load(out)
    assert r["skipped"] == [1.0, 0.0] and r["health"] == {"streak_d": 0, "streak_g": 0, "total": 1}
    torch.testing.assert_close(r["params"][0], r["params"][1], rtol=0, atol=0)
    from pyfast_gan.models import MLPCritic, MLPGenerator

    torch.manual_seed(0)
    MLPGenerator(z_dim=2, hidden=8, depth=1)
    start = torch.cat([p.detach().reshape(-1) for p in MLPCritic(in_dim=2, hidden=8, depth=1).parameters()])
    assert (r["params"][0] - start).abs().max() > 1e-4  # the second step did move them
