"""Convergence tests (Liger-Kernel style): the same training run with the fused kernels
(impl="auto" -> the C++ CPU kernels here) and with the plain-PyTorch reference, same seed,
gives the same losses over 50 steps within a tolerance; and WGAN-GP on 25 Gaussians
actually covers the modes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pyfast_gan.ops._dispatch import resolve as resolve_impl
from pyfast_gan.train import main


pytestmark = pytest.mark.usefixtures("one_thread")


def _train_records(out: Path) -> list[dict]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in recs if "loss_d" in r]


CASES = {
    # lr pinned (not the toy default, which is tuned for mode coverage at 1e-3 with decay):
    # this test compares kernels, and rounding differences grow with the step size.
    "toy-8gaussians": ["--data", "8gaussians", "--base", "64", "--batch-size", "64",
                       "--lr", "2e-4", "--lr-decay", "none"],
    "digits-dcgan": ["--base", "4", "--z-dim", "16", "--batch-size", "16", "--lr", "1e-4", "--betas", "0", "0.9"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_fused_kernels_match_reference_training(tmp_path, case):
    dev = torch.device("cpu")
    if resolve_impl("gradient_penalty", "penalty", "auto", dev) == "reference":
        pytest.skip("the native penalty kernels are not built")
    runs = {}
    for impl in ("auto", "reference"):
        out = tmp_path / impl
        rc = main(["--loss", "wgan-gp", *CASES[case], "--steps", "50", "--n-critic", "5", "--seed", "3",
                   "--impl", impl, "--out", str(out), "--log-every", "1", "--sample-every", "1000",
                   "--n-samples", "16", "--no-progress"])
        assert rc == 0
        runs[impl] = _train_records(out)
    a, b = runs["auto"], runs["reference"]
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 51))
    for key in ("loss_d", "loss_g", "wasserstein", "gp"):
        x = np.array([r[key] for r in a])
        y = np.array([r[key] for r in b])
        assert np.isfinite(x).all() and np.isfinite(y).all(), key
        # Float rounding differs between the kernels (fp32 accumulation order), and GAN
        # training amplifies it; scale the tolerance to the quantity's range.
        scale = max(np.abs(y).max(), 1e-3)
        np.testing.assert_allclose(x, y, rtol=0, atol=2e-3 * scale, err_msg=key)
    # The losses moved: this compared a training run, not a constant.
    d = np.array([r["wasserstein"] for r in b])
    assert d.std() > 1e-3


def _mode_to_sample_distance(G, modes: torch.Tensor, n: int = 2000) -> float:
    """Mean over the modes of the distance to the nearest generated sample (a recall
    measure: small only when samples reach every mode)."""
    with torch.no_grad():
        x = G(torch.randn(n, 2, generator=torch.Generator().manual_seed(123)))
    return float(torch.cdist(modes, x).min(dim=1).values.mean())


def test_wgan_gp_moves_mass_onto_the_25_gaussians(tmp_path):
    """A short run with the toy defaults (the >= 20 of 25 modes figure after the default
    number of steps is measured by hand; see the issue-4 note): the generator's samples
    must move from the initial blob to the modes."""
    from pyfast_gan.data import ToySampler

    modes = ToySampler("25gaussians").modes
    seen = {}

    def on_start(run):
        seen["start"] = _mode_to_sample_distance(run.G, modes)

    def on_step(run):
        if run.generator_steps == 200:
            seen["end"] = _mode_to_sample_distance(run.G, modes)

    out = tmp_path / "toy25"
    rc = main(["--data", "25gaussians", "--steps", "200", "--sample-every", "200", "--log-every", "50",
               "--out", str(out), "--no-progress"], hooks={"on_start": on_start, "on_step": on_step})
    assert rc == 0
    # The untrained generator's samples form a small blob near the origin, far from the
    # outer modes (the grid spacing is 0.71); after 200 steps samples reach every mode.
    assert seen["start"] > 0.5, seen
    assert seen["end"] < seen["start"] / 3, seen
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    cov = [r for r in recs if "modes_covered" in r][-1]
    assert cov["num_modes"] == 25 and cov["step"] == 200
