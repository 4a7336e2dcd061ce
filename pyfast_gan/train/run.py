"""Build, then run: :func:`build` turns a resolved config into a :class:`Run` that holds
everything training needs (device, batcher, the loss, models, optimizers, the one training
step, EMA, the evaluator, resume state), and :meth:`Run.iteration` is what the loop (loop.py)
and the benchmark (benchmarks/bench_train.py) both call: n_critic critic steps and one
generator step. The Run also does what the loop does at its log, sample, evaluation and
checkpoint steps (:meth:`Run.log`, :meth:`Run.sample`, :meth:`Run.evaluate`, :meth:`Run.save`),
so the loop only decides when.

Every mode is decided here, once: AMP, channels_last, --compile and --lazy-gp are settings of
the :class:`~pyfast_gan.step.step.GANStep`, --cuda-graphs wraps it in a
:class:`~pyfast_gan.step.cuda_graphs.GraphedStep` with the same interface, torchrun gives it
a gradient all-reduce. Nothing after build branches on the mode. The loss is made once, here,
from the config (its name and BEGAN's hyperparameters), and that one object is what the
optimizers, the step and its objectives are given.
"""
from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyfast_gan.data.batch import ImageBatcher, ToyBatcher, peek
from pyfast_gan.step import distributed as dist_mod
from pyfast_gan.step.step import GANStep, build_optimizers, set_lr
from pyfast_gan.losses import get_loss
from pyfast_gan.models import EMA, build_models

from pyfast_gan.artifacts import checkpoint as ckpt_mod
from pyfast_gan.artifacts import outputs
from . import cost
from .config import LOSS_ARCH, TOY_DATASETS as TOY_DATA, TrainConfig
from .inputs import build_inputs
from .modes import cuda_graphs_blocker, keep_freed_memory, resolve_device, usable_amp
from .plateau import PlateauDecay
from .rundir import resume_checkpoint, resume_dir, run_data_fingerprints, same_dir
from .state import RunState

