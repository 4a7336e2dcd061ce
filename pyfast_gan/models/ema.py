"""Exponential moving average of a model's weights (usually the generator)."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """Keeps ``module``, a frozen copy of ``model`` whose parameters follow
    ``ema = decay * ema + (1 - decay) * param`` at every :meth:`update`.

    Buffers (batch-norm running statistics) are copied, not averaged: they already are
    running averages. The update is three foreach ops (a few kernel launches, not one per
    tensor).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not (0.0 <= float(decay) <= 1.0):
            raise ValueError(f"decay must be in [0, 1], got {decay!r}")
        self.decay = float(decay)
        self.num_updates = 0
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.module.eval()

    def _pairs(self, model: nn.Module):
        ema_p = list(self.module.parameters())
        p = list(model.parameters())
        if len(ema_p) != len(p):
            raise ValueError("model does not have the same parameters as the EMA copy")
        return ema_p, p

    @torch.no_grad()
    def update(self, model: nn.Module, skip: torch.Tensor | None = None) -> None:
        """One step ``ema += w * (param - ema)`` with ``w = 1 - decay``. ``skip``: a 0-d device
        tensor (1 = the training step was skipped): then ``w = 0``, decided on the device
        without a host sync (a tensor weight in ``_foreach_lerp_`` would be read back)."""
        ema_p, p = self._pairs(model)
        if ema_p:
            dev = ema_p[0].device
            w = torch.full((), 1.0 - self.decay, device=dev)
            if skip is not None:
                w = w * (1 - skip.to(device=dev, dtype=w.dtype))
            step = torch._foreach_sub([t.detach().to(e.dtype) for e, t in zip(ema_p, p)], ema_p)
            torch._foreach_mul_(step, w)
            torch._foreach_add_(ema_p, step)
        for eb, b in zip(self.module.buffers(), model.buffers()):
            eb.copy_(b)
        self.num_updates += 1

    def to(self, *args, **kwargs) -> "EMA":
        self.module.to(*args, **kwargs)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.module.load_state_dict(state["module"])
