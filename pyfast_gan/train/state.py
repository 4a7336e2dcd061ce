"""A run's state on disk: what a checkpoint holds (:meth:`RunState.checkpoint`), writing it
(checkpoints/latest.pt, the periodic step files, and best.pt at the best evaluation so far) and
restoring it on --resume (:meth:`RunState.load`). :class:`pyfast_gan.train.run.Run` has these
methods; they read and set the run's own fields (models, optimizers, step, batcher, counters)."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from pyfast_gan.artifacts import checkpoint as ckpt_mod
from pyfast_gan.step import distributed as dist_mod
from pyfast_gan.step.step import fit_loaded_state

from .rundir import resume_changes

CHECKPOINT_VERSION = 2


class RunState:
    """The checkpoint half of :class:`pyfast_gan.train.run.Run`."""

    def nonfinite_streak(self) -> int:
        """Consecutive skipped steps, critic or generator (a host read: call it at log and
        checkpoint steps only)."""
        h = self.step.health()
        return max(h["streak_d"], h["streak_g"])

    def save(self, periodic: bool) -> Path:
        """Write checkpoints/latest.pt and, ``periodic``, checkpoints/step_NNNNNN.pt (rank 0;
        collective under torchrun). Returns latest.pt's path."""
        latest = self.out / "checkpoints" / "latest.pt"
        payload = self.checkpoint()
        if payload is not None:
            ckpt_mod.save_atomic(payload, latest)
            if periodic:
                ckpt_mod.save_atomic(payload, self.out / "checkpoints" / f"step_{self.generator_steps:06d}.pt")
        return latest

    def improved(self, res: dict) -> bool:
        """Whether the evaluation ``res`` ({} off rank 0) beats the best headline score so far
        (lower is better); if so it becomes the best."""
        from pyfast_gan.metrics.evaluator import headline

        h = headline(res)
        if h is None or not math.isfinite(h[1]) or (self.best and self.best["metric"] == h[0]
                                                     and h[1] >= self.best["value"]):
            return False
        self.best = {"metric": h[0], "value": h[1], "step": self.generator_steps}
        return True

    def save_best(self) -> None:
        """checkpoints/best.pt: the whole state at the best evaluation so far, readable by sample
        and evaluate like latest.pt (collective under torchrun, like :meth:`save`)."""
        payload = self.checkpoint()
        if payload is not None:
            ckpt_mod.save_atomic(payload, self.out / "checkpoints" / "best.pt")

    def checkpoint(self) -> dict | None:
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
            "elapsed": self.elapsed(),
            "nonfinite_total": step.health()["total"],
            "loss_state": step.loss_state_dict(),
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
            "best": self.best,
            "data_fingerprint": self.data_fingerprints,
        }

    def load(self, ck: dict) -> None:
        step = self.step
        self.G.load_state_dict(ck["G"])
        self.D.load_state_dict(ck["D"])
        self.best = ck.get("best")
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
                self.ema.rampup = self.cfg.ema_rampup
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
