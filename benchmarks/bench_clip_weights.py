"""Weight clipping of a critic: per-parameter clamp_ loop vs torch's foreach pair vs
pyfast_gan.clip_weights_ (each impl available on the device), in one run.

    python benchmarks/bench_clip_weights.py [--device cpu|cuda] [--dtype float32] [--save]

Parameter sets: the DCGAN-64 critic's 13 tensors (2.77M weights) and a 10x larger
list (the same tensors 10 times: 130 tensors, 27.7M weights). GB/s counts the bytes a
clamp must move: one read and one write of every weight. Clamping is idempotent, so
after the first call the weights already lie in [-c, c]; every impl still reads and
writes all of them (the fp32 kernels store unconditionally).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, save_results, time_fn  # noqa: E402

import pyfast_gan  # noqa: E402
from pyfast_gan.ops import clip_weights  # noqa: E402
from pyfast_gan.ops._dispatch import native_available, triton_available  # noqa: E402

C = 0.01


def critic_params(device, dtype, copies=1) -> list[torch.Tensor]:
    try:
        from pyfast_gan.models import DCGANCritic

        net = DCGANCritic(image_size=64, channels=3)
    except ImportError:  # the same layers, inline
        from torch import nn

        net = nn.Sequential(
            nn.Conv2d(3, 64, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
            nn.Conv2d(128, 256, 4, 2, 1, bias=False), nn.BatchNorm2d(256), nn.LeakyReLU(0.2),
            nn.Conv2d(256, 512, 4, 2, 1, bias=False), nn.BatchNorm2d(512), nn.LeakyReLU(0.2),
            nn.Conv2d(512, 1, 4, 1, 0),
        )
    shapes = [p.shape for p in net.parameters()]
    # Weights straddling +-c (DCGAN's N(0, 0.02) init), fresh per copy.
    return [torch.randn(s, device=device).mul_(2 * C).to(dtype) for _ in range(copies) for s in shapes]


def round_robin(cands, device, rounds, iters):
    """Median (and min) over rounds of each candidate's median time, candidates taking
    turns so that load on a shared host hits all of them alike."""
    times = {label: [] for label, _ in cands}
    for _, fn in cands:
        time_fn(fn, device, warmup=3, iters=1)
    for _ in range(rounds):
        for label, fn in cands:
            times[label].append(time_fn(fn, device, warmup=1, iters=iters)["median_ms"])
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def parse_clip_bench_args(doc: str, argv=None):
    """The command line shared by the clip-family benchmarks: (args, device, dtype, impls)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--save", action="store_true", help="write JSON to benchmarks/results/")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    impls = []
    if native_available(clip_weights.FAMILY, device)[0]:
        impls.append(device.type)
    if device.type == "cuda" and triton_available(device)[0]:
        impls.append("triton")  # the interpreter on CPU is a test vehicle, not a contender
    return args, device, getattr(torch, args.dtype), impls


def report_clip_bench(op: str, device, rows: list[dict], save: bool) -> list[dict]:
    """Print the table (and the JSON file with --save) of a clip-family benchmark."""
    print(f"device: {device} ({torch.get_num_threads()} threads)" if device.type == "cpu" else f"device: {device}")
    print_table(rows, ["impl", "params", "dtype", "median_ms", "min_ms", "speedup", "GB/s"])
    if device.type != "cuda":
        print("GPU numbers: not measured on this host")
    if save:
        print("saved", save_results(op, device, rows))
    return rows


def main(argv=None):
    args, device, dtype, impls = parse_clip_bench_args(__doc__, argv)

    rows = []
    for name, copies in (("dcgan64_critic", 1), ("dcgan64_critic_x10", 10)):
        params = critic_params(device, dtype, copies)
        numel = sum(p.numel() for p in params)
        nbytes = 2 * numel * params[0].element_size()

        def loop():
            for p in params:
                p.clamp_(-C, C)

        def foreach():
            torch._foreach_clamp_min_(params, -C)
            torch._foreach_clamp_max_(params, C)

        cands = [("per-param clamp_ loop", loop), ("_foreach_clamp_min_/max_", foreach)]
        for impl in impls:
            cands.append((f"clip_weights_ ({impl})", lambda impl=impl: pyfast_gan.clip_weights_(params, C, impl=impl)))
        res = round_robin(cands, device, args.rounds, args.iters)
        base = res[cands[0][0]][0]
        for label, _ in cands:
            med, mn = res[label]
            rows.append({
                "impl": label, "params": f"{name} ({len(params)} tensors, {numel / 1e6:.2f}M)",
                "dtype": args.dtype, "median_ms": med, "min_ms": mn, "speedup": base / med,
                "GB/s": nbytes / (med * 1e-3) / 1e9,
            })
    return report_clip_bench("clip_weights", device, rows, args.save)


if __name__ == "__main__":
    main()
