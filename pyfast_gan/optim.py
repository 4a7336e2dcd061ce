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
"""
from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

from . import _native
from .ops._dispatch import check_impl_arg, native_available, resolve
from .ops.clip_weights import is_dense

try:
    from torch.optim.optimizer import _get_scalar_dtype
except ImportError:  # pragma: no cover - torch renamed a private helper
    def _get_scalar_dtype():
        return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32

__all__ = ["RMSpropClip", "rmsprop_clip_reference"]

_OP = "RMSpropClip"
_FAMILY = "clip"


def rmsprop_clip_reference(params, grads, square_avgs, grad_avgs, momentum_buffers, *, lr, alpha, eps, weight_decay,
                           momentum, centered, maximize, clip_value) -> None:
    """The definition: torch's ``_single_tensor_rmsprop`` (torch 2.14), then ``clamp_``."""
    for i, param in enumerate(params):
        grad = grads[i] if not maximize else -grads[i]
        square_avg = square_avgs[i]
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        if centered:
            grad_avg = grad_avgs[i]
            grad_avg.lerp_(grad, 1 - alpha)
            avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        else:
            avg = square_avg.sqrt()
        avg = avg.add_(eps)
        if momentum > 0:
            buf = momentum_buffers[i]
            buf.mul_(momentum).addcdiv_(grad, avg)
            param.add_(buf, alpha=-lr)
        else:
            param.addcdiv_(grad, avg, value=-lr)
        if clip_value != math.inf:
            param.clamp_(-clip_value, clip_value)


def _all_finite(grads: list[torch.Tensor], native: bool) -> bool:
    """One fused reduction per device (the native ``any_nonfinite`` kernel, else
    ``torch._foreach_norm(ord=inf)`` per dtype) and one host sync per device. Max-abs
    rather than the 2-norm, which would overflow for large finite gradients."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        if g.numel():
            by_device.setdefault(g.device, []).append(g)
    for dev, gs in by_device.items():
        if native and native_available(_FAMILY, dev)[0]:
            bad = torch.ops.pyfast_gan.any_nonfinite(gs)
        else:
            by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
            for g in gs:
                by_dtype.setdefault(g.dtype, []).append(g)
            flags = [torch.stack(torch._foreach_norm(lst, math.inf)).isfinite().all() for lst in by_dtype.values()]
            bad = torch.stack(flags).logical_not().any()
        if bool(bad):
            return False
    return True


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
        which_by_device = {device: resolve(_OP, _FAMILY, group["impl"], device) for device in by_device}
        if found_inf is None:
            # Steps are 0-d CPU tensors (RMSprop's non-capturable layout): one foreach op.
            torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
        else:
            # A skipped step is not counted; the counters move to the flag's device once so
            # adding 1 - found_inf needs no transfer.
            for p, state in _all_items(by_device):
                if state["step"].device != found_inf.device:
                    state["step"] = state["step"].to(found_inf.device)
            torch._foreach_add_([s["step"] for _, s in _all_items(by_device)], 1.0 - found_inf)
        for device, items in by_device.items():
            which = which_by_device[device]
            fast, slow = [], []
            for p, state in items:
                (fast if which != "reference" and _kernel_ok(p, state, centered, momentum) else slow).append((p, state))
            if slow:
                _reference_step(_lists(slow, centered, momentum), hyper, found_inf)
            if not fast:
                continue
            if which == "triton":
                from .kernels.triton.rmsprop_clip import triton_rmsprop_clip_

                by_dtype: dict[torch.dtype, list] = {}
                for item in fast:
                    by_dtype.setdefault(item[0].dtype, []).append(item)
                for group_items in by_dtype.values():
                    triton_rmsprop_clip_(*_lists(group_items, centered, momentum), **hyper, found_inf=found_inf)
            else:
                torch.ops.pyfast_gan.rmsprop_clip_(
                    *_lists(fast, centered, momentum), hyper["lr"], hyper["alpha"], hyper["eps"],
                    hyper["weight_decay"], hyper["momentum"], centered, hyper["maximize"], hyper["clip_value"],
                    found_inf)


def _all_items(by_device: dict) -> list:
    return [item for items in by_device.values() for item in items]


def _check_found_inf(found_inf, work) -> None:
    if not (torch.is_tensor(found_inf) and found_inf.numel() == 1 and found_inf.dtype == torch.float32):
        raise ValueError(f"found_inf must be a one-element float32 tensor, got {found_inf!r}")
    for _, params in work:
        for p in params:
            if p.device != found_inf.device:
                raise ValueError(f"found_inf must be on the parameters' device ({p.device}), got {found_inf.device}")


def _reference_step(lists, hyper: dict, found_inf) -> None:
    """The reference update; with ``found_inf`` the update is computed and then undone
    element-wise where the flag is set (torch.where, no host sync): the definition of a
    skipped step, at the cost of a copy (the reference is for checking, not speed)."""
    if found_inf is None:
        rmsprop_clip_reference(*lists, **hyper)
        return
    mutated = [t for lst in (lists[0], *lists[2:]) for t in lst]
    saved = [t.clone() for t in mutated]
    rmsprop_clip_reference(*lists, **hyper)
    skip = found_inf.reshape(()) != 0
    for t, old in zip(mutated, saved):
        t.copy_(torch.where(skip, old, t))


def _check_optional_clip(clip_value) -> None:
    if clip_value is None:
        return
    if isinstance(clip_value, bool) or not isinstance(clip_value, (int, float)) or not math.isfinite(clip_value) \
            or clip_value <= 0:
        raise ValueError(f"clip_value must be a finite number > 0 or None, got {clip_value!r}")


def _kernel_ok(p, state, centered, momentum) -> bool:
    """The kernels walk param, grad and state as one span each, in the same order."""
    if p.numel() == 0 or not is_dense(p):
        return False
    keys = ["square_avg"] + (["grad_avg"] if centered else []) + (["momentum_buffer"] if momentum > 0 else [])
    for t in [p.grad] + [state[k] for k in keys]:
        if t.dtype != p.dtype or t.device != p.device or t.stride() != p.stride() or t.shape != p.shape:
            return False
    return True


def _lists(items, centered, momentum):
    params = [p for p, _ in items]
    grads = [p.grad for p, _ in items]
    sq = [s["square_avg"] for _, s in items]
    ga = [s["grad_avg"] for _, s in items] if centered else []
    mb = [s["momentum_buffer"] for _, s in items] if momentum > 0 else []
    return params, grads, sq, ga, mb


def _register_fake() -> None:
    if not _native.load(_FAMILY):
        return

    @torch.library.register_fake("pyfast_gan::rmsprop_clip_")
    def _rmsprop_clip_fake(params, grads, square_avgs, grad_avgs, momentum_buffers, lr, alpha, eps, weight_decay,
                           momentum, centered, maximize, clip_value, found_inf=None):
        return None

    @torch.library.register_fake("pyfast_gan::any_nonfinite")
    def _any_nonfinite_fake(tensors):
        return torch.empty((), dtype=torch.bool, device=tensors[0].device)


_register_fake()