class Say:
    """One-line messages to stderr; silent on torchrun ranks other than 0."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[pyfast_gan.train] {msg}", file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Run(RunState):
    """Everything a training run needs; built by :func:`build`."""

    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int
    batcher: ImageBatcher | ToyBatcher
    data_gen: torch.Generator
    G: torch.nn.Module
    D: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: EMA | None
    step: GANStep                      # or a GraphedStep around it (same interface)
    fixed_noise: torch.Tensor
    say: Say
    toy: tuple | None = None           # (real points, modes, std) for toy evaluation
    plateau: PlateauDecay | None = None  # --lr-decay plateau (BEGAN)
    real_u8: torch.Tensor | None = None  # decoded images, until start() (benchmarks read them)
    evaluator: object | None = None    # --eval-every's Evaluator (rank 0)
    metrics: outputs.MetricsWriter | None = None  # metrics.jsonl, opened by start() (rank 0)
    generator_steps: int = 0
    # The generator step after which the weights last changed (a step with any applied
    # update), on the device: skipped steps leave the weights as they were.
    last_applied: torch.Tensor | None = None
    elapsed_before: float = 0.0        # training seconds before a resume
    started: float = 0.0               # time.perf_counter() at start()
    start_step: int = 0                # the generator step this process started from
    resumed_from: Path | None = None
    capture_time_s: float | None = None
    timing_reported: bool = False      # the first log record after start-up holds its times
    best: dict | None = None           # the best evaluation so far: metric, value, step (rank 0)
    data_fingerprints: dict | None = None  # of the data PATHs, kept in checkpoints (rundir.other_data)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    def n_critic(self) -> int:
        cfg = self.cfg
        if cfg.wgan_schedule and (self.generator_steps < 25 or self.generator_steps % 500 == 0):
            return 100  # WassersteinGAN's schedule (reference code, main.py)
        return cfg.n_critic

    def iteration(self) -> list[dict]:
        """One generator iteration as the paper's algorithms define it: n_critic critic steps
        on fresh real batches, then one generator step. Returns the steps' stats (device
        tensors; nothing here reads them back)."""
        cfg = self.cfg
        if cfg.lr_decay == "linear":
            # A function of the step counter alone (no scheduler state): a resumed run sets
            # exactly the same lrs.
            self.apply_lr_schedule()
        stats = [self.step.critic_step(self.batcher.next(cfg.batch_size)) for _ in range(self.n_critic())]
        stats.append(self.step.generator_step(cfg.batch_size))
        self.generator_steps += 1
        if self.last_applied is None:
            self.last_applied = torch.zeros((), dtype=torch.long, device=self.device)
        applied = torch.stack([s["skipped"] for s in stats]).amin() == 0
        self.last_applied.masked_fill_(applied, self.generator_steps)
        if self.plateau is not None:
            self.plateau.observe(stats[-1]["m_global"])
            if self.generator_steps % self.plateau.window == 0 and self.plateau.end_window():
                self.apply_lr_schedule()
                self.say(f"--lr-decay plateau: M_global stalled; lr x {self.plateau.scale:g} "
                         f"at step {self.generator_steps}")
        return stats

    # -- outputs (rank 0 writes them) -----------------------------------------------------
    def start(self) -> None:
        """What a run does once before its first step. Rank 0 makes the output folders,
        removes temporaries an interrupted write left, writes config.json, prints the resolved
        config and opens metrics.jsonl (a resumed run's lines after its step are dropped). The
        decoded images are let go: the evaluator built from them was their last user."""
        cfg, out = self.cfg, self.out
        self.real_u8 = None
        if self.main:
            self._start_over()
            for sub in ("samples", "plots", "checkpoints"):
                (out / sub).mkdir(parents=True, exist_ok=True)
            for p in ckpt_mod.remove_stale_temporaries(out):
                self.say(f"removed {p}, left by an interrupted write")
            (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
            shape = "toy 2-D" if self.toy else f"{cfg.channels}x{cfg.image_size}x{cfg.image_size}"
            procs = f", {self.world} processes (global batch {cfg.batch_size * self.world})" if self.world > 1 else ""
            config = "\n".join(f"  {k:<{max(map(len, cfg.to_dict()))}} = {v!r}" for k, v in cfg.to_dict().items())
            print(f"pyfast_gan.train: {cfg.loss} on {cfg.data} ({shape}), device {self.device}{procs}, "
                  f"output {out}\nresolved config:\n{config}", flush=True)
            self.metrics = outputs.MetricsWriter(out / "metrics.jsonl",
                                                 out / "tensorboard" if cfg.tensorboard else None,
                                                 self.generator_steps)
        if self.generator_steps >= cfg.steps:
            self.say(f"nothing to train: the run is at step {self.generator_steps} and --steps is {cfg.steps}; "
                     f"pass --steps N with N > {self.generator_steps} to continue it")
        self.start_step, self.started = self.generator_steps, time.perf_counter()

    def _start_over(self) -> None:
        """A folder that held a run without a checkpoint (one that stopped before its first:
        rundir.check_out_dir lets a run reuse it) loses that run's metrics lines and
        TensorBoard events, so they never mix with this run's, and says so. The run a
        --resume continues in its own folder keeps them (the metrics writer drops only those
        after its step)."""
        out, cfg = self.out, self.cfg
        old = [n for n in ("config.json", "metrics.jsonl") if (out / n).exists()]
        continuing = bool(cfg.resume) and same_dir(resume_dir(cfg.resume), out)
        if not old or (continuing and self.resumed_from is not None):
            return  # a new folder, or the run being continued from its checkpoint
        tb = out / "tensorboard"
        for p in [out / "metrics.jsonl", *(sorted(tb.glob("events.out.tfevents.*")) if tb.is_dir() else [])]:
            p.unlink(missing_ok=True)
        if not continuing:  # (a --resume of it from step 0 said so in build)
            gone = " (that run's metrics are removed)" if "metrics.jsonl" in old else ""
            self.say(f"{out} held a run that stopped before its first checkpoint ({', '.join(old)}): "
                     f"reusing the folder for this run{gone}")

    def elapsed(self) -> float:
        """Training seconds: this process's since :meth:`start`, plus those before a resume."""
        return self.elapsed_before + time.perf_counter() - self.started

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()

    def log(self, acc: dict, img_per_s: float | None) -> dict:
        """The log record of the steps since the last log: the means of their stats ``acc``
        (:meth:`log_means`, collective under torchrun), the throughput and the training time;
        the first record after a compiled or captured start-up also holds how long that took.
        Rank 0 writes it to metrics.jsonl."""
        cfg = self.cfg
        rec = {"step": self.generator_steps, **self.log_means(acc)}
        rec["skipped"] = int(rec.get("skipped", 0))
        rec["img_per_s"] = img_per_s
        rec["time"] = round(self.elapsed(), 3)
        if not self.timing_reported and (cfg.compile or self.capture_time_s is not None):
            self.timing_reported = True
            if cfg.compile:
                rec["compile_time_s"] = round(self.step.objective.compile_time_s, 3)
                self.say(f"--compile: compile time {rec['compile_time_s']:.1f} s (start-up "
                         "verification included; not counted in img_per_s)")
            if self.capture_time_s is not None:
                rec["capture_time_s"] = round(self.capture_time_s, 3)
        if self.main:
            self.metrics.write(rec)
        return rec

    def sample(self) -> dict:
        """Rank 0: this step's sample grid into samples/ (and TensorBoard), toy data's
        mode-coverage record into metrics.jsonl, the loss curves redrawn. Returns that record
        ({} for images)."""
        step = self.generator_steps
        grid = self.out / "samples" / f"step_{step:06d}.png"
        rec = self.write_samples(grid)
        self.metrics.image(grid, step)
        if rec:
            self.metrics.write({"step": step, **rec})
        self.plot_losses()
        return rec

    def evaluate(self) -> dict:
        """The scalar scores of the generator (EMA when on) by the run's evaluator (rank 0; {}
        elsewhere), written to metrics.jsonl and plots/metrics.png, and returned; a new best
        headline score is kept as checkpoints/best.pt (collective under torchrun). CoGAN: each
        domain and the pair correspondence (pyfast_gan.metrics.cogan, as evaluate scores it)."""
        from pyfast_gan.metrics.evaluator import scalar_items

        res = {}
        if self.evaluator is not None:
            g = self.ema.ready(self.cfg.z_dim) if self.ema is not None else self.G
            if self.cfg.arch == "cogan":
                from pyfast_gan.data.cogan import cogan_domain
                from pyfast_gan.metrics.cogan import flat_cogan_scores, score_cogan

                scores = flat_cogan_scores(score_cogan(g, self.evaluator, cogan_domain(self.cfg.to_dict())))
            else:
                scores = self.evaluator(g, self.cfg.z_dim)
            res = scalar_items(scores)
            self.metrics.write({"step": self.generator_steps, "eval": res})
            outputs.plot_metrics(self.metrics.records, self.out / "plots" / "metrics.png")
        if dist_mod.agreed(self.improved(res), self.world, self.device):
            self.save_best()
        return res

    def plot_losses(self) -> None:
        outputs.plot_losses(self.metrics.records, self.out / "plots" / "losses.png")

    def write_samples(self, path: Path) -> dict:
        """The fixed-noise sample grid (toy data: a scatter over real points, and the mode
        coverage it shows, returned as a metrics record)."""
        gm = self.ema.ready(self.cfg.z_dim) if self.ema is not None else self.G
        was = gm.training
        gm.eval()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.step.dtype or torch.float32,
                                             enabled=self.step.dtype is not None):
            x = gm(self.fixed_noise).float()
        gm.train(was)
        if self.cfg.arch == "cogan":  # pairs from the same z side by side, 8 pairs a row
            from pyfast_gan.models import pairs_side_by_side

            outputs.save_image_grid(pairs_side_by_side(x, self.cfg.channels), path, nrow=16)
            return {}
        if not self.toy:
            outputs.save_image_grid(x, path)
            return {}
        real_pts, modes, std = self.toy
        rec, title = {}, f"{self.cfg.loss} {self.cfg.data} step {self.generator_steps}"
        if modes is not None:
            from pyfast_gan.metrics import mode_coverage

            cov = mode_coverage(x.cpu(), modes, std)
            rec = {"modes_covered": int(cov["covered"]), "num_modes": int(cov["num_modes"]),
                   "high_quality_fraction": float(cov["high_quality_fraction"])}
            title += f": {rec['modes_covered']}/{rec['num_modes']} modes"
        outputs.save_toy_scatter(x, real_pts, path, title=title, modes=modes)
        return rec

    def log_means(self, acc: dict) -> dict:
        """Per-key means over the finite values logged since the last log step ('skipped': the
        count), averaged over ranks. The one host read of the step stats."""
        keys = sorted(acc)
        vals = []
        for k in keys:
            t = torch.stack([v.float().reshape(()) for v in acc[k]])
            if k == "skipped":
                vals.append(t.sum())
                continue
            fin = t[torch.isfinite(t)]
            vals.append(fin.mean() if fin.numel() else torch.tensor(float("nan"), device=t.device))
        if self.world > 1 and vals:
            m = torch.stack(vals)
            torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.SUM)
            vals = list(m / self.world)
        return {k: float(v) for k, v in zip(keys, vals)}

    def apply_lr_schedule(self) -> None:
        """Set both optimizers' lr for the current step: the config's lrs times the schedule's
        factor (--lr-decay linear: of the step counter; plateau: the halvings so far)."""
        cfg = self.cfg
        scale = 1.0
        if cfg.lr_decay == "linear":
            scale = max(0.0, 1.0 - self.generator_steps / cfg.steps)
        elif self.plateau is not None:
            scale = self.plateau.scale
        set_lr(self.opt_g, (cfg.lr_g or cfg.lr) * scale)
        set_lr(self.opt_d, cfg.lr * scale)


