"""The eager training step.

Two hooks make the step replaceable piece by piece (pyfast_gan/fast/):

* ``state.critic_objective(critic, real, fake, step_index) -> (loss, stats)``: adversarial
  loss plus, for WGAN-GP, the gradient penalty. A compiled version can be swapped in.
* ``state.grad_sync(module)``: called after backward, before the optimizer step. Identity
  for one process; a flat all-reduce under torchrun.

Health: every optimizer step checks that the loss and the gradient norm are finite (one
device->host sync; under torchrun the flags are all-reduced so every rank skips together). A non-finite step is skipped (no parameter or optimizer-state update)
and reported in the returned stats; the loop stops after ``max_nonfinite`` in a row (of
critic steps, or of generator steps). Under
fp16 the GradScaler handles overflowing gradients itself (it skips the step and lowers the
scale), which is normal and not counted as unhealthy unless the loss is non-finite.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import pyfast_gan


def _identity_sync(module: torch.nn.Module) -> None:
    return None


@dataclass
class TrainState:
    cfg: Any
    device: torch.device
    G: torch.nn.Module
    D: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler_g: torch.amp.GradScaler
    scaler_d: torch.amp.GradScaler
    loss_fn: Any
    z_dim: int
    amp_dtype: torch.dtype | None = None      # autocast dtype, None = off
    ema: Any = None
    clip_after_step: bool = False             # WGAN with a non-fused optimizer: clip_weights_
    critic_objective: Callable = None         # set by make_critic_objective
    grad_sync: Callable = _identity_sync
    memory_format: torch.memory_format = torch.contiguous_format
    step: int = 0                             # generator iterations done
    critic_steps: int = 0                     # critic iterations done (lazy GP phase)
    nonfinite_streak_d: int = 0               # consecutive skipped critic steps
    nonfinite_streak_g: int = 0               # consecutive skipped generator steps
    nonfinite_total: int = 0
    extra: dict = field(default_factory=dict)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.z_dim, device=self.device)


def make_critic_objective(loss_fn, cfg, scaler: torch.amp.GradScaler | None):
    """The eager critic objective: adversarial loss, plus the WGAN-GP penalty every
    ``lazy_gp``-th critic step with weight ``gp_weight * lazy_gp`` (lazy regularisation,
    StyleGAN2 sec. 3.1; lazy_gp 0/1 = every step as in the paper)."""
    every = max(int(cfg.lazy_gp), 1)
    use_gp = loss_fn.uses_gp and cfg.gp_weight > 0
    gp_scaler = scaler if scaler is not None and scaler.is_enabled() else None

    def critic_objective(critic, real, fake, step_index):
        real_out = critic(real)
        fake_out = critic(fake)
        loss, stats = loss_fn.critic(real_out, fake_out)
        if use_gp and step_index % every == 0:
            gp = pyfast_gan.gradient_penalty(critic, real, fake, weight=cfg.gp_weight * every,
                                             scaler=gp_scaler, impl=cfg.impl)
            loss = loss + gp
            stats = dict(stats, gp=gp.detach() / every)
        return loss, stats

    return critic_objective


def _grad_norm(module: torch.nn.Module) -> torch.Tensor:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros((), device=next(module.parameters()).device)
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


def _finish(state: TrainState, module, opt, scaler, loss, after_step=None) -> tuple[bool, torch.Tensor]:
    """sync grads, unscale, check health, step (or skip). Returns (applied, grad_norm)."""
    state.grad_sync(module)
    if scaler.is_enabled():
        scaler.unscale_(opt)
    gnorm = _grad_norm(module)
    flags = torch.stack([torch.isfinite(loss.detach().float()), torch.isfinite(gnorm)])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every rank must take the same skip decision or their parameters drift apart:
        # the gradients are already averaged, but each rank's loss is its own shard's.
        flags = flags.to(torch.int32)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
    loss_ok, grad_ok = (bool(v) for v in flags.tolist())
    if scaler.is_enabled() and loss_ok:
        # Overflowing fp16 gradients: GradScaler skips the update and lowers the scale.
        scaler.step(opt)
        scaler.update()
        applied = grad_ok
        if applied and after_step is not None:
            after_step()
        return applied, gnorm
    if not (loss_ok and grad_ok):
        opt.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.update()  # lowers the scale: the inf check was recorded by unscale_
        state.nonfinite_total += 1
        return False, gnorm
    opt.step()
    if after_step is not None:
        after_step()
    return True, gnorm


def critic_step(state: TrainState, real: torch.Tensor) -> dict:
    """One critic update on a real batch. Returns detached stats (tensors) and 'skipped'."""
    n = real.shape[0]
    with torch.no_grad(), state.autocast():
        fake = state.G(state.noise(n))
    if state.memory_format is torch.channels_last and fake.dim() == 4:
        fake = fake.contiguous(memory_format=torch.channels_last)
    # Under autocast G returns low precision; the critic objective (and the penalty's
    # interpolation) takes real and fake in one dtype, autocast casts inside the critic.
    fake = fake.to(real.dtype)
    state.opt_d.zero_grad(set_to_none=True)
    with state.autocast():
        loss, stats = state.critic_objective(state.D, real, fake, state.critic_steps)
    state.scaler_d.scale(loss).backward()
    after = None
    if state.clip_after_step:
        after = lambda: pyfast_gan.clip_weights_(state.D.parameters(), state.cfg.clip_value,  # noqa: E731
                                                 impl=state.cfg.impl)
    applied, gnorm = _finish(state, state.D, state.opt_d, state.scaler_d, loss, after)
    state.critic_steps += 1
    state.nonfinite_streak_d = 0 if applied else state.nonfinite_streak_d + 1
    out = {"loss_d": loss.detach().float(), "grad_norm_d": gnorm.detach()}
    for k, v in stats.items():
        out[k if k != "loss" else "loss_d_adv"] = v.detach().float() if torch.is_tensor(v) else v
    out["skipped"] = not applied
    return out


def generator_step(state: TrainState, batch_size: int) -> dict:
    """One generator update. The critic's parameters do not collect gradients here."""
    for p in state.D.parameters():
        p.requires_grad_(False)
    try:
        state.opt_g.zero_grad(set_to_none=True)
        with state.autocast():
            fake = state.G(state.noise(batch_size))
            if state.memory_format is torch.channels_last and fake.dim() == 4:
                fake = fake.contiguous(memory_format=torch.channels_last)
            loss, stats = state.loss_fn.generator(state.D(fake))
        state.scaler_g.scale(loss).backward()
    finally:
        for p in state.D.parameters():
            p.requires_grad_(True)
    after = (lambda: state.ema.update(state.G)) if state.ema is not None else None
    applied, gnorm = _finish(state, state.G, state.opt_g, state.scaler_g, loss, after)
    state.nonfinite_streak_g = 0 if applied else state.nonfinite_streak_g + 1
    out = {"loss_g": loss.detach().float(), "grad_norm_g": gnorm.detach()}
    for k, v in stats.items():
        if k != "wasserstein":  # the critic's estimate is the one that is logged
            out[f"g_{k}"] = v.detach().float() if torch.is_tensor(v) else v
    out["skipped"] = not applied
    return out
