"""gradient_norm_penalty forward+backward: each available impl vs the eager
reference and vs the reference under torch.compile, in one run.

    python benchmarks/bench_gradient_norm_penalty.py [--device cpu|cuda] [--save] [--no-compile]
    pytest benchmarks/bench_gradient_norm_penalty.py --benchmark-enable

Impls are timed in interleaved rounds (reference, compiled, kernel, reference, ...)
so the noise of a shared machine hits all of them alike; the table shows the
median over all rounds and speedups from those medians. GB/s counts the bytes
that must move: grad read forward, grad read backward, grad_input written.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import compare_steps, speed_cli  # noqa: E402

import pyfast_gan as pg  # noqa: E402
from pyfast_gan.ops import gradient_norm_penalty as gnp  # noqa: E402
from pyfast_gan.ops._dispatch import native_available, triton_available  # noqa: E402

SHAPES = [(64, 3, 64, 64), (256, 3, 64, 64), (64, 3, 96, 96), (256, 3, 96, 96)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def candidates(device: torch.device, with_compile: bool) -> dict:
    """name -> function(grad) returning the penalty, to be differentiated."""
    c = {"reference": lambda g: pg.gradient_norm_penalty(g, impl="reference")}
    if with_compile:
        c["reference+compile"] = torch.compile(lambda g: gnp.reference(g).mean())
    if native_available(gnp.FAMILY, device)[0]:
        c[device.type] = lambda g, impl=device.type: pg.gradient_norm_penalty(g, impl=impl)
    # Under TRITON_INTERPRET=1 Triton runs ~1000x slower: not a measurement.
    if device.type == "cuda" and triton_available(device)[0]:
        c["triton"] = lambda g: pg.gradient_norm_penalty(g, impl="triton")
    return c


def make_step(fn, g):
    def step():
        fn(g).backward()
        g.grad = None

    return step


def run(device: torch.device, shapes, dtypes, rounds: int, iters: int, with_compile: bool) -> list[dict]:
    rows = []
    cands = candidates(device, with_compile)
    for shape in shapes:
        for dname, dtype in dtypes.items():
            g = torch.randn(shape, device=device, dtype=dtype).requires_grad_(True)
            steps = {name: make_step(fn, g) for name, fn in cands.items()}
            nbytes = 3 * g.numel() * g.element_size()
            rows += compare_steps(steps, device, rounds=rounds, iters=iters, shape=shape, dname=dname, nbytes=nbytes)
    return rows


def main(argv=None):
    return speed_cli("gradient_norm_penalty", __doc__, run, SHAPES, DTYPES, argv)


def test_benchmark_gradient_norm_penalty(benchmark):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    impl = "auto"
    g = torch.randn(64, 3, 64, 64, device=device).requires_grad_(True)
    benchmark(make_step(lambda x: pg.gradient_norm_penalty(x, impl=impl), g))


if __name__ == "__main__":
    main()
