"""Training throughput: the textbook loop vs pyfast_gan with each switch added in turn.

The naive loop is written from the pseudo-code of shared/seeds/001 (eager fp32; noise and
alpha drawn on the host and copied; the generator stays in the critic's graph and the
critic loss, penalty included, is backpropagated through it with ``retain_graph=True``;
per-parameter ``p.data.clamp_`` for WGAN; the penalty via ``autograd.grad`` + ``.norm(2,
dim=1)`` with one alpha per sample; one real batch per generator iteration, reused by its
n_critic critic steps, as in the seed's code). DCGAN's naive loop is PyTorch's DCGAN
tutorial (separate real/fake backward, the generator step reusing the critic step's fake).

pyfast_gan rows, cumulative: the eager step with the reference ops (pyfast_gan/fast/step.py:
generator under no_grad in critic steps, no critic weight gradients in generator steps,
real+fake scored in one forward when the critic has no batch norm, fused Adam, foreach
clipping), then fused ops (impl=auto), channels_last, bf16 autocast, torch.compile of the
critic objective through the penalty (and of the generator objective), CUDA graphs (CUDA
only). pyfast_gan draws a fresh real batch per critic step (the papers' algorithm) from a
uint8 dataset kept on the device.

All rows are timed in one run, interleaved round by round (so a shared machine's noise hits
every row alike); the speedup is the median over rounds of (row it/s / naive it/s).

    python benchmarks/bench_train.py                       # full sizes (DCGAN-64)
    python benchmarks/bench_train.py --losses wgan-gp --rounds 3 --save
    python benchmarks/bench_train.py --image-size 32 --base 16 --steps 1   # quick CPU check
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, print_table, save_results, sync  # noqa: E402

from pyfast_gan.fast.cuda_graphs import graph_step  # noqa: E402
from pyfast_gan.fast.step import FastStep, make_optimizers  # noqa: E402
from pyfast_gan.models import DCGANCritic, DCGANGenerator  # noqa: E402

# Dense peak FLOP/s by device name fragment: (bf16 tensor core, fp32 as PyTorch runs convs by
# default = TF32 tensor core). NVIDIA datasheets (H100 SXM5 / PCIe, H200 SXM).
PEAKS = {
    "H200": {"bf16": 989e12, "fp32": 494e12},
    "H100 PCIe": {"bf16": 756e12, "fp32": 378e12},
    "H100": {"bf16": 989e12, "fp32": 494e12},
}

SETTINGS = {  # loss -> (batch size, n_critic, critic norm, lr, betas), the papers' presets
    "wgan-gp": dict(batch=64, n_critic=5, norm="layer", lr=1e-4, betas=(0.0, 0.9)),
    "wgan": dict(batch=64, n_critic=5, norm="batch", lr=5e-5, betas=None, clip=0.01),
    "dcgan": dict(batch=128, n_critic=1, norm="batch", lr=2e-4, betas=(0.5, 0.999)),
}
CONFIGS = ("naive", "reference", "fused", "channels_last", "bf16", "compile", "cuda_graphs")
LABELS = {
    "naive": "naive loop (seed)",
    "reference": "pyfast_gan eager, impl=reference",
    "fused": "+ fused ops (impl=auto)",
    "channels_last": "+ channels_last",
    "bf16": "+ amp bf16",
    "compile": "+ torch.compile",
    "cuda_graphs": "+ CUDA graphs",
}
Z_DIM = 100


def device_peak(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAKS.items():
        if key in name:
            return peaks[precision]
    return None


# ----------------------------------------------------------------------------- naive loop
def naive_gradient_penalty(critic, real, fake, device):
    # As in the seed (and the widely copied implementation it follows).
    batch, c, h, w = real.shape
    alpha = torch.rand((batch, 1, 1, 1)).repeat(1, c, h, w).to(device)
    interpolated = real * alpha + fake * (1 - alpha)
    mixed_scores = critic(interpolated)
    gradient = torch.autograd.grad(inputs=interpolated, outputs=mixed_scores,
                                   grad_outputs=torch.ones_like(mixed_scores),
                                   create_graph=True, retain_graph=True)[0]
    gradient = gradient.view(gradient.shape[0], -1)
    return torch.mean((gradient.norm(2, dim=1) - 1) ** 2)


class NaiveLoop:
    def __init__(self, G, D, loss, s, device):
        self.G, self.D, self.loss, self.s, self.device = G, D, loss, s, device
        if loss == "wgan":
            self.opt_d = torch.optim.RMSprop(D.parameters(), lr=s["lr"])
            self.opt_g = torch.optim.RMSprop(G.parameters(), lr=s["lr"])
        else:
            self.opt_d = torch.optim.Adam(D.parameters(), lr=s["lr"], betas=s["betas"])
            self.opt_g = torch.optim.Adam(G.parameters(), lr=s["lr"], betas=s["betas"])
        self.criterion = nn.BCEWithLogitsLoss()

    def iteration(self, loader_iter):
        real = next(loader_iter)[0].to(self.device)
        G, D, dev, b = self.G, self.D, self.device, real.shape[0]
        if self.loss == "dcgan":  # PyTorch DCGAN tutorial
            ones, zeros = torch.ones(b, device=dev), torch.zeros(b, device=dev)
            D.zero_grad()
            err_real = self.criterion(D(real).view(-1), ones)
            err_real.backward()
            fake = G(torch.randn(b, Z_DIM, 1, 1, device=dev))
            err_fake = self.criterion(D(fake.detach()).view(-1), zeros)
            err_fake.backward()
            self.opt_d.step()
            G.zero_grad()
            err_g = self.criterion(D(fake).view(-1), ones)
            err_g.backward()
            self.opt_g.step()
            return
        for _ in range(self.s["n_critic"]):
            z = torch.randn(b, Z_DIM, 1, 1).to(dev)
            gen_img = G(z)
            critic_real = D(real).reshape(-1)
            critic_fake = D(gen_img).reshape(-1)
            critic_loss = -(torch.mean(critic_real) - torch.mean(critic_fake))
            if self.loss == "wgan-gp":
                critic_loss = critic_loss + 10.0 * naive_gradient_penalty(D, real, gen_img, dev)
            D.zero_grad()
            critic_loss.backward(retain_graph=True)
            self.opt_d.step()
            if self.loss == "wgan":
                for p in D.parameters():
                    p.data.clamp_(-self.s["clip"], self.s["clip"])
        critic_fake = D(gen_img).reshape(-1)
        generator_loss = -torch.mean(critic_fake)
        G.zero_grad()
        generator_loss.backward()
        self.opt_g.step()


# ------------------------------------------------------------------------- pyfast_gan step
class DeviceData:
    """uint8 images on the device; a batch = random rows, normalised to [-1, 1] there."""

    def __init__(self, images_u8: torch.Tensor, batch: int, memory_format):
        self.data, self.batch, self.memory_format = images_u8, batch, memory_format

    def __call__(self) -> torch.Tensor:
        idx = torch.randint(0, self.data.shape[0], (self.batch,), device=self.data.device)
        x = self.data.index_select(0, idx).float().div_(127.5).sub_(1.0)
        return x.contiguous(memory_format=self.memory_format)


class PyfastLoop:
    def __init__(self, G, D, loss, s, device, data_u8, config, verbose=True):
        i = CONFIGS.index(config)
        self.impl = "reference" if config == "reference" else "auto"
        channels_last = i >= CONFIGS.index("channels_last")
        amp = "bf16" if i >= CONFIGS.index("bf16") else "off"
        compile_ = i >= CONFIGS.index("compile")
        graphs = i >= CONFIGS.index("cuda_graphs")
        opt_g, opt_d, clip_after = make_optimizers(
            G, D, loss, lr=s["lr"], betas=s["betas"] or (0.0, 0.9), clip_value=s.get("clip", 0.01),
            impl=self.impl, capturable=graphs)
        self.step = FastStep(G, D, opt_g, opt_d, loss, z_dim=Z_DIM, clip_value=s.get("clip", 0.01),
                             clip_after_step=clip_after, amp=amp, channels_last=channels_last,
                             compile=compile_, impl=self.impl)
        self.s = s
        self.data = DeviceData(data_u8, s["batch"],
                               torch.channels_last if channels_last else torch.contiguous_format)
        self.graphs = graphs
        self.graphed = None
        self.compile_time_s = 0.0

    def prepare(self):
        """First iteration(s): compile + verification, graph capture. Returns seconds."""
        t0 = time.perf_counter()
        if self.graphs:
            self.graphed = graph_step(self.step, self.data())
        self.iteration(None)
        sync(self.step.device)
        return time.perf_counter() - t0

    def iteration(self, _):
        runner = self.graphed or self.step
        for _ in range(self.s["n_critic"]):
            runner.critic_step(self.data())
        runner.generator_step(self.s["batch"])


# ------------------------------------------------------------------------------- benchmark
def build_models(loss, s, args, device, seed=0):
    torch.manual_seed(seed)
    G = DCGANGenerator(args.image_size, 3, z_dim=Z_DIM, base=args.base).to(device)
    D = DCGANCritic(args.image_size, 3, base=args.base, norm=s["norm"]).to(device)
    return G, D


class _FlopCount(TorchDispatchMode):
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


def count_flops(make_loop, loader_iter) -> float:
    loop = make_loop()
    with _FlopCount() as fc:
        loop.iteration(loader_iter)
    return float(fc.total)


def run_setting(loss, args, device, rows):
    s = dict(SETTINGS[loss])
    if args.batch_size:
        s["batch"] = args.batch_size
    b = s["batch"]
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (max(args.dataset_size, 2 * b), 3, args.image_size,
                                    args.image_size), dtype=torch.uint8, generator=g)
    data_u8 = images.to(device)
    naive_ds = torch.utils.data.TensorDataset(images.float().div(127.5).sub(1.0))

    def naive_loader():
        while True:
            yield from torch.utils.data.DataLoader(naive_ds, batch_size=b, shuffle=True,
                                                   drop_last=True)

    configs = [c for c in CONFIGS if c in args.configs]
    loops, prep, notes = {}, {}, {}
    loader_iter = naive_loader()
    for c in configs:
        if c == "cuda_graphs" and device.type != "cuda":
            notes[c] = f"not available on {device.type}"
            continue
        G, D = build_models(loss, s, args, device)
        if c == "naive":
            loops[c] = NaiveLoop(G, D, loss, s, device)
            t0 = time.perf_counter()
            loops[c].iteration(loader_iter)
            sync(device)
            prep[c] = time.perf_counter() - t0
        else:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                loops[c] = PyfastLoop(G, D, loss, s, device, data_u8, c)
                prep[c] = loops[c].prepare()
            msgs = sorted({str(x.message) for x in w if "pyfast_gan" in str(x.message)})
            if msgs:
                notes[c] = " | ".join(m[:160] for m in msgs)
        print(f"[{loss}] prepared {c} in {prep[c]:.1f}s", flush=True)

    # FLOPs per generator iteration: the pyfast_gan step's (the useful work) in fp32 eager.
    useful = None
    if "reference" in configs:
        G, D = build_models(loss, s, args, device)
        useful = count_flops(lambda: PyfastLoop(G, D, loss, s, device, data_u8, "reference"),
                             None)
    naive_flops = None
    if "naive" in configs:
        G, D = build_models(loss, s, args, device)
        naive_flops = count_flops(lambda: NaiveLoop(G, D, loss, s, device), loader_iter)

    # Data share: time to produce one generator iteration's real batches, alone.
    def data_ms(c):
        reps = 5
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            if c == "naive":
                next(loader_iter)[0].to(device)
            else:
                for _ in range(s["n_critic"]):
                    loops[c].data()
        sync(device)
        return (time.perf_counter() - t0) * 1e3 / reps

    per_round: dict[str, list[float]] = {c: [] for c in loops}
    peak_mem: dict[str, float | None] = {c: None for c in loops}
    for r in range(args.rounds):
        for c, loop in loops.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loop.iteration(loader_iter)
            sync(device)
            per_round[c].append(args.steps / (time.perf_counter() - t0))
            if device.type == "cuda":
                peak_mem[c] = max(peak_mem[c] or 0, torch.cuda.max_memory_allocated(device) / 2**20)
        print(f"[{loss}] round {r + 1}/{args.rounds}: " +
              ", ".join(f"{c} {v[-1]:.3f} it/s" for c, v in per_round.items()), flush=True)

    for c in configs:
        row = {"loss": loss, "config": LABELS[c], "batch": b, "image": args.image_size,
               "n_critic": s["n_critic"]}
        if c not in loops:
            row.update({"it_s": None, "note": notes.get(c, "not run")})
            rows.append(row)
            continue
        its = statistics.median(per_round[c])
        row["it_s"] = its
        row["img_s"] = its * b
        if "naive" in per_round and c != "naive":
            row["speedup"] = statistics.median(a / n for a, n in zip(per_round[c], per_round["naive"]))
        elif c == "naive":
            row["speedup"] = 1.0
        step_ms = 1e3 / its
        row["data_share"] = data_ms(c) / step_ms
        row["peak_mem_mib"] = peak_mem[c]
        if c == "naive":
            row["compile_s"] = None
        else:
            row["compile_s"] = round(max(prep[c] - step_ms / 1e3, 0.0), 2) if c in ("compile", "cuda_graphs") else None
        flops = useful
        row["gflop_per_it"] = flops / 1e9 if flops else None
        if c == "naive" and naive_flops:
            row["naive_gflop_per_it"] = naive_flops / 1e9
        prec = "bf16" if CONFIGS.index(c) >= CONFIGS.index("bf16") and c != "naive" else "fp32"
        peak = device_peak(device, prec)
        row["tflop_s"] = flops * its / 1e12 if flops else None
        row["frac_peak"] = (flops * its / peak) if (flops and peak) else "not known"
        if c in notes:
            row["note"] = notes[c]
        row["rounds"] = [round(v, 4) for v in per_round[c]]
        rows.append(row)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--losses", nargs="+", default=["wgan-gp", "wgan", "dcgan"],
                   choices=list(SETTINGS))
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--base", type=int, default=64, help="DCGAN width (64 = the paper's)")
    p.add_argument("--batch-size", type=int, default=0, help="0 = the preset (64; 128 for dcgan)")
    p.add_argument("--steps", type=int, default=2, help="generator iterations timed per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dataset-size", type=int, default=512)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--save", action="store_true", help="write JSON under benchmarks/results/")
    p.add_argument("--out", default=None, help="JSON path for --save (default: "
                   "benchmarks/results/bench_train_<device>.json)")
    return p.parse_args(argv)


COLUMNS = ["loss", "config", "batch", "it_s", "img_s", "speedup", "peak_mem_mib", "compile_s",
           "tflop_s", "frac_peak", "data_share"]


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = environment(device)
    print(f"device: {env['device']}  torch {env['torch']}  triton {env['triton']}  "
          f"threads {torch.get_num_threads()}  commit {env['commit']}")
    rows: list[dict] = []
    for loss in args.losses:
        run_setting(loss, args, device, rows)
    print()
    print_table(rows, COLUMNS)
    notes = [f"{r['loss']} / {r['config']}: {r['note']}" for r in rows if r.get("note")]
    for n in notes:
        print("note:", n)
    if args.save:
        path = save_results("bench_train", device, rows, extra={"args": vars(args)}, path=args.out)
        print("saved", path)
    return rows


def test_bench_train_smoke(benchmark):
    """pytest-benchmark entry (disabled by default): a small WGAN-GP run."""
    rows = benchmark.pedantic(
        main, args=(["--losses", "wgan-gp", "--image-size", "32", "--base", "8", "--steps", "1",
                     "--rounds", "1", "--configs", "naive", "reference", "fused"],),
        rounds=1, iterations=1)
    assert all(r["it_s"] and r["it_s"] > 0 for r in rows)


if __name__ == "__main__":
    main()
