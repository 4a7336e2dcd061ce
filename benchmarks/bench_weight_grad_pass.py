"""The compiled critic step's weight-gradient rewrite (pyfast_gan/step/graph_passes.py), in
one run: PyTorch's double-backward formula for a convolution's weight gradient (a dilated
convolution of the batch-transposed input and output gradient) against the
``convolution_backward`` the pass puts in its place, per DCGAN-64 critic layer; then the
compiled WGAN-GP critic objective itself (forward, penalty, backward: what ``--fast`` runs each
critic step) with the pass and without it.

    python benchmarks/bench_weight_grad_pass.py [--batch 64 128] [--dtypes bf16 fp32] [--save]

Rows take turns within each round (``compare_steps``), so a shared machine's drift hits both
alike. GB/s counts one read of each operand and one write of the gradient.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import SPEED_COLUMNS, compare_steps, environment, print_table, save_results  # noqa: E402

from pyfast_gan.losses import get_loss  # noqa: E402
from pyfast_gan.models import DCGANCritic  # noqa: E402
from pyfast_gan.step import objective as objective_module  # noqa: E402
from pyfast_gan.step.graph_passes import CONV_WEIGHT_GRAD_PASS  # noqa: E402

aten = torch.ops.aten
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# the DCGAN-64 critic's strided layers: (C_in, C_out, input size); kernel 4, stride 2, padding 1
LAYERS = [(3, 64, 64), (64, 128, 32), (128, 256, 16), (256, 512, 8)]


def layer_rows(batch: int, dtype: torch.dtype, dname: str, rounds: int, iters: int) -> list[dict]:
    rows = []
    cl = torch.channels_last
    for cin, cout, h in LAYERS:
        ho = h // 2
        x = torch.randn(batch, cin, h, h).to(dtype).contiguous(memory_format=cl)
        g = torch.randn(batch, cout, ho, ho).to(dtype).contiguous(memory_format=cl)
        w = torch.empty(cout, cin, 4, 4, dtype=dtype).contiguous(memory_format=cl)
        steps = {
            # the formula as the double backward's graph has it (both operands batch-transposed)
            "reference": lambda: aten.convolution(x.permute(1, 0, 2, 3), g.permute(1, 0, 2, 3), None, [1, 1],
                                                  [1, 1], [2, 2], False, [0, 0], 1),
            "convolution_backward": lambda: aten.convolution_backward(g, x, w, None, [2, 2], [1, 1], [1, 1], False,
                                                                      [0, 0], 1, [False, True, False])[1],
        }
        got = steps["convolution_backward"]().transpose(0, 1).float()
        ref = steps["reference"]().float()
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        nbytes = (x.numel() + g.numel() + w.numel()) * x.element_size()
        for row in compare_steps(steps, "cpu", rounds=rounds, iters=iters, shape=(batch, cin, cout, h),
                                 dname=dname, nbytes=nbytes):
            rows.append({**row, "what": "layer weight gradient", "max_rel_diff": err})
    return rows


def step_rows(batch: int, dname: str, rounds: int, iters: int) -> list[dict]:
    """The compiled critic objective with its loss.backward(), with and without the pass."""
    torch.manual_seed(0)
    critic = DCGANCritic(64, 3, base=64, norm="layer").to(memory_format=torch.channels_last)
    real = torch.rand(batch, 3, 64, 64).mul(2).sub(1).contiguous(memory_format=torch.channels_last)
    fake = torch.randn(batch, 3, 64, 64).clamp(-1, 1).contiguous(memory_format=torch.channels_last)
    saved = objective_module.COMPILE_OPTIONS
    steps = {}
    try:
        for name, options in (("reference", {}), ("convolution_backward",
                                                  {"post_grad_custom_post_pass": CONV_WEIGHT_GRAD_PASS})):
            objective_module.COMPILE_OPTIONS = options
            obj = objective_module.CriticObjective(get_loss("wgan-gp"), compile=True,
                                                   amp="off" if dname == "fp32" else dname, verify=False, quiet=True)

            def step(obj=obj):
                critic.zero_grad(set_to_none=True)
                loss, _ = obj(critic, real, fake)
                loss.backward()
            step()  # compiles under this name's options
            steps[name] = step
    finally:  # the objective module's options as they were, whatever happened
        objective_module.COMPILE_OPTIONS = saved
    nbytes = 3 * batch * 3 * 64 * 64 * real.element_size()
    return [{**row, "what": "compiled critic step (DCGAN-64, WGAN-GP)", "max_rel_diff": None}
            for row in compare_steps(steps, "cpu", rounds=rounds, iters=iters, shape=(batch, 3, 64, 64),
                                     dname=dname, nbytes=nbytes)]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[64, 128])
    p.add_argument("--dtypes", nargs="+", default=["bf16"], choices=list(DTYPES))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=5, help="timed calls per row per round")
    p.add_argument("--step-iters", type=int, default=2, help="timed critic steps per row per round")
    p.add_argument("--no-step", action="store_true", help="only the per-layer rows")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--save", action="store_true", help="write JSON to benchmarks/results/")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if CONV_WEIGHT_GRAD_PASS is None:
        raise SystemExit("this torch has no inductor custom-pass interface: the pass is off, nothing to compare")
    env = environment(torch.device("cpu"))
    print(f"# weight-gradient rewrite on {env['device']} ({env['cpu_threads']} threads), torch {env['torch']}")
    rows = []
    for dname in a.dtypes:
        for batch in a.batch:
            rows += layer_rows(batch, DTYPES[dname], dname, a.rounds, a.iters)
    if not a.no_step:
        for dname in a.dtypes:
            rows += step_rows(a.batch[0], dname, a.rounds, a.step_iters)
    print_table(rows, ["what", *SPEED_COLUMNS[:5], "speedup_vs_ref", "max_rel_diff"])
    if a.save:
        print("saved", save_results("bench_weight_grad_pass", torch.device("cpu"), rows))
    return rows


if __name__ == "__main__":
    main()
