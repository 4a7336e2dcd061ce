"""Where one training iteration's time goes: the trainer's own ``Run.iteration()`` (n_critic
critic steps, then one generator step, built from the CLI flags given) under torch.profiler,
its time split by op class (convolution, elementwise, norm, reductions, dtype and layout
copies, optimizer, the project's kernels, inductor's compiled regions) and by phase (forward,
backward, and the double backward through the penalty's input gradient), beside the
iteration's wall time. What no op accounts for is Python, dispatch and autograd bookkeeping.

Each op is counted by its self time on the calling thread (intra-op threads work inside it);
its phase is that of the nearest enclosing autograd node: a node whose name holds
``BackwardBackward`` (or ``...Backward`` of a backward op) belongs to the double backward.

    python benchmarks/profile_train.py --flags --fast                 # DCGAN-64, batch 64, WGAN-GP
    python benchmarks/profile_train.py --flags --amp bf16 --channels-last
    python benchmarks/profile_train.py --flags --channels-last --save  # fp32
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment  # noqa: E402
from bench_train import Z_DIM, make_image_folder  # noqa: E402

from pyfast_gan.train import build, parse_args as train_args, resolve  # noqa: E402
from pyfast_gan._cli import flags_alone  # noqa: E402

PHASES = ("forward", "backward", "double backward")
# (class, name fragments); the first class whose fragment is in the op's name wins.
CLASSES = (
    # inductor's kernels first: their names list the aten ops they fused (..._convolution_..._group_norm_...)
    ("compiled regions (inductor)", ("CompiledFxGraph", "CompiledFunction", "Torch-Compiled Region", "inductor",
                                     "cpp_fused")),
    ("conv backward", ("convolution_backward", "conv_backward", "convolution_transpose_backward")),
    ("conv forward", ("convolution", "conv2d", "conv_transpose")),
    ("matmul", ("addmm", "::mm", "bmm", "matmul", "linear")),
    ("norm", ("layer_norm", "batch_norm", "group_norm")),
    ("casts and layout copies", ("aten::to", "_to_copy", "copy_", "clone", "contiguous", "_reshape_alias")),
    ("optimizer", ("_foreach", "Optimizer", "adam", "rmsprop", "clip_weights", "any_nonfinite")),
    ("project kernels", ("pyfast_gan::",)),
    ("reductions", ("sum", "mean", "norm", "amax", "max", "min")),
    ("random", ("rand", "normal_", "uniform_", "bernoulli")),
    ("elementwise", ("aten::",)),
)
AUTOGRAD = "autograd::engine::evaluate_function: "


def op_class(name: str) -> str:
    for cls, frags in CLASSES:
        if any(f in name for f in frags):
            return cls
    return "other"


def phase_of(ev) -> str:
    p = ev.cpu_parent
    while p is not None:
        if p.name.startswith(AUTOGRAD):
            node = p.name[len(AUTOGRAD):]
            return "double backward" if node.count("Backward") >= 2 else "backward"
        p = p.cpu_parent
    return "forward"


def profile(flags: list[str], args) -> dict:
    with tempfile.TemporaryDirectory(prefix="pyfast_gan_prof_") as tmp:
        folder = make_image_folder(os.path.join(tmp, "images"), args.dataset_size, args.image_size)
        argv = ["--loss", args.loss, "--data", folder, "--data-format", "folder", "--image-size",
                str(args.image_size), "--channels", "3", "--arch", "dcgan", "--base", str(args.base),
                "--z-dim", str(Z_DIM), "--batch-size", str(args.batch_size), "--steps", "1000000",
                "--device", "cpu", "--no-progress", "--out", os.path.join(tmp, "run"),
                # the flags alone: the trainer's default (--fast auto) would add its switches
                *flags_alone(flags)]
        cfg, explicit = train_args(argv)
        run = build(resolve(cfg, explicit))
        for _ in range(args.warmup):
            run.iteration()
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        for _ in range(args.iterations):
            run.iteration()
        wall_ms = (time.perf_counter() - t0) * 1e3 / args.iterations
        # memory the allocator takes fresh from the kernel, page by page (costly in a VM)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / args.iterations
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(args.iterations):
                run.iteration()
    table: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(PHASES, 0.0))
    names: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        if ev.name.startswith(AUTOGRAD) or ev.name.startswith("ProfilerStep"):
            continue
        ms = ev.self_cpu_time_total / 1e3 / args.iterations
        if ms <= 0:
            continue
        cls = op_class(ev.name)
        table[cls][phase_of(ev)] += ms
        names[ev.name] += ms
    ops_ms = sum(sum(v.values()) for v in table.values())
    return {"flags": " ".join(flags) or "(eager fp32)", "wall_ms": wall_ms, "ops_ms": ops_ms, "minor_faults": faults,
            "table": {k: dict(v) for k, v in table.items()},
            "top_ops": sorted(names.items(), key=lambda kv: -kv[1])[:args.top]}


def print_profile(res: dict) -> None:
    wall = res["wall_ms"]
    print(f"\n## {res['flags']}: {wall:.0f} ms per iteration (wall, unprofiled); ops account for "
          f"{res['ops_ms']:.0f} ms under the profiler; {res.get('minor_faults', 0):.0f} minor page faults per "
          "iteration")
    print(f"| op class | {' | '.join(PHASES)} | total ms | share of ops |")
    print("|---|" + "---|" * (len(PHASES) + 2))
    rows = sorted(res["table"].items(), key=lambda kv: -sum(kv[1].values()))
    for cls, ph in rows:
        tot = sum(ph.values())
        print(f"| {cls} | " + " | ".join(f"{ph[p]:.1f}" for p in PHASES) + f" | {tot:.1f} | "
              f"{tot / res['ops_ms']:.0%} |")
    print("\ntop ops (self ms per iteration): " + ", ".join(f"{n} {ms:.1f}" for n, ms in res["top_ops"]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flags", nargs=argparse.REMAINDER, default=[],
                   help="trainer flags of the configuration to profile (last on the line)")
    p.add_argument("--loss", default="wgan-gp")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--base", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2, help="iterations before timing (compilation)")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--dataset-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--save", default="", help="append the result as one JSON line to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment("cpu")
    print(f"device: {env['device']}  torch {env['torch']}  threads {torch.get_num_threads()}  commit {env['commit']}")
    res = profile(args.flags, args)
    print_profile(res)
    if args.save:
        with open(args.save, "a") as f:
            f.write(json.dumps({**env, **res, "args": {k: v for k, v in vars(args).items() if k != "save"}}) + "\n")
    return res


if __name__ == "__main__":
    main()
