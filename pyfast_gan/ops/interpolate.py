"""Per-sample interpolation between real and fake samples (the WGAN-GP x_hat).

    x_hat[n] = alpha[n] * real[n] + (1 - alpha[n]) * fake[n],   alpha[n] ~ U[0, 1)

One alpha per sample (Gulrajani et al. 2017, Algorithm 1), never one per batch.
Math runs in fp32 (fp64 for fp64 inputs) and is rounded once to the input dtype.
``alpha`` is returned as an (N,) fp32 tensor (fp64 for fp64 inputs) and treated
as a constant: gradients flow to ``real`` and ``fake`` only.

``x_hat`` is an ordinary autograd result, not a leaf made for the penalty: it
requires grad exactly when ``real`` or ``fake`` does (with grad mode on), and its
backward sends ``alpha * g`` to ``real`` and ``(1 - alpha) * g`` to ``fake``. The
returned ``alpha`` never requires grad (a given one is detached). To differentiate a
critic at ``x_hat``, take ``x_hat.detach().requires_grad_(True)``, as
``gradient_penalty`` does.

Random alphas: "reference" and "cpu" draw them with ``torch.rand`` (``generator``
honoured); "cuda" and "triton" draw them inside the kernel from a Philox stream
(Triton's ``tl.rand``) keyed by a seed that ``torch.randint`` draws on the device
from ``generator``, so no extra launch and no host sync. Different impls therefore
draw different alphas for the same seed; with ``alpha`` given, every impl computes
the same x_hat (within the tolerance table).
"""
from __future__ import annotations

import torch

from .._families import family_of
from .._layout import acc_dtype as alpha_dtype, empty_in_kernel_layout
from ._dispatch import register

FAMILY = family_of("interpolate")


def reference(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The definition every kernel is tested against (alpha: (N,), or (N, 1, ...) shaped like
    ``real``)."""
    opm = alpha_dtype(real.dtype)
    # Casts and views only where needed: on a small critic each costs a visible share of
    # the step, and skipping them changes no value.
    a = alpha if alpha.dim() == real.dim() else alpha.view(-1, *([1] * (real.dim() - 1)))
    if a.dtype != opm:
        a = a.to(opm)
    if real.dtype == opm:
        return a * real + (1 - a) * fake
    return (a * real.to(opm) + (1 - a) * fake.to(opm)).to(real.dtype)


def _setup_context(ctx, inputs, output):
    if isinstance(output, tuple):  # interpolate_rand: alpha is an output
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])
    else:
        ctx.save_for_backward(inputs[2])


def _backward_with(backward_op):
    """The one backward of every impl's interpolate op: ``backward_op`` (the native or the
    Triton ``interpolate_backward``) sends alpha*g to real and (1-alpha)*g to fake."""

    def backward(ctx, grad_out, *_):
        (alpha,) = ctx.saved_tensors
        gr, gf = backward_op(grad_out, alpha)
        return (gr if ctx.needs_input_grad[0] else None), (gf if ctx.needs_input_grad[1] else None), None

    return backward


def _interpolate_fake(real, fake, alpha):
    return empty_in_kernel_layout(real)


def _interpolate_rand_fake(real, fake, seed):
    return empty_in_kernel_layout(real), real.new_empty((real.shape[0],), dtype=alpha_dtype(real.dtype))


def _interpolate_backward_fake(grad_out, alpha):
    return empty_in_kernel_layout(grad_out), empty_in_kernel_layout(grad_out)


native_ops, triton_ops, resolve_impl = register(
    "interpolate", FAMILY, triton="interpolate",
    fakes={"interpolate": _interpolate_fake, "interpolate_rand": _interpolate_rand_fake,
           "interpolate_backward": _interpolate_backward_fake},
    autograd=("interpolate", "interpolate_rand"), backward="interpolate_backward",
    backward_with=_backward_with, setup_context=_setup_context)


def check_samples(t, name: str = "real") -> None:
    """``t`` is a floating-point batch (N, ...) with N > 0 (the messages name it ``name``)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dim() < 2:
        raise ValueError(f"{name} must have a batch dim and at least one more dim (N, ...), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch (N = 0)")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")


