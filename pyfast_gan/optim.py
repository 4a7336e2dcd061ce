"""``RMSpropClip``: WGAN's critic optimizer step (RMSprop, then clamp to [-c, c]) fused.

WGAN (Arjovsky et al. 2017, Algorithm 1: lr 5e-5, c = 0.01) updates the critic with
RMSprop and then clips every weight. As two steps that is five ATen passes per
parameter for ``torch.optim.RMSprop`` plus one ``clamp_`` pass; the fused kernel reads
param, grad and state once and writes param and state once.

The update is torch's single-tensor RMSprop, op by op, with intermediates rounded to
the parameter dtype where torch stores them (state in the parameter dtype, as torch
keeps it), so results equal ``RMSprop.step()`` + ``clamp_`` within rounding. The
optimizer state and param-group keys are RMSprop's, plus ``clip_value``,
``skip_nonfinite`` and ``impl``: state_dicts load into and from ``torch.optim.RMSprop``.

The op itself (``reference``, dispatch, fake registration) is ``pyfast_gan.ops.rmsprop_clip``;
the nonfinite check is the ``pyfast_gan.ops.any_nonfinite`` op.
"""
from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

from .ops._dispatch import check_impl_arg
from .ops.any_nonfinite import any_nonfinite
from .ops.rmsprop_clip import resolve_impl, rmsprop_clip_

try:
    from torch.optim.optimizer import _get_scalar_dtype
except ImportError:  # pragma: no cover - torch renamed a private helper
    def _get_scalar_dtype():
        return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32

__all__ = ["RMSpropClip"]


