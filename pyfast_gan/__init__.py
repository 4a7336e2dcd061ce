"""pyfast_gan: fast, exact DCGAN / WGAN / WGAN-GP training and fused GAN kernels."""
from .ops.interpolate import interpolate
from .ops.gradient_norm_penalty import gradient_norm_penalty
from .ops.gradient_penalty import gradient_penalty
from .ops.r1_penalty import r1_penalty, r1_penalty_from_scores
from .ops.clip_weights import clip_weights_
from . import optim

__version__ = "0.1.0"
__all__ = [
    "interpolate",
    "gradient_norm_penalty",
    "gradient_penalty",
    "r1_penalty",
    "r1_penalty_from_scores",
    "clip_weights_",
    "optim",
    "__version__",
]
