"""The WGAN-GP gradient penalty as one drop-in call (Gulrajani et al. 2017, eq. 3):

    x_hat   = alpha * real + (1 - alpha) * fake,  one alpha ~ U[0, 1) per sample
    penalty = weight * mean_n (||d critic(x_hat)[n] / d x_hat[n]||_2 - center)^2

``x_hat`` is built from detached ``real``/``fake`` and made a leaf, so the penalty's
gradient reaches only the critic's parameters, through the double-backward graph
that ``autograd.grad(create_graph=True)`` records.

Mixed precision follows PyTorch's AMP examples ("Gradient penalty"): with a
``GradScaler`` the input gradient is taken of ``scaler.scale(out.sum())`` (so small
fp16 gradients do not underflow), multiplied by 1/scale out of place (the scale
stays a device tensor: no host sync), and the norm is taken in fp32. bf16 autocast
needs no scaler.

The penalty is not finite at every scale. The backward of ``scale * out.sum()``
hands each sample's output the scale itself as its gradient, and a critic layer
that runs in fp16 under autocast holds it in fp16, whose largest value is 65504. So
at GradScaler's default ``init_scale=2**16`` the first fp16 penalty is NaN (the inf
turns NaN in the critic's backward), and so are the critic's parameter gradients;
``scaler.step`` skips that step and ``scaler.update`` halves the scale, as for any
overflow. At a scale the critic's fp16 backward can hold (2**15 for the small conv
critic of tests/test_gradient_penalty.py) the penalty is finite and equals the fp32
penalty within fp16 rounding. The scaler grows back to 2**16 after each
``growth_interval`` (2000) good steps, and skips one more step each time.
``GradScaler(init_scale=2**15)`` saves the first skipped step.

A check the drop-ins make and the trainer's ``penalty_at`` does not: a critic that
normalises with batch statistics (BatchNorm in training mode, or without running
statistics) gets a RuntimeWarning, once per critic class, since its per-sample
input gradient depends on the rest of the batch and the WGAN-GP paper's critic has
no batch norm (Gulrajani et al. 2017, Sec. 4). See :func:`batch_stats_layer` for how
a critic passed as a function is seen through, and what the once-per-critic scan
notices of later changes.

Per-call cost (issue 23). On a small critic every microsecond of Python is a visible
share of the step, and on a GPU, where a small critic's step is launch-bound, fixed host
cost decides the speed. Measured before the change (one thread, CPU time, an MLP critic of
width 8 at batch 16 so the fixed cost shows; penalty + backward): the plain formula ~200 us,
``impl="reference"`` +49 us, ``impl="auto"`` +62 us. Where it went (timed one by one): the
batch-norm walk of ``named_modules`` at every call (~3 us for 7 modules, growing with the
critic), the interpolation's no-op casts and alpha reshape (10.5 us against the plain
expression's 6.4 us), the native ops' generic ``torch.library`` autograd wrapper (the
interpolation op 4.1 us against 2.1 us below autograd; the penalty op again in backward),
argument checks repeated by each layer, and ``norm.mean()``, a statistic only the trainer
reads. Now: one walk per critic object, casts and views only where the dtype needs them,
the native interpolation called below autograd (its inputs are detached: there is no graph
to record), the native penalty through one lean ``autograd.Function``, no unused mean:
+19 us (reference) and +14 us (auto) on the same critic, a few tenths of a percent of the
WGAN-GP toy critic's step. ``benchmarks/bench_gradient_penalty.py`` prints the ratios.
"""
from __future__ import annotations

import functools
import math
import numbers
import weakref
from typing import Callable

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ._dispatch import warn_once
from .gradient_norm_penalty import MODES, penalty_and_norm, per_sample_penalty
from .interpolate import interpolate_leaf


