"""The dataset types every image source returns, the error a bad data path raises, and the
argument checks every source's constructor makes.

An :class:`ImageDataset` yields uint8 (C, S, S) images already resized and center-cropped
to S = ``image_size``; C = ``channels`` is 1 or 3.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset


class DataError(ValueError):
    """A data path or format that cannot give training images; the message says why."""


def check_size_channels(image_size, channels) -> None:
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")


def check_crop_max_images(crop: int, max_images: int) -> None:
    """--crop and --max-images: 0 (off) or positive."""
    if crop < 0 or max_images < 0:
        raise DataError(f"crop and max_images must be >= 0, got {crop} and {max_images}")


class ImageDataset(Dataset):
    """Images as uint8 (C, H, W) tensors, already resized and center-cropped to
    image_size x image_size. Attributes: channels, image_size, num_skipped, source."""

    channels: int
    image_size: int
    num_skipped: int = 0
    source: str = ""

    def __len__(self) -> int:  # pragma: no cover - subclasses
        raise NotImplementedError

    def __getitem__(self, i: int) -> torch.Tensor:  # pragma: no cover - subclasses
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(source={self.source!r}, n={len(self)}, channels={self.channels}, "
            f"image_size={self.image_size}, skipped={self.num_skipped})"
        )


class TensorImageDataset(ImageDataset):
    """An ImageDataset held in memory as one uint8 (N, C, S, S) tensor (MNIST, CIFAR-10,
    digits: small enough to decode and resize once, in bulk)."""

    def __init__(self, images: torch.Tensor, source: str = ""):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[2] != images.shape[3]:
            raise ValueError(f"images must be uint8 (N, C, S, S), got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise DataError(f"no images in {source or 'the given tensor'}")
        self.images = images.contiguous()
        self.channels = int(images.shape[1])
        self.image_size = int(images.shape[2])
        self.num_skipped = 0
        self.source = source

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]
