"""Whole-batch operations on uint8 (N, C, H, W) images: the map to [-1, 1] the models
train on, and the channel conversion, center crop and resize that the array sources
(MNIST, CIFAR-10, the embedded digits) apply in bulk. Each matches what the image-file
reader (:func:`~.images.load_image`) does to one file, so a dataset gives the same pixels
whether it is stored as arrays or as image files."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .dataset import DataError


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1] (x / 127.5 - 1): 0 -> -1, 255 -> 1."""
    if x.dtype != torch.uint8:
        raise ValueError(f"x must be a uint8 tensor, got {x.dtype}")
    return x.to(torch.float32).div_(127.5).sub_(1.0)


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) with C in {1, 3} -> `channels` channels. RGB -> L uses PIL's
    ITU-R 601-2 luma (0.299, 0.587, 0.114), rounded as PIL
    rounds it, so folders and arrays agree."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        # PIL's fixed-point form of the same weights (libImaging/Convert.c, L24 macro),
        # so a CIFAR image in gray equals the same image saved and read from a folder.
        w = torch.tensor([19595, 38470, 7471], dtype=torch.int64).view(1, 3, 1, 1)
        return (((x.to(torch.int64) * w).sum(1, keepdim=True) + 0x8000) >> 16).to(torch.uint8)
    raise ValueError(f"cannot convert {c} channels to {channels}")


def center_crop_uint8(x: torch.Tensor, crop: int, source: str = "") -> torch.Tensor:
    """uint8 (N, C, H, W) -> (N, C, crop, crop), the box :func:`~.images.load_image` crops
    (left = (W - crop) // 2, top = (H - crop) // 2); crop 0 returns x."""
    if not crop:
        return x
    h, w = x.shape[2], x.shape[3]
    if crop > min(h, w):
        raise DataError(f"--crop {crop} is larger than the {w}x{h} images of {source or 'the data'}")
    top, left = (h - crop) // 2, (w - crop) // 2
    return x[:, :, top:top + crop, left:left + crop].contiguous()


def resize_uint8(x: torch.Tensor, image_size: int, progress: bool = True, desc: str = "resizing") -> torch.Tensor:
    """uint8 (N, C, H, W) -> (N, C, S, S): shorter side to S (bicubic, antialiased when
    shrinking), then a center crop. Chunked so 60k images never need a big float copy."""
    n, c, h, w = x.shape
    if h == w == image_size:
        return x.contiguous()
    scale = image_size / min(h, w)
    nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    out = torch.empty((n, c, image_size, image_size), dtype=torch.uint8)
    chunk = 4096
    for s in tqdm(range(0, n, chunk), desc=desc, unit="chunk", disable=not progress or n <= chunk, leave=False):
        y = F.interpolate(
            x[s : s + chunk].float(), size=(nh, nw), mode="bicubic", align_corners=False, antialias=True
        )
        y = y[:, :, top : top + image_size, left : left + image_size]
        out[s : s + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out
