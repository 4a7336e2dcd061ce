"""The critic and generator objectives of :class:`pyfast_gan.step.step.GANStep`.

One function, :func:`critic_loss`, is the critic's objective in every mode: the adversarial
loss on real and fake, plus (WGAN-GP) ``weight * penalty`` from
:func:`pyfast_gan.ops.penalty_core.penalty_at`, the same function the public
``gradient_penalty`` uses, so ``gp`` (the unweighted mean penalty, what the WGAN-GP paper
plots) and ``grad_norm_x_hat`` (the mean input-gradient norm) mean the same everywhere.
``--compile`` wraps that function; it does not replace it.

Compiling through the penalty: ``torch.compile`` of a critic *module* fails under
``autograd.grad(create_graph=True)`` ("torch.compile with aot_autograd does not currently
support double backward", checked on 2.14.1). With ``torch._dynamo.config.trace_autograd_ops
= True`` (torch >= 2.11) dynamo traces the inner ``autograd.grad``, so the whole critic loss
is one ``fullgraph=True`` graph; x_hat is made a leaf *outside* it (by the interpolation
kernel) and the caller's ``loss.backward()`` runs the compiled backward. Inside the graph the
penalty is the project's kernel (``gradient_norm_penalty``: fake impl + first-order autograd)
or, with ``compile_penalty="reference"``, the plain formula that inductor fuses into the
surrounding kernels; ``benchmarks/bench_train.py`` times both.

At the first call the compiled objective's parameter gradients are compared with the fp32
eager reference on a copy of the critic; a difference, a compile error or a torch without
``trace_autograd_ops`` falls back to eager with one message.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
import types
import warnings

import torch
from torch import nn

from pyfast_gan.losses import check_loss
from pyfast_gan.ops.batchnorm_check import has_batch_norm
from pyfast_gan.ops.penalty_core import penalty_at
from pyfast_gan.step.graph_passes import CONV_WEIGHT_GRAD_PASS
# x_hat = alpha*real + (1-alpha)*fake as a fresh leaf: the critic step never needs gradients
# through x_hat to real/fake, and a leaf is what lets the compiled objective take it as a plain
# graph input. alpha=None: the kernel draws it.
from pyfast_gan.ops.interpolate import interpolate_leaf

MODES = ("eager", "compile")
# inductor options of the compiled critic objective: the double backward's weight gradients
# as oneDNN's weight-gradient kernel, not a dilated convolution (graph_passes.py)
COMPILE_OPTIONS = {"post_grad_custom_post_pass": CONV_WEIGHT_GRAD_PASS} if CONV_WEIGHT_GRAD_PASS else {}
COMPILE_PENALTIES = ("kernels", "reference")


def has_trace_autograd_ops() -> bool:
    """True when dynamo can trace ``autograd.grad`` inside a compiled function."""
    try:
        import torch._dynamo.config as dconfig
    except Exception:  # pragma: no cover - torch without dynamo
        return False
    return hasattr(dconfig, "trace_autograd_ops")


def amp_dtype(amp) -> torch.dtype | None:
    if amp in (None, "off", False):
        return None
    if amp in ("bf16", torch.bfloat16):
        return torch.bfloat16
    if amp in ("fp16", torch.float16):
        return torch.float16
    raise ValueError(f"amp must be 'off', 'bf16' or 'fp16', got {amp!r}")


def autocast(device_type: str, dtype: torch.dtype | None, cache: bool = True):
    # float32 is "no autocast" (the eager reference of the compile check): torch.autocast
    # with it would warn on CPU ("the target dtype is not supported") and disable itself.
    if dtype is None or dtype is torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype, cache_enabled=cache)


class _NoCudaHomeNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No CUDA runtime is found" not in record.getMessage()


def quiet_cuda_home_note() -> None:
    """Inductor imports torch.utils.cpp_extension, which logs "No CUDA runtime is found, using
    CUDA_HOME=..." on a machine with a CUDA toolkit and no GPU: a note for whoever builds CUDA
    extensions, not for a compiled CPU run, which never uses CUDA_HOME."""
    log = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaHomeNote) for f in log.filters):
        log.addFilter(_NoCudaHomeNote())


def flat_scores(out):
    """A critic's scores as the losses take them, (M,): (M, 1, ...) with every dim after the
    first of size 1 (a linear head's (N, 1), a DCGAN conv head's (N, 1, 1, 1)) is flattened,
    as the drop-in penalties accept it (ops/penalty_core.py); any other shape goes to the loss
    as it is, which refuses it with the shape in its message."""
    if isinstance(out, torch.Tensor) and out.dim() > 1 and out.shape[0] > 0 and out.numel() == out.shape[0]:
        return out.reshape(out.shape[0])
    return out


def critic_scores(critic, real, fake, concat: bool):
    if concat:
        # One forward of 2N instead of two of N: the same scores for a critic without batch
        # statistics (every sample is scored on its own), larger and more efficient convs.
        # Split at half, not at N: a critic may give several scores per sample (CoGAN's
        # two domains, sample-major), which keeps real's before fake's all the same.
        out = critic(torch.cat([real, fake]))
        half = out.shape[0] // 2
        return out[:half], out[half:]
    return critic(real), critic(fake)


def critic_loss(critic, real, fake, x_hat, *, loss_fn, weight: float, center: float = 1.0,
                concat: bool, dtype: torch.dtype | None, impl: str = "auto", scaler=None,
                cache: bool = True):
    """The critic objective: ``(loss, stats)`` with the penalty at ``x_hat`` when given.

    Stats are detached fp32 0-d tensors: the loss's (d_real, d_fake, wasserstein,
    critic_loss) and, on penalty steps, ``gp`` (unweighted) and ``grad_norm_x_hat``.
    """
    with autocast(real.device.type, dtype, cache):
        real_out, fake_out = critic_scores(critic, real, fake, concat)
        loss, stats = loss_fn.critic(flat_scores(real_out), flat_scores(fake_out))
        if x_hat is None:
            return loss, stats
        gp, gnorm = penalty_at(critic, x_hat, center=center, scaler=scaler, impl=impl)
    stats = dict(stats, gp=gp.detach(), grad_norm_x_hat=gnorm.detach())
    return loss + weight * gp, stats


def own_copy(fn):
    """``fn`` with a code object of its own. Dynamo keeps compiled graphs, and its limit of 8
    recompilations, per code object: each objective compiles its own copy instead of piling
    every critic's guards onto one shared function (measured: the 9th objective in a process
    failed with FailOnRecompileLimitHit under fullgraph=True)."""
    out = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                             fn.__closure__)
    out.__kwdefaults__ = fn.__kwdefaults__
    return out


def _rel_diff(grads, loss, ref_grads, ref_loss) -> float:
    """Largest gradient difference relative to its tensor's scale (floored at 1% of the
    largest gradient, so a gradient that is zero in theory, like the critic's last bias
    under the Wasserstein loss, does not turn rounding into a 100% error), and the loss's."""
    top = max((r.abs().max().item() for r in ref_grads), default=0.0)
    worst = 0.0
    for a, b in zip(grads, ref_grads):
        scale = max(b.abs().max().item(), 1e-2 * top, 1e-30)
        worst = max(worst, (a.float() - b.float()).abs().max().item() / scale)
    loss_scale = max(abs(ref_loss.item()), 1e-6)
    return max(worst, abs(loss.item() - ref_loss.item()) / loss_scale)


