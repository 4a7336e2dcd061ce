"""25-Gaussians mode coverage of the default toy WGAN-GP run, and the --lr-decay schedule."""
from __future__ import annotations

import json

import pytest
import torch

from pyfast_gan.data import ToySampler
from pyfast_gan.metrics import mode_coverage
from pyfast_gan.models import MLPGenerator
from pyfast_gan.train import main, parse_args, resolve


def _run(argv):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the measured default run is single-threaded
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)


def _load(out):
    return torch.load(out / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)


def test_toy_wgan_gp_defaults():
    cfg = resolve(*parse_args(["--data", "25gaussians"]), cuda_available=False)
    assert (cfg.loss, cfg.arch, cfg.n_critic, cfg.gp_weight, cfg.betas) == ("wgan-gp", "mlp", 5, 0.1, (0.5, 0.9))
    assert (cfg.lr, cfg.lr_decay, cfg.steps) == (1e-3, "linear", 3000)
    # Explicit flags still win over the toy defaults.
    cfg = resolve(*parse_args(["--data", "25gaussians", "--lr-decay", "none", "--lr", "1e-4"]),
                  cuda_available=False)
    assert (cfg.lr, cfg.lr_decay) == (1e-4, "none")
    # Image data keeps a constant lr.
    assert resolve(*parse_args([]), cuda_available=False).lr_decay == "none"


@pytest.mark.parametrize("lr_g", [0.0, 3e-4])
def test_lr_decay_linear_reaches_the_last_step(tmp_path, lr_g):
    out = tmp_path / "run"
    _run(["--data", "8gaussians", "--base", "16", "--batch-size", "32", "--n-critic", "2",
          "--steps", "7", "--lr", "2e-3", "--lr-g", str(lr_g), "--lr-decay", "linear",
          "--sample-every", "7", "--log-every", "1", "--n-samples", "64", "--seed", "3",
          "--out", str(out), "--no-progress", "--device", "cpu"])
    ck = _load(out)
    # The last update (step index 6 of 7) ran at lr * (1 - 6/7).
    frac = 1 - 6 / 7
    assert ck["opt_d"]["param_groups"][0]["lr"] == pytest.approx(2e-3 * frac, rel=1e-12)
    assert ck["opt_g"]["param_groups"][0]["lr"] == pytest.approx((lr_g or 2e-3) * frac, rel=1e-12)
    saved = json.loads((out / "config.json").read_text())
    assert saved["lr_decay"] == "linear"


def test_lr_decay_resume_is_exact(tmp_path):
    common = ["--data", "25gaussians", "--base", "16", "--batch-size", "32", "--n-critic", "2",
              "--steps", "10", "--lr", "1e-3", "--lr-decay", "linear", "--sample-every", "5",
              "--checkpoint-every", "5", "--n-samples", "64", "--seed", "5", "--no-progress",
              "--device", "cpu"]
    _run(common + ["--out", str(tmp_path / "full")])
    # Continue from the step-5 checkpoint: the schedule must pick up at step 5 of 10.
    ck5 = tmp_path / "full" / "checkpoints" / "step_000005.pt"
    resumed = tmp_path / "resumed"
    _run(["--resume", str(ck5), "--out", str(resumed), "--no-progress"])
    a, b = _load(tmp_path / "full"), _load(resumed)
    assert a["step"] == b["step"] == 10
    for k in a["G"]:
        assert torch.equal(a["G"][k], b["G"][k]), k
    for k in a["D"]:
        assert torch.equal(a["D"][k], b["D"][k]), k
    assert a["opt_g"]["param_groups"][0]["lr"] == b["opt_g"]["param_groups"][0]["lr"]


@pytest.mark.slow
def test_default_toy_wgan_gp_covers_25_gaussians(tmp_path):
    """The default ``python -m pyfast_gan.train --data 25gaussians`` run (3000 steps, about
    5 minutes on one thread of a shared 2-core CPU) must cover >= 20 of the 25 modes
    (23 measured for seed 0)."""
    out = tmp_path / "toy"
    _run(["--data", "25gaussians", "--out", str(out), "--no-progress", "--device", "cpu"])
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if "modes_covered" in e]
    assert evals[-1]["step"] == 3000
    assert evals[-1]["modes_covered"] >= 20, evals[-1]
    # The same from the final checkpoint, on fresh noise the training loop never saw.
    ck = _load(out)
    G = MLPGenerator(z_dim=2, out_dim=2, hidden=128)
    G.load_state_dict(ck["G"])
    with torch.no_grad():
        x = G(torch.randn(2500, 2, generator=torch.Generator().manual_seed(1234)))
    toy = ToySampler("25gaussians")
    cov = mode_coverage(x, toy.modes, toy.std)
    assert cov["covered"] >= 20, cov
