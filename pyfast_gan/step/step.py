"""The training step: one :class:`GANStep` for every mode, and the optimizer factory.

Every way pyfast_gan trains runs this class: the trainer (``python -m pyfast_gan.train``) in
eager fp32, ``--amp bf16|fp16``, ``--channels-last``, ``--compile``, ``--lazy-gp``, WGAN
clipping, EMA and torchrun gradient sync, the CUDA-graph capture of ``--cuda-graphs``
(cuda_graphs.py replays this same step) and ``benchmarks/bench_train.py``.

What makes it faster than the textbook loop (the "naive" row of benchmarks/bench_train.py,
which times each of these):

* the generator runs under ``no_grad`` in critic steps (the textbook loop backpropagates the
  critic loss, penalty included, through the generator and throws those gradients away);
* the critic's parameters do not collect gradients in generator steps;
* real and fake are scored in one forward when the critic has no batch norm;
* the penalty, clipping and RMSprop+clip are pyfast_gan's fused ops (``impl``);
* no host synchronisation inside a step (below);
* optional: channels_last, bf16/fp16 autocast, the compiled objective (objective.py), CUDA
  graphs (cuda_graphs.py).

Non-finite steps, the same rule in every mode: after backward (and the gradient all-reduce
under torchrun, which carries each rank's flag along), a step whose loss or gradient norm is
not finite is *skipped*: a device-side flag goes to the optimizer as ``found_inf`` (torch's
fused Adam and RMSpropClip apply it in their kernels, as under GradScaler), so parameters,
optimizer state and step counters stay as they were, batch-norm statistics are put back,
and the EMA does not move. The flag is
counted on the device (``skipped`` in the returned stats, consecutive and total counts in
:meth:`GANStep.health`) and read by the caller when it logs; nothing in a step reads a value
back to the host.
"""
from __future__ import annotations

import torch
from torch import nn

import pyfast_gan
from pyfast_gan.losses import check_loss

from .objective import CriticObjective, GeneratorObjective, amp_dtype, autocast


