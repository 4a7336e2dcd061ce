"""``--lr-decay plateau``: BEGAN's schedule (Berthelot et al. 2017, sec. 4.1: the learning
rate is halved "when the measure of convergence stalled").

The measure M_global of each generator step is summed on the device (no host read in the
step); at the end of every window of ``--plateau-steps`` generator steps its mean is read
once and compared with the best earlier window's: no improvement halves both learning
rates. The sums, the best mean and the scale are checkpointed, so a resumed run decays at
the same steps.
"""
from __future__ import annotations

import math

import torch


class PlateauDecay:
    def __init__(self, window: int, device):
        self.window = int(window)
        self.sum = torch.zeros((), device=device)
        self.count = torch.zeros((), device=device)
        self.best = math.inf
        self.scale = 1.0

    @torch.no_grad()
    def observe(self, m: torch.Tensor) -> None:
        """One generator step's M_global (non-finite on a skipped step: not counted)."""
        ok = torch.isfinite(m)
        self.sum.add_(torch.where(ok, m, torch.zeros_like(m)))
        self.count.add_(ok.float())

    def end_window(self) -> bool:
        """Close the window (one host read); True when the learning rates were halved."""
        n = float(self.count)
        mean = float(self.sum) / n if n else math.nan
        self.sum.zero_()
        self.count.zero_()
        if math.isfinite(mean) and mean < self.best:
            self.best = mean
            return False
        self.scale *= 0.5
        return True

    def state_dict(self) -> dict:
        return {"sum": self.sum.cpu().clone(), "count": self.count.cpu().clone(), "best": self.best,
                "scale": self.scale}

    def load_state_dict(self, s: dict) -> None:
        self.sum.copy_(s["sum"])
        self.count.copy_(s["count"])
        self.best, self.scale = float(s["best"]), float(s["scale"])
