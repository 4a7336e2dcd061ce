"""What a training step costs before it runs: a FLOP counter, and the start-up hint that a
model is too wide for the CPU it is on.

A step's cost is counted, not timed (a timing on a shared machine comes and goes with other
people's load): the FLOPs of one forward of each network (torch's per-op formulas, on
meta-device copies) scaled to n_critic critic steps and one generator step
(:func:`step_flops`), at a fixed CPU rate (:data:`CPU_FLOPS_PER_S`). A step estimated above
:data:`SLOW_STEP_S` gets one start-up line naming the flags that would make it quicker;
nothing is changed for the user."""
from __future__ import annotations

import copy

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

# A step slower than this on a CPU gets one start-up line naming the flags that help.
SLOW_STEP_S = 2.0
# The training-step rate of a shared 2-core CPU: a WGAN-GP step of DCGAN base 64 with
# n_critic 5 on 32x32 MNIST is 155 GFLOP (counted below) and took 1.7-5.7 s there, i.e.
# 27-90 GFLOP/s. Timing the step at start-up instead was tried and dropped: on
# the shared machine the same base-16 step timed 0.3 s and 22 s minutes apart, so the hint
# came and went with other people's load; FLOPs give the same answer every time.
CPU_FLOPS_PER_S = 50e9


class FlopCount(TorchDispatchMode):
    """FlopCounterMode's per-op formulas (conv, matmul, their backwards) without its module
    tracker, whose backward hooks fail under autograd.grad(create_graph=True) in 2.14
    ("A leaf node was passed to _will_engine_execute_node ...")."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


@torch.no_grad()
def step_flops(G, D, *, z_dim: int, batch_size: int, n_critic: int, uses_gp: bool) -> float:
    """FLOPs of one generator step (n_critic critic steps, then the generator's), from one
    forward of each network on meta-device copies (shapes only: no compute, no RNG, the
    run's models untouched); a backward counts as two forwards."""
    g, d = copy.deepcopy(G).to("meta"), copy.deepcopy(D).to("meta")
    with FlopCount() as fg:
        x = g(torch.empty(batch_size, z_dim, device="meta"))
    with FlopCount() as fd:
        d(x)
    gf, df = float(fg.total), float(fd.total)
    # critic step: G forward, D forward + backward on real and fake (2 x 3), and for the
    # penalty D forward + double backward on the interpolates (~6 more); generator step:
    # G and D forward + backward (3 each).
    critic = gf + 6 * df + (6 * df if uses_gp else 0)
    return n_critic * critic + 3 * gf + 3 * df


def estimate_step_seconds(G, D, **kw) -> float:
    """Seconds a step of :func:`step_flops` takes on a CPU at :data:`CPU_FLOPS_PER_S`."""
    return step_flops(G, D, **kw) / CPU_FLOPS_PER_S


def slow_cpu_hint(seconds: float, *, base: int, fast: bool) -> str | None:
    """The start-up line for a step of ``seconds`` on a CPU, or None when it is quick enough."""
    if seconds <= SLOW_STEP_S:
        return None
    helps = ([f"--base 16 (now {base}: FLOPs grow with its square)"] if base > 16 else []) + \
            ([] if fast else ["--fast"])
    return (f"one training step should take ~{seconds:.0f} s on a CPU ({seconds * CPU_FLOPS_PER_S / 1e9:.0f} "
            f"GFLOP at ~{CPU_FLOPS_PER_S / 1e9:.0f} GFLOP/s, a 2-core machine's rate); "
            + (f"for a quicker run try {' and '.join(helps)}" if helps else
               "a narrower model or a GPU would be quicker") + " (nothing was changed)")
