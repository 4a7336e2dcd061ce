"""A compiled critic objective whose parameter gradients equal eager's, penalty included.

``torch.compile`` of a critic *module* fails under ``autograd.grad(create_graph=True)``
("torch.compile with aot_autograd does not currently support double backward", checked on
2.14.1). Two paths work, and both were checked here against eager:

* ``mode="compile"`` (default): ``torch._dynamo.config.trace_autograd_ops = True``
  (torch >= 2.11) lets dynamo trace the inner ``autograd.grad`` of the penalty, so the whole
  critic loss (adversarial term + penalty) is one ``fullgraph=True`` graph. The interpolated
  x_hat is made a leaf (``requires_grad_``) *outside* the compiled function; the caller takes
  the parameter gradients with an ordinary ``loss.backward()`` outside it, which runs the
  compiled backward of that graph.
* ``mode="func"``: ``torch.func``: the penalty's input gradient is an inner ``grad`` of a
  ``functional_call``, the parameter gradients an outer ``grad_and_value``, and the whole
  transform is compiled. The parameter gradients come out of the compiled call; a small
  autograd.Function hands them to ``loss.backward()`` so callers see the same contract.

Inside both compiled paths the penalty is the reference formula (autograd.grad + a
per-sample fp32 L2 norm), not the fused ops: ``custom_op`` ops cannot run inside
``torch.func`` transforms (2.14: "must override the setup_context staticmethod"), and under
inductor the reference norm and its backward are fused into the surrounding kernels anyway.
The eager mode calls ``pyfast_gan.gradient_penalty`` (fused kernels, GradScaler recipe).

At the first call (or through :meth:`CriticObjective.verify_against_eager`) the compiled
objective's parameter gradients are compared with eager's on a copy of the critic and the
first batch; if they differ, or compiling fails, or the installed torch lacks
``trace_autograd_ops``, the objective falls back to eager with one message.
"""
from __future__ import annotations

import copy
import time
import warnings
from typing import Callable

import torch
from torch import nn

import pyfast_gan

MODES = ("eager", "compile", "func")
_GP_EPS = 1e-12  # inside the sqrt: a zero gradient gives a finite norm and gradient


def has_trace_autograd_ops() -> bool:
    """True when dynamo can trace ``autograd.grad`` inside a compiled function."""
    try:
        import torch._dynamo.config as dconfig
    except Exception:  # pragma: no cover - torch without dynamo
        return False
    return hasattr(dconfig, "trace_autograd_ops")


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _resolve_loss(loss):
    if isinstance(loss, str):
        from pyfast_gan.losses import get_loss

        return get_loss(loss)
    return loss


def _amp_dtype(amp) -> torch.dtype | None:
    if amp in (None, "off", False):
        return None
    if amp in ("bf16", torch.bfloat16):
        return torch.bfloat16
    if amp in ("fp16", torch.float16):
        return torch.float16
    raise ValueError(f"amp must be 'off', 'bf16' or 'fp16', got {amp!r}")


