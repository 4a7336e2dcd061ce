"""The training loop: set-up (data, models, optimizers, switches), the step loop, outputs,
checkpoints, resume, interruption and health handling."""
from __future__ import annotations

import dataclasses
import json
import random
import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt_mod
from .config import TOY_DATA, TrainConfig, default_out_dir, fast_settings, validate
from .outputs import MetricsWriter, plot_losses, plot_metrics, save_image_grid, save_toy_scatter
from .steps import TrainState, critic_step, generator_step, make_critic_objective

# Fields that define the models and data; a resumed run cannot change them.
_FROZEN_ON_RESUME = ("loss", "data", "data_format", "image_size", "channels", "arch", "base",
                     "z_dim", "critic_norm")
WARMUP_STEPS = 5  # generator steps excluded from img_per_s (allocator, caches, compile)


class TrainingStopped(RuntimeError):
    """Training stopped because of repeated non-finite losses or gradients."""


_QUIET = False  # ranks other than 0 under torchrun say nothing


def _say(msg: str) -> None:
    if _QUIET:
        return
    print(f"[pyfast_gan.train] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
class ImageBatcher:
    """Uniform batches without replacement from a uint8 tensor: a seeded permutation per
    epoch (remainder dropped), gathered and normalised on the device. The whole dataset
    lives on the training device when it fits (issue 5: data never stalls the step),
    otherwise in pinned host memory with asynchronous copies."""

    def __init__(self, data: torch.Tensor, device: torch.device, generator: torch.Generator,
                 memory_format=torch.contiguous_format, rank: int = 0, world_size: int = 1):
        from pyfast_gan.data import to_float

        # Under torchrun every rank holds the same permutation (same generator seed) and
        # takes its slice of each global batch (as pyfast_gan.fast.distributed.shard_indices),
        # so the data position is one number for all ranks and survives a change of world size.
        self.rank, self.world = rank, world_size

        self._to_float = to_float
        self.n = data.shape[0]
        self.device = device
        self.gen = generator
        self.memory_format = memory_format
        self.on_device = True
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if data.numel() < 0.5 * free:
                data = data.to(device)
            else:
                self.on_device = False
                data = data.pin_memory()
                _say(f"dataset ({data.numel() / 2**30:.1f} GiB) does not fit in device memory; "
                     "streaming batches from pinned host memory")
        self.data = data
        self.epoch = 0
        self.offset = 0
        self.perm = torch.randperm(self.n, generator=self.gen)

    def next(self, batch_size: int) -> torch.Tensor:
        """This process's batch of ``batch_size`` from the next global batch."""
        gb = batch_size * self.world
        if gb > self.n:
            raise ValueError(f"--batch-size {batch_size} x {self.world} processes is larger than "
                             f"the dataset ({self.n} images)")
        if self.offset + gb > self.n:
            self.epoch += 1
            self.offset = 0
            self.perm = torch.randperm(self.n, generator=self.gen)
        start = self.offset + self.rank * batch_size
        idx = self.perm[start:start + batch_size]
        self.offset += gb
        if self.on_device:
            x = self.data.index_select(0, idx.to(self.data.device, non_blocking=True))
        else:
            x = self.data.index_select(0, idx).pin_memory().to(self.device, non_blocking=True)
        x = self._to_float(x)
        if self.memory_format is torch.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def state_dict(self) -> dict:
        return {"kind": "images", "epoch": self.epoch, "offset": self.offset, "perm": self.perm.clone()}

    def load_state_dict(self, s: dict) -> None:
        if s.get("kind") != "images" or s["perm"].numel() != self.n:
            raise ValueError("--resume: the checkpoint's data position does not match the data "
                             f"({self.n} images now)")
        self.epoch, self.offset, self.perm = int(s["epoch"]), int(s["offset"]), s["perm"].clone()


class ToyBatcher:
    """Fresh toy samples. Under torchrun every rank draws the same global batch (one
    generator, one seed) and keeps its slice: N processes x B see what one process x N*B
    would."""

    def __init__(self, sampler, device: torch.device, generator: torch.Generator,
                 rank: int = 0, world_size: int = 1):
        self.sampler, self.device, self.gen = sampler, device, generator
        self.rank, self.world = rank, world_size
        self.drawn = 0

    def next(self, batch_size: int) -> torch.Tensor:
        self.drawn += batch_size * self.world
        x = self.sampler.sample(batch_size * self.world, generator=self.gen)
        return x[self.rank * batch_size:(self.rank + 1) * batch_size].to(self.device)

    def state_dict(self) -> dict:
        return {"kind": "toy", "drawn": self.drawn}

    def load_state_dict(self, s: dict) -> None:
        self.drawn = int(s.get("drawn", 0))


def _toy_std(sampler, name: str) -> float:
    std = getattr(sampler, "std", None)
    if std is not None:
        return float(std)
    # The WGAN-GP toy code's noise, after its final rescaling.
    return {"8gaussians": 0.02 / 1.414, "25gaussians": 0.05 / 2.828}.get(name, 0.05)


# --------------------------------------------------------------------------------------
# set-up
# --------------------------------------------------------------------------------------
def _resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: CUDA is not available on this machine")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _build_models(cfg: TrainConfig, image_size: int, channels: int, is_toy: bool):
    from pyfast_gan import models as M

    if is_toy:
        return (M.MLPGenerator(z_dim=cfg.z_dim, out_dim=2, hidden=cfg.base),
                M.MLPCritic(in_dim=2, hidden=cfg.base))
    if cfg.arch in ("auto", "dcgan"):
        return (M.DCGANGenerator(image_size, channels, z_dim=cfg.z_dim, base=cfg.base),
                M.DCGANCritic(image_size, channels, base=cfg.base, norm=cfg.critic_norm))
    return (M.ResNetGenerator(image_size, channels, z_dim=cfg.z_dim, base=cfg.base),
            M.ResNetCritic(image_size, channels, base=cfg.base, norm=cfg.critic_norm))


def _make_optimizers(cfg: TrainConfig, G, D, loss_fn, capturable: bool = False):
    """``capturable``: optimizers whose step can be captured in a CUDA graph (state on the
    device, no host syncs); the fused RMSpropClip checks gradients on the host, so WGAN
    then clips after a capturable RMSprop step instead."""
    import pyfast_gan

    lr_g = cfg.lr_g or cfg.lr
    clip_after = False
    cap = {"capturable": True} if capturable else {}
    if cfg.optimizer == "rmsprop":
        opt_g = torch.optim.RMSprop(G.parameters(), lr=lr_g, **cap)
        if loss_fn.uses_clipping and capturable:
            opt_d = torch.optim.RMSprop(D.parameters(), lr=cfg.lr, capturable=True)
            clip_after = True
        elif loss_fn.uses_clipping:
            # Clip fused into the update: one pass over the critic's weights (issue 3).
            opt_d = pyfast_gan.optim.RMSpropClip(D.parameters(), lr=cfg.lr, clip_value=cfg.clip_value,
                                                 impl=cfg.impl)
        else:
            opt_d = torch.optim.RMSprop(D.parameters(), lr=cfg.lr, **cap)
    else:
        def lr_(v):
            # A captured step bakes a float lr into the graph; a device tensor is read at
            # each replay, so --lr-decay reaches graphed steps (_apply_lr_decay fills it).
            return torch.tensor(float(v), device=next(G.parameters()).device) if capturable else v

        opt_g = torch.optim.Adam(G.parameters(), lr=lr_(lr_g), betas=tuple(cfg.betas), **cap)
        opt_d = torch.optim.Adam(D.parameters(), lr=lr_(cfg.lr), betas=tuple(cfg.betas), **cap)
        clip_after = loss_fn.uses_clipping
    return opt_g, opt_d, clip_after


def _apply_lr_decay(cfg: TrainConfig, step: int, opt_g, opt_d) -> None:
    """Set both optimizers' lr for generator step ``step`` under --lr-decay. Computed from the
    step counter alone (no scheduler state), so a resumed run sets exactly the same lrs."""
    if cfg.lr_decay == "none":
        return
    frac = max(0.0, 1.0 - step / cfg.steps)
    for opt, base in ((opt_g, cfg.lr_g or cfg.lr), (opt_d, cfg.lr)):
        for group in opt.param_groups:
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(base * frac)  # a captured (CUDA-graph) step reads it in place
            else:
                group["lr"] = base * frac


def _probe_amp(cfg, device, G, D, z_dim, is_toy) -> torch.dtype | None:
    """The autocast dtype, or None. Falls back, with one message, when the device cannot."""
    if cfg.amp == "off":
        return None
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        _say("--amp bf16: this GPU has no bf16 support; running in fp32")
        return None
    # Some CPU kernels have no fp16 (or bf16) autocast version: try a tiny forward/backward
    # on copies so no RNG, BN statistics or parameters of the real models change.
    import copy

    try:
        g, d = copy.deepcopy(G), copy.deepcopy(D)
        z = torch.zeros(2, z_dim, device=device)
        with torch.autocast(device_type=device.type, dtype=dtype):
            out = d(g(z)).float().sum()
        out.backward()
    except Exception as e:  # noqa: BLE001 - any unsupported-op error means "cannot"
        _say(f"--amp {cfg.amp}: autocast is not usable on {device.type} for these models "
             f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); running in fp32")
        return None
    return dtype


def _fit_optimizer_state(opt: torch.optim.Optimizer, capturable: bool) -> None:
    """After load_state_dict, whose param groups are the checkpoint's: a run with and one
    without --cuda-graphs use different optimizer classes/options for the same state
    (RMSprop capturable vs the fused RMSpropClip, Adam capturable or not), so fill options
    the saved groups lack from this optimizer's defaults, and make a graphed run's groups
    capturable with their step counters on the device."""
    for group in opt.param_groups:
        for k, v in opt.defaults.items():
            group.setdefault(k, v)
        if "capturable" in opt.defaults:
            group["capturable"] = capturable
        lr = group.get("lr")
        if isinstance(opt, torch.optim.Adam) and capturable and not torch.is_tensor(lr):
            group["lr"] = torch.tensor(float(lr), device=group["params"][0].device)
        elif torch.is_tensor(lr) and not capturable:
            group["lr"] = float(lr)  # non-capturable foreach steps take a float lr
        on_device = capturable or bool(group.get("fused"))
        for p in group["params"]:
            st = opt.state.get(p, {})
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(device=p.device if on_device else "cpu")


def _cuda_graphs_blocker(cfg: TrainConfig, device: torch.device, world: int) -> str | None:
    """Why --cuda-graphs cannot be used for this run, or None."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device (running on {device.type})"
    if cfg.amp == "fp16":
        return "fp16's GradScaler syncs with the host every step; use --amp bf16"
    if cfg.lazy_gp > 1:
        return "--lazy-gp changes the step from one critic iteration to the next"
    if world > 1:
        return "the multi-process gradient all-reduce is not captured"
    if getattr(cfg, "lr_decay", "none") != "none" and cfg.optimizer == "rmsprop":
        return "--lr-decay with RMSprop is not captured (a graphed RMSprop step bakes in its lr)"
    return None


def _install_fast_paths(state: TrainState, cfg: TrainConfig, batcher, data_gen,
                        use_graphs: bool) -> None:
    """compile / CUDA graphs (pyfast_gan/fast/). Each switch the device or the installed
    torch cannot use says so once and falls back to the eager step."""
    if cfg.compile and not use_graphs:
        _install_compile(state, cfg)
    if use_graphs:
        _install_graphs(state, cfg, batcher, data_gen)


def _install_compile(state: TrainState, cfg: TrainConfig) -> None:
    try:
        from pyfast_gan.fast import make_critic_objective as make_fast_objective
    except ImportError as e:
        _say(f"--compile: pyfast_gan.fast is not importable ({e}); running eager")
        return
    amp = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[state.amp_dtype]
    # Verified against the eager objective at its first call; falls back with a message if
    # the installed torch cannot compile through the double backward.
    state.critic_objective = make_fast_objective(
        state.loss_fn, cfg.gp_weight, compile=True, lazy_gp=cfg.lazy_gp, amp=amp,
        scaler=state.scaler_d, impl=cfg.impl)


def _install_graphs(state: TrainState, cfg: TrainConfig, batcher, data_gen) -> None:
    # The trainer's eager step syncs with the host once per optimizer step (health check),
    # which a graph cannot contain; the graphed step is pyfast_gan.fast's sync-free FastStep,
    # whose health is checked from its returned stats at every log step instead.
    from pyfast_gan.fast.cuda_graphs import GraphedStep, graph_step
    from pyfast_gan.fast.step import FastStep

    amp = {None: "off", torch.bfloat16: "bf16"}.get(state.amp_dtype, "off")
    fs = FastStep(state.G, state.D, state.opt_g, state.opt_d, state.loss_fn, z_dim=cfg.z_dim,
                  gp_weight=cfg.gp_weight, clip_value=cfg.clip_value,
                  clip_after_step=state.clip_after_step, amp=amp,
                  channels_last=state.memory_format is torch.channels_last,
                  compile=cfg.compile, impl=cfg.impl, lazy_gp=cfg.lazy_gp)
    fs.critic_steps = state.critic_steps
    # A batch for the capture's static buffer, drawn without moving the data position.
    saved, gen_state = batcher.state_dict(), data_gen.get_state()
    example = batcher.next(cfg.batch_size)
    batcher.load_state_dict(saved)
    data_gen.set_state(gen_state)
    t0 = time.perf_counter()
    graphed = graph_step(fs, example)
    state.extra["capture_time_s"] = time.perf_counter() - t0
    if isinstance(graphed, GraphedStep):
        state.extra["graphed"] = graphed
        _say(f"--cuda-graphs: critic and generator steps captured in "
             f"{state.extra['capture_time_s']:.1f} s (warm-up and compilation included)")
    else:
        _say("--cuda-graphs: capture failed (see the warning above); running the eager step")
        if cfg.compile:
            _install_compile(state, cfg)


def _merge_resume_config(cfg: TrainConfig, explicit: set[str]) -> tuple[TrainConfig, Path]:
    path = ckpt_mod.find_checkpoint(cfg.resume)
    saved = ckpt_mod.load(path)["config"]
    values = dict(saved)
    for k in explicit:
        if k in ("resume",):
            continue
        new = getattr(cfg, k)
        old = saved.get(k)
        if k in _FROZEN_ON_RESUME and _norm(new) != _norm(old):
            raise ValueError(f"--{k.replace('_', '-')}: cannot change from {old!r} to {new!r} "
                             "when resuming (the checkpoint's models and data depend on it)")
        values[k] = new
    values["resume"] = cfg.resume
    if "out" not in explicit:
        values["out"] = str(path.parent.parent if path.parent.name == "checkpoints" else path.parent)
    if values.get("fast") and "fast" in explicit:
        dev = "cuda" if (values["device"] != "cpu" and torch.cuda.is_available()) else "cpu"
        for k, v in fast_settings(dev).items():
            if k not in explicit:
                values[k] = v
    values["betas"] = tuple(values["betas"])
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    out = TrainConfig(**{k: v for k, v in values.items() if k in known})
    validate(out)
    return out, path


def _format_config(cfg: TrainConfig) -> str:
    d = cfg.to_dict()
    w = max(map(len, d))
    return "\n".join(f"  {k:<{w}} = {v!r}" for k, v in d.items())


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------
class _StopFlag:
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


def train(cfg: TrainConfig, explicit: set[str] | None = None, hooks: dict | None = None) -> dict:
    """Run training for a resolved config. Returns a summary dict (out dir, final step,
    status: 'done' | 'interrupted'). Raises TrainingStopped on repeated non-finite steps,
    ValueError (incl. pyfast_gan.data.DataError) for bad input before anything is built.

    Under torchrun (WORLD_SIZE > 1) the run is data-parallel (pyfast_gan.fast.distributed):
    rank 0's weights are broadcast once, each rank trains on its slice of a global batch of
    world_size x batch_size, gradients are averaged in one flat all-reduce per optimizer
    step (the penalty's included), every rank takes the same skip decision for non-finite
    steps, and only rank 0 writes or prints anything.

    Resuming on a different number of processes: weights, optimizer state, step counters
    and the data position (one permutation shared by all ranks, consumed in global batches)
    carry over exactly; the global batch becomes the new world_size x batch_size. The noise
    streams (z, the penalty's alpha) are exact only on the same world size (each rank's RNG
    state is in the checkpoint); otherwise each rank reseeds from (seed, rank, step). Batch
    norm running statistics are rank 0's.
    """
    global _QUIET
    from pyfast_gan.fast import distributed as dist_mod

    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    had_group = dist_mod.is_distributed()
    rank, world, _ = dist_mod.init_distributed(device="cuda" if want_cuda else "cpu")
    quiet_before = _QUIET
    _QUIET = rank != 0
    try:
        if rank != 0:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return _train(cfg, explicit, hooks, rank, world)
        return _train(cfg, explicit, hooks, rank, world)
    finally:
        _QUIET = quiet_before
        if not had_group:
            dist_mod.cleanup()


def _rank_noise_seed(seed: int, rank: int, step: int) -> int:
    from pyfast_gan.fast.distributed import per_rank_seed

    return per_rank_seed(seed, rank) + 7_919 * int(step)


def _train(cfg: TrainConfig, explicit, hooks, rank: int, world: int) -> dict:
    from pyfast_gan.losses import get_loss

    main_proc = rank == 0
    hooks = hooks or {}
    explicit = set(explicit or ())
    resume_path = None
    if cfg.resume:
        cfg, resume_path = _merge_resume_config(cfg, explicit)
    validate(cfg)
    device = _resolve_device(cfg)
    is_toy = cfg.data in TOY_DATA
    loss_fn = get_loss(cfg.loss)
    _seed_everything(cfg.seed)

    # ---- data first: a bad path fails before any model is built ----------------------
    data_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    memory_format = torch.channels_last if (cfg.channels_last and not is_toy) else torch.contiguous_format
    if cfg.channels_last and is_toy:
        _say("--channels-last: no effect on 2-D toy data; ignored")
    if is_toy:
        from pyfast_gan.data import ToySampler

        sampler = ToySampler(cfg.data)
        batcher = ToyBatcher(sampler, device, data_gen, rank, world)
        image_size, channels = 0, 0
    else:
        from pyfast_gan.data import decode_all, open_dataset

        ds = open_dataset(cfg.data, data_format=cfg.data_format, image_size=cfg.image_size or None,
                          channels=cfg.channels or None)
        if len(ds) < cfg.batch_size * world:
            raise ValueError(f"--batch-size {cfg.batch_size}"
                             + (f" x {world} processes" if world > 1 else "")
                             + f" is larger than the dataset ({len(ds)} images in {cfg.data!r})")
        image_size, channels = ds.image_size, ds.channels
        sizes = (32, 64, 96, 128)
        if image_size not in sizes:
            raise ValueError(f"--image-size: the data's size {image_size} is not supported "
                             f"by the models; pass --image-size one of {sizes}")
        data_u8 = decode_all(ds, num_workers=cfg.num_workers, progress=cfg.progress and main_proc)
        batcher = ImageBatcher(data_u8, device, data_gen, memory_format, rank, world)
    # The evaluator is built before the models, so a bad --eval-metrics or missing Inception
    # weights fail early; it uses its own generators and never moves the training RNG streams.
    evaluator = None
    if cfg.eval_every > 0 and main_proc:
        from pyfast_gan.metrics.suite import Evaluator, scalar_items

        evaluator = Evaluator(cfg.data, metrics=cfg.eval_metrics, real=None if is_toy else data_u8,
                              n=cfg.eval_n, seed=cfg.seed + 13, inception_weights=cfg.inception_weights or None,
                              device=device, progress=cfg.progress)
        for m, why in evaluator.skipped.items():
            _say(f"--eval-every: {m} skipped: {why}")
    if not is_toy:
        del data_u8
    # Record the sizes the data decided, so config.json (and resume) is complete.
    cfg = dataclasses.replace(cfg, image_size=image_size, channels=channels,
                              arch=("mlp" if is_toy else ("dcgan" if cfg.arch == "auto" else cfg.arch)))

    # ---- models, optimizers, scalers --------------------------------------------------
    G, D = _build_models(cfg, image_size, channels, is_toy)
    G.to(device=device, memory_format=memory_format)
    D.to(device=device, memory_format=memory_format)
    from pyfast_gan.fast import distributed as dist_mod

    # Every rank starts from rank 0's weights (and batch-norm buffers).
    dist_mod.broadcast_module(G)
    dist_mod.broadcast_module(D)
    graphs_blocker = _cuda_graphs_blocker(cfg, device, world) if cfg.cuda_graphs else None
    use_graphs = cfg.cuda_graphs and graphs_blocker is None
    if cfg.cuda_graphs and graphs_blocker:
        _say(f"--cuda-graphs: {graphs_blocker}; running the eager step")
    opt_g, opt_d, clip_after = _make_optimizers(cfg, G, D, loss_fn, capturable=use_graphs)
    amp_dtype = _probe_amp(cfg, device, G, D, cfg.z_dim, is_toy)
    use_scaler = amp_dtype is torch.float16
    scaler_g = torch.amp.GradScaler(device.type, enabled=use_scaler)
    scaler_d = torch.amp.GradScaler(device.type, enabled=use_scaler)
    ema = None
    if cfg.ema > 0:
        from pyfast_gan.models import EMA

        ema = EMA(G, decay=cfg.ema)
    if loss_fn.uses_clipping:
        import pyfast_gan

        # WGAN keeps the critic in [-c, c] from the first forward on (the reference code
        # clamps before each critic pass).
        pyfast_gan.clip_weights_(D.parameters(), cfg.clip_value, impl=cfg.impl)

    state = TrainState(cfg=cfg, device=device, G=G, D=D, opt_g=opt_g, opt_d=opt_d, scaler_g=scaler_g,
                       scaler_d=scaler_d, loss_fn=loss_fn, z_dim=cfg.z_dim, amp_dtype=amp_dtype, ema=ema,
                       clip_after_step=clip_after, memory_format=memory_format)
    state.critic_objective = make_critic_objective(loss_fn, cfg, scaler_d)
    if world > 1:
        state.grad_sync = dist_mod.make_grad_sync()
        # Own noise (z, alpha) per rank; data and model RNG stay shared.
        torch.manual_seed(_rank_noise_seed(cfg.seed, rank, 0))

    # Fixed noise for sample grids / toy evaluation: own generators, so drawing it never
    # moves the training RNG streams.
    fixed_noise = torch.randn(cfg.n_samples, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 7))
    elapsed_before = 0.0

    # ---- resume -----------------------------------------------------------------------
    if resume_path is not None:
        ck = ckpt_mod.load(resume_path, map_location=device)
        G.load_state_dict(ck["G"])
        D.load_state_dict(ck["D"])
        opt_g.load_state_dict(ck["opt_g"])
        opt_d.load_state_dict(ck["opt_d"])
        _fit_optimizer_state(opt_g, capturable=use_graphs)
        _fit_optimizer_state(opt_d, capturable=use_graphs)
        scaler_g.load_state_dict(ck["scaler_g"]) if ck.get("scaler_g") and use_scaler else None
        scaler_d.load_state_dict(ck["scaler_d"]) if ck.get("scaler_d") and use_scaler else None
        if ema is not None and ck.get("ema") is not None:
            ema.load_state_dict(ck["ema"])
        batcher.load_state_dict(ck["data"])
        ckpt_mod.set_rng_state(ck["rng"], data_gen)
        ranks_rng = ck.get("rng_ranks")
        if ranks_rng is not None and len(ranks_rng) == world:
            ckpt_mod.set_rng_state(ranks_rng[rank])
        elif world > 1:
            torch.manual_seed(_rank_noise_seed(cfg.seed, rank, int(ck["step"])))
        state.step, state.critic_steps = int(ck["step"]), int(ck["critic_steps"])
        state.nonfinite_total = int(ck.get("nonfinite_total", 0))
        fixed_noise = ck["fixed_noise"].cpu()
        elapsed_before = float(ck.get("elapsed", 0.0))
        _say(f"resumed from {resume_path} at step {state.step}")
        del ck
    fixed_noise = fixed_noise.to(device)

    # ---- outputs ------------------------------------------------------------------------
    out = Path(cfg.out or default_out_dir(cfg))
    cfg = dataclasses.replace(cfg, out=str(out))
    state.cfg = cfg
    metrics = None
    if main_proc:
        for sub in ("samples", "plots", "checkpoints"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        procs = f", {world} processes (global batch {cfg.batch_size * world})" if world > 1 else ""
        print(f"pyfast_gan.train: {cfg.loss} on {cfg.data} ({'toy 2-D' if is_toy else f'{channels}x{image_size}x{image_size}'})"
              f", device {device}{procs}, output {out}\nresolved config:\n{_format_config(cfg)}", flush=True)
        metrics = MetricsWriter(out / "metrics.jsonl")
        metrics.truncate_after(state.step)

    _install_fast_paths(state, cfg, batcher, data_gen, use_graphs)
    if "on_start" in hooks:
        hooks["on_start"](state)

    toy_eval = None
    if is_toy:
        real_pts = sampler.sample(2000, generator=torch.Generator().manual_seed(cfg.seed + 11))
        toy_eval = (real_pts, getattr(sampler, "modes", None), _toy_std(sampler, cfg.data))

    def write_samples():
        gm = ema.module if ema is not None else G
        was = gm.training
        gm.eval()
        with torch.no_grad(), state.autocast():
            x = gm(fixed_noise).float()
        gm.train(was)
        path = out / "samples" / f"step_{state.step:06d}.png"
        if not is_toy:
            save_image_grid(x, path)
            return {}
        real_pts, modes, std = toy_eval
        rec, title = {}, f"{cfg.loss} {cfg.data} step {state.step}"
        if modes is not None:
            from pyfast_gan.metrics import mode_coverage

            cov = mode_coverage(x.cpu(), modes, std)
            rec = {"modes_covered": int(cov["covered"]), "num_modes": int(cov["num_modes"]),
                   "high_quality_fraction": float(cov["high_quality_fraction"])}
            title += f": {rec['modes_covered']}/{rec['num_modes']} modes"
        save_toy_scatter(x, real_pts, path, title=title, modes=modes)
        return rec

    def save_checkpoint(periodic: bool) -> Path:
        """Collective under torchrun (every rank's RNG state is gathered); rank 0 writes.
        Weights and optimizer state are identical on every rank, so rank 0's are the run's."""
        latest = out / "checkpoints" / "latest.pt"
        rng = ckpt_mod.rng_state(data_gen)
        rng_ranks = [rng]
        if world > 1:
            rng_ranks = [None] * world
            torch.distributed.all_gather_object(rng_ranks, rng)
        if not main_proc:
            return latest
        payload = {
            "version": 1,
            "step": state.step, "critic_steps": state.critic_steps,
            "G": G.state_dict(), "D": D.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "scaler_g": scaler_g.state_dict() if use_scaler else None,
            "scaler_d": scaler_d.state_dict() if use_scaler else None,
            "rng": rng,
            "rng_ranks": rng_ranks, "world_size": world,
            "data": batcher.state_dict(),
            "fixed_noise": fixed_noise.cpu(),
            "config": cfg.to_dict(),
            "elapsed": elapsed_before + (time.perf_counter() - t0),
            "nonfinite_total": state.nonfinite_total,
        }
        ckpt_mod.save_atomic(payload, latest)
        if periodic:
            ckpt_mod.save_atomic(payload, out / "checkpoints" / f"step_{state.step:06d}.pt")
        return latest

    # ---- loop -----------------------------------------------------------------------------
    from tqdm.auto import tqdm

    def n_critic_for(step: int) -> int:
        if cfg.wgan_schedule and (step < 25 or step % 500 == 0):
            return 100  # WassersteinGAN's schedule (reference code, main.py)
        return cfg.n_critic

    acc: dict[str, list] = defaultdict(list)
    skipped = 0
    step_time, step_count = 0.0, 0
    start_step = state.step
    status = "done"
    mid_step = False
    t0 = time.perf_counter()
    pbar = tqdm(total=cfg.steps, initial=state.step, disable=not (cfg.progress and main_proc), dynamic_ncols=True,
                desc=f"{cfg.loss}", unit="step", file=sys.stderr)
    last_img_s = None
    postfix: dict = {}
    graphed = state.extra.get("graphed")
    compile_reported = False
    last_checked = state.step  # graphed steps: stats known finite up to this step

    def compile_time() -> float:
        obj = graphed.step.objective if graphed is not None else state.critic_objective
        return float(getattr(obj, "compile_time_s", 0.0) or 0.0)

    def kept_message() -> str:
        kept = out / "checkpoints" / "latest.pt"
        return (f"the last good checkpoint is kept at {kept}" if kept.exists()
                else "no checkpoint had been written yet")

    def check_health():
        streak = max(state.nonfinite_streak_d, state.nonfinite_streak_g)
        if streak >= cfg.max_nonfinite:
            raise TrainingStopped(
                f"stopped at step {state.step}: {streak} consecutive steps with a "
                f"non-finite loss or gradient (--max-nonfinite {cfg.max_nonfinite}); {kept_message()}. "
                "Try a lower --lr, --amp off, or check the data.")

    def check_graphed_health():
        # A graphed step cannot be skipped (the update is inside the graph) and checking
        # it would sync every step; its losses are checked here, at log and checkpoint
        # steps. A non-finite gradient shows as a non-finite loss one step later.
        nonlocal last_checked
        vals = [v for k, vs in acc.items() if k.startswith("loss") for v in vs]
        if vals and not bool(torch.isfinite(torch.stack([v.float().reshape(()) for v in vals])).all()):
            raise TrainingStopped(
                f"stopped at step {state.step}: non-finite loss in the CUDA-graphed step after "
                f"step {last_checked} (graphed steps cannot be skipped); {kept_message()}. Resume "
                "without --cuda-graphs (non-finite steps are then skipped), or lower --lr.")
        last_checked = state.step

    def graphed_critic(real):
        s = graphed.critic_step(real)
        state.critic_steps = graphed.step.critic_steps
        # the graph's outputs are overwritten by the next replay
        return {("loss_d_adv" if k == "loss" else k): v.detach().float().clone() for k, v in s.items()}

    def graphed_generator():
        s = graphed.generator_step(cfg.batch_size)
        if state.ema is not None:
            state.ema.update(state.G)
        return {(k if k == "loss_g" else f"g_{k}"): v.detach().float().clone()
                for k, v in s.items() if k != "wasserstein"}

    def agreed(flag: bool) -> bool:
        """True on every rank when it is True on any (a stop must happen at the same step
        everywhere or the others wait forever in the next all-reduce)."""
        if world == 1:
            return flag
        t = torch.tensor([int(flag)], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    try:
        with _StopFlag() as stop:
            while state.step < cfg.steps:
                if agreed(stop.signum is not None):
                    status = "interrupted"
                    break
                mid_step = True
                _apply_lr_decay(cfg, state.step, opt_g, opt_d)
                ts = time.perf_counter()
                for _ in range(n_critic_for(state.step)):
                    real = batcher.next(cfg.batch_size)
                    if graphed is not None:
                        s = graphed_critic(real)
                    else:
                        s = critic_step(state, real)
                        skipped += s.pop("skipped")
                    for k, v in s.items():
                        acc[k].append(v)
                    check_health()
                if graphed is not None:
                    s = graphed_generator()
                else:
                    s = generator_step(state, cfg.batch_size)
                    skipped += s.pop("skipped")
                for k, v in s.items():
                    acc[k].append(v)
                state.step += 1
                mid_step = False
                last = state.step == cfg.steps
                logging = state.step % cfg.log_every == 0 or last
                if (graphed is not None and device.type == "cuda"
                        and (logging or state.step - start_step == WARMUP_STEPS)):
                    # Replays are asynchronous: wait for the queued work so the timed
                    # window holds exactly its own steps (and none of the warm-up's).
                    torch.cuda.synchronize(device)
                dt = time.perf_counter() - ts
                if state.step - start_step > WARMUP_STEPS:
                    step_time += dt
                    step_count += 1
                check_health()
                pbar.update(1)
                healthy = state.nonfinite_streak_d == 0 and state.nonfinite_streak_g == 0
                if logging:
                    if graphed is not None:
                        check_graphed_health()
                    keys = sorted(acc)
                    means = []
                    for k in keys:
                        t = torch.stack([v.float().reshape(()) for v in acc[k]])
                        fin = t[torch.isfinite(t)]
                        means.append(fin.mean() if fin.numel() else torch.tensor(float("nan"), device=t.device))
                    if world > 1 and means:
                        # Logged values are means over ranks (each rank saw its own shard).
                        m = torch.stack(means)
                        torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.SUM)
                        means = list(m / world)
                    rec = {"step": state.step}
                    rec.update({k: float(v) for k, v in zip(keys, means)})
                    # Images per second over the whole job (all processes), timed from the
                    # step after warm-up, so compilation and capture are not in it.
                    rec["img_per_s"] = (step_count * cfg.batch_size * world / step_time) if step_count else None
                    rec["skipped"] = skipped
                    rec["time"] = round(elapsed_before + time.perf_counter() - t0, 3)
                    if not compile_reported and (cfg.compile or graphed is not None):
                        compile_reported = True
                        if cfg.compile:
                            rec["compile_time_s"] = round(compile_time(), 3)
                            _say(f"--compile: compile time {rec['compile_time_s']:.1f} s (start-up "
                                 "verification included; not counted in img_per_s)")
                        if graphed is not None:
                            rec["capture_time_s"] = round(state.extra["capture_time_s"], 3)
                    if main_proc:
                        metrics.write(rec)
                    last_img_s = rec["img_per_s"] or last_img_s
                    postfix.update(D=f"{rec.get('loss_d', float('nan')):.3g}",
                                   G=f"{rec.get('loss_g', float('nan')):.3g}")
                    if last_img_s:
                        postfix["img/s"] = f"{last_img_s:.0f}"
                    pbar.set_postfix(postfix, refresh=False)
                    acc.clear()
                    skipped = 0
                    step_time, step_count = 0.0, 0
                if (state.step % cfg.sample_every == 0 or last) and main_proc:
                    ev = write_samples()
                    if ev:
                        metrics.write({"step": state.step, **ev})
                        postfix["modes"] = f"{ev['modes_covered']}/{ev['num_modes']}"
                        pbar.set_postfix(postfix, refresh=False)
                    plot_losses(metrics.records, out / "plots" / "losses.png")
                if evaluator is not None and (state.step % cfg.eval_every == 0 or last):
                    res = scalar_items(evaluator(ema.module if ema is not None else G, cfg.z_dim))
                    metrics.write({"step": state.step, "eval": res})
                    plot_metrics(metrics.records, out / "plots" / "metrics.png")
                    for k in ("cfid", "fid", "toy_fd"):
                        if k in res:
                            postfix[k] = f"{res[k]:.3g}"
                            break
                    pbar.set_postfix(postfix, refresh=False)
                # Only healthy states are checkpointed, so after a run of non-finite steps
                # latest.pt is the last good state. (The streaks are equal on every rank,
                # so all ranks join the collective checkpoint together.)
                if (state.step % cfg.checkpoint_every == 0 or last) and healthy:
                    if graphed is not None:
                        check_graphed_health()
                    save_checkpoint(periodic=state.step % cfg.checkpoint_every == 0)
                if "on_step" in hooks:
                    hooks["on_step"](state)
    except KeyboardInterrupt:
        status = "interrupted"
    except ValueError as e:
        # Inputs were validated during set-up; a ValueError now is a failure of the run, not
        # a bad flag, so it must not be reported as a usage error.
        raise RuntimeError(f"training failed at step {state.step}: {e}") from e
    finally:
        pbar.close()

    if status == "interrupted":
        path = save_checkpoint(periodic=False)
        if main_proc:
            write_samples()
            plot_losses(metrics.records, out / "plots" / "losses.png")
        note = "" if not mid_step else (" (interrupted inside a step: that step's partial update "
                                        "is in the checkpoint, so the resumed run is not bitwise exact)")
        _say(f"interrupted at step {state.step}: checkpoint written to {path}{note}. "
             f"Continue with: python -m pyfast_gan.train --resume {out}")
    elif main_proc:
        plot_losses(metrics.records, out / "plots" / "losses.png")
        print(f"done: {state.step} steps in {time.perf_counter() - t0:.1f} s; outputs in {out}", flush=True)
    return {"out": str(out), "step": state.step, "status": status, "state": state}
