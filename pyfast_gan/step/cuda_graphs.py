"""Capture :class:`GANStep`'s critic and generator steps in CUDA graphs (CUDA only).

:class:`GraphedStep` replays the very step it wraps, behind the same interface
(``critic_step(real)``, ``generator_step(n)``, the same stats); the trainer and the
benchmark use either without a branch.

At DCGAN sizes a GPU step is a few milliseconds, much of it kernel-launch overhead; a
graph replays the whole step (noise, generator, critic, penalty double backward, optimizer
step) as one launch. The recipe is PyTorch's "whole network capture":

* static input buffers: each real batch is copied into one (``copy_``) before a replay;
  noise z and the penalty's alpha are drawn into theirs just before the replay (or copied
  from the caller's tensors), so a graphed step equals the eager step given the same
  inputs;
* a few warm-up steps on a side stream before capture (cuDNN/cuBLAS workspaces, lazy
  optimizer state, the compiled objective's compilation and start-up verification), after
  which parameters, buffers, optimizer state, the EMA weights, the non-finite counters and
  a stateful loss's state are restored *in place* (the graph holds their addresses), so
  warm-up leaves no trace on training;
* gradients set to None before capture, so backward allocates them inside the graph's
  memory pool and every replay writes the same memory;
* optimizers must be capturable: fused ``Adam(capturable=True)`` and
  ``RMSpropClip(capturable=True)`` (both apply the step's device-side skip flag inside the
  graph); autocast inside the graph runs with ``cache_enabled=False``.

Not supported in a graph (each falls back to the eager step with one message): a CPU
device, fp16 with GradScaler (not tested in a graph), lazy_gp > 1 (the penalty would change
the graph from step to step), a distributed grad_sync (collectives work in graphs with nccl,
but that is not tested here), the Triton clip or RMSprop kernels (they upload a pointer table
from host memory at each call, which a capture forbids; the CUDA kernels pass theirs as kernel
arguments), or any capture error.
"""
from __future__ import annotations

import warnings

import torch

from .step import GANStep

_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def cuda_graphs_unsupported_reason(step: GANStep) -> str | None:
    if step.device.type != "cuda":
        return f"CUDA graphs need a CUDA device (running on {step.device.type})"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if step.amp == "fp16":
        return "fp16 with GradScaler syncs with the host at every step; use --amp bf16"
    if step.objective.every > 1:
        return "lazy_gp > 1 changes the step from one critic iteration to the next"
    if step.grad_sync is not None:
        return "multi-process gradient sync is not captured (untested)"
    if uses_triton_multi_tensor(step):
        return ("the Triton clip/RMSprop kernels upload their pointer tables at every call and "
                "cannot be captured; use --impl cuda (or auto with the CUDA kernels built)")
    for opt in (step.opt_g, step.opt_d):
        if not all(g.get("capturable") for g in opt.param_groups):
            return f"{type(opt).__name__} was not built capturable (build_optimizers(capturable=True))"
    return None


def uses_triton_multi_tensor(step: GANStep) -> bool:
    """Whether the step's weight clipping or RMSpropClip would run the Triton kernels on a
    CUDA device (``impl="triton"``, or ``"auto"`` without the CUDA kernels built)."""
    from pyfast_gan.ops.clip_weights import resolve_impl
    from pyfast_gan.optim import RMSpropClip

    if step.clip_after is None and not any(isinstance(o, RMSpropClip) for o in (step.opt_g, step.opt_d)):
        return False
    try:
        return resolve_impl(step.impl, "cuda") == "triton"
    except RuntimeError:  # an impl that cannot run on CUDA fails at the first step, with its reason
        return False


def _training_state(step: GANStep) -> list[torch.Tensor]:
    """Every tensor a step changes in place: parameters and buffers of G and D, the EMA copy
    of G, optimizer state, the non-finite counters and a stateful loss's tensors (BEGAN's
    k_t). Warm-up steps move all of them; the snapshot below must cover each."""
    modules = [step.G, step.D] + ([step.ema.module] if step.ema is not None else [])
    tensors = []
    for m in modules:
        tensors += [p.data for p in m.parameters()] + list(m.buffers())
    for opt in (step.opt_g, step.opt_d):
        for st in opt.state.values():
            tensors += [v for v in st.values() if torch.is_tensor(v)]
    tensors.append(step.nonfinite)
    if step.ema is not None:  # the ramped decay's update count
        tensors.append(step.ema.count)
    if step.stateful_loss:
        tensors += [v for v in vars(step.loss_fn).values() if torch.is_tensor(v)]
    return tensors


def _snapshot(step: GANStep) -> dict:
    """Everything in :func:`_training_state`, cloned."""
    return {id(t): (t, t.detach().clone()) for t in _training_state(step)}