class CriticObjective:
    """``objective(critic, real, fake, step_index=0, alpha=None) -> (loss, stats)``.

    ``loss.backward()`` (scaled or not) gives the critic's parameter gradients; call it with
    ``fake`` computed under ``no_grad``.

    Args:
        loss: the run's loss object (``pyfast_gan.losses.get_loss``).
        gp_weight, center: penalty weight lambda and target norm (WGAN-GP: 10, 1); used
            when the loss has the penalty.
        lazy_gp: penalty every K-th critic step (``step_index % K == 0``) with weight x K
            (0 or 1: every step, the paper's setting).
        compile: wrap :func:`critic_loss` in ``torch.compile(fullgraph=True)``.
        compile_penalty: "kernels" (the project's norm kernel inside the graph) or
            "reference" (the plain formula, generated by inductor).
        amp: "off" | "bf16" | "fp16" autocast inside the objective. fp16 runs eagerly (the
            penalty's GradScaler recipe needs the live scale).
        scaler: the critic's GradScaler (fp16).
        impl: the kernels' implementation (interpolation, and the penalty when eager).
        concat: score real and fake in one forward (None = yes unless the critic has batch
            norm, whose batch statistics would mix the two).
        verify: compare compiled and eager gradients at the first call.
    """

    def __init__(self, loss, *, gp_weight: float = 10.0, center: float = 1.0, lazy_gp: int = 0,
                 compile: bool = False, compile_penalty: str = "kernels", amp="off",
                 scaler: torch.amp.GradScaler | None = None, impl: str = "auto",
                 concat: bool | None = None, verify: bool = True, rtol: float | None = None,
                 quiet: bool = False):
        if lazy_gp < 0:
            raise ValueError(f"lazy_gp must be >= 0, got {lazy_gp}")
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight}")
        if compile_penalty not in COMPILE_PENALTIES:
            raise ValueError(f"compile_penalty must be one of {COMPILE_PENALTIES}, got {compile_penalty!r}")
        self.loss_fn = check_loss(loss)
        self.gp_weight, self.center = float(gp_weight), float(center)
        self.every = max(int(lazy_gp), 1)
        self.use_gp = bool(self.loss_fn.uses_gp and gp_weight > 0)
        self.dtype = amp_dtype(amp)
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.impl = impl
        self.compile_penalty = compile_penalty
        self.concat = concat
        self.rtol = rtol
        self.quiet = quiet
        self.autocast_cache = True  # off inside CUDA graphs (cuda_graphs.py)
        self.mode = "compile" if compile else "eager"
        self.fallback_reason: str | None = None
        self.compile_time_s: float = 0.0       # first compiled call, verification included
        self.verify_max_rel_diff: float | None = None
        self._verified = not compile or not verify
        self._compiled = None
        if compile:
            why = self._unsupported_reason()
            if why:
                self._fall_back(why)

    def _unsupported_reason(self) -> str | None:
        if self.dtype is torch.float16:
            return "fp16 autocast needs the GradScaler penalty recipe, which runs eagerly"
        if self.use_gp and not has_trace_autograd_ops():
            return (f"torch {torch.__version__} lacks torch._dynamo.config.trace_autograd_ops "
                    "(torch >= 2.11), needed to compile through the penalty's double backward")
        return None

    def _fall_back(self, why: str) -> None:
        self.fallback_reason = why
        self.mode = "eager"
        self._verified = True
        if not self.quiet:
            warnings.warn(f"pyfast_gan: compiled critic objective disabled ({why}); "
                          "using the eager objective", RuntimeWarning, stacklevel=3)

    def _kwargs(self, critic, weight: float, *, eager: bool, dtype=None, impl=None) -> dict:
        if impl is None:
            impl = self.impl if eager or self.compile_penalty == "kernels" else "reference"
        return dict(loss_fn=self.loss_fn, weight=weight, center=self.center,
                    concat=(not has_batch_norm(critic)) if self.concat is None else bool(self.concat),
                    dtype=self.dtype if dtype is None else dtype, impl=impl,
                    scaler=self.scaler if eager else None, cache=self.autocast_cache)

    def _get_compiled(self):
        if self._compiled is None:
            if self.use_gp:
                # Global switch, read whenever dynamo (re)traces; it only changes how
                # autograd.grad inside a compiled region is handled.
                torch._dynamo.config.trace_autograd_ops = True
            quiet_cuda_home_note()
            self._compiled = torch.compile(own_copy(critic_loss), fullgraph=True, dynamic=False,
                                           options=COMPILE_OPTIONS)
        return self._compiled

    def __call__(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                 step_index: int = 0, alpha: torch.Tensor | None = None):
        if real.shape != fake.shape:
            raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} "
                             f"and {tuple(fake.shape)}")
        if fake.dtype != real.dtype:  # e.g. a generator run under autocast
            fake = fake.to(real.dtype)
        gp_now = self.use_gp and step_index % self.every == 0
        weight = self.gp_weight * self.every
        if not self._verified:
            if gp_now and alpha is None:  # the check and the step see the same interpolates
                alpha = torch.rand(real.shape[0], device=real.device)
            self.verify_against_eager(critic, real, fake, alpha if gp_now else None)
        x_hat = interpolate_leaf(real, fake, alpha, impl=self.impl) if gp_now else None
        if self.mode == "eager":
            return critic_loss(critic, real, fake, x_hat, **self._kwargs(critic, weight, eager=True))
        return self._get_compiled()(critic, real, fake, x_hat, **self._kwargs(critic, weight, eager=False))

    def verify_against_eager(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                             alpha: torch.Tensor | None = None) -> dict:
        """Compare the compiled objective's parameter gradients with the fp32 eager reference
        on a copy of the critic (the caller's critic, its gradients and buffers are left
        untouched).

        Falls back to eager, with one message, when compiling fails or the gradients differ
        by more than ``rtol`` (relative to each gradient's largest entry; default 1e-3 in
        fp32; under bf16 twice eager bf16's own difference from fp32). Returns a dict: ok,
        mode, max_rel_diff, compile_time_s.
        """
        self._verified = True
        if self.mode == "eager":
            return {"ok": True, "mode": "eager", "max_rel_diff": 0.0, "compile_time_s": 0.0}
        rtol = self.rtol if self.rtol is not None else 1e-3
        if self.use_gp and alpha is None:
            alpha = torch.rand(real.shape[0], device=real.device)
        twin = copy.deepcopy(critic)
        weight = self.gp_weight * self.every
        x_hat = interpolate_leaf(real, fake, alpha, impl="reference") if self.use_gp else None

        def grads_of(run) -> tuple[list[torch.Tensor], torch.Tensor]:
            twin.load_state_dict(critic.state_dict())  # same buffers before each run
            for p in twin.parameters():
                p.grad = None
            loss, _ = run()
            loss.float().backward()
            return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                    for p in twin.parameters()], loss.detach().float()

        def eager(dtype):
            return critic_loss(twin, real, fake, x_hat,
                               **self._kwargs(twin, weight, eager=True, dtype=dtype, impl="reference"))

        ref_grads, ref_loss = grads_of(lambda: eager(torch.float32))  # autocast off
        if self.dtype is not None:
            # Low precision: no worse than 2x PyTorch's own eager error at the same dtype
            # (flash-attention's criterion), with rtol as a floor.
            amp_grads, amp_loss = grads_of(lambda: eager(self.dtype))
            rtol = max(rtol, 2.0 * _rel_diff(amp_grads, amp_loss, ref_grads, ref_loss))
        t0 = time.perf_counter()
        try:
            got, got_loss = grads_of(lambda: self._get_compiled()(
                twin, real, fake, x_hat, **self._kwargs(twin, weight, eager=False)))
        except Exception as e:  # noqa: BLE001 - any compile failure means: run eagerly
            self.compile_time_s = time.perf_counter() - t0
            self._fall_back(f"compiling failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            return {"ok": False, "mode": "eager", "max_rel_diff": None,
                    "compile_time_s": self.compile_time_s, "error": repr(e)[:500]}
        self.compile_time_s = time.perf_counter() - t0
        worst = _rel_diff(got, got_loss, ref_grads, ref_loss)
        self.verify_max_rel_diff = worst
        ok = worst <= rtol and all(bool(torch.isfinite(g).all()) for g in got)
        if not ok:
            self._fall_back(f"compiled gradients differ from eager's (max relative difference "
                            f"{worst:.3g} > {rtol:.3g})")
        return {"ok": ok, "mode": self.mode, "max_rel_diff": worst,
                "compile_time_s": self.compile_time_s}


