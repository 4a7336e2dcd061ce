"""A folder of images (recursive): jpg/jpeg/png/webp/bmp, decoded with pillow."""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from ._common import DataError, ImageDataset, check_size_channels

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (any depth), sorted so runs are reproducible."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for f in filenames:
            if f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / f)
    found.sort()
    return found


def _header_ok(path: Path) -> str | None:
    """None when pillow recognises the file (reads the header only), else the error."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w < 1 or h < 1:
                return f"empty image {w}x{h}"
        return None
    except Exception as e:  # noqa: BLE001 - any reader failure means "skip this file"
        return f"{type(e).__name__}: {e}"


def load_image(path: Path | str, image_size: int, channels: int) -> torch.Tensor:
    """One file -> uint8 (channels, S, S): EXIF-rotated, converted to RGB (or L), shorter
    side resized to S (bicubic; pillow's filters antialias when shrinking), center-cropped."""
    mode = "RGB" if channels == 3 else "L"
    with Image.open(path) as im:
        # JPEG: let the decoder shrink by a power of two first (never below S), much faster
        # for photos far larger than the training size.
        im.draft(mode, (image_size, image_size))
        im = ImageOps.exif_transpose(im)
        if im.mode != mode:
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                # Transparent pixels over white, not over whatever colour they happen to hold.
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert(mode)
        w, h = im.size
        scale = image_size / min(w, h)
        nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        im = im.crop((left, top, left + image_size, top + image_size))
        arr = np.asarray(im, dtype=np.uint8)
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


class ImageFolderDataset(ImageDataset):
    """Lazily decoded image folder. Construction lists the files and reads each header
    (in threads); files pillow cannot identify are skipped and counted in one warning.
    Files whose header reads but whose pixels do not are found by :func:`decode_all`."""

    def __init__(self, root: str | os.PathLike, image_size: int = 64, channels: int = 3, progress: bool = True):
        check_size_channels(image_size, channels)
        root = Path(root)
        if not root.exists():
            raise DataError(f"data path {str(root)!r} does not exist")
        if not root.is_dir():
            raise DataError(f"data path {str(root)!r} is not a folder of images")
        self.source = str(root)
        self.image_size, self.channels = image_size, channels
        files = list_images(root)
        if not files:
            raise DataError(
                f"no images in folder {str(root)!r} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})"
            )
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
            errors = list(
                tqdm(
                    pool.map(_header_ok, files, chunksize=64),
                    total=len(files),
                    desc="checking images",
                    unit="img",
                    disable=not progress or len(files) < 5000,
                    leave=False,
                )
            )
        bad = [(f, e) for f, e in zip(files, errors) if e is not None]
        self.files = [f for f, e in zip(files, errors) if e is None]
        self.num_skipped = len(bad)
        if not self.files:
            raise DataError(f"no readable images in folder {str(root)!r}: all {len(bad)} files are corrupt or unreadable")
        if bad:
            shown = "; ".join(f"{f} ({e})" for f, e in bad[:3])
            warnings.warn(
                f"skipped {len(bad)} unreadable image file(s) of {len(files)} in {str(root)!r}: {shown}"
                + (" ..." if len(bad) > 3 else ""),
                stacklevel=3,
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_image(self.files[i], self.image_size, self.channels)

    def describe(self, i: int) -> str:
        return str(self.files[i])

    def _drop(self, indices: list[int]) -> None:
        gone = set(indices)
        self.files = [f for j, f in enumerate(self.files) if j not in gone]
