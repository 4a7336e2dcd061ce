"""A folder of images (recursive): jpg/jpeg/png/webp/bmp, decoded with pillow."""
from __future__ import annotations

import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .dataset import DataError, ImageDataset, check_size_channels

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _not_a_file(path: str) -> str | None:
    """None for a regular file (a symlink is followed), else what it is instead: a dangling
    link, a FIFO, a socket, a device, a folder. Opening a FIFO waits for a writer, so start-up
    hung on one with an image's name; a dangling link stopped the cache's fingerprint."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a symlink to a missing file" if os.path.islink(path) else "gone"
    except OSError as e:
        return f"not readable ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (any depth), sorted so runs are reproducible. Symlinked
    folders are followed once: the real tree is walked first, then each linked folder whose
    real path was not walked yet; the others (a loop such as ``sub/back -> ..``, a second
    link to one folder) are skipped, with one warning saying how many, instead of listing
    their images again (a loop would list a folder's images over and over).

    Only regular files are listed: a name with an image extension that is a dangling
    symlink, a FIFO, a socket or a device is skipped, with one warning naming them."""
    found, repeats, seen, odd = [], [], set(), []
    todo = [str(root)]  # the tree itself, then each symlinked folder met in it, in order
    while todo:
        top = todo.pop(0)
        real = os.path.realpath(top)
        if real in seen:
            repeats.append(os.path.relpath(top, root))
            continue
        seen.add(real)
        for dirpath, dirnames, filenames in os.walk(top):  # links are not descended into here
            dirnames.sort()
            for d in list(dirnames):
                p = os.path.join(dirpath, d)
                if os.path.islink(p):
                    dirnames.remove(d)
                    todo.append(p)
                elif (r := os.path.realpath(p)) in seen:  # inside a link, a folder walked already
                    dirnames.remove(d)
                    repeats.append(os.path.relpath(p, root))
                else:
                    seen.add(r)
            for f in filenames:
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    p = os.path.join(dirpath, f)
                    if (what := _not_a_file(p)) is None:
                        found.append(Path(p))
                    else:
                        odd.append((p, what))
    found.sort()
    if odd:
        odd.sort()
        shown = "; ".join(f"{p} ({what})" for p, what in odd[:3])
        warnings.warn(f"skipped {len(odd)} file(s) of {str(root)!r} with an image name that are not regular "
                      f"files: {shown}{' ...' if len(odd) > 3 else ''}; remove them or replace them with the "
                      "images", stacklevel=2)
    if repeats:
        warnings.warn(f"followed symlinks once: skipped {len(repeats)} folder(s) of {str(root)!r} that lead to "
                      f"a folder already listed ({', '.join(repeats[:3])}{' ...' if len(repeats) > 3 else ''})",
                      stacklevel=2)
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


# Pillow's integer modes wider than 8 bits: 16-bit gray PNGs open as "I;16" (older Pillow:
# "I"); the others are the same data in another byte order.
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit gray image -> 8-bit "L" (or "LA" when it has a transparent value), keeping
    the high byte of each value: v -> v >> 8, values outside 0..65535 clipped first.

    Pillow's own ``convert("L")`` clips these modes at 255 instead of scaling: 99.6% of
    a 0..65535 gradient came back as 255. The high byte is the rule Pillow
    itself applies when it opens 16-bit RGB and gray+alpha PNGs as 8-bit "RGB"/"RGBA",
    so a 16-bit picture gives the same 8 bits whether it is stored as gray or as colour.
    Other modes are returned unchanged."""
    if im.mode not in HIGH_BIT_DEPTH_MODES:
        return im
    v = np.asarray(im).astype(np.int64)  # any byte order -> native integers
    gray = Image.fromarray((np.clip(v, 0, 65535) >> 8).astype(np.uint8))
    t = im.info.get("transparency")
    if isinstance(t, int):  # a PNG tRNS value: that exact 16-bit value is transparent
        alpha = Image.fromarray(np.where(v == t, 0, 255).astype(np.uint8))
        return Image.merge("LA", (gray, alpha))
    return gray


def load_image(path, image_size: int, channels: int, crop: int = 0) -> torch.Tensor:
    """One file (a path or a binary file object, e.g. an LMDB value in a BytesIO) -> uint8
    (channels, S, S): EXIF-rotated, 16-bit gray reduced to 8 bits (:func:`to_8bit`),
    converted to RGB (or L), center-cropped to ``crop`` x ``crop`` when crop > 0 (the
    DCGAN/WGAN CelebA preprocessing; an image smaller than that is an error), shorter side
    resized to S (bicubic; pillow's filters antialias when shrinking), center-cropped."""
    mode = "RGB" if channels == 3 else "L"
    with Image.open(path) as im:
        if not crop:
            # JPEG: let the decoder shrink by a power of two first (never below S), much
            # faster for photos far larger than the training size. Not with --crop: the
            # crop box is in the original's pixels.
            im.draft(mode, (image_size, image_size))
        im = to_8bit(ImageOps.exif_transpose(im))
        if im.mode != mode:
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                # Transparent pixels over white, not over whatever colour they happen to hold.
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert(mode)
        if crop:
            w, h = im.size
            if w < crop or h < crop:
                raise ValueError(f"image {w}x{h} is smaller than --crop {crop}")
            left, top = (w - crop) // 2, (h - crop) // 2
            im = im.crop((left, top, left + crop, top + crop))
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
    Files whose header reads but whose pixels do not are found by :func:`decode_all`.

    ``crop``: center crop before the resize (:func:`load_image`); ``max_images``: only the
    first N files of the sorted listing (0 = all); ``files``: that listing, already made
    (the data cache's fingerprint walk), whose headers are then not read here: a bad file
    is skipped when it is decoded."""

    def __init__(self, root: str | os.PathLike, image_size: int = 64, channels: int = 3, progress: bool = True,
                 crop: int = 0, max_images: int = 0, files: list[Path] | None = None):
        check_size_channels(image_size, channels)
        root = Path(root)
        if not root.exists():
            raise DataError(f"data path {str(root)!r} does not exist")
        if not root.is_dir():
            raise DataError(f"data path {str(root)!r} is not a folder of images")
        self.source = str(root)
        self.image_size, self.channels, self.crop = image_size, channels, crop
        self.num_skipped = 0
        if files is not None:
            self.files = list(files)
            return
        files = list_images(root)
        if max_images:
            files = files[:max_images]
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
        return load_image(self.files[i], self.image_size, self.channels, self.crop)

    def describe(self, i: int) -> str:
        return str(self.files[i])

    def _drop(self, indices: list[int]) -> None:
        gone = set(indices)
        self.files = [f for j, f in enumerate(self.files) if j not in gone]
