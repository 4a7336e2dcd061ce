"""Generators and critics: DCGAN, the WGAN-GP paper's ResNet and toy MLPs, plus EMA."""
from __future__ import annotations

from torch import nn

from ._common import CRITIC_NORMS, IMAGE_SIZES, init_dcgan_weights
from .dcgan import DCGANCritic, DCGANGenerator
from .ema import EMA
from .mlp import MLPCritic, MLPGenerator
from .resnet import ResNetCritic, ResNetGenerator

ARCHS = ("dcgan", "resnet", "mlp")


def build_models(
    arch: str, image_size: int, channels: int, z_dim: int, critic_norm: str, data_kind: str
) -> tuple[nn.Module, nn.Module]:
    """(generator, critic) for a run. ``data_kind == "toy"`` (2-D points) always gives the
    MLPs, whatever ``arch`` says; image data cannot use the MLPs."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if data_kind == "toy":
        return MLPGenerator(z_dim=z_dim, out_dim=2), MLPCritic(in_dim=2)
    if arch == "mlp":
        raise ValueError("arch='mlp' is for 2-D toy data; use 'dcgan' or 'resnet' for images")
    if arch == "dcgan":
        return (
            DCGANGenerator(image_size, channels, z_dim=z_dim),
            DCGANCritic(image_size, channels, norm=critic_norm),
        )
    return (
        ResNetGenerator(image_size, channels, z_dim=z_dim),
        ResNetCritic(image_size, channels, norm=critic_norm),
    )


__all__ = [
    "ARCHS",
    "CRITIC_NORMS",
    "IMAGE_SIZES",
    "DCGANGenerator",
    "DCGANCritic",
    "ResNetGenerator",
    "ResNetCritic",
    "MLPGenerator",
    "MLPCritic",
    "init_dcgan_weights",
    "EMA",
    "build_models",
]