def generator_loss(generator, critic, z, *, loss_fn, dtype, memory_format, cache: bool = True):
    """The generator objective: ``loss_fn.generator(critic(generator(z)))`` under autocast.
    The critic's parameters should not require grad during the call."""
    with autocast(z.device.type, dtype, cache):
        fake = generator(z)
        if fake.dim() == 4:
            fake = fake.contiguous(memory_format=memory_format)
        return loss_fn.generator(flat_scores(critic(fake)))


class GeneratorObjective:
    """``objective(generator, critic, z) -> (loss, stats)``: :func:`generator_loss`,
    optionally compiled (plain ``torch.compile``: no double backward here)."""

    def __init__(self, loss, *, compile: bool = False, amp="off",
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.loss_fn = check_loss(loss)
        self.dtype = amp_dtype(amp)
        self.memory_format = memory_format
        self.compiled = bool(compile)
        self.autocast_cache = True
        if compile:
            quiet_cuda_home_note()
        self._fn = (torch.compile(own_copy(generator_loss), fullgraph=True, dynamic=False) if compile
                    else generator_loss)

    def __call__(self, generator, critic, z):
        return self._fn(generator, critic, z, loss_fn=self.loss_fn, dtype=self.dtype,
                        memory_format=self.memory_format, cache=self.autocast_cache)
