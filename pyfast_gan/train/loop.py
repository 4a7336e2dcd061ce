"""The training loop: ``train(cfg)`` builds a :class:`~pyfast_gan.train.run.Run` and steps it,
logging, checking health, writing samples, evaluations and checkpoints, and stopping cleanly
on Ctrl-C / SIGTERM. It never branches on the mode: eager, AMP, compile, CUDA graphs and
torchrun are all settings of the run's one step (run.py)."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

from pyfast_gan.data import DataError
from pyfast_gan.step import distributed as dist_mod

from pyfast_gan.artifacts import checkpoint as ckpt_mod
from .config import TrainConfig
from .endings import end_nonfinite, stopped_by
from pyfast_gan.artifacts.outputs import MetricsWriter, plot_losses, plot_metrics
from .run import Run, StopFlag, build
from .rundir import check_out_dir, lock_run_dir

WARMUP_STEPS = 5  # generator steps excluded from img_per_s (allocator, caches, compile)


def train(cfg: TrainConfig, hooks: dict | None = None) -> dict:
    """Train for a resolved config (``pyfast_gan.train.config.resolve``). Returns a summary
    dict (out dir, final step, status 'done' | 'interrupted'). Raises TrainingStopped when the
    run ends on non-finite steps (after writing the last good state as latest.pt) or a write
    fails, ValueError (incl. pyfast_gan.data.DataError) for bad input before anything is
    written, among them another trainer holding the run directory's lock.

    Under torchrun (WORLD_SIZE > 1) the run is data-parallel (pyfast_gan.step.distributed):
    rank 0's weights are broadcast once, each rank trains on its slice of a global batch of
    world_size x batch_size, gradients (and the non-finite flag) are averaged in one flat
    all-reduce per optimizer step, and only rank 0 writes or prints anything. A checkpoint
    resumes on another process count with weights, optimizer state, counters and the data
    position exact; the noise streams are exact on the same process count.

    ``hooks``: ``on_start(run)`` after build, ``on_step(run)`` after each generator iteration.
    """
    cfg = dataclasses.replace(cfg, out=str(check_out_dir(cfg)))
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    had_group = dist_mod.is_distributed()
    rank, world, _ = dist_mod.init_distributed(device="cuda" if want_cuda else "cpu")
    lock = None
    try:
        if rank == 0:  # the writer; before build, so a refused start decodes nothing either
            lock = lock_run_dir(Path(cfg.out))
        with warnings.catch_warnings():
            if rank != 0:
                warnings.simplefilter("ignore")
            return _train(build(cfg, rank=rank, world=world), hooks or {})
    finally:
        if lock is not None:
            os.close(lock)
        if not had_group:
            dist_mod.cleanup()


def _train(run: Run, hooks: dict) -> dict:
    """The loop, with one-line endings for a failed write and a Ctrl-C (endings.py)."""
    try:
        return _loop(run, hooks)
    except (OSError, KeyboardInterrupt) as e:
        stop = stopped_by(run, e)
        if stop is None:
            raise
        raise stop from None


def _loop(run: Run, hooks: dict) -> dict:
    cfg, out = run.cfg, Path(run.cfg.out)
    evaluator, metrics = None, None
    if cfg.eval_every > 0 and run.main:
        from pyfast_gan.metrics.evaluator import Evaluator

        # Its own noise generators: evaluating never moves the training RNG streams.
        evaluator = Evaluator(cfg.data, metrics=cfg.eval_metrics, real=run.real_u8, n=cfg.eval_n,
                              seed=cfg.seed + 13, inception_weights=cfg.inception_weights or None,
                              device=run.device, progress=cfg.progress)
        for m, why in evaluator.skipped.items():
            run.say(f"--eval-every: {m} skipped: {why}")
    run.real_u8 = None
    if run.main:
        for sub in ("samples", "plots", "checkpoints"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        for p in ckpt_mod.remove_stale_temporaries(out):
            run.say(f"removed {p}, left by an interrupted write")
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        shape = "toy 2-D" if run.toy else f"{cfg.channels}x{cfg.image_size}x{cfg.image_size}"
        procs = f", {run.world} processes (global batch {cfg.batch_size * run.world})" if run.world > 1 else ""
        config = "\n".join(f"  {k:<{max(map(len, cfg.to_dict()))}} = {v!r}" for k, v in cfg.to_dict().items())
        print(f"pyfast_gan.train: {cfg.loss} on {cfg.data} ({shape}), device {run.device}{procs}, "
              f"output {out}\nresolved config:\n{config}", flush=True)
        metrics = MetricsWriter(out / "metrics.jsonl", out / "tensorboard" if cfg.tensorboard else None,
                                run.generator_steps)
    if run.generator_steps >= cfg.steps:
        run.say(f"nothing to train: the run is at step {run.generator_steps} and --steps is {cfg.steps}; "
                f"pass --steps N with N > {run.generator_steps} to continue it")
    if "on_start" in hooks:
        hooks["on_start"](run)

    def save(periodic: bool) -> Path:
        latest = out / "checkpoints" / "latest.pt"
        payload = run.checkpoint(time.perf_counter() - t0)
        if payload is not None:
            ckpt_mod.save_atomic(payload, latest)
            if periodic:
                ckpt_mod.save_atomic(payload, out / "checkpoints" / f"step_{run.generator_steps:06d}.pt")
        return latest

    def streak() -> int:
        """Consecutive skipped steps (a host read: log and checkpoint steps only)."""
        h = run.step.health()
        return max(h["streak_d"], h["streak_g"])

    from tqdm.auto import tqdm

    acc: dict[str, list] = defaultdict(list)
    step_time, step_count, start = 0.0, 0, run.generator_steps
    status, mid_step, timing_reported = "done", False, False
    postfix: dict = {}
    t0 = time.perf_counter()
    pbar = tqdm(total=cfg.steps, initial=run.generator_steps, disable=not (cfg.progress and run.main),
                dynamic_ncols=True, desc=cfg.loss, unit="step", file=sys.stderr)
    try:
        with StopFlag() as stop:
            while run.generator_steps < cfg.steps:
                mid_step = True
                ts = time.perf_counter()
                for s in run.iteration():
                    for k, v in s.items():
                        acc[k].append(v)
                mid_step = False
                step = run.generator_steps
                last = step == cfg.steps
                logging = step % cfg.log_every == 0 or last
                if run.device.type == "cuda" and (logging or step - start == WARMUP_STEPS):
                    # Steps are asynchronous: wait for the queued work so the timed window
                    # holds exactly its own steps (and none of the warm-up's).
                    torch.cuda.synchronize(run.device)
                if step - start > WARMUP_STEPS:
                    step_time += time.perf_counter() - ts
                    step_count += 1
                pbar.update(1)
                if logging:
                    rec = {"step": step, **run.log_means(acc)}
                    rec["skipped"] = int(rec.get("skipped", 0))
                    # Images per second over the whole job (all processes), timed from the
                    # step after warm-up, so compilation and capture are not in it.
                    rec["img_per_s"] = (step_count * cfg.batch_size * run.world / step_time) if step_count else None
                    rec["time"] = round(run.elapsed_before + time.perf_counter() - t0, 3)
                    if not timing_reported and (cfg.compile or run.capture_time_s is not None):
                        timing_reported = True
                        if cfg.compile:
                            rec["compile_time_s"] = round(run.step.objective.compile_time_s, 3)
                            run.say(f"--compile: compile time {rec['compile_time_s']:.1f} s (start-up "
                                    "verification included; not counted in img_per_s)")
                        if run.capture_time_s is not None:
                            rec["capture_time_s"] = round(run.capture_time_s, 3)
                    if run.main:
                        metrics.write(rec)
                    postfix.update(D=f"{rec.get('loss_d', float('nan')):.3g}",
                                   G=f"{rec.get('loss_g', float('nan')):.3g}")
                    if "m_global" in rec:  # BEGAN's balance and convergence measure
                        postfix.update(k=f"{rec['k_t']:.3g}", M=f"{rec['m_global']:.3g}")
                    if rec["img_per_s"]:
                        postfix["img/s"] = f"{rec['img_per_s']:.0f}"
                    pbar.set_postfix(postfix, refresh=False)
                    acc.clear()
                    step_time, step_count = 0.0, 0
                    if streak() >= cfg.max_nonfinite:
                        status = "nonfinite"
                        break
                if (step % cfg.sample_every == 0 or last) and run.main:
                    grid = out / "samples" / f"step_{step:06d}.png"
                    ev = run.write_samples(grid)
                    metrics.image(grid, step)
                    if ev:
                        metrics.write({"step": step, **ev})
                        postfix["modes"] = f"{ev['modes_covered']}/{ev['num_modes']}"
                    plot_losses(metrics.records, out / "plots" / "losses.png")
                if evaluator is not None and (step % cfg.eval_every == 0 or last):
                    res = run.evaluate(evaluator)
                    metrics.write({"step": step, "eval": res})
                    plot_metrics(metrics.records, out / "plots" / "metrics.png")
                    key = next((k for k in ("cfid", "fid", "toy_fd") if k in res), None)
                    if key:
                        postfix[key] = f"{res[key]:.3g}"
                pbar.set_postfix(postfix, refresh=False)
                # Only healthy states are checkpointed on the way (the counters agree on every
                # rank); a run that ends on skipped steps writes its last good state below.
                if step % cfg.checkpoint_every == 0 or last:
                    skipped_now = streak()
                    if skipped_now >= cfg.max_nonfinite:
                        status = "nonfinite"
                        break
                    if skipped_now == 0:
                        save(periodic=step % cfg.checkpoint_every == 0)
                if "on_step" in hooks:
                    hooks["on_step"](run)
                # Ranks agree on a signal at log steps (one all-reduce), a single process at once.
                if (run.world == 1 or logging) and dist_mod.agreed(stop.signum is not None, run.world, run.device):
                    status = "interrupted"
                    break
    except KeyboardInterrupt:
        status = "interrupted"
    except DataError:  # the data going bad under the run (a damaged cache file): one line
        raise
    except ValueError as e:
        # Inputs were validated during set-up; a ValueError now is a failure of the run, not
        # a bad flag, so it must not be reported as a usage error.
        raise RuntimeError(f"training failed at step {run.generator_steps}: {e}") from e
    finally:
        pbar.close()
        if metrics is not None:
            metrics.close()

    if status == "interrupted":
        path = save(periodic=False)
        if run.main:
            run.write_samples(out / "samples" / f"step_{run.generator_steps:06d}.png")
            plot_losses(metrics.records, out / "plots" / "losses.png")
        note = "" if not mid_step else (" (interrupted inside a step: that step's partial update "
                                        "is in the checkpoint, so the resumed run is not bitwise exact)")
        run.say(f"interrupted at step {run.generator_steps}: checkpoint written to {path}{note}. "
                f"Continue with: python -m pyfast_gan.train --resume {out}")
        return {"out": str(out), "step": run.generator_steps, "status": status, "run": run}
    bad = streak()
    if bad:  # stopped at --max-nonfinite, or reached --steps on skipped steps
        end_nonfinite(run, out, bad, start, save, stopped=status == "nonfinite")
    if run.main:
        plot_losses(metrics.records, out / "plots" / "losses.png")
        print(f"done: {run.generator_steps} steps in {time.perf_counter() - t0:.1f} s; outputs in {out} "
              f"(checkpoints/latest.pt holds step {run.generator_steps})", flush=True)
    return {"out": str(out), "step": run.generator_steps, "status": status, "run": run}
