"""What every data source shares: the error type, uint8 -> [-1, 1], the dataset base
classes, bulk resizing and decode_all."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


class DataError(ValueError):
    """A data path or format that cannot give training images; the message says why."""


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1] (x / 127.5 - 1): 0 -> -1, 255 -> 1."""
    if x.dtype != torch.uint8:
        raise ValueError(f"x must be a uint8 tensor, got {x.dtype}")
    return x.to(torch.float32).div_(127.5).sub_(1.0)


def check_size_channels(image_size, channels) -> None:
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")


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


def check_crop_max_images(crop: int, max_images: int) -> None:
    """--crop and --max-images: 0 (off) or positive."""
    if crop < 0 or max_images < 0:
        raise DataError(f"crop and max_images must be >= 0, got {crop} and {max_images}")


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


class _Safe(Dataset):
    """Wraps a lazily decoding dataset so a worker returns (index, image or None, error)
    instead of dying on the first corrupt file."""

    def __init__(self, ds: ImageDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        try:
            return i, self.ds[i], None
        except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file"
            return i, None, f"{type(e).__name__}: {e}"


def _as_list(batch):
    return batch


def first_failure(failures) -> str:
    """[(what, error), ...] -> the first as "the first, WHAT: ERROR", for a message saying
    that every image failed (the reason, e.g. an image smaller than --crop, is the fix)."""
    what, err = failures[0]
    return f"the first, {what}: {err}"


def decode_all(ds: ImageDataset, num_workers: int = 0, progress: bool = True) -> torch.Tensor:
    """Every image of ``ds`` as one uint8 (N, C, S, S) tensor, decoded once.

    In-memory datasets return their tensor. Lazy ones (folders) are decoded through a
    DataLoader with ``num_workers`` processes; files that fail to decode are dropped from
    ``ds``, added to ``ds.num_skipped`` and reported in one warning.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if isinstance(ds, TensorImageDataset):
        return ds.images
    n = len(ds)
    out = torch.empty((n, ds.channels, ds.image_size, ds.image_size), dtype=torch.uint8)
    ok = torch.zeros(n, dtype=torch.bool)
    failures: list[tuple[int, str]] = []
    # Its own generator: a DataLoader draws its workers' base seed from the global RNG
    # otherwise, and the models built after decoding would then start from other weights
    # than a run whose images come from the data cache (issue 14).
    loader = DataLoader(_Safe(ds), batch_size=32, num_workers=num_workers, collate_fn=_as_list,
                        generator=torch.Generator().manual_seed(0))
    with tqdm(total=n, desc="decoding images", unit="img", disable=not progress, leave=False) as bar:
        for batch in loader:
            for i, img, err in batch:
                if img is None:
                    failures.append((i, err))
                else:
                    out[i] = img
                    ok[i] = True
            bar.update(len(batch))
    # named before _drop renumbers the dataset
    named = [(getattr(ds, "describe", str)(i), e) for i, e in failures[:3]]
    if failures:
        first = "; ".join(f"{d} ({e})" for d, e in named)
        drop = getattr(ds, "_drop", None)
        if drop is not None:
            drop([i for i, _ in failures])
        ds.num_skipped += len(failures)
        warnings.warn(
            f"skipped {len(failures)} unreadable image(s) of {n} while decoding {ds.source}: {first}"
            + (" ..." if len(failures) > 3 else ""),
            stacklevel=2,
        )
    if not ok.any():
        raise DataError(f"no readable images in {ds.source}: all {n} files failed to decode "
                        f"({first_failure(named)})")
    return out[ok] if failures else out
