"""The training loop: ``train(cfg)`` builds a :class:`~pyfast_gan.train.run.Run` and steps it,
logging, checking health, writing samples, evaluations and checkpoints, and stopping cleanly
on Ctrl-C / SIGTERM. The loop decides *when*; the Run does each thing (run.py). It never
branches on the mode: eager, AMP, compile, CUDA graphs and torchrun are all settings of the
run's one step."""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

from pyfast_gan.data import DataError
from pyfast_gan.metrics.evaluator import headline
from pyfast_gan.step import distributed as dist_mod

from .config import TrainConfig
from .endings import end_failure, end_held, end_nonfinite, stopped_by
from .run import Run, build
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


class Throughput:
    """Images per second between log steps, all processes together, timed from the step after
    this process's first WARMUP_STEPS, so compilation and capture are not in it. Steps are
    asynchronous on CUDA: the device is synchronised at log steps and at the end of warm-up,
    so a timed window holds exactly its own steps (and none of the warm-up's)."""

    def __init__(self, run: Run):
        self.run, self.seconds, self.steps = run, 0.0, 0

    def add(self, since: float, logging: bool) -> None:
        """Count the step that began at ``since`` (time.perf_counter())."""
        run = self.run
        done = run.generator_steps - run.start_step
        if run.device.type == "cuda" and (logging or done == WARMUP_STEPS):
            torch.cuda.synchronize(run.device)
        if done > WARMUP_STEPS:
            self.seconds += time.perf_counter() - since
            self.steps += 1

    def take(self) -> float | None:
        """Images per second since the last call (None when no step was timed), and restart."""
        run = self.run
        rate = (self.steps * run.cfg.batch_size * run.world / self.seconds) if self.steps else None
        self.seconds, self.steps = 0.0, 0
        return rate


class Progress:
    """The progress bar (rank 0, --progress) and the headline numbers it shows."""

    def __init__(self, run: Run):
        from tqdm.auto import tqdm

        cfg = run.cfg
        self.bar = tqdm(total=cfg.steps, initial=run.generator_steps, disable=not (cfg.progress and run.main),
                        dynamic_ncols=True, desc=cfg.loss, unit="step", file=sys.stderr)
        self.fields: dict = {}

    def logged(self, rec: dict) -> None:
        """A log record: the losses, BEGAN's k_t and M_global, the throughput."""
        f = self.fields
        f.update(D=f"{rec.get('loss_d', float('nan')):.3g}", G=f"{rec.get('loss_g', float('nan')):.3g}")
        if "m_global" in rec:
            f.update(k=f"{rec['k_t']:.3g}", M=f"{rec['m_global']:.3g}")
        if rec["img_per_s"]:
            f["img/s"] = f"{rec['img_per_s']:.0f}"
        self.bar.set_postfix(f, refresh=False)

    def sampled(self, rec: dict) -> None:
        """A sample grid's record: toy data's mode count."""
        if rec:
            self.fields["modes"] = f"{rec['modes_covered']}/{rec['num_modes']}"
        self.bar.set_postfix(self.fields, refresh=False)

    def scored(self, res: dict) -> None:
        """An evaluation: its headline score."""
        h = headline(res)
        if h:
            self.fields[h[0]] = f"{h[1]:.3g}"
        self.bar.set_postfix(self.fields, refresh=False)


def _loop(run: Run, hooks: dict) -> dict:
    cfg = run.cfg
    run.start()
    if "on_start" in hooks:
        hooks["on_start"](run)
    acc: dict[str, list] = defaultdict(list)
    speed, progress = Throughput(run), Progress(run)
    status, mid_step, failed = "done", None, None  # mid_step: critic steps when the step began
    try:
        with StopFlag() as stop:
            while run.generator_steps < cfg.steps:
                mid_step, began = run.step.critic_steps, time.perf_counter()
                for s in run.iteration():
                    for k, v in s.items():
                        acc[k].append(v)
                mid_step = None
                step = run.generator_steps
                last = step == cfg.steps
                logging = step % cfg.log_every == 0 or last
                speed.add(began, logging)
                progress.bar.update(1)
                if logging:
                    progress.logged(run.log(acc, speed.take()))
                    acc.clear()
                    if run.nonfinite_streak() >= cfg.max_nonfinite:
                        status = "nonfinite"
                        break
                if (step % cfg.sample_every == 0 or last) and run.main:
                    progress.sampled(run.sample())
                if cfg.eval_every > 0 and (step % cfg.eval_every == 0 or last):
                    progress.scored(run.evaluate())
                # Only healthy states are checkpointed on the way (the counters agree on every
                # rank); a run that ends on skipped steps writes its last good state in _end.
                if step % cfg.checkpoint_every == 0 or last:
                    skipped_now = run.nonfinite_streak()
                    if skipped_now >= cfg.max_nonfinite:
                        status = "nonfinite"
                        break
                    if skipped_now == 0:
                        run.save(periodic=step % cfg.checkpoint_every == 0)
                if "on_step" in hooks:
                    hooks["on_step"](run)
                # Ranks agree on a signal at log steps (one all-reduce), a single process at once.
                if (run.world == 1 or logging) and dist_mod.agreed(stop.signum is not None, run.world, run.device):
                    status = "interrupted"
                    break
    except KeyboardInterrupt:
        status = "interrupted"
    except (DataError, OSError) as e:  # the data going bad under the run, a failed write
        status, failed = "failed", e
    except ValueError as e:
        # Inputs were validated during set-up; a ValueError now is a failure of the run, not
        # a bad flag, so it must not be reported as a usage error.
        raise RuntimeError(f"training failed at step {run.generator_steps}: {e}") from e
    finally:
        progress.bar.close()
        run.close()
    return _end(run, status, mid_step, failed)


def _end(run: Run, status: str, mid_step: int | None, failed: BaseException | None = None) -> dict:
    """The run's last writes and message: an interrupted run checkpoints where it stopped; one
    that stopped on skipped steps, its data or a failed write writes its state (if the disk
    allows) and raises (endings.py); a finished run says where its outputs are."""
    out, step = run.out, run.generator_steps
    if failed is not None:
        end_failure(run, failed, mid_step)
    if status == "interrupted":
        path = run.save(periodic=False)
        if run.main:
            run.write_samples(out / "samples" / f"step_{step:06d}.png")
            run.plot_losses()
        note = "" if mid_step is None else (" (interrupted inside a step: that step's partial update "
                                        "is in the checkpoint, so the resumed run is not bitwise exact)")
        run.say(f"interrupted at step {step}: checkpoint written to {path}{note}. "
                f"Continue with: python -m pyfast_gan.train --resume {out}")
        return {"out": str(out), "step": step, "status": status, "run": run}
    bad = run.nonfinite_streak()
    if bad:  # stopped at --max-nonfinite, or reached --steps on skipped steps (fp16 warm-up returns)
        end_nonfinite(run, bad, stopped=status == "nonfinite")
    held = end_held(run)
    if run.main:
        run.plot_losses()
        print(f"done: {step} steps in {time.perf_counter() - run.started:.1f} s; outputs in {out} ({held})",
              flush=True)
    return {"out": str(out), "step": step, "status": status, "run": run}
