"""The training loop: set-up (data, models, optimizers, switches), the step loop, outputs,
checkpoints, resume, interruption and health handling."""
from __future__ import annotations

import dataclasses
import json
import math
import os
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
from .outputs import MetricsWriter, plot_losses, save_image_grid, save_toy_scatter
from .steps import TrainState, critic_step, generator_step, make_critic_objective

# Fields that define the models and data; a resumed run cannot change them.
_FROZEN_ON_RESUME = ("loss", "data", "data_format", "image_size", "channels", "arch", "base",
                     "z_dim", "critic_norm")
WARMUP_STEPS = 5  # generator steps excluded from img_per_s (allocator, caches, compile)


class TrainingStopped(RuntimeError):
    """Training stopped because of repeated non-finite losses or gradients."""


def _say(msg: str) -> None:
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
                 memory_format=torch.contiguous_format):
        from pyfast_gan.data import to_float

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
        if batch_size > self.n:
            raise ValueError(f"--batch-size {batch_size} is larger than the dataset ({self.n} images)")
        if self.offset + batch_size > self.n:
            self.epoch += 1
            self.offset = 0
            self.perm = torch.randperm(self.n, generator=self.gen)
        idx = self.perm[self.offset:self.offset + batch_size]
        self.offset += batch_size
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
    def __init__(self, sampler, device: torch.device, generator: torch.Generator):
        self.sampler, self.device, self.gen = sampler, device, generator
        self.drawn = 0

    def next(self, batch_size: int) -> torch.Tensor:
        self.drawn += batch_size
        return self.sampler.sample(batch_size, generator=self.gen).to(self.device)

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


def _make_optimizers(cfg: TrainConfig, G, D, loss_fn):
    import pyfast_gan

    lr_g = cfg.lr_g or cfg.lr
    clip_after = False
    if cfg.optimizer == "rmsprop":
        opt_g = torch.optim.RMSprop(G.parameters(), lr=lr_g)
        if loss_fn.uses_clipping:
            # Clip fused into the update: one pass over the critic's weights (issue 3).
            opt_d = pyfast_gan.optim.RMSpropClip(D.parameters(), lr=cfg.lr, clip_value=cfg.clip_value,
                                                 impl=cfg.impl)
        else:
            opt_d = torch.optim.RMSprop(D.parameters(), lr=cfg.lr)
    else:
        opt_g = torch.optim.Adam(G.parameters(), lr=lr_g, betas=tuple(cfg.betas))
        opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        clip_after = loss_fn.uses_clipping
    return opt_g, opt_d, clip_after


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


