"""Generators and critics: DCGAN, the WGAN-GP paper's ResNet, toy MLPs, BEGAN's auto-encoder
critic and CoGAN's coupled pair, plus EMA."""
from __future__ import annotations

from torch import nn

from ._common import CRITIC_NORMS, IMAGE_SIZES, init_dcgan_weights
from .began import BEGANCritic, BEGANGenerator
from .cogan import CoGANCritic, CoGANGenerator, DomainView, pairs_side_by_side
from .dcgan import DCGANCritic, DCGANGenerator
from .ema import EMA
from .mlp import MLPCritic, MLPGenerator
from .resnet import ResNetCritic, ResNetGenerator

ARCHS = ("dcgan", "resnet", "mlp", "began", "cogan")


def build_models(arch: str, *, image_size: int = 0, channels: int = 0, z_dim: int = 100, base: int = 64,
                 critic_norm: str = "layer", embed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(generator, critic) of a run: the one factory the trainer, ``python -m pyfast_gan.sample``
    and ``benchmarks/bench_train.py`` use.

    ``arch``: "dcgan" or "resnet" (images of ``image_size`` x ``channels``; ``base`` is the
    widest conv layer's channels), or "mlp" (2-D toy data; ``base`` hidden units); "began"
    (``base``: the paper's filters n, ``embed``: its embedding h, 0 = z_dim) or "cogan"
    (DCGAN networks of ``base`` coupled in pairs; the generator outputs 2 x ``channels``).
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if arch == "mlp":
        return MLPGenerator(z_dim=z_dim, out_dim=2, hidden=base), MLPCritic(in_dim=2, hidden=base)
    if arch == "began":
        return (BEGANGenerator(image_size, channels, z_dim=z_dim, base=base),
                BEGANCritic(image_size, channels, base=base, embed=embed or z_dim))
    if arch == "cogan":
        return (CoGANGenerator(image_size, channels, z_dim=z_dim, base=base),
                CoGANCritic(image_size, channels, base=base, norm=critic_norm))
    if arch == "dcgan":
        return (DCGANGenerator(image_size, channels, z_dim=z_dim, base=base),
                DCGANCritic(image_size, channels, base=base, norm=critic_norm))
    return (ResNetGenerator(image_size, channels, z_dim=z_dim, base=base),
            ResNetCritic(image_size, channels, base=base, norm=critic_norm))


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
    "BEGANGenerator",
    "BEGANCritic",
    "CoGANGenerator",
    "CoGANCritic",
    "DomainView",
    "pairs_side_by_side",
    "init_dcgan_weights",
    "EMA",
    "build_models",
]