def build(cfg: TrainConfig, *, rank: int = 0, world: int = 1) -> Run:
    """Everything a run needs, from a resolved config (pyfast_gan.train.config.resolve).
    Writes nothing in the run directory (:meth:`Run.start` does). Data first, so a bad path
    fails before any model is built; a resumed run ends in the checkpoint's exact state."""
    say = Say(quiet=rank != 0)
    device = resolve_device(cfg)
    if device.type == "cpu":
        keep_freed_memory()
    is_toy = cfg.data in TOY_DATA
    seed_everything(cfg.seed)

    # ---- data ------------------------------------------------------------------------
    inputs = build_inputs(cfg, device, rank, world, say)
    image_size, channels, memory_format = inputs.image_size, inputs.channels, inputs.memory_format
    # Record the sizes the data decided, so config.json (and resume) is complete.
    auto_arch = LOSS_ARCH.get(cfg.loss, "dcgan")
    cfg = dataclasses.replace(cfg, image_size=image_size, channels=channels,
                              arch="mlp" if is_toy else (auto_arch if cfg.arch == "auto" else cfg.arch))

    # ---- the loss, models, optimizers, the step ----------------------------------------
    loss = get_loss(cfg.loss, gamma=cfg.began_gamma, lambda_k=cfg.began_lambda_k, k0=cfg.began_k0)
    G, D = build_models(cfg.arch, image_size=image_size, channels=channels, z_dim=cfg.z_dim,
                        base=cfg.base, critic_norm=cfg.critic_norm, embed=cfg.began_embed)
    G.to(device=device, memory_format=memory_format)
    D.to(device=device, memory_format=memory_format)
    dist_mod.broadcast_module(G)  # every rank starts from rank 0's weights and buffers
    dist_mod.broadcast_module(D)
    blocker = cuda_graphs_blocker(cfg, device, world, loss) if cfg.cuda_graphs else None
    if blocker:
        say(f"--cuda-graphs: {blocker}; running the step uncaptured")
    graphs = cfg.cuda_graphs and blocker is None
    opt_g, opt_d, clip_after = build_optimizers(
        G, D, loss=loss, optimizer=cfg.optimizer, lr=cfg.lr, lr_g=cfg.lr_g, betas=cfg.betas,
        clip_value=cfg.clip_value, impl=cfg.impl, capturable=graphs)
    amp = usable_amp(cfg, device, G, D, say)
    if device.type == "cpu" and not is_toy:
        hint = cost.slow_cpu_hint(cost.estimate_step_seconds(
            G, D, z_dim=cfg.z_dim, batch_size=cfg.batch_size, n_critic=cfg.n_critic,
            uses_gp=loss.uses_gp), base=cfg.base, fast=cfg.fast == "on")
        if hint:
            say(hint)
    ema = EMA(G, decay=cfg.ema, rampup=cfg.ema_rampup) if cfg.ema > 0 else None
    if loss.uses_clipping:
        import pyfast_gan

        # WGAN keeps the critic in [-c, c] from the first forward on (the reference code
        # clamps before each critic pass).
        pyfast_gan.clip_weights_(D.parameters(), cfg.clip_value, impl=cfg.impl)
    step = GANStep(G, D, opt_g, opt_d, loss, z_dim=cfg.z_dim, gp_weight=cfg.gp_weight,
                   lazy_gp=cfg.lazy_gp, clip_after=clip_after, amp=amp,
                   channels_last=memory_format is torch.channels_last, compile=cfg.compile,
                   compile_penalty=cfg.compile_penalty, impl=cfg.impl, ema=ema,
                   grad_sync=dist_mod.allreduce_grads_ if world > 1 else None)
    if world > 1:  # own noise (z, alpha) per rank; data order and model init stay shared
        torch.manual_seed(dist_mod.noise_seed(cfg.seed, rank))
    # Fixed noise for sample grids: its own generator, so drawing it never moves the
    # training RNG streams.
    fixed_noise = torch.randn(cfg.n_samples, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 7))
    run = Run(cfg=cfg, device=device, rank=rank, world=world, batcher=inputs.batcher, data_gen=inputs.data_gen,
              G=G, D=D, opt_g=opt_g, opt_d=opt_d, ema=ema, step=step, fixed_noise=fixed_noise.to(device),
              say=say, toy=inputs.toy, real_u8=inputs.real_u8,
              plateau=PlateauDecay(cfg.plateau_steps, device) if cfg.lr_decay == "plateau" else None)
    run.data_fingerprints = run_data_fingerprints(cfg) if run.main else None
    if cfg.resume:
        path, src = resume_checkpoint(cfg.resume), resume_dir(cfg.resume)
        into = "" if same_dir(src, run.out) else f" into {run.out}, a new run directory ({src} is not changed)"
        if path is None:
            say(f"{src} holds no checkpoint (the run stopped before its first): training it from step 0 "
                f"with its config.json{into}")
        else:
            run.load(ckpt_mod.load(path, map_location=device))
            run.resumed_from = path
            say(f"resumed from {path} at step {run.generator_steps}{into}")
    if graphs:
        _capture(run)
    if cfg.eval_every > 0 and run.main:
        run.evaluator = _evaluator(cfg, inputs.real_u8, device, say)
    return run


