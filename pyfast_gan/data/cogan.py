"""CoGAN's second domain (Liu & Tuzel 2016, sec. 5): transformations of the embedded digits
(their negatives, their edge images) and the batcher of unpaired (A, B) batches.

The two domains come from disjoint halves of the data (a seeded split), as in the paper's
digit experiments, so the training data never holds a corresponding pair: the
correspondence CoGAN's samples show (pyfast_gan.metrics.cogan) is learned from the shared
weights alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .batch import ImageBatcher

# On the 3x3 morphological gradient of the [0, 1] image. The upscaled 8x8 digits are soft:
# at 0.5 their outlines break into fragments, at 0.3 they are closed (looked at, 32 px).
EDGE_THRESHOLD = 0.3


def negative(x: torch.Tensor) -> torch.Tensor:
    """The negative of images in [-1, 1] (1 - p for p in [0, 1]); its own inverse."""
    return -x


def edges(x: torch.Tensor) -> torch.Tensor:
    """Edge images of (N, C, H, W) images in [-1, 1]: the 3x3 morphological gradient
    (dilation - erosion) of p = (x + 1) / 2, thresholded (EDGE_THRESHOLD), in {-1, 1}."""
    p = (x.float() + 1) / 2
    grad = F.max_pool2d(p, 3, 1, 1) + F.max_pool2d(-p, 3, 1, 1)
    return (grad > EDGE_THRESHOLD).float() * 2 - 1


TRANSFORMS = {"negative": negative, "edges": edges}
DOMAINS = tuple(TRANSFORMS)


def _u8(fn, x: torch.Tensor) -> torch.Tensor:
    y = fn(x.float() / 127.5 - 1)
    return ((y + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def digit_domains(images_u8: torch.Tensor, domain: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) uint8 image sets: A the first half of a seeded permutation of ``images_u8``, B
    ``domain``'s transformation of the second half."""
    if domain not in TRANSFORMS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    perm = torch.randperm(images_u8.shape[0], generator=torch.Generator().manual_seed(seed))
    half = images_u8.shape[0] // 2
    a, b = images_u8[perm[:half].sort().values], images_u8[perm[half:].sort().values]
    return a, _u8(TRANSFORMS[domain], b)


class PairBatcher:
    """Batches of (N, 2C, H, W): an A batch and an *independent* B batch side by side in the
    channels (what :class:`pyfast_gan.models.CoGANCritic` takes). Two
    :class:`ImageBatcher` sharing one seeded generator, so the run's data RNG and the two
    positions (checkpointed) give the same batches on resume."""

    def __init__(self, a: ImageBatcher, b: ImageBatcher):
        if a.gen is not b.gen:
            raise ValueError("the two batchers must share one generator")
        self.a, self.b, self.gen = a, b, a.gen

    def next(self, batch_size: int) -> torch.Tensor:
        return torch.cat([self.a.next(batch_size), self.b.next(batch_size)], dim=1)

    def state_dict(self) -> dict:
        return {"kind": "pair", "a": self.a.state_dict(), "b": self.b.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        if s.get("kind") != "pair":
            raise ValueError("--resume: the checkpoint's data position is not a CoGAN pair of domains")
        self.a.load_state_dict(s["a"])
        self.b.load_state_dict(s["b"])


def cogan_domain(config: dict) -> str | None:
    """A CoGAN run's domain transformation ("negative", "edges") on the embedded digits, or
    None when domain B is a --data-b PATH (no known transformation between the two)."""
    return None if config.get("data_b") else config.get("cogan_domain", "negative")
