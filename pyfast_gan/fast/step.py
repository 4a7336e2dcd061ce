"""The fast critic and generator steps, composed from pyfast_gan's public pieces.

What makes it faster than the textbook loop (shared/seeds/001), each measured by
benchmarks/bench_train.py:

* the generator runs under ``no_grad`` in critic steps (the textbook loop backpropagates the
  critic loss, penalty included, through the generator and throws those gradients away);
* the critic's parameters do not collect gradients in generator steps;
* real and fake are scored in one forward when the critic has no batch norm;
* the penalty, clipping and RMSprop+clip are pyfast_gan's fused ops (``impl``);
* optional: channels_last, bf16/fp16 autocast, the compiled objective (compile.py), CUDA
  graphs (cuda_graphs.py);
* no host synchronisation inside a step: stats stay on the device.

The trainer (pyfast_gan/train/steps.py) has its own eager step with per-step health checks;
this one serves the benchmark and CUDA-graph capture, which needs a step without syncs: the
trainer runs it, graphed, under ``--cuda-graphs`` and checks its returned losses at log steps.
"""
from __future__ import annotations


import torch
from torch import nn

import pyfast_gan

from .compile import CriticObjective, GeneratorObjective


def _fused_adam_ok(device: torch.device) -> bool:
    # fused=True exists for CUDA and (torch >= 2.4) CPU; the lent GPUs run torch 2.11.
    return device.type in ("cuda", "cpu")


def make_optimizers(G: nn.Module, D: nn.Module, loss_name: str, *, lr: float, betas=(0.0, 0.9),
                    lr_g: float | None = None, clip_value: float = 0.01, impl: str = "auto",
                    capturable: bool = False, fused: bool = True):
    """(opt_g, opt_d, clip_after_step) for a loss's preset optimizer.

    WGAN: the critic gets ``pyfast_gan.optim.RMSpropClip`` (update + clip in one pass) when
    it is available, else ``RMSprop(foreach)`` and ``clip_after_step=True`` (the caller then
    calls :func:`clip_` after each critic step). Others: Adam (fused where possible;
    ``capturable=True`` for CUDA graphs).
    """
    device = next(D.parameters()).device
    lr_g = lr if not lr_g else lr_g
    if loss_name == "wgan":
        opt_g = torch.optim.RMSprop(G.parameters(), lr=lr_g, foreach=True,
                                    capturable=capturable)
        if capturable:  # RMSpropClip checks gradients on the host (skip_nonfinite)
            opt_d = torch.optim.RMSprop(D.parameters(), lr=lr, foreach=True, capturable=True)
            return opt_g, opt_d, True
        opt_d = pyfast_gan.optim.RMSpropClip(D.parameters(), lr=lr, clip_value=clip_value,
                                             impl=impl, skip_nonfinite=False)
        return opt_g, opt_d, False
    kw = dict(lr=lr, betas=tuple(betas))
    if fused and _fused_adam_ok(device):
        kw["fused"] = True
        if capturable:
            kw["capturable"] = True
    else:
        kw["foreach"] = True
        kw["capturable"] = capturable
    opt_g = torch.optim.Adam(G.parameters(), **{**kw, "lr": lr_g})
    opt_d = torch.optim.Adam(D.parameters(), **kw)
    return opt_g, opt_d, False


@torch.no_grad()
def clip_(params, clip_value: float, impl: str = "auto") -> None:
    """Clamp every parameter to [-c, c] in one fused launch (pyfast_gan.clip_weights_)."""
    pyfast_gan.clip_weights_(list(params), clip_value, impl=impl)


class FastStep:
    """Critic and generator steps without host synchronisation.

    ``critic_step(real) -> stats`` and ``generator_step(batch_size) -> stats`` (stats are
    detached device tensors). ``real`` is a float batch in [-1, 1] on the device.
    """

    def __init__(self, G: nn.Module, D: nn.Module, opt_g, opt_d, loss: str, *, z_dim: int,
                 gp_weight: float = 10.0, clip_value: float = 0.01,
                 clip_after_step: bool = False, amp: str = "off", channels_last: bool = False,
                 compile: bool = False, compile_mode: str = "compile", impl: str = "auto",
                 lazy_gp: int = 0, grad_sync=None, verify: bool = True):
        self.G, self.D, self.opt_g, self.opt_d = G, D, opt_g, opt_d
        self.z_dim = z_dim
        self.clip_value = clip_value
        self.clip_after_step = clip_after_step
        self.impl = impl
        self.device = next(D.parameters()).device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            G.to(memory_format=torch.channels_last)
            D.to(memory_format=torch.channels_last)
        self.objective = CriticObjective(loss, gp_weight=gp_weight, lazy_gp=lazy_gp,
                                         mode=compile_mode if compile else "eager", amp=amp,
                                         impl=impl, verify=verify)
        self.gen_objective = GeneratorObjective(loss, compile=compile, amp=amp,
                                                memory_format=self.memory_format)
        self.amp = amp
        self.grad_sync = grad_sync
        self.critic_steps = 0
        self.noise_generator: torch.Generator | None = None  # None: the default generator

    @property
    def autocast_cache(self) -> bool:
        return self.objective.autocast_cache

    @autocast_cache.setter
    def autocast_cache(self, on: bool) -> None:
        # off inside CUDA graphs: cached casts made during capture would be freed
        self.objective.autocast_cache = bool(on)
        self.gen_objective.autocast_cache = bool(on)

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.z_dim, device=self.device, generator=self.noise_generator)

    def _fake(self, n: int, z: torch.Tensor | None = None) -> torch.Tensor:
        z = self.noise(n) if z is None else z
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                             enabled=self.amp == "bf16",
                                             cache_enabled=self.autocast_cache):
            fake = self.G(z)
        if fake.dim() == 4:
            fake = fake.contiguous(memory_format=self.memory_format)
        # real and fake share a dtype (the interpolation needs it); autocast casts again
        return fake.float()

    def critic_step(self, real: torch.Tensor, alpha: torch.Tensor | None = None,
                    z: torch.Tensor | None = None) -> dict:
        """One critic update. ``alpha`` (N,) and ``z`` (N, z_dim) are drawn when None."""
        if real.dim() == 4:
            real = real.contiguous(memory_format=self.memory_format)
        fake = self._fake(real.shape[0], z)
        self.opt_d.zero_grad(set_to_none=True)
        loss, stats = self.objective(self.D, real, fake, self.critic_steps, alpha=alpha)
        loss.backward()
        if self.grad_sync is not None:
            self.grad_sync(self.D)
        self.opt_d.step()
        if self.clip_after_step:
            clip_(self.D.parameters(), self.clip_value, self.impl)
        self.critic_steps += 1
        return {"loss_d": loss.detach(), **stats}

    def generator_step(self, batch_size: int, z: torch.Tensor | None = None) -> dict:
        z = self.noise(batch_size) if z is None else z
        for p in self.D.parameters():
            p.requires_grad_(False)
        try:
            self.opt_g.zero_grad(set_to_none=True)
            loss, stats = self.gen_objective(self.G, self.D, z)
            loss.backward()
        finally:
            for p in self.D.parameters():
                p.requires_grad_(True)
        if self.grad_sync is not None:
            self.grad_sync(self.G)
        self.opt_g.step()
        return {"loss_g": loss.detach(), **stats}