def draw_alpha(n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """One U[0,1) interpolation weight per sample (WGAN-GP Algorithm 1, line 4)."""
    return torch.rand(n, device=device, generator=generator)


def interpolate_leaf(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor,
                     impl: str = "auto") -> torch.Tensor:
    """x_hat = alpha*real + (1-alpha)*fake as a fresh leaf that requires grad.

    The critic step never needs gradients through x_hat to real/fake (data, and a generator
    output taken under no_grad), so x_hat can be a leaf; that is what lets the compiled
    function treat it as a plain graph input.
    """
    with torch.no_grad():
        x_hat, _ = pyfast_gan.interpolate(real, fake, alpha, impl=impl)
    return x_hat.detach().requires_grad_(True)


def reference_penalty(critic_out_hat: torch.Tensor, x_hat: torch.Tensor, center: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean_i (||grad_i|| - center)^2, mean_i ||grad_i||), norms in fp32 (paper eq. 3)."""
    (g,) = torch.autograd.grad(critic_out_hat.float().sum(), x_hat, create_graph=True)
    norm = g.float().flatten(1).square().sum(1).add(_GP_EPS).sqrt()
    return (norm - center).square().mean(), norm.mean()


def _critic_scores(critic, real, fake, concat: bool):
    if concat:
        # One forward of 2N instead of two of N: same result for a critic without batch
        # norm (every sample is scored on its own) and larger, more efficient convs.
        out = critic(torch.cat([real, fake]))
        return out[: real.shape[0]], out[real.shape[0]:]
    return critic(real), critic(fake)


def _objective_body(critic, real, fake, x_hat, *, loss_fn, weight: float, center: float,
                    use_gp: bool, concat: bool, amp_dtype, cache: bool = True):
    """The critic loss as one function of (critic, real, fake, x_hat); traced by dynamo."""
    with torch.autocast(real.device.type, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None, cache_enabled=cache):
        real_out, fake_out = _critic_scores(critic, real, fake, concat)
        loss, stats = loss_fn.critic(real_out, fake_out)
        if not use_gp:
            return loss, stats
        hat_out = critic(x_hat)
    gp, gnorm = reference_penalty(hat_out, x_hat, center)
    stats = dict(stats)
    stats["gp"] = gp.detach()
    stats["grad_norm_x_hat"] = gnorm.detach()
    return loss + weight * gp, stats


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


class _InjectGrads(torch.autograd.Function):
    """loss.backward() accumulates precomputed parameter gradients (torch.func mode)."""

    @staticmethod
    def forward(ctx, loss, *params_and_grads):
        n = len(params_and_grads) // 2
        ctx.save_for_backward(*params_and_grads[n:])
        return loss.detach().clone()

    @staticmethod
    def backward(ctx, grad_out):
        grads = ctx.saved_tensors
        return (None, *[g * grad_out.to(g.dtype) for g in grads], *[None] * len(grads))


class CriticObjective:
    """``objective(critic, real, fake, step_index=0, alpha=None) -> (loss, stats)``.

    The loss is a 0-d tensor whose ``.backward()`` (scaled or not) gives the critic's
    parameter gradients; stats are detached 0-d tensors (the loss's stats, plus "gp" and
    "grad_norm_x_hat" on penalty steps). Call it with ``fake`` computed under ``no_grad``.

    Args:
        loss: a name from ``pyfast_gan.losses.LOSSES`` or a loss object from ``get_loss``.
        gp_weight, center: penalty weight lambda and target norm (WGAN-GP: 10, 1). Only used
            when the loss uses the penalty.
        lazy_gp: penalty every K-th critic step (``step_index % K == 0``) with weight x K
            (0 or 1: every step, the paper's setting).
        mode: "eager" | "compile" | "func" (see the module docstring).
        amp: "off" | "bf16" | "fp16": autocast applied inside the objective (the same
            dtype as the caller's autocast, if any). Compiled modes with fp16 fall back to
            eager: the penalty's GradScaler recipe needs the live scale.
        scaler: the critic's GradScaler (fp16), passed to the fused penalty in eager mode.
        impl: implementation of the fused ops in eager mode (and of the interpolation).
        concat: score real and fake in one forward (None = yes unless the critic has batch
            norm, whose batch statistics would mix the two).
        verify: compare compiled and eager gradients at the first call.
    """

    def __init__(self, loss, *, gp_weight: float = 10.0, center: float = 1.0, lazy_gp: int = 0,
                 mode: str = "compile", amp="off", scaler: torch.amp.GradScaler | None = None,
                 impl: str = "auto", concat: bool | None = None, verify: bool = True,
                 rtol: float | None = None, quiet: bool = False):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if lazy_gp < 0:
            raise ValueError(f"lazy_gp must be >= 0, got {lazy_gp}")
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight}")
        self.loss_fn = _resolve_loss(loss)
        self.gp_weight, self.center = float(gp_weight), float(center)
        self.every = max(int(lazy_gp), 1)
        self.use_gp = bool(self.loss_fn.uses_gp and gp_weight > 0)
        self.amp_dtype = _amp_dtype(amp)
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.impl = impl
        self.concat = concat
        self.verify = verify
        self.rtol = rtol
        self.quiet = quiet
        self.autocast_cache = True  # off inside CUDA graphs (cuda_graphs.py)
        self.requested_mode = mode
        self.mode = mode
        self.fallback_reason: str | None = None
        self.compile_time_s: float = 0.0       # first compiled call(s), verification included
        self.verify_max_rel_diff: float | None = None
        self._verified = mode == "eager" or not verify
        self._compiled: Callable | None = None
        self._func_compiled: dict = {}
        if mode != "eager":
            why = self._unsupported_reason()
            if why:
                self._fall_back(why)

    # -- set-up ----------------------------------------------------------------------
    def _unsupported_reason(self) -> str | None:
        if self.amp_dtype is torch.float16:
            return "fp16 autocast needs the GradScaler penalty recipe, which runs eagerly"
        if self.mode == "compile" and self.use_gp and not has_trace_autograd_ops():
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

    def _concat(self, critic) -> bool:
        return (not has_batch_norm(critic)) if self.concat is None else bool(self.concat)

    def _body_kwargs(self, critic, use_gp: bool, weight: float) -> dict:
        return dict(loss_fn=self.loss_fn, weight=weight, center=self.center, use_gp=use_gp,
                    concat=self._concat(critic), amp_dtype=self.amp_dtype,
                    cache=self.autocast_cache)

    def _get_compiled(self):
        if self._compiled is None:
            if self.use_gp:
                # Global switch, read whenever dynamo (re)traces; it only changes how
                # autograd.grad inside a compiled region is handled.
                torch._dynamo.config.trace_autograd_ops = True
            self._compiled = torch.compile(_objective_body, fullgraph=True, dynamic=False)
        return self._compiled

    # -- the objective ---------------------------------------------------------------
    def __call__(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                 step_index: int = 0, alpha: torch.Tensor | None = None):
        if real.shape != fake.shape:
            raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} "
                             f"and {tuple(fake.shape)}")
        if fake.dtype != real.dtype:  # e.g. a generator run under autocast
            fake = fake.to(real.dtype)
        gp_now = self.use_gp and step_index % self.every == 0
        weight = self.gp_weight * self.every
        if gp_now and alpha is None:
            alpha = draw_alpha(real.shape[0], real.device)
        if not self._verified:
            self.verify_against_eager(critic, real, fake, alpha if gp_now else None)
        if self.mode == "eager":
            return self._eager(critic, real, fake, gp_now, weight, alpha)
        x_hat = interpolate_leaf(real, fake, alpha, self.impl) if gp_now else None
        if self.mode == "func":
            return self._func_call(critic, real, fake, x_hat, gp_now, weight)
        return self._get_compiled()(critic, real, fake, x_hat,
                                    **self._body_kwargs(critic, gp_now, weight))

    def _eager(self, critic, real, fake, gp_now, weight, alpha):
        with torch.autocast(real.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None, cache_enabled=self.autocast_cache):
            real_out, fake_out = _critic_scores(critic, real, fake, self._concat(critic))
            loss, stats = self.loss_fn.critic(real_out, fake_out)
            if not gp_now:
                return loss, stats
            gp = pyfast_gan.gradient_penalty(critic, real, fake, weight=weight,
                                             center=self.center, alpha=alpha,
                                             scaler=self.scaler, impl=self.impl)
        stats = dict(stats)
        stats["gp"] = gp.detach() / weight if weight else gp.detach()
        return loss + gp, stats

    def _reference_eager(self, critic, real, fake, gp_now, weight, alpha):
        x_hat = interpolate_leaf(real, fake, alpha, "reference") if gp_now else None
        return _objective_body(critic, real, fake, x_hat,
                               **self._body_kwargs(critic, gp_now, weight))

    # -- torch.func mode -------------------------------------------------------------
    def _func_call(self, critic, real, fake, x_hat, gp_now, weight):
        from torch.func import functional_call, grad_and_value

        names = [n for n, p in critic.named_parameters() if p.requires_grad]
        params = {n: p.detach() for n, p in critic.named_parameters() if p.requires_grad}
        buffers = dict(critic.named_buffers())
        kw = self._body_kwargs(critic, gp_now, weight)
        key = (id(critic), gp_now, weight)
        fn = self._func_compiled.get(key)
        if fn is None:
            if has_batch_norm(critic):
                raise RuntimeError("mode='func' does not support batch norm critics "
                                   "(running statistics are mutated in place)")

            def loss_of_params(p, real, fake, x_hat):
                def critic_fn(x):
                    return functional_call(critic, (p, buffers), (x,))

                if not kw["use_gp"]:
                    with torch.autocast(real.device.type, dtype=kw["amp_dtype"] or torch.float32,
                                        enabled=kw["amp_dtype"] is not None):
                        r, f = _critic_scores(critic_fn, real, fake, kw["concat"])
                        loss, stats = kw["loss_fn"].critic(r, f)
                    return loss, stats
                from torch.func import grad as fgrad

                with torch.autocast(real.device.type, dtype=kw["amp_dtype"] or torch.float32,
                                    enabled=kw["amp_dtype"] is not None):
                    r, f = _critic_scores(critic_fn, real, fake, kw["concat"])
                    loss, stats = kw["loss_fn"].critic(r, f)
                g = fgrad(lambda x: critic_fn(x).float().sum())(x_hat)
                norm = g.float().flatten(1).square().sum(1).add(_GP_EPS).sqrt()
                gp = (norm - kw["center"]).square().mean()
                stats = dict(stats)
                stats["gp"] = gp.detach()
                stats["grad_norm_x_hat"] = norm.mean().detach()
                return loss + kw["weight"] * gp, stats

            fn = torch.compile(grad_and_value(loss_of_params, has_aux=True), fullgraph=True,
                               dynamic=False)
            self._func_compiled[key] = fn
        xh = x_hat.detach() if x_hat is not None else None
        grads, (loss, stats) = fn(params, real, fake, xh)
        plist = [dict(critic.named_parameters())[n] for n in names]
        out = _InjectGrads.apply(loss, *plist, *[grads[n] for n in names])
        return out, stats

    # -- verification ----------------------------------------------------------------
    def verify_against_eager(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                             alpha: torch.Tensor | None = None) -> dict:
        """Compare the compiled objective's parameter gradients with eager's on a copy of
        the critic (the caller's critic, its gradients and buffers are left untouched).

        Falls back to eager, with one message, when compiling fails or the gradients differ
        by more than ``rtol`` (relative to each gradient's largest entry; default 1e-3 in
        fp32; under bf16 twice eager bf16's own difference from fp32). Returns a dict: ok, mode, max_rel_diff, compile_time_s.
        """
        self._verified = True
        if self.mode == "eager":
            return {"ok": True, "mode": "eager", "max_rel_diff": 0.0, "compile_time_s": 0.0}
        rtol = self.rtol if self.rtol is not None else 1e-3
        if self.use_gp and alpha is None:
            alpha = draw_alpha(real.shape[0], real.device)
        twin = copy.deepcopy(critic)

        def grads_of(run) -> tuple[list[torch.Tensor], torch.Tensor]:
            twin.load_state_dict(critic.state_dict())  # same buffers before each run
            for p in twin.parameters():
                p.grad = None
            loss, _ = run()
            loss.float().backward()
            return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                    for p in twin.parameters()], loss.detach().float()

        weight = self.gp_weight * self.every
        saved_amp = self.amp_dtype
        try:  # the fp32 eager gradients are the reference in every case
            self.amp_dtype = None
            ref_grads, ref_loss = grads_of(
                lambda: self._reference_eager(twin, real, fake, self.use_gp, weight, alpha))
        finally:
            self.amp_dtype = saved_amp
        if self.amp_dtype is not None:
            # Low precision: no worse than 2x PyTorch's own eager error at the same dtype
            # (flash-attention's criterion), with rtol as a floor.
            amp_grads, amp_loss = grads_of(
                lambda: self._reference_eager(twin, real, fake, self.use_gp, weight, alpha))
            rtol = max(rtol, 2.0 * _rel_diff(amp_grads, amp_loss, ref_grads, ref_loss))
        t0 = time.perf_counter()
        try:
            if self.mode == "func":
                x_hat = interpolate_leaf(real, fake, alpha, self.impl) if self.use_gp else None
                got, got_loss = grads_of(
                    lambda: self._func_call(twin, real, fake, x_hat, self.use_gp, weight))
                self._func_compiled.clear()  # keyed by module: rebuilt for the real critic
            else:
                x_hat = interpolate_leaf(real, fake, alpha, self.impl) if self.use_gp else None
                got, got_loss = grads_of(lambda: self._get_compiled()(
                    twin, real, fake, x_hat, **self._body_kwargs(twin, self.use_gp, weight)))
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


def make_critic_objective(loss, gp_weight: float = 10.0, center: float = 1.0, *,
                          compile: bool = True, mode: str | None = None, **kwargs) -> CriticObjective:
    """Factory: ``compile=False`` gives the eager objective, ``compile=True`` the compiled
    one (``mode`` "compile" by default, or "func"). Other keyword arguments go to
    :class:`CriticObjective`."""
    if mode is None:
        mode = "compile" if compile else "eager"
    return CriticObjective(loss, gp_weight=gp_weight, center=center, mode=mode, **kwargs)


class GeneratorObjective:
    """``objective(generator, critic, z) -> (loss, stats)``: generator forward, critic
    forward and the generator loss, optionally compiled (plain ``torch.compile``: no double
    backward here). The critic's parameters should have ``requires_grad=False`` during the
    call so no critic weight gradients are computed."""

    def __init__(self, loss, *, compile: bool = False, amp="off",
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.loss_fn = _resolve_loss(loss)
        self.amp_dtype = _amp_dtype(amp)
        self.memory_format = memory_format
        self.compiled = bool(compile)
        self.autocast_cache = True
        self._fn = torch.compile(self._body, fullgraph=True, dynamic=False) if compile else self._body

    def _body(self, generator, critic, z, cache: bool = True):
        with torch.autocast(z.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None, cache_enabled=cache):
            fake = generator(z)
            if fake.dim() == 4:
                fake = fake.contiguous(memory_format=self.memory_format)
            return self.loss_fn.generator(critic(fake))

    def __call__(self, generator, critic, z):
        return self._fn(generator, critic, z, self.autocast_cache)
