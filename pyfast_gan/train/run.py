"""Build, then run: :func:`build` turns a resolved config into a :class:`Run` that holds
everything training needs (device, batcher, models, optimizers, the one training step,
EMA, resume state), and :meth:`Run.iteration` is what the loop (loop.py) and the benchmark
(benchmarks/bench_train.py) both call: n_critic critic steps and one generator step.

Every mode is decided here, once: AMP, channels_last, --compile and --lazy-gp are settings of
the :class:`~pyfast_gan.step.step.GANStep`, --cuda-graphs wraps it in a
:class:`~pyfast_gan.step.cuda_graphs.GraphedStep` with the same interface, torchrun gives it
a gradient all-reduce. Nothing after build branches on the mode.
"""
from __future__ import annotations

import copy
import dataclasses
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pyfast_gan.data.batch import ImageBatcher, ToyBatcher, peek
from pyfast_gan.step import distributed as dist_mod
from pyfast_gan.step.step import GANStep, build_optimizers, fit_loaded_state, set_lr
from pyfast_gan.losses import get_loss
from pyfast_gan.models import EMA, build_models

from pyfast_gan.artifacts import checkpoint as ckpt_mod
from . import cost
from .config import LOSS_ARCH, TOY_DATASETS as TOY_DATA, TrainConfig
from .rundir import resume_changes
from .inputs import build_inputs
from .plateau import PlateauDecay

CHECKPOINT_VERSION = 2


class Say:
    """One-line messages to stderr; silent on torchrun ranks other than 0."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[pyfast_gan.train] {msg}", file=sys.stderr, flush=True)


def resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: CUDA is not available on this machine")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def usable_amp(cfg: TrainConfig, device: torch.device, G, D, say) -> str:
    """cfg.amp, or "off" (with one message) when the device cannot run it: a tiny forward and
    backward on copies, so no RNG, BN statistics or parameters of the real models change."""
    if cfg.amp == "off":
        return "off"
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        say("--amp bf16: this GPU has no bf16 support; running in fp32")
        return "off"
    try:
        g, d = copy.deepcopy(G), copy.deepcopy(D)
        with torch.autocast(device_type=device.type, dtype=dtype):
            out = d(g(torch.zeros(2, cfg.z_dim, device=device))).float().sum()
        out.backward()
    except Exception as e:  # noqa: BLE001 - any unsupported-op error means "cannot"
        say(f"--amp {cfg.amp}: autocast is not usable on {device.type} for these models "
            f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); running in fp32")
        return "off"
    return cfg.amp


def cuda_graphs_blocker(cfg: TrainConfig, device: torch.device, world: int) -> str | None:
    """Why --cuda-graphs cannot be used for this run, or None."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device (running on {device.type})"
    if cfg.amp == "fp16":
        return "fp16 with GradScaler is not captured; use --amp bf16"
    if cfg.lazy_gp > 1:
        return "--lazy-gp changes the step from one critic iteration to the next"
    if world > 1:
        return "the multi-process gradient all-reduce is not captured"
    if cfg.lr_decay != "none" and cfg.optimizer == "rmsprop":
        return "--lr-decay with RMSprop is not captured (a graphed RMSprop step bakes in its lr)"
    if getattr(get_loss(cfg.loss), "stateful", False):
        return f"--loss {cfg.loss} keeps loss state (k_t) that the capture's warm-up would move"
    return None