def build_optimizers(G: nn.Module, D: nn.Module, *, loss, optimizer: str, lr: float,
                     lr_g: float = 0.0, betas=(0.0, 0.9), clip_value: float = 0.01,
                     impl: str = "auto", capturable: bool = False):
    """``(opt_g, opt_d, clip_after)`` for a run: the trainer's and the benchmark's one factory.

    ``loss``: the run's loss object (:func:`pyfast_gan.losses.get_loss`); its
    ``uses_clipping`` says whether the critic is clamped.

    Both optimizers apply a device-side skip flag (``found_inf``) in their kernels:
    ``optimizer="adam"``: torch's fused Adam (CPU and CUDA); ``"rmsprop"``:
    :class:`pyfast_gan.optim.RMSpropClip` for both networks, which for WGAN's critic folds
    the clamp to [-c, c] into the update (one pass over the weights) and is plain RMSprop
    (``clip_value=None``) otherwise. ``clip_after``: the bound to clamp the critic to after
    each step when the optimizer does not (WGAN with Adam), else None. ``capturable``: state
    on the device and a tensor lr, for CUDA graphs (``--lr-decay`` fills the tensor).
    """
    from pyfast_gan.optim import RMSpropClip

    clipping = check_loss(loss).uses_clipping
    lr_g = lr_g or lr
    if optimizer == "rmsprop":
        opt_g = RMSpropClip(G.parameters(), lr=lr_g, clip_value=None, impl=impl, capturable=capturable)
        opt_d = RMSpropClip(D.parameters(), lr=lr, clip_value=clip_value if clipping else None,
                            impl=impl, capturable=capturable)
        return opt_g, opt_d, None
    if optimizer != "adam":
        raise ValueError(f"optimizer must be 'adam' or 'rmsprop', got {optimizer!r}")
    device = next(G.parameters()).device

    def adam(params, rate):
        # A captured step bakes a float lr into the graph; a device tensor is read at each
        # replay, so --lr-decay reaches graphed steps.
        rate = torch.tensor(float(rate), device=device) if capturable else rate
        return torch.optim.Adam(params, lr=rate, betas=tuple(betas), fused=True, capturable=capturable)

    return adam(G.parameters(), lr_g), adam(D.parameters(), lr), (clip_value if clipping else None)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr; a tensor lr (capturable) is filled in place so a captured step
    reads the new value."""
    for group in opt.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


class GANStep:
    """``critic_step(real)`` and ``generator_step(n)``: one optimizer step of each network.

    Both return a dict of detached 0-d device tensors under fixed keys:
    critic: ``loss_d``, ``d_real``, ``d_fake``, ``wasserstein``, ``critic_loss``,
    ``grad_norm_d``, ``skipped`` and, on penalty steps, ``gp`` (unweighted mean penalty) and
    ``grad_norm_x_hat``; generator: ``loss_g``, ``g_d_fake``, ``g_generator_loss``,
    ``grad_norm_g``, ``skipped`` and, with BEGAN's loss, ``k_t`` and ``m_global``.

    Args:
        G, D: generator and critic (on their device; channels_last is applied here).
        opt_g, opt_d: optimizers from :func:`build_optimizers` (or any optimizer whose
            ``step`` honours ``found_inf``, as torch's fused ones; others skip via the host).
        loss: the run's loss object (:func:`pyfast_gan.losses.get_loss`), shared by both
            objectives.
        z_dim: latent size.
        gp_weight, lazy_gp: WGAN-GP's lambda and lazy regularisation interval.
        clip_after: clamp the critic to [-c, c] after each critic step (WGAN with an
            optimizer that does not clip), or None.
        amp: "off" | "bf16" | "fp16" (fp16: a GradScaler per network, owned here).
        channels_last, compile, compile_penalty, impl: the speed switches (objective.py).
        ema: a :class:`pyfast_gan.models.EMA` of G, updated after each applied G step.
        grad_sync: ``grad_sync(params, flag) -> flag``: the torchrun gradient all-reduce
            (pyfast_gan.step.distributed.allreduce_grads_), or None.
    """

    def __init__(self, G: nn.Module, D: nn.Module, opt_g, opt_d, loss, *, z_dim: int,
                 gp_weight: float = 10.0, lazy_gp: int = 0, clip_after: float | None = None,
                 amp: str = "off", channels_last: bool = False, compile: bool = False,
                 compile_penalty: str = "kernels", impl: str = "auto", ema=None, grad_sync=None,
                 verify: bool = True):
        self.G, self.D, self.opt_g, self.opt_d = G, D, opt_g, opt_d
        self.z_dim = z_dim
        self.clip_after = clip_after
        self.impl = impl
        self.ema = ema
        self.grad_sync = grad_sync
        self.device = next(D.parameters()).device
        self.amp = amp
        self.dtype = amp_dtype(amp)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            G.to(memory_format=torch.channels_last)
            D.to(memory_format=torch.channels_last)
        fp16 = self.dtype is torch.float16
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=fp16)
        # One loss object for both objectives: a stateful loss (BEGAN's k_t) is updated by
        # the step after each applied update (after_critic / after_generator, on the device)
        # and checkpointed with the run (loss_state_dict).
        self.stateful_loss = check_loss(loss).stateful
        self.loss_fn = loss.to(self.device) if self.stateful_loss else loss
        self.objective = CriticObjective(loss, gp_weight=gp_weight, lazy_gp=lazy_gp, compile=compile,
                                         compile_penalty=compile_penalty, amp=amp,
                                         scaler=self.scaler_d, impl=impl, verify=verify)
        self.gen_objective = GeneratorObjective(loss, compile=compile and not fp16, amp=amp,
                                                memory_format=self.memory_format)
        # Batch-norm running statistics are updated by the forward, before the step knows it
        # will be skipped: they are saved at each step's start and put back on a skip (on
        # the device), so a non-finite batch cannot leave NaN statistics behind.
        self._buffers = [b for m in (G, D) for b in m.buffers() if b.numel()]
        self._saved = [b.detach().clone() for b in self._buffers]
        self.critic_steps = 0  # a host counter: it selects the lazy penalty steps
        # Device-side health counters: [consecutive skipped critic steps, consecutive skipped
        # generator steps, total skipped steps].
        self.nonfinite = torch.zeros(3, device=self.device)

    # -- the two steps ------------------------------------------------------------------
    def critic_step(self, real: torch.Tensor, z: torch.Tensor | None = None,
                    alpha: torch.Tensor | None = None) -> dict:
        """One critic update on a real batch. ``z`` (N, z_dim) and the penalty's ``alpha``
        (N,) are drawn when None."""
        if real.dim() == 4:
            real = real.contiguous(memory_format=self.memory_format)
        self._save_buffers()
        fake = self.fake(real.shape[0], z).to(real.dtype)  # the interpolation needs one dtype
        self.opt_d.zero_grad(set_to_none=True)
        loss, stats = self.objective(self.D, real, fake, self.critic_steps, alpha=alpha)
        self.critic_steps += 1
        self.scaler_d.scale(loss).backward()
        skipped, gnorm = self._update(self.D, self.opt_d, self.scaler_d, loss, 0)
        if self.clip_after is not None:  # a skipped step left the weights as they were
            pyfast_gan.clip_weights_(self._params(self.D), self.clip_after, impl=self.impl)
        if self.stateful_loss:
            stats = {**stats, **self.loss_fn.after_critic(stats, skipped)}
        return {"loss_d": loss.detach().float(), **stats, "grad_norm_d": gnorm, "skipped": skipped}

    def generator_step(self, n: int, z: torch.Tensor | None = None) -> dict:
        """One generator update on ``n`` fresh samples (``z`` drawn when None). The critic's
        parameters collect no gradients here."""
        z = self.noise(n) if z is None else z
        self._save_buffers()
        self.D.requires_grad_(False)
        try:
            self.opt_g.zero_grad(set_to_none=True)
            loss, stats = self.gen_objective(self.G, self.D, z)
            self.scaler_g.scale(loss).backward()
        finally:
            self.D.requires_grad_(True)
        skipped, gnorm = self._update(self.G, self.opt_g, self.scaler_g, loss, 1)
        if self.ema is not None:
            self.ema.update(self.G, skip=skipped)
        out = {"loss_g": loss.detach().float()}
        out.update({f"g_{k}": v for k, v in stats.items()})
        if self.stateful_loss:
            out.update(self.loss_fn.after_generator(stats, skipped))  # BEGAN: k_t, m_global
        out.update(grad_norm_g=gnorm, skipped=skipped)
        return out

    def loss_state_dict(self) -> dict | None:
        """A stateful loss's state (BEGAN's k_t) for the checkpoint, else None."""
        return self.loss_fn.state_dict() if self.stateful_loss else None

    def load_loss_state(self, state: dict | None) -> None:
        if self.stateful_loss:
            if state is None:
                raise ValueError("the checkpoint has no state for the stateful loss "
                                 f"{self.loss_fn.name!r}")
            self.loss_fn.load_state_dict(state)

    # -- pieces -------------------------------------------------------------------------
    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.z_dim, device=self.device)

    def fake(self, n: int, z: torch.Tensor | None = None) -> torch.Tensor:
        """Generator samples for a critic step (no graph back to G)."""
        z = self.noise(n) if z is None else z
        with torch.no_grad(), autocast(self.device.type, self.dtype, self.objective.autocast_cache):
            out = self.G(z)
        return out.contiguous(memory_format=self.memory_format) if out.dim() == 4 else out

    @property
    def autocast_cache(self) -> bool:
        return self.objective.autocast_cache

    @autocast_cache.setter
    def autocast_cache(self, on: bool) -> None:
        # off inside CUDA graphs: cached casts made during capture would be freed
        self.objective.autocast_cache = bool(on)
        self.gen_objective.autocast_cache = bool(on)

    @torch.no_grad()
    def _save_buffers(self) -> None:
        if self._buffers:
            torch._foreach_copy_(self._saved, self._buffers)

    @staticmethod
    def _params(module: nn.Module) -> list[torch.Tensor]:
        return [p for p in module.parameters() if p.requires_grad]

    def _update(self, module, opt, scaler, loss, which: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient sync, unscale, health flag, optimizer step (or device-side skip), counts.
        Returns (skipped as a 0/1 fp32 0-d tensor, gradient 2-norm)."""
        params = self._params(module)
        bad = (~torch.isfinite(loss.detach())).float()
        if self.grad_sync is not None:
            # Every rank must take the same decision (each rank's loss is its own shard's):
            # the flag travels in the gradient all-reduce.
            bad = self.grad_sync(params, bad)
        if scaler.is_enabled():
            scaler.unscale_(opt)  # records GradScaler's own inf check; no host sync
        grads = [p.grad for p in params if p.grad is not None]
        gnorm = (torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())
                 if grads else torch.zeros((), device=self.device))
        skipped = torch.logical_or(bad > 0, ~torch.isfinite(gnorm)).float()
        if self._buffers:
            keep = skipped.bool()
            for b, saved in zip(self._buffers, self._saved):
                b.copy_(torch.where(keep, saved, b))
        if getattr(opt, "_step_supports_amp_scaling", False):
            opt.found_inf = skipped
            try:
                opt.step()
            finally:
                del opt.found_inf
        elif not bool(skipped):  # an optimizer without found_inf: the host decides (a sync)
            opt.step()
        if scaler.is_enabled():
            scaler.update()  # lowers the scale after an overflow, as GradScaler.step would
        streak = self.nonfinite[which]
        streak.add_(skipped).mul_(skipped)  # +1 when skipped, back to 0 when applied
        self.nonfinite[2].add_(skipped)
        return skipped, gnorm.detach()

    def health(self) -> dict:
        """Consecutive skipped critic / generator steps and the total (one host read: call it
        at log and checkpoint steps, not every step)."""
        d, g, total = (int(v) for v in self.nonfinite.tolist())
        return {"streak_d": d, "streak_g": g, "total": total}

    def reset_health(self, total: int = 0) -> None:
        self.nonfinite.zero_()
        self.nonfinite[2] = total