@torch.no_grad()
def _restore(step: GANStep, snap: dict) -> None:
    """Put back the snapshot in place; optimizer state created since (lazily, by warm-up)
    is zeroed, which is the fresh state of Adam and RMSprop (moments and step count 0)."""
    for t, saved in snap.values():
        t.copy_(saved)
    for opt in (step.opt_g, step.opt_d):
        for st in opt.state.values():
            for v in st.values():
                if torch.is_tensor(v) and id(v) not in snap:
                    v.zero_()


class GraphedStep:
    """``critic_step(real)`` / ``generator_step(batch_size)`` replaying captured graphs.

    Build with :func:`graph_step`. ``real`` must have the batch shape given at capture
    (use drop_last); stats are static device tensors, overwritten by the next replay
    (clone them to keep them).
    """

    def __init__(self, step: GANStep, real_example: torch.Tensor, warmup: int = 3):
        self.step = step
        self.objective = step.objective
        self.batch_size = real_example.shape[0]
        self.objective_cache_off()
        self.static_real = real_example.detach().clone().contiguous(
            memory_format=step.memory_format if real_example.dim() == 4 else torch.contiguous_format)
        dev, n = real_example.device, self.batch_size
        self.static_z = torch.randn(n, step.z_dim, device=dev)
        self.static_zg = torch.randn(n, step.z_dim, device=dev)
        self.static_alpha = torch.rand(n, device=dev)
        # Optimizer state is created lazily by the first step; warm-up creates it (and
        # compiles/verifies the objective), and the snapshot taken before is restored in
        # place after capture, so warm-up leaves no trace on training.
        snap = _snapshot(step)
        critic_steps = step.critic_steps
        ema_updates = step.ema.num_updates if step.ema is not None else 0
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step.critic_step(self.static_real, alpha=self.static_alpha, z=self.static_z)
                step.generator_step(self.batch_size, z=self.static_zg)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        step.opt_d.zero_grad(set_to_none=True)
        step.opt_g.zero_grad(set_to_none=True)
        self.critic_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.critic_graph):
            self.critic_stats = step.critic_step(self.static_real, alpha=self.static_alpha,
                                                 z=self.static_z)
        self.gen_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.gen_graph):
            self.gen_stats = step.generator_step(self.batch_size, z=self.static_zg)
        torch.cuda.synchronize()
        _restore(step, snap)
        step.critic_steps = critic_steps
        if step.ema is not None:
            step.ema.num_updates = ema_updates

    def __getattr__(self, name):
        # Everything else (optimizers, scalers, health, counters) is the wrapped step's.
        if "step" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["step"], name)

    def objective_cache_off(self) -> None:
        # autocast's weight-cast cache would hand the graph tensors that die after capture
        self.step.autocast_cache = False

    def critic_step(self, real: torch.Tensor, alpha: torch.Tensor | None = None,
                    z: torch.Tensor | None = None) -> dict:
        if real.shape != self.static_real.shape:
            raise ValueError(f"real must have the captured shape {tuple(self.static_real.shape)}, "
                             f"got {tuple(real.shape)} (use drop_last)")
        self.static_real.copy_(real)
        if z is None:
            self.static_z.normal_()
        else:
            self.static_z.copy_(z)
        if alpha is None:
            self.static_alpha.uniform_()
        else:
            self.static_alpha.copy_(alpha)
        self.critic_graph.replay()
        self.step.critic_steps += 1
        # the graph's outputs are overwritten by the next replay
        return {k: v.clone() for k, v in self.critic_stats.items()}

    def generator_step(self, n: int, z: torch.Tensor | None = None) -> dict:
        if n != self.batch_size:
            raise ValueError(f"batch_size must be the captured {self.batch_size}, got {n}")
        if z is None:
            self.static_zg.normal_()
        else:
            self.static_zg.copy_(z)
        self.gen_graph.replay()
        if self.step.ema is not None:
            self.step.ema.num_updates += 1
        return {k: v.clone() for k, v in self.gen_stats.items()}


def graph_step(step: GANStep, real_example: torch.Tensor, *, enabled: bool = True,
               warmup: int = 3):
    """A :class:`GraphedStep` when the step can be captured, else ``step`` itself (with one
    message saying why)."""
    if not enabled:
        return step
    why = cuda_graphs_unsupported_reason(step)
    if why:
        _warn_once(f"pyfast_gan: CUDA graphs disabled ({why}); running the step eagerly")
        return step
    snap = _snapshot(step)
    critic_steps = step.critic_steps
    try:
        return GraphedStep(step, real_example, warmup=warmup)
    except Exception as e:  # noqa: BLE001 - any capture failure: run eagerly
        torch.cuda.synchronize()
        _restore(step, snap)
        step.critic_steps = critic_steps
        step.autocast_cache = True
        _warn_once(f"pyfast_gan: CUDA graph capture failed ({type(e).__name__}: "
                   f"{str(e).splitlines()[0][:200] if str(e) else ''}); running the step eagerly")
        return step