class StopFlag:
    """SIGINT/SIGTERM set a flag checked between steps, so the checkpoint written on the
    way out is taken at a step boundary (exact resume). A second Ctrl-C raises at once."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


@dataclass
class Run:
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
    real_u8: torch.Tensor | None = None  # decoded images, for the evaluator only
    generator_steps: int = 0
    # The generator step after which the weights last changed (a step with any applied
    # update), on the device: skipped steps leave the weights as they were.
    last_applied: torch.Tensor | None = None
    elapsed_before: float = 0.0
    resumed_from: Path | None = None
    capture_time_s: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.rank == 0

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

    def evaluate(self, evaluator) -> dict:
        """The scalar scores of the generator (EMA when on) for metrics.jsonl; CoGAN: each
        domain and the pair correspondence (pyfast_gan.metrics.cogan, as evaluate scores it)."""
        from pyfast_gan.metrics.evaluator import scalar_items

        g = self.ema.module if self.ema is not None else self.G
        if self.cfg.arch == "cogan":
            from pyfast_gan.data.cogan import cogan_domain
            from pyfast_gan.metrics.cogan import flat_cogan_scores, score_cogan

            return scalar_items(flat_cogan_scores(score_cogan(g, evaluator, cogan_domain(self.cfg.to_dict()))))
        return scalar_items(evaluator(g, self.cfg.z_dim))

    # -- outputs ------------------------------------------------------------------------
    def write_samples(self, path: Path) -> dict:
        """The fixed-noise sample grid (toy data: a scatter over real points, and the mode
        coverage it shows, returned as a metrics record)."""
        from pyfast_gan.artifacts.outputs import save_image_grid, save_toy_scatter

        gm = self.ema.module if self.ema is not None else self.G
        was = gm.training
        gm.eval()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.step.dtype or torch.float32,
                                             enabled=self.step.dtype is not None):
            x = gm(self.fixed_noise).float()
        gm.train(was)
        if self.cfg.arch == "cogan":  # pairs from the same z side by side, 8 pairs a row
            from pyfast_gan.models import pairs_side_by_side

            save_image_grid(pairs_side_by_side(x, self.cfg.channels), path, nrow=16)
            return {}
        if not self.toy:
            save_image_grid(x, path)
            return {}
        real_pts, modes, std = self.toy
        rec, title = {}, f"{self.cfg.loss} {self.cfg.data} step {self.generator_steps}"
        if modes is not None:
            from pyfast_gan.metrics import mode_coverage

            cov = mode_coverage(x.cpu(), modes, std)
            rec = {"modes_covered": int(cov["covered"]), "num_modes": int(cov["num_modes"]),
                   "high_quality_fraction": float(cov["high_quality_fraction"])}
            title += f": {rec['modes_covered']}/{rec['num_modes']} modes"
        save_toy_scatter(x, real_pts, path, title=title, modes=modes)
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

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint(self, elapsed: float) -> dict | None:
        """The checkpoint payload (rank 0), None on other ranks. Collective under torchrun:
        every rank's RNG state is gathered; weights and optimizer state are identical on every
        rank, so rank 0's are the run's."""
        rng = ckpt_mod.rng_state(self.data_gen)
        rng_ranks = [rng]
        if self.world > 1:
            rng_ranks = [None] * self.world
            torch.distributed.all_gather_object(rng_ranks, rng)
        if not self.main:
            return None
        step = self.step
        return {
            "version": CHECKPOINT_VERSION,
            "step": self.generator_steps, "critic_steps": step.critic_steps,
            "G": self.G.state_dict(), "D": self.D.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "scaler_g": step.scaler_g.state_dict() if step.scaler_g.is_enabled() else None,
            "scaler_d": step.scaler_d.state_dict() if step.scaler_d.is_enabled() else None,
            "rng": rng, "rng_ranks": rng_ranks, "world_size": self.world,
            "data": self.batcher.state_dict(),
            "fixed_noise": self.fixed_noise.cpu(),
            "config": self.cfg.to_dict(),
            "elapsed": self.elapsed_before + elapsed,
            "nonfinite_total": step.health()["total"],
            "loss_state": step.loss_state_dict(),
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
        }

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

    def load(self, ck: dict) -> None:
        step = self.step
        self.G.load_state_dict(ck["G"])
        self.D.load_state_dict(ck["D"])
        saved = ck["config"]
        for line in resume_changes(saved, self.cfg):
            self.say(line)
        was = saved.get("optimizer", self.cfg.optimizer)
        if was != self.cfg.optimizer:
            # Adam's moments and RMSprop's square averages are different state: the networks
            # carry over, the new optimizer starts from zero state.
            self.say(f"--optimizer {self.cfg.optimizer}: the networks are restored from the checkpoint; "
                     f"{self.cfg.optimizer} starts with fresh state ({was}'s state in the checkpoint is not used)")
        else:
            self.opt_g.load_state_dict(ck["opt_g"])
            self.opt_d.load_state_dict(ck["opt_d"])
            # Every hyperparameter is this run's (the optimizers were built from its config, in
            # which flags given now replace the checkpoint's values); only the state carries over.
            fit_loaded_state(self.opt_g, hyperparameters=True)
            fit_loaded_state(self.opt_d, hyperparameters=True)
        for name in ("scaler_g", "scaler_d"):
            if ck.get(name) and getattr(step, name).is_enabled():
                getattr(step, name).load_state_dict(ck[name])
        if self.ema is not None:
            if ck.get("ema") is not None:
                self.ema.load_state_dict(ck["ema"])
                self.ema.decay = float(self.cfg.ema)  # --ema given now replaces the saved decay
            else:  # --ema turned on at resume: the average starts from the restored generator
                self.ema.module.load_state_dict(self.G.state_dict())
        self.batcher.load_state_dict(ck["data"])
        ckpt_mod.set_rng_state(ck["rng"], self.data_gen)
        ranks_rng = ck.get("rng_ranks")
        if ranks_rng is not None and len(ranks_rng) == self.world:
            ckpt_mod.set_rng_state(ranks_rng[self.rank])
        elif self.world > 1:  # another process count: fresh per-rank noise streams
            torch.manual_seed(dist_mod.noise_seed(self.cfg.seed, self.rank, int(ck["step"])))
        self.generator_steps = int(ck["step"])
        step.critic_steps = int(ck["critic_steps"])
        step.reset_health(int(ck.get("nonfinite_total", 0)))
        step.load_loss_state(ck.get("loss_state"))
        if self.plateau is not None and ck.get("plateau") is not None:
            self.plateau.load_state_dict(ck["plateau"])
        self.apply_lr_schedule()
        self.last_applied = torch.tensor(self.generator_steps, device=self.device)
        self.fixed_noise = ck["fixed_noise"].to(self.device)
        self.elapsed_before = float(ck.get("elapsed", 0.0))


def build(cfg: TrainConfig, *, rank: int = 0, world: int = 1) -> Run:
    """Everything a run needs, from a resolved config (pyfast_gan.train.config.resolve).
    Writes nothing. Data first, so a bad path fails before any model is built; a resumed
    run ends in the checkpoint's exact state."""
    say = Say(quiet=rank != 0)
    device = resolve_device(cfg)
    is_toy = cfg.data in TOY_DATA
    seed_everything(cfg.seed)

    # ---- data ------------------------------------------------------------------------
    inputs = build_inputs(cfg, device, rank, world, say)
    image_size, channels, memory_format = inputs.image_size, inputs.channels, inputs.memory_format
    # Record the sizes the data decided, so config.json (and resume) is complete.
    auto_arch = LOSS_ARCH.get(cfg.loss, "dcgan")
    cfg = dataclasses.replace(cfg, image_size=image_size, channels=channels,
                              arch="mlp" if is_toy else (auto_arch if cfg.arch == "auto" else cfg.arch))

    # ---- models, optimizers, the step -------------------------------------------------
    G, D = build_models(cfg.arch, image_size=image_size, channels=channels, z_dim=cfg.z_dim,
                        base=cfg.base, critic_norm=cfg.critic_norm, embed=cfg.began_embed)
    G.to(device=device, memory_format=memory_format)
    D.to(device=device, memory_format=memory_format)
    dist_mod.broadcast_module(G)  # every rank starts from rank 0's weights and buffers
    dist_mod.broadcast_module(D)
    blocker = cuda_graphs_blocker(cfg, device, world) if cfg.cuda_graphs else None
    if blocker:
        say(f"--cuda-graphs: {blocker}; running the step uncaptured")
    graphs = cfg.cuda_graphs and blocker is None
    opt_g, opt_d, clip_after = build_optimizers(
        G, D, loss=cfg.loss, optimizer=cfg.optimizer, lr=cfg.lr, lr_g=cfg.lr_g, betas=cfg.betas,
        clip_value=cfg.clip_value, impl=cfg.impl, capturable=graphs)
    amp = usable_amp(cfg, device, G, D, say)
    if device.type == "cpu" and not is_toy:
        hint = cost.slow_cpu_hint(cost.estimate_step_seconds(
            G, D, z_dim=cfg.z_dim, batch_size=cfg.batch_size, n_critic=cfg.n_critic,
            uses_gp=get_loss(cfg.loss).uses_gp), base=cfg.base, fast=cfg.fast)
        if hint:
            say(hint)
    ema = EMA(G, decay=cfg.ema) if cfg.ema > 0 else None
    if get_loss(cfg.loss).uses_clipping:
        import pyfast_gan

        # WGAN keeps the critic in [-c, c] from the first forward on (the reference code
        # clamps before each critic pass).
        pyfast_gan.clip_weights_(D.parameters(), cfg.clip_value, impl=cfg.impl)
    loss = (get_loss("began", gamma=cfg.began_gamma, lambda_k=cfg.began_lambda_k, k0=cfg.began_k0)
            if cfg.loss == "began" else cfg.loss)
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
    if cfg.resume:
        path = ckpt_mod.find_checkpoint(cfg.resume)
        run.load(ckpt_mod.load(path, map_location=device))
        run.resumed_from = path
        say(f"resumed from {path} at step {run.generator_steps}")
    if graphs:
        _capture(run)
    return run


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
