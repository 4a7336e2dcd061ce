"""Exponential moving average of a model's weights (usually the generator), and the batch-norm
statistics that belong to the averaged weights.

A batch-norm layer's running mean and variance describe the activations of the weights that
produced them. The average of many generators is a new network whose activations differ, so
the statistics of the current generator (copied by :meth:`EMA.update`) do not fit it: sampled
in eval mode with them, an averaged DCGAN generator draws blots. :func:`recompute_batch_norm`
measures them again for the weights as they are (``torch.optim.swa_utils.update_bn``: forward
passes in train mode on noise, cumulative averages), and :meth:`EMA.ready` does so before
each use of the average.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

# Noise for the statistics: 8 batches of 64 (the trainer's default batch, whose statistics the
# generator trains with), drawn from a generator seeded by the caller, never the global RNG.
BN_BATCHES = 8
BN_BATCH_SIZE = 64


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
               for m in module.modules())


@torch.no_grad()
def recompute_batch_norm(generator: nn.Module, z_dim: int, *, seed: int = 0, batches: int = BN_BATCHES,
                         batch_size: int = BN_BATCH_SIZE) -> bool:
    """Set every batch-norm layer's running statistics of ``generator`` to the mean over
    ``batches`` forward passes (train mode) on noise ``N(0, I)`` of shape (batch_size, z_dim),
    drawn from ``torch.Generator().manual_seed(seed)``. The training mode, the momenta and the
    global RNG are left as they were. Returns False (and does nothing) without batch norm."""
    if not has_batch_norm(generator):
        return False
    device = next(generator.parameters()).device
    g = torch.Generator().manual_seed(int(seed))
    noise = [torch.randn(batch_size, z_dim, generator=g) for _ in range(batches)]
    update_bn(noise, generator, device=device)
    return True


class EMA:
    """Keeps ``module``, a frozen copy of ``model`` whose parameters follow
    ``ema = decay * ema + (1 - decay) * param`` at every :meth:`update`.

    ``rampup``: the decay of update ``n`` (counting from 0) is ``min(decay, (1 + n) / (10 + n))``
    (the num_updates rule of TensorFlow's ExponentialMovingAverage; stylegan2-ada's ema_rampup
    serves the same end): over a short run a fixed decay near 1 keeps averaging in the first,
    formless generators, the ramped one forgets them (0.1 at the first update, 0.99 after 890).

    Buffers are copied from ``model``, not averaged; batch-norm statistics that fit the
    averaged weights are measured by :meth:`ready`, which every user of the average calls
    first. The update is three foreach ops (a few kernel launches, not one per tensor).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, rampup: bool = False):
        if not (0.0 <= float(decay) <= 1.0):
            raise ValueError(f"decay must be in [0, 1], got {decay!r}")
        self.decay = float(decay)
        self.rampup = bool(rampup)
        self.num_updates = 0
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.module.eval()
        # Updates so far, as a device tensor: the ramped decay is computed on the device, so
        # it costs no host sync and a captured CUDA graph reads the current count at replay.
        self.count = torch.zeros((), device=self._device())
        self._stats_at: int | None = None  # num_updates at which ready() last measured

    def _device(self) -> torch.device:
        return next(iter(self.module.parameters()), torch.zeros(())).device

    def _pairs(self, model: nn.Module):
        ema_p = list(self.module.parameters())
        p = list(model.parameters())
        if len(ema_p) != len(p):
            raise ValueError("model does not have the same parameters as the EMA copy")
        return ema_p, p

    @torch.no_grad()
    def update(self, model: nn.Module, skip: torch.Tensor | None = None) -> None:
        """One step ``ema += w * (param - ema)`` with ``w = 1 - decay`` (ramped: see the class).
        ``skip``: a 0-d device tensor (1 = the training step was skipped): then ``w = 0``,
        decided on the device without a host sync (a tensor weight in ``_foreach_lerp_`` would
        be read back)."""
        ema_p, p = self._pairs(model)
        if ema_p:
            dev = ema_p[0].device
            if self.rampup:
                w = 1 - torch.clamp((1 + self.count) / (10 + self.count), max=self.decay)
            else:
                w = torch.full((), 1.0 - self.decay, device=dev)
            if skip is not None:
                w = w * (1 - skip.to(device=dev, dtype=w.dtype))
            step = torch._foreach_sub([t.detach().to(e.dtype) for e, t in zip(ema_p, p)], ema_p)
            torch._foreach_mul_(step, w)
            torch._foreach_add_(ema_p, step)
        for eb, b in zip(self.module.buffers(), model.buffers()):
            eb.copy_(b)
        self.count.add_(1)
        self.num_updates += 1

    def ready(self, z_dim: int) -> nn.Module:
        """The averaged model, with batch-norm statistics measured for its weights (once per
        update: :func:`recompute_batch_norm` seeded by ``num_updates``, so the trainer, ``sample``
        and ``evaluate`` see the same network for the same checkpoint)."""
        if self._stats_at != self.num_updates:
            recompute_batch_norm(self.module, z_dim, seed=self.num_updates)
            self._stats_at = self.num_updates
        return self.module

    def to(self, *args, **kwargs) -> "EMA":
        self.module.to(*args, **kwargs)
        self.count = self.count.to(self._device())
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "rampup": self.rampup, "num_updates": self.num_updates,
                "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.rampup = bool(state.get("rampup", False))  # averages saved before the ramp existed
        self.num_updates = int(state["num_updates"])
        self.count.fill_(self.num_updates)
        self.module.load_state_dict(state["module"])
        self._stats_at = None
