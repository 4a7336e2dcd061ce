"""What a training step costs before it runs, and the start-up hint that a
model is too wide for the CPU it is on (issue 24: the image-data preset, DCGAN base 64 with
n_critic 5, took ~10 s a WGAN-GP step on MNIST on a 2-core CPU, and nothing said so)."""
from __future__ import annotations

import copy
import statistics
import time

import torch

# A step slower than this on a CPU gets one start-up line naming the flags that help.
SLOW_STEP_S = 2.0


def estimate_step_seconds(G, D, *, z_dim: int, batch_size: int, n_critic: int, uses_gp: bool,
                          probe: int = 16) -> float:
    """Seconds one generator step (n_critic critic steps, then the generator's) should take
    on the models' device, from timing one critic pass (forward, penalty, backward) and one
    generator pass on ``probe`` samples, scaled to ``batch_size``. A forward alone is no
    guide: on a CPU the conv backwards and the penalty's double backward cost several times
    more (measured: a no-grad forward predicted 1.1 s for a 5.7 s base-64 step). On copies,
    with their own noise and the RNG forked: the run's models and streams stay untouched."""
    g, d = copy.deepcopy(G).train(), copy.deepcopy(D).train()
    dev = next(g.parameters()).device
    with torch.random.fork_rng(devices=[]):
        z = torch.randn(probe, z_dim, generator=torch.Generator().manual_seed(0)).to(dev)

        def critic_pass():
            x = g(z).detach().requires_grad_(uses_gp)
            out = d(x)
            loss = out.float().mean()
            if uses_gp:
                (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
                loss = loss + gx.square().sum()
            loss.backward()

        def generator_pass():
            d(g(z)).float().mean().backward()

        def seconds(fn):
            fn()  # warm-up: first-call allocations and kernel choice
            # the median of three: on a shared machine one timing can be several times off,
            # and the median is what the run's own steps will see under the same load
            out = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
            return statistics.median(out)

        tc, tg = seconds(critic_pass), seconds(generator_pass)
    # A critic step passes real and fake batches (the penalty's interpolates ride with them).
    return (n_critic * 2 * tc + tg) * batch_size / probe


def slow_cpu_hint(seconds: float, *, base: int, fast: bool) -> str | None:
    """The start-up line for a step of ``seconds`` on a CPU, or None when it is quick enough."""
    if seconds <= SLOW_STEP_S:
        return None
    helps = ([f"--base 16 (now {base}: FLOPs grow with its square)"] if base > 16 else []) + \
            ([] if fast else ["--fast"])
    return (f"one training step should take ~{seconds:.0f} s on this CPU (timed on copies of the "
            "models at start-up); " + (f"for a quicker run try {' and '.join(helps)}" if helps else
                          "a narrower model or a GPU would be quicker") + " (nothing was changed)")
