"""The whole gradient penalty (interpolate, critic forward, autograd.grad with
create_graph, norm penalty, backward into the critic's parameters) vs the
autograd-only version of the paper's formula, in one run.

    python benchmarks/bench_gradient_penalty.py [--device cpu|cuda] [--batch 64] [--size 64] [--save]

The critic is a DCGAN-style conv critic (width set by --base); the same critic
and inputs serve every variant, timed in interleaved rounds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, print_table, save_results, time_fn  # noqa: E402

import pyfast_gan as pg  # noqa: E402
from pyfast_gan.ops._dispatch import native_available, triton_available  # noqa: E402


def dcgan_critic(size: int, base: int) -> nn.Module:
    layers, c, s = [], 3, size
    while s > 4:
        layers += [nn.Conv2d(c, base, 4, 2, 1), nn.LeakyReLU(0.2)]
        c, base, s = base, base * 2, s // 2
    layers += [nn.Conv2d(c, 1, s, 1, 0), nn.Flatten()]
    return nn.Sequential(*layers)


def autograd_penalty(critic, real, fake, weight=10.0):
    """The usual hand-written WGAN-GP penalty: per-sample alpha, autograd.grad, norm."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = critic(x_hat)
    (g,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return weight * ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--base", type=int, default=16, help="critic width (DCGAN uses 64)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--save", action="store_true")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    critic = dcgan_critic(a.size, a.base).to(device)
    real = torch.randn(a.batch, 3, a.size, a.size, device=device)
    fake = torch.randn(a.batch, 3, a.size, a.size, device=device)

    variants = {"autograd (paper formula)": lambda: autograd_penalty(critic, real, fake),
                "pyfast_gan reference": lambda: pg.gradient_penalty(critic, real, fake, impl="reference")}
    if native_available("penalty", device)[0]:
        variants[f"pyfast_gan {device.type}"] = lambda: pg.gradient_penalty(critic, real, fake, impl=device.type)
    if device.type == "cuda" and triton_available(device)[0]:
        variants["pyfast_gan triton"] = lambda: pg.gradient_penalty(critic, real, fake, impl="triton")

    def make_step(fn):
        def step():
            fn().backward()
            critic.zero_grad(set_to_none=True)

        return step

    steps = {n: make_step(f) for n, f in variants.items()}
    for s in steps.values():
        s()
    med = {n: [] for n in steps}
    mins = {n: [] for n in steps}
    names = list(steps)
    for r in range(a.rounds):
        # Rotate the order each round so no variant always runs first after a switch.
        for n in names[r % len(names):] + names[:r % len(names)]:
            s = steps[n]
            t = time_fn(s, device, warmup=1, iters=a.iters)
            med[n].append(t["median_ms"])
            mins[n].append(t["min_ms"])
    base = statistics.median(med["autograd (paper formula)"])
    rows = [{"variant": n, "shape": f"{a.batch}x3x{a.size}x{a.size}", "median_ms": statistics.median(v),
             "min_ms": min(mins[n]), "speedup_vs_autograd": base / statistics.median(v)} for n, v in med.items()]
    env = environment(device)
    print(f"# gradient_penalty fwd+bwd, DCGAN critic base={a.base}, on {env['device']} ({env['cpu_threads']} threads)")
    print_table(rows, ["variant", "shape", "median_ms", "min_ms", "speedup_vs_autograd"])
    if a.save:
        print("saved", save_results("gradient_penalty", device, rows, extra={"critic_base": a.base}))
    return rows


def test_benchmark_gradient_penalty(benchmark):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    critic = dcgan_critic(32, 8).to(device)
    real, fake = torch.randn(16, 3, 32, 32, device=device), torch.randn(16, 3, 32, 32, device=device)

    def step():
        pg.gradient_penalty(critic, real, fake).backward()
        critic.zero_grad(set_to_none=True)

    benchmark(step)


if __name__ == "__main__":
    main()
