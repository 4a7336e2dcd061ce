"""WGAN critic optimizer step: torch.optim.RMSprop(foreach=True) + per-parameter clamp_
loop vs pyfast_gan.optim.RMSpropClip (each impl available on the device), in one run.

    python benchmarks/bench_rmsprop_clip.py [--device cpu|cuda] [--threads N] [--save]

Parameter sets: the DCGAN-64 critic (13 tensors, 2.77M weights) and a 10x larger list.
WGAN hyper-parameters (lr 5e-5, alpha 0.99, c 0.01). GB/s counts the bytes a fused
step must move: read param, grad and square_avg, write param and square_avg (20 B per
fp32 weight), plus one more read of the grads for the non-finite check when it is on.
Candidates are timed round-robin so load on a shared host hits all of them alike.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_clip_weights import critic_params, parse_clip_bench_args, report_clip_bench, round_robin  # noqa: E402

from pyfast_gan.optim import RMSpropClip  # noqa: E402

C = 0.01
LR = 5e-5


def make_params(device, dtype, copies):
    params = [torch.nn.Parameter(t) for t in critic_params(device, dtype, copies)]
    for p in params:
        p.grad = torch.randn_like(p).mul_(1e-2)
    return params


def main(argv=None):
    args, device, dtype, impls = parse_clip_bench_args(__doc__, argv)

    rows = []
    for name, copies in (("dcgan64_critic", 1), ("dcgan64_critic_x10", 10)):
        base_params = make_params(device, dtype, copies)
        numel = sum(p.numel() for p in base_params)
        esize = base_params[0].element_size()

        def fresh():
            ps = [torch.nn.Parameter(p.detach().clone()) for p in base_params]
            for p, q in zip(ps, base_params):
                p.grad = q.grad.clone()
            return ps

        cands, nbytes = [], {}
        ps_ref = fresh()
        ref = torch.optim.RMSprop(ps_ref, lr=LR, alpha=0.99, foreach=True)

        def baseline(ps=ps_ref, opt=ref):
            opt.step()
            with torch.no_grad():
                for p in ps:
                    p.clamp_(-C, C)

        label0 = "RMSprop(foreach=True) + clamp_ loop"
        cands.append((label0, baseline))
        nbytes[label0] = 20 * numel * esize // 4
        for impl in impls:
            for skip in (True, False):
                ps = fresh()
                opt = RMSpropClip(ps, lr=LR, alpha=0.99, clip_value=C, impl=impl, skip_nonfinite=skip)
                label = f"RMSpropClip ({impl}{', skip_nonfinite' if skip else ''})"
                cands.append((label, opt.step))
                nbytes[label] = (24 if skip else 20) * numel * esize // 4
        res = round_robin(cands, device, args.rounds, args.iters)
        base = res[label0][0]
        for label, _ in cands:
            med, mn = res[label]
            rows.append({
                "impl": label, "params": f"{name} ({len(base_params)} tensors, {numel / 1e6:.2f}M)",
                "dtype": args.dtype, "median_ms": med, "min_ms": mn, "speedup": base / med,
                "GB/s": nbytes[label] / (med * 1e-3) / 1e9,
            })
    return report_clip_bench("rmsprop_clip", device, rows, args.save)


if __name__ == "__main__":
    main()