def check_args(real, fake, alpha, generator) -> torch.Tensor | None:
    check_samples(real, "real")
    if not isinstance(fake, torch.Tensor):
        raise ValueError(f"fake must be a tensor, got {type(fake).__name__}")
    if fake.shape != real.shape:
        raise ValueError(f"fake must have the shape of real {tuple(real.shape)}, got {tuple(fake.shape)}")
    if fake.dtype != real.dtype:
        raise ValueError(f"fake must have the dtype of real ({real.dtype}), got {fake.dtype}")
    if fake.device != real.device:
        raise ValueError(f"fake must be on the device of real ({real.device}), got {fake.device}")
    n = real.shape[0]
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if torch.device(generator.device).type != real.device.type:
            raise ValueError(f"generator must be on the device of real ({real.device}), got {generator.device}")
    if alpha is None:
        return None
    if not isinstance(alpha, torch.Tensor):
        raise ValueError(f"alpha must be a tensor of shape ({n},) or None, got {type(alpha).__name__}")
    if alpha.dim() == 0 or alpha.shape[0] != n or any(s != 1 for s in alpha.shape[1:]):
        raise ValueError(f"alpha must have one value per sample, shape ({n},) or ({n}, 1, ...), "
                         f"got {tuple(alpha.shape)}")
    if not alpha.is_floating_point():
        raise ValueError(f"alpha must be a floating-point tensor, got {alpha.dtype}")
    if alpha.device != real.device:
        raise ValueError(f"alpha must be on the device of real ({real.device}), got {alpha.device}")
    # alpha is a constant of the penalty (see module doc), not a parameter.
    return alpha.detach().reshape(n).to(alpha_dtype(real.dtype))


def interpolate(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x_hat, alpha)`` with one ``alpha`` per sample (drawn from U[0, 1) if not given)."""
    a = check_args(real, fake, alpha, generator)
    if a is None and generator is not None and torch.compiler.is_compiling():
        # Dynamo cannot pass a torch.Generator into a graph, as an argument of torch.rand or
        # of a custom op (torch 2.14: "Failed to convert args/kwargs to proxy"). Under
        # fullgraph=True this error is shown in the debug context of dynamo's "Observed
        # exception"; without fullgraph the call runs eagerly, generator and all.
        raise ValueError("pyfast_gan: generator= cannot be used inside torch.compile (dynamo cannot pass a "
                         "torch.Generator into the graph); draw alpha outside the compiled function, "
                         "alpha = torch.rand(N, generator=g), and pass alpha=alpha, or leave out generator= "
                         "to draw from the global RNG")
    which = resolve_impl(impl, real.device.type)
    n = real.shape[0]
    if a is None and which in ("reference", "cpu"):
        a = torch.rand((n,), generator=generator, device=real.device, dtype=alpha_dtype(real.dtype))
    if which == "reference":
        return reference(real, fake, a), a
    ops = torch.ops.pyfast_gan
    if a is None:
        # The seed stays on the device: the kernel reads it, the host never does.
        seed = torch.randint(0, 2**62, (1,), generator=generator, device=real.device, dtype=torch.int64)
        if which == "triton":
            return ops.triton_interpolate_rand(real, fake, seed)
        return ops.interpolate_rand(real, fake, seed)
    if which == "triton":
        return ops.triton_interpolate(real, fake, a), a
    return ops.interpolate(real, fake, a), a


def interpolate_leaf(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor | None = None, *,
                     generator: torch.Generator | None = None, impl: str = "auto") -> torch.Tensor:
    """x_hat as a fresh leaf that requires grad: the point where a penalty differentiates the
    critic. Its values are :func:`interpolate`'s (same impl, alpha and generator, same draw).

    No graph to ``real`` or ``fake`` is recorded (the penalty's gradient reaches the critic's
    parameters only), so in eager mode the native and Triton kernels are called below autograd:
    their registered autograd wrapper would cost a few microseconds a call for nothing.
    Under torch.compile the registered ops are traced as they are."""
    if torch.compiler.is_compiling():
        x_hat, _ = interpolate(real.detach(), fake.detach(), alpha, generator=generator, impl=impl)
        return x_hat.detach().requires_grad_(True)
    a = check_args(real, fake, alpha, generator)
    which = resolve_impl(impl, real.device.type)
    if real.requires_grad or fake.requires_grad:
        real, fake = real.detach(), fake.detach()
    if which == "reference":
        if a is None:
            # Drawn in the broadcast shape: the same numbers as an (N,) draw, without a view.
            a = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), generator=generator, device=real.device,
                           dtype=alpha_dtype(real.dtype))
        return reference(real, fake, a).requires_grad_(True)
    if a is None and which == "cpu":
        a = torch.rand((real.shape[0],), generator=generator, device=real.device, dtype=alpha_dtype(real.dtype))
    ops = torch.ops.pyfast_gan
    with torch._C._AutoDispatchBelowAutograd():
        if a is None:
            seed = torch.randint(0, 2**62, (1,), generator=generator, device=real.device, dtype=torch.int64)
            x_hat = (ops.triton_interpolate_rand if which == "triton" else ops.interpolate_rand)(real, fake, seed)[0]
        else:
            x_hat = (ops.triton_interpolate if which == "triton" else ops.interpolate)(real, fake, a)
    return x_hat.requires_grad_(True)
