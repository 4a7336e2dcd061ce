"""Training throughput: the textbook loop vs pyfast_gan with each switch added in turn.

The naive loop is written from the pseudo-code of shared/seeds/001 (eager fp32; noise and
alpha drawn on the host and copied; the generator stays in the critic's graph and the
critic loss, penalty included, is backpropagated through it with ``retain_graph=True``;
per-parameter ``p.data.clamp_`` for WGAN; the penalty via ``autograd.grad`` + ``.norm(2,
dim=1)`` with one alpha per sample; one real batch per generator iteration, reused by its
n_critic critic steps, as in the seed's code). DCGAN's naive loop is PyTorch's DCGAN
tutorial (separate real/fake backward, the generator step reusing the critic step's fake).

pyfast_gan rows are the trainer's own run: each configuration is a set of
``python -m pyfast_gan.train`` flags, built with ``pyfast_gan.train.build`` (the same models,
optimizers, batcher and GANStep the CLI builds for those flags) and timed calling
``Run.iteration()``, the method the training loop calls (n_critic critic steps on fresh real
batches, then one generator step). Rows: ``--impl reference``; + fused ops (``--impl auto``);
+ ``--channels-last``; + ``--amp bf16``; ``--fast`` (what the CLI picks for the device: on
CUDA also torch.compile and CUDA graphs); ``--fast --compile`` with the penalty kernels inside
the compiled graph, and with ``--compile-penalty reference`` (inductor's own formula). The
data is a folder of random-noise PNGs written by the benchmark (decoded once, as the CLI
does); the naive loop reads the same images through a DataLoader. On a CPU without native
bf16 the bf16 row is emulated and very slow (leave it out with ``--configs``).

All rows are timed in one run, interleaved round by round (so a shared machine's noise hits
every row alike); the speedup is the median over rounds of (row it/s / naive it/s).

    python benchmarks/bench_train.py                       # full sizes (DCGAN-64)
    python benchmarks/bench_train.py --losses wgan-gp --rounds 3 --save
    python benchmarks/bench_train.py --image-size 32 --base 16 --steps 1   # quick CPU check
    python benchmarks/bench_train.py --losses wgan-gp --configs naive fast  # --fast vs the seed
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, print_table, save_results, sync  # noqa: E402

from pyfast_gan._cli import flags_alone  # noqa: E402
from pyfast_gan.losses import PRESETS  # noqa: E402
from pyfast_gan.models import build_models  # noqa: E402
from pyfast_gan.train import build, parse_args as train_args, resolve  # noqa: E402
from pyfast_gan.train.cost import FlopCount  # noqa: E402

# Dense peak FLOP/s by device name fragment: (bf16 tensor core, fp32 as PyTorch runs convs by
# default = TF32 tensor core). NVIDIA datasheets (H100 SXM5 / PCIe, H200 SXM).
PEAKS = {
    "H200": {"bf16": 989e12, "fp32": 494e12},
    "H100 PCIe": {"bf16": 756e12, "fp32": 378e12},
    "H100": {"bf16": 989e12, "fp32": 494e12},
}

CONFIGS = ("naive", "reference", "fused", "channels_last", "bf16", "fast", "fast_no_graphs", "compile", "compile_ref")
# The CLI flags of each pyfast_gan row. The first four are cumulative; the compile rows add
# --compile to what --fast picks for the device (on CUDA: bf16, channels_last, CUDA graphs,
# compile already; on a CPU: channels_last, and bf16 only where the CPU has it natively).
# Rows without --fast get --no-fast (flags_alone): the trainer's default (--fast auto) would
# otherwise turn every switch on where the device computes bf16 natively.
FLAGS = {name: flags_alone(flags) for name, flags in {
    "reference": ["--impl", "reference"],
    "fused": ["--impl", "auto"],
    "channels_last": ["--impl", "auto", "--channels-last"],
    "bf16": ["--impl", "auto", "--channels-last", "--amp", "bf16"],
    "fast": ["--fast"],
    # --fast captures CUDA graphs on a GPU; this row shows what the graphs add
    "fast_no_graphs": ["--fast", "--no-cuda-graphs"],
    "compile": ["--fast", "--compile"],
    "compile_ref": ["--fast", "--compile", "--compile-penalty", "reference"],
}.items()}
LABELS = {
    "naive": "naive loop (seed)",
    "reference": "pyfast_gan --impl reference",
    "fused": "+ fused ops (--impl auto)",
    "channels_last": "+ --channels-last",
    "bf16": "+ --amp bf16",
    "fast": "--fast",
    "fast_no_graphs": "--fast --no-cuda-graphs",
    "compile": "--fast --compile (penalty kernels)",
    "compile_ref": "--fast --compile (inductor penalty)",
}
Z_DIM = 100


# The convolutions that set a CPU's measured peak: DCGAN-64 critic layers at batch 64
# (N, C, H, out channels), 4x4 kernels, stride 2, padding 1.
PEAK_CONVS = ((64, 128, 16, 256), (64, 256, 8, 512), (64, 64, 32, 128))
_measured: dict[tuple[str, bool], float] = {}


def measured_conv_peak(precision: str, channels_last: bool, reps: int = 5) -> float:
    """FLOP/s of the fastest of a few large DCGAN convolutions (forward, best of ``reps``) in
    ``precision`` and layout on the CPU, measured once per process: the roofline a CPU row is
    held against (oneDNN's rate for the very convolutions the step is made of)."""
    key = (precision, channels_last)
    if key not in _measured:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        g = torch.Generator().manual_seed(0)
        best = 0.0
        with torch.no_grad():
            for n, c, h, o in PEAK_CONVS:
                x = torch.randn(n, c, h, h, generator=g).to(dtype)
                w = (torch.randn(o, c, 4, 4, generator=g) * 0.05).to(dtype)
                if channels_last:
                    x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
                flop = 2 * n * o * (h // 2) ** 2 * c * 16
                for i in range(reps + 1):
                    t0 = time.perf_counter()
                    nn.functional.conv2d(x, w, None, 2, 1)
                    dt = time.perf_counter() - t0
                    if i:  # the first call creates oneDNN's primitive
                        best = max(best, flop / dt)
        _measured[key] = best
    return _measured[key]


def device_peak(device: torch.device, precision: str, channels_last: bool = False) -> float | None:
    """Peak FLOP/s for a row: the datasheet's on a known GPU; on a CPU the measured rate of
    large convolutions in the row's precision and layout."""
    if device.type == "cpu":
        return measured_conv_peak(precision, channels_last)
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
                    p.data.clamp_(-self.s["clip_value"], self.s["clip_value"])
        critic_fake = D(gen_img).reshape(-1)
        generator_loss = -torch.mean(critic_fake)
        G.zero_grad()
        generator_loss.backward()
        self.opt_g.step()


# ------------------------------------------------------------------------- pyfast_gan run
class PyfastLoop:
    """The trainer's run for one configuration's flags; ``iteration`` is ``Run.iteration``."""

    def __init__(self, loss, args, device, folder, config):
        self.t0 = time.perf_counter()
        argv = ["--loss", loss, "--data", str(folder), "--data-format", "folder",
                "--image-size", str(args.image_size), "--channels", "3", "--arch", "dcgan",
                "--base", str(args.base), "--z-dim", str(Z_DIM), "--steps", "1000000",
                "--device", device.type, "--no-progress", *FLAGS[config]]
        if args.batch_size:
            argv += ["--batch-size", str(args.batch_size)]
        cfg, explicit = train_args(argv)
        self.run = build(resolve(cfg, explicit))
        self.device = device

    def prepare(self):
        """Build and the first iteration (compilation and its check; capture happens in
        build). Returns seconds."""
        self.iteration(None)
        sync(self.device)
        return time.perf_counter() - self.t0

    def iteration(self, _):
        self.run.iteration()

    def data(self):
        return self.run.batcher.next(self.run.cfg.batch_size)


def make_image_folder(root: str, n: int, size: int) -> str:
    """``n`` random-noise RGB PNGs of ``size`` x ``size`` (never zeros), the benchmark's data."""
    from PIL import Image

    g = torch.Generator().manual_seed(1)
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        x = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=g).numpy()
        Image.fromarray(x).save(os.path.join(root, f"{i:05d}.png"))
    return root


# ------------------------------------------------------------------------------- benchmark
def naive_models(loss, args, device, seed=0):
    torch.manual_seed(seed)
    G, D = build_models("dcgan", image_size=args.image_size, channels=3, z_dim=Z_DIM, base=args.base,
                        critic_norm=PRESETS[loss]["critic_norm"])
    return G.to(device), D.to(device)


def count_flops(make_loop, loader_iter) -> float:
    loop = make_loop()
    with FlopCount() as fc:
        loop.iteration(loader_iter)
    return float(fc.total)


def run_setting(loss, args, device, rows, folder):
    s = dict(PRESETS[loss])
    if args.batch_size:
        s["batch_size"] = args.batch_size
    s["betas"] = tuple(s.get("betas", (0.0, 0.9)))
    b = s["batch_size"]
    from PIL import Image

    files = sorted(os.listdir(folder))
    images = torch.stack([torch.from_numpy(np.array(Image.open(os.path.join(folder, f))))
                          .permute(2, 0, 1) for f in files])
    naive_ds = torch.utils.data.TensorDataset(images.float().div(127.5).sub(1.0))

    def naive_loader():
        while True:
            yield from torch.utils.data.DataLoader(naive_ds, batch_size=b, shuffle=True,
                                                   drop_last=True)

    configs = [c for c in CONFIGS if c in args.configs]
    loops, prep, notes = {}, {}, {}
    loader_iter = naive_loader()
    for c in configs:
        if c == "naive":
            loops[c] = NaiveLoop(*naive_models(loss, args, device), loss, s, device)
            t0 = time.perf_counter()
            loops[c].iteration(loader_iter)
            sync(device)
            prep[c] = time.perf_counter() - t0
        else:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                loops[c] = PyfastLoop(loss, args, device, folder, c)
                prep[c] = loops[c].prepare()
            msgs = sorted({str(x.message) for x in w if "pyfast_gan" in str(x.message)})
            if msgs:
                notes[c] = " | ".join(m[:160] for m in msgs)
        print(f"[{loss}] prepared {c} in {prep[c]:.1f}s", flush=True)

    # FLOPs per generator iteration: the pyfast_gan step's (the useful work) in fp32 eager,
    # counted whichever rows run, so every row gets its GFLOP/s and fraction of the peak.
    useful = count_flops(lambda: PyfastLoop(loss, args, device, folder, "reference"), None)
    naive_flops = None
    if "naive" in configs:
        naive_flops = count_flops(lambda: NaiveLoop(*naive_models(loss, args, device), loss, s, device),
                                  loader_iter)

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
        row = {"loss": loss, "config": LABELS[c], "flags": " ".join(FLAGS.get(c, [])), "batch": b,
               "image": args.image_size,
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
            run = loops[c].run
            row["compile_s"] = (round(max(prep[c] - step_ms / 1e3, 0.0), 2)
                                if run.cfg.compile or run.capture_time_s is not None else None)
        flops = useful
        row["gflop_per_it"] = flops / 1e9 if flops else None
        if c == "naive" and naive_flops:
            row["naive_gflop_per_it"] = naive_flops / 1e9
        prec = "bf16" if c != "naive" and loops[c].run.step.dtype is torch.bfloat16 else "fp32"
        layout_cl = c != "naive" and loops[c].run.cfg.channels_last
        peak = device_peak(device, prec, layout_cl)
        row["gflop_s"] = flops * its / 1e9 if flops else None
        row["peak_gflop_s"] = peak / 1e9 if peak else None
        row["peak_of"] = f"{prec} {'channels_last' if layout_cl else 'NCHW'}"
        row["frac_peak"] = (flops * its / peak) if (flops and peak) else "not known"
        if c in notes:
            row["note"] = notes[c]
        row["rounds"] = [round(v, 4) for v in per_round[c]]
        rows.append(row)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--losses", nargs="+", default=["wgan-gp", "wgan", "dcgan"],
                   choices=["wgan-gp", "wgan", "dcgan"])
    p.add_argument("--configs", nargs="+", default=[c for c in CONFIGS if c != "fast_no_graphs"],
                   choices=list(CONFIGS),
                   help="rows to time (default: all but fast_no_graphs, which is --fast itself off a GPU; "
                        "compile rows cost minutes of compilation on a CPU)")
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
           "gflop_s", "peak_of", "peak_gflop_s", "frac_peak", "data_share"]


def main(argv=None):
    args = parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = environment(device)
    print(f"device: {env['device']}  torch {env['torch']}  triton {env['triton']}  "
          f"threads {torch.get_num_threads()}  commit {env['commit']}")
    if device.type == "cpu":  # the roofline of every CPU row, measured before any row runs
        print("convolution peak (" + ", ".join(
            f"{prec} {'channels_last' if cl else 'NCHW'} {measured_conv_peak(prec, cl) / 1e9:.0f}"
            for prec, cl in (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))) + " GFLOP/s)")
    rows: list[dict] = []
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pyfast_gan_bench_") as tmp:
        folder = make_image_folder(os.path.join(tmp, "images"), args.dataset_size, args.image_size)
        for loss in args.losses:
            run_setting(loss, args, device, rows, folder)
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