def _evaluator(cfg: TrainConfig, real_u8: torch.Tensor | None, device: torch.device, say):
    """--eval-every's scorer. Its own noise generators: evaluating never moves the training
    RNG streams."""
    from pyfast_gan.metrics.evaluator import Evaluator

    evaluator = Evaluator(cfg.data, metrics=cfg.eval_metrics, real=real_u8, n=cfg.eval_n, seed=cfg.seed + 13,
                          inception_weights=cfg.inception_weights or None, device=device, progress=cfg.progress)
    for m, why in evaluator.skipped.items():
        say(f"--eval-every: {m} skipped: {why}")
    return evaluator


def _capture(run: Run) -> None:
    """Wrap the step in CUDA graphs (warm-up, compile and capture happen here, excluded from
    the timed steps); on failure the run keeps the uncaptured step, with one message."""
    from pyfast_gan.step.cuda_graphs import GraphedStep, graph_step

    t0 = time.perf_counter()
    graphed = graph_step(run.step, peek(run.batcher, run.cfg.batch_size))
    run.capture_time_s = time.perf_counter() - t0
    if isinstance(graphed, GraphedStep):
        run.step = graphed
        run.say(f"--cuda-graphs: critic and generator steps captured in {run.capture_time_s:.1f} s "
                "(warm-up and compilation included)")
    else:
        run.say("--cuda-graphs: capture failed (see the warning above); running the step uncaptured")
