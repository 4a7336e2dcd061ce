"""interpolate forward+backward: each available impl vs the eager reference and
vs the reference under torch.compile, in one run.

    python benchmarks/bench_interpolate.py [--device cpu|cuda] [--save] [--no-compile]
    pytest benchmarks/bench_interpolate.py --benchmark-enable

Alphas are drawn inside each timed call (as in training). Interleaved rounds as in
bench_gradient_norm_penalty.py. GB/s counts the bytes that must move: real and fake
read and x_hat written forward; the incoming gradient read and both input
gradients written backward (6 tensor passes).
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import compare_steps, speed_cli  # noqa: E402

import pyfast_gan as pg  # noqa: E402
from pyfast_gan.ops import interpolate as interp  # noqa: E402
from pyfast_gan.ops._dispatch import native_available, triton_available  # noqa: E402

SHAPES = [(64, 3, 64, 64), (256, 3, 64, 64), (64, 3, 96, 96), (256, 3, 96, 96)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _compiled_reference():
    def ref(real, fake):
        alpha = torch.rand(real.shape[0], device=real.device, dtype=interp.alpha_dtype(real.dtype))
        return interp.reference(real, fake, alpha)

    return torch.compile(ref)


def candidates(device: torch.device, with_compile: bool) -> dict:
    """name -> function(real, fake) returning x_hat."""
    c = {"reference": lambda r, f: pg.interpolate(r, f, impl="reference")[0]}
    if with_compile:
        c["reference+compile"] = _compiled_reference()
    if native_available(interp.FAMILY, device)[0]:
        c[device.type] = lambda r, f, impl=device.type: pg.interpolate(r, f, impl=impl)[0]
    if device.type == "cuda" and triton_available(device)[0]:
        c["triton"] = lambda r, f: pg.interpolate(r, f, impl="triton")[0]
    return c


def make_step(fn, real, fake, upstream):
    def step():
        fn(real, fake).backward(upstream)
        real.grad = None
        fake.grad = None

    return step


def run(device, shapes, dtypes, rounds, iters, with_compile) -> list[dict]:
    rows = []
    cands = candidates(device, with_compile)
    for shape in shapes:
        for dname, dtype in dtypes.items():
            real = torch.randn(shape, device=device, dtype=dtype).requires_grad_(True)
            fake = torch.randn(shape, device=device, dtype=dtype).requires_grad_(True)
            upstream = torch.randn(shape, device=device, dtype=dtype)
            steps = {n: make_step(fn, real, fake, upstream) for n, fn in cands.items()}
            nbytes = 6 * real.numel() * real.element_size()
            rows += compare_steps(steps, device, rounds=rounds, iters=iters, shape=shape, dname=dname, nbytes=nbytes)
    return rows


def main(argv=None):
    return speed_cli("interpolate", __doc__, run, SHAPES, DTYPES, argv)


def test_benchmark_interpolate(benchmark):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    real = torch.randn(64, 3, 64, 64, device=device).requires_grad_(True)
    fake = torch.randn(64, 3, 64, 64, device=device).requires_grad_(True)
    benchmark(make_step(lambda r, f: pg.interpolate(r, f)[0], real, fake, torch.randn_like(real)))


if __name__ == "__main__":
    main()