def _scale_tensor(scaler) -> torch.Tensor | float:
    # GradScaler keeps its scale as a 1-element device tensor; reading it as a
    # Python float (get_scale) would force a host sync every step.
    get = getattr(scaler, "_get_scale_async", None)
    scale = get() if get is not None else None
    return scale if scale is not None else scaler.get_scale()


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     weight: float | torch.Tensor = 10.0, *, center: float = 1.0, mode: str = "two_sided",
                     alpha: torch.Tensor | None = None, generator: torch.Generator | None = None, scaler=None,
                     impl: str = "auto") -> torch.Tensor:
    """Weighted gradient penalty of ``critic`` at random interpolates of ``real`` and ``fake``.

    Returns a scalar (fp32; fp64 for fp64 inputs) ready to add to the critic loss.
    ``critic`` must return one value per sample: shape (N,), or (N,) followed by 1-sized
    dims such as a DCGAN conv head's (N, 1, 1, 1). ``weight`` (positional or keyword):
    see :func:`check_weight`. ``alpha``: the per-sample interpolation weights, (N,), drawn
    from U[0, 1) when None, with ``generator`` when given (see :func:`~pyfast_gan.interpolate`
    for which impls draw it how).
    """
    if not isinstance(real, torch.Tensor) or not isinstance(fake, torch.Tensor):
        raise ValueError("real and fake must be tensors")
    weight = check_weight(weight, real.device)
    check_drop_in_args(critic, mode, scaler, "gradient_penalty")
    x_hat = interpolate_leaf(real, fake, alpha, generator=generator, impl=impl)
    grad = input_gradient(critic, x_hat, scaler)
    return apply_weight(per_sample_penalty(grad, center, mode, impl).mean(), weight)


def check_weight(weight, device: torch.device, argname: str = "weight") -> float | torch.Tensor:
    """A penalty weight as a float, or as a 0-d tensor to multiply in as is.

    Python and numpy real numbers must be finite. A one-element tensor (on ``device`` or
    the CPU) is accepted without reading its value, so a weight kept on the GPU costs no
    host sync; it is therefore not checked for inf/NaN, and a weight that requires grad
    gets the penalty's gradient.
    """
    if type(weight) is float and math.isfinite(weight):  # the common case, first
        return weight
    if isinstance(weight, torch.Tensor):
        if weight.numel() != 1:
            raise ValueError(f"{argname} must be a finite number or a one-element tensor, "
                             f"got a tensor of shape {tuple(weight.shape)}")
        if weight.dtype == torch.bool or weight.is_complex():
            raise ValueError(f"{argname} must be a real number, got a tensor of dtype {weight.dtype}")
        if weight.device.type != "cpu" and weight.device != device:
            raise ValueError(f"{argname} must be on the device of real ({device}) or the CPU, got {weight.device}")
        return weight.reshape(())
    # numbers.Real covers numpy's float and int scalars; bool (numpy's too) is refused.
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
        raise ValueError(f"{argname} must be a finite number or a one-element tensor, got {weight!r}")
    return float(weight)


