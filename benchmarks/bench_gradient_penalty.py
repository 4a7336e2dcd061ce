"""The whole gradient penalty (interpolate, critic forward, autograd.grad with
create_graph, norm penalty, backward into the critic's parameters) vs the
autograd-only version of the paper's formula, in one run.

    python benchmarks/bench_gradient_penalty.py [--device cpu|cuda] [--threads 1] [--save]
        [--sections per-call,conv] [--cases toy16,toy256,dcgan64] [--rounds 7] [--iters 20]
        [--batch 64] [--size 64] [--base 16]

Two tables:

* per-call: the drop-in as other loops call it, each row a ratio to the
  plain formula timed in the same rounds: the WGAN-GP paper's toy critic
  (``build_models("mlp")``: 3 hidden ReLU layers of 512, 2-D input) at batch 16 and
  256, penalty + backward; and a DCGAN-64 critic (``build_models("dcgan", image_size=64)``,
  its WGAN-GP "layer" norm) at batch 64, the whole critic step (scores of real and fake,
  penalty, backward). ``time_vs_plain`` below 1 is faster than the plain formula;
  ``paired_ratio`` is the median of the per-round ratios and ``paired_p25``/``paired_p75``
  their quartiles: where the quartiles straddle 1, this machine cannot tell the two apart.
  ``aten_ops``: the operator calls one step dispatches (torch.profiler's count, forward and
  backward, nested calls included): the noise-free side of the per-call cost.
  ``--cases`` picks rows (the toy critic's are short: ``--cases toy16,toy256 --rounds 40``
  gives them many rounds without the DCGAN step's minutes).
* conv: a DCGAN-style conv critic of width --base at --batch x --size, every impl the
  device has, penalty + backward (``speedup_vs_autograd``).

On CPU the clock is the process's CPU time (``--clock cpu``, the default there): on a
shared machine it leaves out the time other processes hold the cores, which wall time
counts; ``--clock wall`` for wall time. Variants take turns within each round.
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
from pyfast_gan.models import build_models  # noqa: E402
from pyfast_gan.ops import gradient_norm_penalty  # noqa: E402
from pyfast_gan.ops._dispatch import native_available, triton_available  # noqa: E402

PLAIN = "plain formula"


def dcgan_critic(size: int, base: int) -> nn.Module:
    layers, c, s = [], 3, size
    while s > 4:
        layers += [nn.Conv2d(c, base, 4, 2, 1), nn.LeakyReLU(0.2)]
        c, base, s = base, base * 2, s // 2
    layers += [nn.Conv2d(c, 1, s, 1, 0), nn.Flatten()]
    return nn.Sequential(*layers)


def autograd_penalty(critic, real, fake, weight=10.0):
    """The usual hand-written WGAN-GP penalty (PyTorch-GAN's, caogang's): per-sample alpha,
    autograd.grad of the summed scores, per-sample norm of the flattened gradient."""
    n = real.shape[0]
    alpha = torch.rand(n, *[1] * (real.dim() - 1), device=real.device, dtype=real.dtype)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = critic(x_hat)
    (g,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return weight * ((g.view(n, -1).norm(2, dim=1) - 1) ** 2).mean()


def interleaved(steps: dict, device, *, rounds: int, iters: int, clock: str) -> dict[str, list[float]]:
    """Per-round median ms of each step; steps take turns within a round, each round starting
    at a different one, so the noise of a shared machine hits all of them alike."""
    for s in steps.values():  # first-call costs stay out of the timings
        s()
    med = {n: [] for n in steps}
    names = list(steps)
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            med[n].append(time_fn(steps[n], device, warmup=1, iters=iters, clock=clock)["median_ms"])
    return med


CASES = {"toy16": ("toy MLP critic, GP + backward", "mlp", 16), "toy256": ("toy MLP critic, GP + backward", "mlp", 256),
         "dcgan64": ("DCGAN-64 critic, whole step", "dcgan", 64)}


def op_calls(step) -> int:
    """Operator calls one ``step()`` dispatches (every profiler event, nested ones included)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return sum(e.count for e in prof.key_averages())


