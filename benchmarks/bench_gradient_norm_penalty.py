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

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, print_table, save_results, time_fn  # noqa: E402

import pyfast_gan as pg  # noqa: E402
from pyfast_gan.ops import gradient_norm_penalty as gnp  # noqa: E402
from pyfast_gan.ops._dispatch import native_available, triton_available  # noqa: E402

SHAPES = [(64, 3, 64, 64), (256, 3, 64, 64), (64, 3, 96, 96), (256, 3, 96, 96)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def candidates(device: torch.device, with_compile: bool) -> dict:
    """name -> function(grad) returning the penalty, to be differentiated."""
    c = {"reference": lambda g: pg.gradient_norm_penalty(g, impl="reference")}
    if with_compile:
        c["reference+compile"] = torch.compile(lambda g: gnp.reference_per_sample(g).mean())
    if native_available("penalty", device)[0]:
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
            for s in steps.values():  # compile / first-call costs stay out of the timings
                s()
            med = {n: [] for n in steps}
            mins = {n: [] for n in steps}
            names = list(steps)
            for r in range(rounds):
                # Rotate the order each round so no impl always runs first after a switch.
                for name in names[r % len(names):] + names[:r % len(names)]:
                    s = steps[name]
                    t = time_fn(s, device, warmup=1, iters=iters)
                    med[name].append(t["median_ms"])
                    mins[name].append(t["min_ms"])
            nbytes = 3 * g.numel() * g.element_size()
            ref = statistics.median(med["reference"])
            comp = statistics.median(med["reference+compile"]) if "reference+compile" in med else None
            for name in steps:
                m = statistics.median(med[name])
                rows.append({
                    "impl": name, "shape": "x".join(map(str, shape)), "dtype": dname,
                    "median_ms": m, "min_ms": min(mins[name]),
                    "speedup_vs_ref": ref / m, "speedup_vs_compiled": (comp / m) if comp else None,
                    "GB/s": nbytes / (m * 1e-3) / 1e9,
                })
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=8, help="timed calls per impl per round")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd reference")
    p.add_argument("--shapes", default="all", help="'all' or e.g. 256x3x64x64,64x3x96x96")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--save", action="store_true", help="write JSON to benchmarks/results/")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    shapes = SHAPES if a.shapes == "all" else [tuple(int(x) for x in s.split("x")) for s in a.shapes.split(",")]
    dtypes = {k: DTYPES[k] for k in a.dtypes.split(",")}
    env = environment(device)
    print(f"# gradient_norm_penalty fwd+bwd on {env['device']} ({env['cpu_threads']} threads), torch {env['torch']}")
    rows = run(device, shapes, dtypes, a.rounds, a.iters, not a.no_compile)
    print_table(rows, ["impl", "shape", "dtype", "median_ms", "min_ms", "speedup_vs_ref", "speedup_vs_compiled", "GB/s"])
    if a.save:
        print("saved", save_results("gradient_norm_penalty", device, rows))
    return rows


def test_benchmark_gradient_norm_penalty(benchmark):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    impl = "auto"
    g = torch.randn(64, 3, 64, 64, device=device).requires_grad_(True)
    benchmark(make_step(lambda x: pg.gradient_norm_penalty(x, impl=impl), g))


if __name__ == "__main__":
    main()
