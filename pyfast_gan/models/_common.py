"""Pieces shared by the image models: size checks, critic normalisation, DCGAN init."""
from __future__ import annotations

import math

import torch
from torch import nn

IMAGE_SIZES = (32, 64, 96, 128)
CRITIC_NORMS = ("batch", "layer", "instance", "none")


def check_image_args(image_size: int, channels: int, sizes=IMAGE_SIZES) -> None:
    if image_size not in sizes:
        raise ValueError(f"image_size must be one of {sizes}, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")


def check_model_args(image_size: int, channels: int, base: int, *, z_dim: int | None = None,
                     norm: str | None = None) -> None:
    """The constructor checks every image generator (z_dim given) and critic (norm given) shares."""
    check_image_args(image_size, channels)
    if norm is not None:
        check_norm(norm)
    if z_dim is not None and (z_dim < 1 or base < 1):
        raise ValueError(f"z_dim and base must be positive, got z_dim={z_dim}, base={base}")
    if base < 1:
        raise ValueError(f"base must be positive, got {base}")


def spatial_plan(image_size: int) -> tuple[int, int]:
    """(start, n_doublings): the smallest feature map and how many x2 steps reach image_size.

    96 = 3 * 2**5 (the anime-face size), so it starts from 3x3; the others from 4x4.
    """
    start = 3 if image_size % 3 == 0 else 4
    n = int(round(math.log2(image_size // start)))
    assert start * 2**n == image_size, image_size
    return start, n


def check_norm(norm: str) -> None:
    if norm not in CRITIC_NORMS:
        raise ValueError(f"norm must be one of {CRITIC_NORMS}, got {norm!r}")


def critic_norm(norm: str, channels: int) -> nn.Module:
    """Normalisation for a critic feature map.

    "layer" normalises each sample over (C, H, W) with a per-channel affine, as the WGAN-GP
    code's Layernorm([1, 2, 3]) does; GroupNorm(1, C) is exactly that and keeps channels_last.
    Batch norm makes each sample's score depend on the batch, which the gradient penalty
    (a per-sample gradient) forbids, so WGAN-GP presets use "layer".
    """
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    if norm == "instance":
        return nn.GroupNorm(channels, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {CRITIC_NORMS}, got {norm!r}")


_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
_WEIGHT_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


class LeakyReLU(nn.LeakyReLU):
    """``nn.LeakyReLU``, written without a mask when torch.compile traces it for the CPU.

    Eager it is ``nn.LeakyReLU`` itself (same op, same bits). Compiled for the CPU it is
    ``a*x + b*|x|`` with ``a = (1 + s)/2``, ``b = (1 - s)/2``: the same function, and the same
    derivative ``a + b*sgn(x)`` (``s`` below zero, ``1`` above), except at exactly ``x = 0``
    where it takes the mean of the two slopes. The reason is speed: for ``leaky_relu`` inductor
    keeps ``x > 0`` as a bool tensor for the backward, and its CPU kernels store and load bool
    tensors an order of magnitude slower than the arithmetic around them (measured on a 2-core
    AMX Xeon, 4M bf16 elements: ``x > 0`` compiled 28 ms, eager 3.7 ms; see
    ``benchmarks/results/profile_train_cpu_Intel_Xeon_after.md``). ``sgn(x)`` is a float, and
    the WGAN-GP critic step's double backward then stores no mask at all. CUDA keeps
    ``leaky_relu`` (Triton handles masks at full speed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() and x.device.type == "cpu":
            s = self.negative_slope
            return x * ((1 + s) / 2) + x.abs() * ((1 - s) / 2)
        return super().forward(x)


def conv2d_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` as im2col and one matrix product, in
    channels_last order: the zero-padded input seen as (N, H, W, C), its k*k strided windows
    stacked into an (N*Ho*Wo, k*k*C) matrix, times the weight as (k*k*C, C_out). Built from
    differentiable ops only (pad, slices, stack, matmul), so autograd gives the backward and the
    double backward; compiled, the windows' backward is one fused gather, not k*k scatters."""
    n, c, h, w = x.shape
    cout, _, kh, kw = weight.shape
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    xp = nn.functional.pad(x, (padding,) * 4).permute(0, 2, 3, 1)
    windows = [xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
               for i in range(kh) for j in range(kw)]
    cols = torch.stack(windows, dim=3).reshape(n * ho * wo, kh * kw * c)
    out = cols @ weight.permute(0, 2, 3, 1).reshape(cout, kh * kw * c).t()
    if bias is not None:
        out = out + bias
    return out.reshape(n, ho, wo, cout).permute(0, 3, 1, 2)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a CPU convolution of ``x`` computes in here (autocast's, when it is on)."""
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return x.dtype


class Conv2d(nn.Conv2d):
    """``nn.Conv2d``; compiled for the CPU in bf16, a layer with a small output (at most 4x4)
    and a long reduction (``C_in * k * k`` of at least 4,096) runs as :func:`conv2d_gemm`.

    Eager it is ``nn.Conv2d`` itself (same op, same bits). The reason is speed: oneDNN's bf16
    convolution backward is slow on such layers (the DCGAN-64 critic's 256 -> 512 layer, 8x8 ->
    4x4: its weight gradient at about 115 GFLOP/s where a matrix product of the same size runs
    near 1,000 on a 2-core AMX Xeon), and the WGAN-GP critic step differentiates it twice; as
    im2col and a GEMM, that layer's compiled step with the penalty's double backward took half
    the time (121 ms against 244 ms at batch 128, one thread). Wider maps lose (16x16: 178 ms
    against 158), so they keep oneDNN. The matrix product accumulates in fp32 like the
    convolution; the sums run in another order (bf16 rounding, within the bf16 tolerance)."""

    GEMM_MAX_OUT = 16       # output pixels (Ho * Wo)
    GEMM_MIN_REDUCTION = 4096  # C_in * kh * kw

    def uses_gemm(self, x: torch.Tensor) -> bool:
        if (isinstance(self.padding, str) or x.device.type != "cpu" or x.dim() != 4
                or _compute_dtype(x) != torch.bfloat16 or self.groups != 1 or self.dilation != (1, 1)
                or self.padding_mode != "zeros" or self.stride[0] != self.stride[1]
                or self.padding[0] != self.padding[1]):
            return False
        kh, kw = self.kernel_size
        h, w = x.shape[-2:]
        ho = (h + 2 * self.padding[0] - kh) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - kw) // self.stride[1] + 1
        return ho * wo <= self.GEMM_MAX_OUT and self.in_channels * kh * kw >= self.GEMM_MIN_REDUCTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() and self.uses_gemm(x):
            w, b = self.weight, self.bias
            if torch.is_autocast_enabled("cpu"):  # as autocast casts a convolution's operands
                x, w = x.to(torch.bfloat16), w.to(torch.bfloat16)
                b = None if b is None else b.to(torch.bfloat16)
            return conv2d_gemm(x, w, b, self.stride[0], self.padding[0])
        return super().forward(x)


@torch.no_grad()
def init_dcgan_weights(module: nn.Module) -> nn.Module:
    """DCGAN paper init (Radford et al. 2016, sec. 4): weights N(0, 0.02); norm scales
    N(1, 0.02); every bias 0. Draws from the global torch RNG, so seed first."""
    for m in module.modules():
        if isinstance(m, _WEIGHT_TYPES):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _NORM_TYPES):
            if getattr(m, "weight", None) is not None:
                nn.init.normal_(m.weight, 1.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    return module