def _install_fast_paths(state: TrainState, cfg: TrainConfig) -> None:
    """compile / CUDA graphs (pyfast_gan/fast/). Each switch the device or the installed
    torch cannot use says so once and falls back to the eager step."""
    if cfg.compile:
        try:
            from pyfast_gan.fast import make_critic_objective as make_fast_objective
        except ImportError as e:
            _say(f"--compile: pyfast_gan.fast is not importable ({e}); running eager")
        else:
            amp = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[state.amp_dtype]
            # Verified against the eager objective at its first call; falls back with a
            # message if the installed torch cannot compile through the double backward.
            state.critic_objective = make_fast_objective(
                state.loss_fn, cfg.gp_weight, compile=True, lazy_gp=cfg.lazy_gp, amp=amp,
                scaler=state.scaler_d, impl=cfg.impl)
    if cfg.cuda_graphs:
        if state.device.type != "cuda":
            _say("--cuda-graphs: needs a CUDA device; ignored on cpu")
        else:
            # Capture needs a step without host syncs; the trainer's step syncs once per
            # optimizer step for its health check. pyfast_gan.fast.cuda_graphs.graph_step
            # captures pyfast_gan.fast.step.FastStep (see benchmarks/bench_train.py).
            _say("--cuda-graphs: not used by the trainer's health-checked step yet; ignored "
                 "(see pyfast_gan.fast.cuda_graphs)")


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
    ValueError (incl. pyfast_gan.data.DataError) for bad input before anything is built."""
    from pyfast_gan.losses import get_loss

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
        batcher = ToyBatcher(sampler, device, data_gen)
        image_size, channels = 0, 0
    else:
        from pyfast_gan.data import decode_all, open_dataset

        ds = open_dataset(cfg.data, data_format=cfg.data_format, image_size=cfg.image_size or None,
                          channels=cfg.channels or None)
        if len(ds) < cfg.batch_size:
            raise ValueError(f"--batch-size {cfg.batch_size} is larger than the dataset "
                             f"({len(ds)} images in {cfg.data!r})")
        image_size, channels = ds.image_size, ds.channels
        sizes = (32, 64, 96, 128)
        if image_size not in sizes:
            raise ValueError(f"--image-size: the data's size {image_size} is not supported "
                             f"by the models; pass --image-size one of {sizes}")
        data_u8 = decode_all(ds, num_workers=cfg.num_workers, progress=cfg.progress)
        batcher = ImageBatcher(data_u8, device, data_gen, memory_format)
        del data_u8
    # Record the sizes the data decided, so config.json (and resume) is complete.
    cfg = dataclasses.replace(cfg, image_size=image_size, channels=channels,
                              arch=("mlp" if is_toy else ("dcgan" if cfg.arch == "auto" else cfg.arch)))

    # ---- models, optimizers, scalers --------------------------------------------------
    G, D = _build_models(cfg, image_size, channels, is_toy)
    G.to(device=device, memory_format=memory_format)
    D.to(device=device, memory_format=memory_format)
    opt_g, opt_d, clip_after = _make_optimizers(cfg, G, D, loss_fn)
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
        scaler_g.load_state_dict(ck["scaler_g"]) if ck.get("scaler_g") and use_scaler else None
        scaler_d.load_state_dict(ck["scaler_d"]) if ck.get("scaler_d") and use_scaler else None
        if ema is not None and ck.get("ema") is not None:
            ema.load_state_dict(ck["ema"])
        batcher.load_state_dict(ck["data"])
        ckpt_mod.set_rng_state(ck["rng"], data_gen)
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
    for sub in ("samples", "plots", "checkpoints"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    print(f"pyfast_gan.train: {cfg.loss} on {cfg.data} ({'toy 2-D' if is_toy else f'{channels}x{image_size}x{image_size}'})"
          f", device {device}, output {out}\nresolved config:\n{_format_config(cfg)}", flush=True)
    metrics = MetricsWriter(out / "metrics.jsonl")
    metrics.truncate_after(state.step)

    _install_fast_paths(state, cfg)
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
        payload = {
            "version": 1,
            "step": state.step, "critic_steps": state.critic_steps,
            "G": G.state_dict(), "D": D.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "scaler_g": scaler_g.state_dict() if use_scaler else None,
            "scaler_d": scaler_d.state_dict() if use_scaler else None,
            "rng": ckpt_mod.rng_state(data_gen),
            "data": batcher.state_dict(),
            "fixed_noise": fixed_noise.cpu(),
            "config": cfg.to_dict(),
            "elapsed": elapsed_before + (time.perf_counter() - t0),
            "nonfinite_total": state.nonfinite_total,
        }
        latest = out / "checkpoints" / "latest.pt"
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
    pbar = tqdm(total=cfg.steps, initial=state.step, disable=not cfg.progress, dynamic_ncols=True,
                desc=f"{cfg.loss}", unit="step", file=sys.stderr)
    last_img_s = None
    postfix: dict = {}

    def check_health():
        streak = max(state.nonfinite_streak_d, state.nonfinite_streak_g)
        if streak >= cfg.max_nonfinite:
            kept = out / "checkpoints" / "latest.pt"
            kept_msg = (f"the last good checkpoint is kept at {kept}" if kept.exists()
                        else "no checkpoint had been written yet")
            raise TrainingStopped(
                f"stopped at step {state.step}: {streak} consecutive steps with a "
                f"non-finite loss or gradient (--max-nonfinite {cfg.max_nonfinite}); {kept_msg}. "
                "Try a lower --lr, --amp off, or check the data.")

    try:
        with _StopFlag() as stop:
            while state.step < cfg.steps:
                if stop.signum is not None:
                    status = "interrupted"
                    break
                mid_step = True
                ts = time.perf_counter()
                for _ in range(n_critic_for(state.step)):
                    s = critic_step(state, batcher.next(cfg.batch_size))
                    skipped += s.pop("skipped")
                    for k, v in s.items():
                        acc[k].append(v)
                    check_health()
                s = generator_step(state, cfg.batch_size)
                skipped += s.pop("skipped")
                for k, v in s.items():
                    acc[k].append(v)
                state.step += 1
                mid_step = False
                dt = time.perf_counter() - ts
                if state.step - start_step > WARMUP_STEPS:
                    step_time += dt
                    step_count += 1
                check_health()
                pbar.update(1)
                last = state.step == cfg.steps
                if state.step % cfg.log_every == 0 or last:
                    rec = {"step": state.step}
                    for k, vals in acc.items():
                        t = torch.stack([v.float().reshape(()) for v in vals])
                        fin = t[torch.isfinite(t)]
                        rec[k] = float(fin.mean()) if fin.numel() else float("nan")
                    rec["img_per_s"] = (step_count * cfg.batch_size / step_time) if step_count else None
                    rec["skipped"] = skipped
                    rec["time"] = round(elapsed_before + time.perf_counter() - t0, 3)
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
                if state.step % cfg.sample_every == 0 or last:
                    ev = write_samples()
                    if ev:
                        metrics.write({"step": state.step, **ev})
                        postfix["modes"] = f"{ev['modes_covered']}/{ev['num_modes']}"
                        pbar.set_postfix(postfix, refresh=False)
                    plot_losses(metrics.records, out / "plots" / "losses.png")
                # Only healthy states are checkpointed, so after a run of non-finite steps
                # latest.pt is the last good state.
                healthy = state.nonfinite_streak_d == 0 and state.nonfinite_streak_g == 0
                if (state.step % cfg.checkpoint_every == 0 or last) and healthy:
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
        write_samples()
        plot_losses(metrics.records, out / "plots" / "losses.png")
        note = "" if not mid_step else (" (interrupted inside a step: that step's partial update "
                                        "is in the checkpoint, so the resumed run is not bitwise exact)")
        _say(f"interrupted at step {state.step}: checkpoint written to {path}{note}. "
             f"Continue with: python -m pyfast_gan.train --resume {out}")
    else:
        plot_losses(metrics.records, out / "plots" / "losses.png")
        print(f"done: {state.step} steps in {time.perf_counter() - t0:.1f} s; outputs in {out}", flush=True)
    return {"out": str(out), "step": state.step, "status": status, "state": state}