def per_call_rows(device, *, rounds: int, iters: int, clock: str, cases=tuple(CASES)) -> list[dict]:
    """The drop-in against the plain formula where a user meets it: the WGAN-GP toy critic at
    batch 16 and 256 (penalty + backward), a DCGAN-64 critic's whole step at batch 64."""
    rows = []
    for label, arch, batch in (CASES[c] for c in cases):
        if arch == "mlp":
            _, critic = build_models("mlp", base=512)
            shape = (batch, 2)
        else:
            _, critic = build_models("dcgan", image_size=64, channels=3, base=64)
            shape = (batch, 3, 64, 64)
        critic = critic.to(device)
        real, fake = torch.randn(shape, device=device), torch.randn(shape, device=device)

        def make_step(gp, whole=arch == "dcgan"):
            def step():
                loss = gp()
                if whole:
                    loss = loss + critic(fake).mean() - critic(real).mean()
                loss.backward()
                critic.zero_grad(set_to_none=True)

            return step

        steps = {PLAIN: make_step(lambda: autograd_penalty(critic, real, fake, 10.0)),
                 "reference": make_step(lambda: pg.gradient_penalty(critic, real, fake, 10.0, impl="reference")),
                 "auto": make_step(lambda: pg.gradient_penalty(critic, real, fake, 10.0, impl="auto"))}
        # The toy critic's calls are short and noisy: more rounds; the DCGAN step is long.
        med = interleaved(steps, device, rounds=rounds * 5 if arch == "mlp" else rounds,
                          iters=iters if arch == "mlp" else max(iters // 5, 1), clock=clock)
        base = statistics.median(med[PLAIN])
        for n, v in med.items():
            # Each round's ratio to the plain formula: the spread of the same-round comparisons.
            ratios = [a / b for a, b in zip(v, med[PLAIN])]
            q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (None, None, None)
            rows.append({"critic": label, "shape": "x".join(map(str, shape)), "variant": n,
                         "median_ms": statistics.median(v), "time_vs_plain": statistics.median(v) / base,
                         "extra_us": (statistics.median(v) - base) * 1e3, "paired_ratio": statistics.median(ratios),
                         "paired_p25": q1, "paired_p75": q3, "rounds": len(v), "aten_ops": op_calls(steps[n])})
    return rows


def conv_rows(device, *, batch: int, size: int, base: int, rounds: int, iters: int, clock: str) -> list[dict]:
    critic = dcgan_critic(size, base).to(device)
    real = torch.randn(batch, 3, size, size, device=device)
    fake = torch.randn(batch, 3, size, size, device=device)
    variants = {PLAIN: lambda: autograd_penalty(critic, real, fake),
                "pyfast_gan reference": lambda: pg.gradient_penalty(critic, real, fake, impl="reference")}
    if native_available(gradient_norm_penalty.FAMILY, device)[0]:
        variants[f"pyfast_gan {device.type}"] = lambda: pg.gradient_penalty(critic, real, fake, impl=device.type)
    if device.type == "cuda" and triton_available(device)[0]:
        variants["pyfast_gan triton"] = lambda: pg.gradient_penalty(critic, real, fake, impl="triton")

    def make_step(fn):
        def step():
            fn().backward()
            critic.zero_grad(set_to_none=True)

        return step

    med = interleaved({n: make_step(f) for n, f in variants.items()}, device, rounds=rounds, iters=iters,
                      clock=clock)
    ref = statistics.median(med[PLAIN])
    return [{"variant": n, "shape": f"{batch}x3x{size}x{size}", "median_ms": statistics.median(v),
             "speedup_vs_autograd": ref / statistics.median(v)} for n, v in med.items()]


SECTIONS = ("per-call", "conv")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {SECTIONS}")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--clock", choices=("cpu", "wall"), default=None,
                   help="CPU timing: process CPU time (default) or wall time; CUDA uses events")
    p.add_argument("--batch", type=int, default=64, help="conv section: batch")
    p.add_argument("--size", type=int, default=64, help="conv section: image size")
    p.add_argument("--base", type=int, default=16, help="conv section: critic width (DCGAN uses 64)")
    p.add_argument("--cases", default=",".join(CASES), help=f"per-call rows, comma-separated, from {tuple(CASES)}")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--iters", type=int, default=20, help="timed calls per variant per round (the DCGAN-64 "
                                                          "step and the conv section use a fifth of it; the toy "
                                                          "critic runs 5x the rounds)")
    p.add_argument("--save", action="store_true")
    a = p.parse_args(argv)
    sections = a.sections.split(",")
    if any(s not in SECTIONS for s in sections):
        p.error(f"--sections must be a comma-separated list from {SECTIONS}, got {a.sections!r}")
    cases = a.cases.split(",")
    if any(c not in CASES for c in cases):
        p.error(f"--cases must be a comma-separated list from {tuple(CASES)}, got {a.cases!r}")
    if a.rounds < 1:
        p.error("--rounds must be >= 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    clock = a.clock or ("cpu" if device.type == "cpu" else "wall")
    env = environment(device)
    print(f"# gradient_penalty on {env['device']} ({env['cpu_threads']} threads, {clock} clock), "
          f"torch {env['torch']}")
    rows: dict[str, list[dict]] = {}
    if "per-call" in sections:
        rows["per_call"] = per_call_rows(device, rounds=a.rounds, iters=a.iters, clock=clock, cases=cases)
        print("## per call, against the plain formula in the same rounds")
        print_table(rows["per_call"], ["critic", "shape", "variant", "rounds", "median_ms", "extra_us",
                                       "time_vs_plain", "paired_ratio", "paired_p25", "paired_p75", "aten_ops"])
    if "conv" in sections:
        rows["conv"] = conv_rows(device, batch=a.batch, size=a.size, base=a.base, rounds=a.rounds,
                                 iters=max(a.iters // 5, 1), clock=clock)
        print(f"## conv critic base={a.base}, penalty + backward")
        print_table(rows["conv"], ["variant", "shape", "median_ms", "speedup_vs_autograd"])
    if a.save:
        print("saved", save_results("gradient_penalty", device, [r for v in rows.values() for r in v],
                                    extra={"critic_base": a.base, "clock": clock, "sections": sections}))
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