def apply_weight(penalty: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
    if isinstance(weight, torch.Tensor):
        # The penalty's dtype, so an fp64 or integer weight does not change the result's.
        return penalty * weight.to(penalty.dtype)
    return weight * penalty


def check_drop_in_args(critic, mode, scaler, op: str) -> None:
    """The argument checks of the drop-in penalties, and the batch-norm warning. Kept flat:
    it runs at every call, and on a small critic each function call of it shows (issue 23)."""
    if not callable(critic):
        raise ValueError(f"critic must be callable (an nn.Module or function), got {type(critic).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if scaler is not None:
        check_scaler(scaler)
    if torch.compiler.is_compiling():
        # Dynamo cannot trace the weak-keyed cache; the eager calls (and the first one
        # before a compile, if any) warn.
        return
    found = batch_stats_layer(critic)
    if found is None:
        return
    module, name, layer = found
    cls = type(module)
    # stacklevel 4: warnings.warn <- warn_once <- here <- the drop-in <- the user's line.
    warn_once(f"{op}.batchnorm.{cls.__module__}.{cls.__qualname__}",
              f"pyfast_gan.{op}: critic {cls.__qualname__} normalises with batch statistics (its "
              f"{type(layer).__name__} {name!r} is in training mode or keeps no running statistics), so "
              f"each sample's input gradient depends on the rest of the batch and the per-sample penalty "
              f"does not constrain the critic's own gradient; the WGAN-GP paper's critic has no batch norm "
              f"(use LayerNorm or none)", stacklevel=4)


def check_scaler(scaler) -> None:
    if scaler is not None and not (hasattr(scaler, "scale") and hasattr(scaler, "is_enabled")):
        raise ValueError(f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")


# The batch-norm layers of each critic module seen so far, found by one walk of its
# submodules: id(module) -> (weak reference to it, registration count at the walk,
# [(name, layer), ...]). Keyed by id with the reference checked, not a WeakKeyDictionary,
# whose Python-level get() makes a new weak reference at every lookup; an entry leaves when
# its module is collected.
_BN_LAYERS: dict[int, tuple[weakref.ref, int, list]] = {}
# Submodule registrations anywhere in the process (setattr of a module, add_module,
# Sequential/ModuleList/ModuleDict edits), counted by a global nn.Module hook installed at
# the first scan: a walk made before the last registration may be out of date.
_registrations = 0


def _count_registration(module, name, submodule):
    global _registrations
    _registrations += 1


@functools.lru_cache(maxsize=None)
def _install_registration_hook() -> None:
    torch.nn.modules.module.register_module_module_registration_hook(_count_registration)


def scan_batch_norm(module: torch.nn.Module) -> list[tuple[str, _BatchNorm]]:
    """Every batch-norm layer of ``module``, by name: the one walk of its submodules
    (tests count the calls)."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, _BatchNorm)]


def _forget(key: int, ref: weakref.ref) -> None:
    if _BN_LAYERS.get(key, (None,))[0] is ref:  # not a newer module that reuses the id
        del _BN_LAYERS[key]


def _batch_stats_layer_of(module: torch.nn.Module) -> tuple[str, _BatchNorm] | None:
    key = id(module)
    entry = _BN_LAYERS.get(key)
    if entry is None or entry[1] != _registrations or entry[0]() is not module:
        _install_registration_hook()  # before the walk, so no registration goes uncounted
        entry = _BN_LAYERS[key] = (weakref.ref(module, functools.partial(_forget, key)), _registrations,
                                   scan_batch_norm(module))
    # Modes and buffers are read live: train()/eval(), of the critic or of one layer, cost
    # no rescan. BatchNorm uses the batch's statistics in training mode, and in eval mode
    # when it keeps no running statistics.
    for name, m in entry[2]:
        if m.training or m._buffers.get("running_mean") is None:
            return name, m
    return None


def critic_modules(critic) -> list[torch.nn.Module]:
    """The modules a critic callable visibly runs: the critic itself when it is a module; the
    module of a bound method (``D.score``); what a ``functools.partial`` wraps or binds; the
    modules a function or lambda closes over or names as globals. A module a function names
    is narrowed to the submodules its code reads as attributes, when it reads any (so
    ``lambda x: self.D(x, y)`` checks ``self.D``, not ``self``'s generator as well).

    Not seen: modules reached through other objects (a dict, a list, a dataclass, default
    arguments), modules built inside the function, and a bound method's module is taken whole
    (a method of a GAN wrapper holding the generator too is checked with the generator)."""
    if isinstance(critic, torch.nn.Module):
        return [critic]
    found: list[torch.nn.Module] = []
    # (object, depth): callables the critic names are followed one level, not through
    # whole libraries (where unrelated modules would be found).
    todo, seen = [(critic, 0)], set()
    while todo:
        obj, depth = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            found.append(obj)
        elif isinstance(obj, functools.partial):
            todo += [(o, depth) for o in (obj.func, *obj.args, *obj.keywords.values())]
        elif isinstance(getattr(obj, "__self__", None), torch.nn.Module):
            found.append(obj.__self__)
        elif depth <= 1 and hasattr(obj, "__code__"):
            names, glb = obj.__code__.co_names, getattr(obj, "__globals__", {})
            refs = [c.cell_contents for c in (obj.__closure__ or ()) if _cell_filled(c)]
            refs += [glb[n] for n in names if n in glb]
            for r in refs:
                if isinstance(r, torch.nn.Module):
                    subs = [r._modules[n] for n in names if r._modules.get(n) is not None]
                    todo += [(m, depth + 1) for m in subs or [r]]
                elif callable(r) and not isinstance(r, type):
                    todo.append((r, depth + 1))
    return found


def _cell_filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def batch_stats_layer(critic) -> tuple[torch.nn.Module, str, _BatchNorm] | None:
    """``(module, name, layer)``: the first batch-norm layer of the critic's modules
    (:func:`critic_modules`) that normalises with batch statistics, or None.

    Each module's layers are found by one walk, made at its first check and kept (weakly
    keyed by the module) until a submodule is registered anywhere in the process (a global
    ``nn.Module`` registration hook counts them), after which the next check walks again.
    ``train()``/``eval()`` and running statistics are read live at every check. Not seen
    without a new walk: ``del critic.layer`` and direct edits of ``_modules`` (a removed
    layer can still be warned about)."""
    for module in (critic,) if isinstance(critic, torch.nn.Module) else critic_modules(critic):
        hit = _batch_stats_layer_of(module)
        if hit is not None:
            return module, hit[0], hit[1]
    return None


def input_gradient(critic: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scaler=None) -> torch.Tensor:
    """``d sum(critic(x)) / d x`` with ``create_graph``, ``x`` a leaf that requires grad; with
    an enabled ``scaler``, of the scaled sum and unscaled out of place (the AMP recipe)."""
    return scores_gradient(critic(x), x, scaler)


def scores_gradient(out, x: torch.Tensor, scaler=None, what: str = "critic output",
                    allow_unused: bool = False) -> torch.Tensor:
    """:func:`input_gradient` from scores ``out`` already computed from ``x``. With
    ``allow_unused``, scores that ``x`` did not go into raise a ValueError that says so."""
    n = x.shape[0]
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"{what} must be a tensor, got {type(out).__name__}")
    # (N,) followed by any 1-sized dims, e.g. a DCGAN conv head's (N, 1, 1, 1): with N > 0,
    # numel == N exactly when every dim after the first is 1.
    if out.dim() == 0 or out.shape[0] != n or out.numel() != n:
        raise ValueError(f"{what} must have one value per sample, shape ({n},) or ({n}, 1, ...); "
                         f"got {tuple(out.shape)}")
    if not out.requires_grad:
        if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            raise ValueError("gradient mode is off (called under torch.no_grad() or torch.inference_mode()): "
                             "the penalty differentiates the critic's output with respect to its input, "
                             "so it needs grad mode on and inference mode off")
        raise ValueError(f"{what} does not depend on its input (it does not require grad)")

    scaled = scaler is not None and scaler.is_enabled()
    if scaled:
        (grad,) = torch.autograd.grad(scaler.scale(out.sum()), x, create_graph=True, allow_unused=allow_unused)
    else:
        # d sum(out) / dx as the vector-Jacobian product with ones: the gradient the sum's
        # backward would hand ``out`` (exactly ones), without recording the sum and its
        # backward in the double-backward graph.
        (grad,) = torch.autograd.grad(out, x, torch.ones_like(out), create_graph=True, allow_unused=allow_unused)
    if grad is None:
        raise ValueError(f"{what} were not computed from real (call real.requires_grad_() before the critic's "
                         f"forward, and pass the scores of that forward)")
    if scaled:
        inv_scale = 1.0 / _scale_tensor(scaler)
        return grad.float() * inv_scale if grad.dtype != torch.float64 else grad * inv_scale
    return grad


def penalty_at(critic: Callable[[torch.Tensor], torch.Tensor], x_hat: torch.Tensor, *, center: float = 1.0,
               mode: str = "two_sided", scaler=None, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(penalty, grad_norm)``: the unweighted mean penalty of ``critic``'s input gradient at
    ``x_hat`` (a leaf that requires grad) and the mean input-gradient norm (a constant).

    The one place the penalty statistic is computed: :func:`gradient_penalty` and every mode
    of the trainer's critic objective (eager, AMP, compiled) use its two steps
    (:func:`input_gradient`, then ``penalty_and_norm``), so ``gp`` and ``grad_norm_x_hat``
    mean the same everywhere. Traceable by ``torch.compile(fullgraph=True)`` with
    ``torch._dynamo.config.trace_autograd_ops`` (the kernels have fake impls).
    """
    grad = input_gradient(critic, x_hat, scaler)
    per_sample, norm = penalty_and_norm(grad, center=center, mode=mode, impl=impl)
    return per_sample.mean(), norm.mean()
