"""Does a critic normalise with batch statistics? Then each sample's input gradient depends
on the rest of the batch, so a per-sample gradient penalty does not constrain the critic's
own gradient (the WGAN-GP paper's critic has no batch norm: Gulrajani et al. 2017, Sec. 4),
and scoring real and fake in one forward would mix their statistics.

:func:`batch_stats_layer` finds the layer that makes a critic (a module, or a function that
runs modules: see :func:`critic_modules`) use batch statistics; :func:`has_batch_norm` says
whether a module holds any batch-norm layer at all. Both run at every step, so each module's
layers are found by one walk of its submodules, kept until a submodule is registered
anywhere in the process; modes and running statistics are read live.
"""
from __future__ import annotations

import functools
import weakref

import torch
from torch.nn.modules.batchnorm import _BatchNorm

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


def batch_norm_layers(module: torch.nn.Module) -> list[tuple[str, _BatchNorm]]:
    """:func:`scan_batch_norm` of ``module``, from the walk kept for it while no submodule has
    been registered since (see :func:`batch_stats_layer` for what that misses)."""
    key = id(module)
    entry = _BN_LAYERS.get(key)
    if entry is None or entry[1] != _registrations or entry[0]() is not module:
        _install_registration_hook()  # before the walk, so no registration goes uncounted
        entry = _BN_LAYERS[key] = (weakref.ref(module, functools.partial(_forget, key)), _registrations,
                                   scan_batch_norm(module))
    return entry[2]


def has_batch_norm(module: torch.nn.Module) -> bool:
    """True when ``module`` holds a batch-norm layer, in any mode: a layer whose output, in
    training mode, depends on the other samples of the batch."""
    return bool(batch_norm_layers(module))


def _batch_stats_layer_of(module: torch.nn.Module) -> tuple[str, _BatchNorm] | None:
    # Modes and buffers are read live: train()/eval(), of the critic or of one layer, cost
    # no rescan. BatchNorm uses the batch's statistics in training mode, and in eval mode
    # when it keeps no running statistics.
    for name, m in batch_norm_layers(module):
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
