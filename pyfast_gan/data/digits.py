"""The embedded 8x8 digits (``--data digits``): scikit-learn's handwritten digits (UCI optdigits test set,
1,797 8x8 images, 10 classes), shipped inside scikit-learn, so no download."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dataset import TensorImageDataset, check_size_channels
from .transforms import convert_channels


def digits_labelled(image_size: int = 32, channels: int = 1) -> tuple[TensorImageDataset, torch.Tensor]:
    """((1797, channels, S, S) uint8 images, (1797,) int64 labels). The 0..16 ink counts are
    resized bicubically first and mapped to 0..255 after (clamped: bicubic overshoots), so 0
    stays black and full strokes reach 255, i.e. exactly -1 and 1 after to_float."""
    check_size_channels(image_size, channels)
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).to(torch.float32).unsqueeze(1)  # (1797, 1, 8, 8) in 0..16
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", align_corners=False, antialias=True)
    x = (x * (255.0 / 16.0)).round_().clamp_(0, 255).to(torch.uint8)
    return TensorImageDataset(convert_channels(x, channels), source="digits"), torch.from_numpy(d.target).long()


def digits_dataset(image_size: int = 32, channels: int = 1) -> TensorImageDataset:
    """The images of :func:`digits_labelled`."""
    return digits_labelled(image_size, channels)[0]