def fit_loaded_state(opt: torch.optim.Optimizer, hyperparameters: bool = False) -> None:
    """After ``load_state_dict``, whose param groups are the checkpoint's: make the groups
    this optimizer's own (a checkpoint from another mode or version may have been written
    with other options: fused or not, capturable or not, a float or tensor lr) and put the
    step counters where this optimizer keeps them (on the device when fused or capturable).
    ``hyperparameters``: also take every other setting (betas, eps, clip value...) from this
    optimizer's construction, so only the state carries over (a resume with new flags); the
    lr keeps the checkpoint's value (set it with :func:`set_lr`)."""
    for group in opt.param_groups:
        for k in ("fused", "capturable", "foreach"):
            if k in opt.defaults:
                group[k] = opt.defaults[k]
        if hyperparameters:
            for k, v in opt.defaults.items():
                if k != "lr":
                    group[k] = v
        for k, v in opt.defaults.items():
            group.setdefault(k, v)
        lr, default_lr = group["lr"], opt.defaults["lr"]
        if torch.is_tensor(default_lr) and not torch.is_tensor(lr):
            group["lr"] = torch.tensor(float(lr), device=default_lr.device)
        elif torch.is_tensor(lr) and not torch.is_tensor(default_lr):
            group["lr"] = float(lr)
        on_device = bool(group.get("fused")) or bool(group.get("capturable"))
        for p in group["params"]:
            st = opt.state.get(p, {})
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(device=p.device if on_device else "cpu")