def _all_finite(grads: list[torch.Tensor], native: bool) -> bool:
    """One fused reduction (the ``any_nonfinite`` op) and one host read per device."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        if g.numel():
            by_device.setdefault(g.device, []).append(g)
    impl = "auto" if native else "reference"
    return not any(bool(any_nonfinite(gs, impl=impl)) for gs in by_device.values())


class RMSpropClip(Optimizer):
    """RMSprop followed by clamping every parameter to ``[-clip_value, clip_value]``, fused.

    Args (those shared with ``torch.optim.RMSprop`` mean the same):
        lr, alpha, eps, weight_decay, momentum, centered, maximize: as RMSprop.
        clip_value: bound c > 0 of the clamp after each step (WGAN: 0.01); ``None``
            disables the clamp (plain RMSprop).
        skip_nonfinite: if any gradient holds inf/NaN, skip the whole step (no state
            change, step count not advanced); ``step()`` then sets
            ``last_step_skipped = True`` and increments ``skipped_steps``. This differs from
            ``torch.optim.RMSprop`` + ``clamp_``, which would write the NaNs into the weights.
            The check reads one flag on the host per step.
        impl: "auto" | "reference" | "cpu" | "cuda" | "triton".
        capturable: keep the step counters on the parameters' device (no host work in
            ``step()``; a CUDA graph can capture it when ``lr`` is a float).
        foreach: accepted and stored for state_dict compatibility; ignored.

    Device-side skipping (no host sync), as torch's fused optimizers do under GradScaler:
    set ``opt.found_inf`` to a 1-element fp32 tensor on the parameters' device (nonzero =
    skip) before ``step()``; the kernels read the flag themselves, the step counters add
    ``1 - found_inf``, and ``skip_nonfinite``'s host check is not run (the caller decided).
    ``opt.grad_scale`` (set by ``GradScaler.step``) divides the gradients first.
    ``torch.amp.GradScaler.step(opt)`` therefore works without a sync.

    ``differentiable`` is not supported (ValueError if True).
    """

    _step_supports_amp_scaling = True

    def __init__(self, params, lr: float = 5e-5, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0,
                 momentum: float = 0, centered: bool = False, clip_value: float | None = 0.01,
                 skip_nonfinite: bool = True, impl: str = "auto", *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False) -> None:
        if isinstance(lr, torch.Tensor):
            if lr.numel() != 1:
                raise ValueError("lr: a tensor lr must have one element")
            lr = lr.item()
        for name, v in (("lr", lr), ("eps", eps), ("momentum", momentum), ("weight_decay", weight_decay),
                        ("alpha", alpha)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        _check_optional_clip(clip_value)
        check_impl_arg(impl)
        if differentiable:
            raise ValueError("differentiable: RMSpropClip does not support differentiable=True")
        defaults = {
            "lr": lr, "momentum": momentum, "alpha": alpha, "eps": eps, "centered": centered,
            "weight_decay": weight_decay, "capturable": bool(capturable), "foreach": foreach, "maximize": maximize,
            "differentiable": False, "clip_value": clip_value, "skip_nonfinite": skip_nonfinite, "impl": impl,
        }
        super().__init__(params, defaults)
        self.last_step_skipped = False
        self.skipped_steps = 0

    def __setstate__(self, state):
        super().__setstate__(state)
        # An RMSprop state_dict lacks clip_value/skip_nonfinite/impl (and older ones
        # more): take this optimizer's constructor values.
        for group in self.param_groups:
            for k, v in self.defaults.items():
                group.setdefault(k, v)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if len(p_state) != 0 and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=_get_scalar_dtype())
        self.__dict__.setdefault("last_step_skipped", False)
        self.__dict__.setdefault("skipped_steps", 0)

    def load_state_dict(self, state_dict) -> None:
        # ``impl`` says where this process runs the step (a checkpoint written with
        # impl="cuda" must load on a CPU host), so it is kept, not restored.
        impls = [g["impl"] for g in self.param_groups]
        super().load_state_dict(state_dict)
        for g, impl in zip(self.param_groups, impls):
            g["impl"] = impl

    def _init_state(self, group, p):
        state = self.state[p]
        if len(state) == 0:
            state["step"] = torch.zeros((), dtype=_get_scalar_dtype(),
                                        device=p.device if group["capturable"] else "cpu")
            state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["momentum"] > 0:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["centered"]:
                state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        """One fused RMSprop + clamp step; returns the closure's loss (if given)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        grad_scale = getattr(self, "grad_scale", None)
        work = []
        check = []
        native_check = True
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("RMSpropClip does not support sparse gradients")
                if not p.is_floating_point():
                    raise ValueError(f"params: RMSpropClip needs floating-point parameters, got {p.dtype}")
            work.append((group, params))
            if group["skip_nonfinite"]:
                check.extend(p.grad for p in params)
                native_check = native_check and group["impl"] != "reference"
        if grad_scale is not None:  # GradScaler.step with still-scaled gradients
            grads = [p.grad for _, params in work for p in params]
            if grads:
                torch._foreach_div_(grads, grad_scale)
        if found_inf is not None:
            _check_found_inf(found_inf, work)
            self.last_step_skipped = None  # decided on the device; the caller counts it
        elif check and not _all_finite(check, native_check):
            self.last_step_skipped = True
            self.skipped_steps += 1
            return loss
        else:
            self.last_step_skipped = False
        for group, params in work:
            if params:
                self._step_group(group, params, found_inf)
        return loss

    def _step_group(self, group, params, found_inf=None):
        _check_optional_clip(group["clip_value"])
        centered, momentum = group["centered"], group["momentum"]
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):
            lr = lr.item()
        hyper = dict(lr=lr, alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"],
                     momentum=momentum, centered=centered, maximize=group["maximize"],
                     clip_value=math.inf if group["clip_value"] is None else float(group["clip_value"]))
        by_device: dict[torch.device, list] = {}
        steps = []
        for p in params:
            state = self._init_state(group, p)
            steps.append(state["step"])
            by_device.setdefault(p.device, []).append((p, state))
        # Resolve first: an impl that cannot run must raise before any state changes.
        which_by_device = {device: resolve_impl(group["impl"], str(device)) for device in by_device}
        if found_inf is None:
            # Steps are 0-d CPU tensors (RMSprop's non-capturable layout): one foreach op.
            torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
        else:
            # A skipped step is not counted; the counters move to the flag's device once so
            # adding 1 - found_inf needs no transfer.
            states = [self.state[p] for p in params]
            for state in states:
                if state["step"].device != found_inf.device:
                    state["step"] = state["step"].to(found_inf.device)
            torch._foreach_add_([state["step"] for state in states], 1.0 - found_inf)
        for device, items in by_device.items():
            rmsprop_clip_(*_lists(items, centered, momentum), **hyper, found_inf=found_inf,
                          impl=which_by_device[device])


def _check_found_inf(found_inf, work) -> None:
    if not (torch.is_tensor(found_inf) and found_inf.numel() == 1 and found_inf.dtype == torch.float32):
        raise ValueError(f"found_inf must be a one-element float32 tensor, got {found_inf!r}")
    for _, params in work:
        for p in params:
            if p.device != found_inf.device:
                raise ValueError(f"found_inf must be on the parameters' device ({p.device}), got {found_inf.device}")


def _check_optional_clip(clip_value) -> None:
    if clip_value is None:
        return
    if isinstance(clip_value, bool) or not isinstance(clip_value, (int, float)) or not math.isfinite(clip_value) \
            or clip_value <= 0:
        raise ValueError(f"clip_value must be a finite number > 0 or None, got {clip_value!r}")


def _lists(items, centered, momentum):
    params = [p for p, _ in items]
    grads = [p.grad for p, _ in items]
    sq = [s["square_avg"] for _, s in items]
    ga = [s["grad_avg"] for _, s in items] if centered else []
    mb = [s["momentum_buffer"] for _, s in items] if momentum > 0 else []
    return params, grads, sq, ga, mb
