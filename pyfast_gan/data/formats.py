"""The formats a data PATH can hold, one :class:`DataFormat` record each in :data:`FORMATS`:
how to recognise it, how to open it, its default image size and channels, the content
fingerprint the data cache keys on, and whether ``--data-cache auto`` caches it.

:func:`detect_format`, :func:`pyfast_gan.data.open_dataset`, the cache's
:func:`~.source.describe_source` and :class:`~.cache.TrainingImages` read this table and
nothing else about a format, so adding one is adding a record.

Detection (:func:`detect_format`): a file by its name, else by its first four bytes; a
folder by what it holds (data.mdb, CIFAR-10 batches, IDX files), else an image folder.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cifar import cifar10_dataset, find_cifar_batches
from .dataset import DataError, ImageDataset
from .images import IMAGE_EXTENSIONS, ImageFolderDataset, list_images
from .lmdb_images import LMDBDataset, is_lmdb, lmdb_entries
from .mnist import find_idx_images, mnist_dataset

# (path given, its resolved absolute path, max_images) -> (image count or -1 when only
# reading the arrays tells, fingerprint, the folder's file listing or None)
Fingerprint = Callable[[str, Path, int], "tuple[int, str, list | None]"]


def _never(_) -> bool:
    return False


@dataclass(frozen=True)
class DataFormat:
    """One data format. ``open(path, image_size, channels, *, progress, crop, max_images,
    files)`` returns its :class:`~.dataset.ImageDataset` (``files``: a folder's listing
    made by ``fingerprint``, used as is)."""

    name: str
    image_size: int                       # the side when --image-size is 0
    channels: int                         # the data's own channels (--channels 0)
    cached: bool                          # --data-cache auto caches it: decoded file by file, slow to redo
    open: Callable[..., ImageDataset]
    fingerprint: Fingerprint
    claims_folder: Callable[[Path], bool]
    claims_file_name: Callable[[str], bool] = _never      # the lower-cased file name
    claims_file_head: Callable[[bytes], bool] = _never    # the file's first 4 bytes


def _stat_digest(paths, root: Path | None = None) -> str:
    """sha256 over each file's name (relative to ``root``), size and mtime: changes when a
    file is added, removed, renamed or rewritten, without reading any pixel.

    Names are hashed as the file system's bytes (os.fsencode), so any name it allows can be
    cached: a name that is not UTF-8 reaches Python with surrogate escapes, which
    ``str.encode()`` refuses. A UTF-8 name gives the same bytes either way, so existing
    caches keep their keys."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as e:
            raise DataError(f"cannot read {str(p)!r} while fingerprinting the data: {e.strerror or e} "
                            "(did it change during start-up? rerun, or use --data-cache off)") from None
        name = Path(p).relative_to(root) if root is not None else p
        h.update(os.fsencode(name) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# --- an image folder: every file's relative path, size and mtime ---------------------------
def _open_folder(path, image_size, channels, *, progress=True, crop=0, max_images=0, files=None):
    return ImageFolderDataset(path, image_size, channels, progress=progress, crop=crop,
                              max_images=max_images, files=files)


def _folder_fingerprint(spec: str, root: Path, max_images: int):
    if not root.is_dir():
        raise DataError(f"data path {spec!r} is not a folder of images")
    files = list_images(root)[:max_images or None]
    if not files:
        raise DataError(f"no images in folder {spec!r} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})")
    return len(files), _stat_digest(files, root), files


# --- an LMDB of encoded images: data.mdb's size and mtime, and the record count -------------
def _open_lmdb(path, image_size, channels, *, progress=True, crop=0, max_images=0, files=None):
    return LMDBDataset(path, image_size, channels, crop=crop, max_images=max_images)


def _lmdb_fingerprint(spec: str, root: Path, max_images: int):
    if not is_lmdb(root):
        LMDBDataset(spec)  # raises the folder's DataError
    entries = lmdb_entries(root)
    if entries == 0:
        raise DataError(f"no images in the LMDB {spec!r} (it has no records)")
    count = min(entries, max_images) if max_images else entries
    return count, _stat_digest([root / "data.mdb"], root) + f":{entries}", None


# --- arrays (MNIST IDX, CIFAR-10 batches): their files' sizes and mtimes --------------------
def _arrays_fingerprint(found: list[Path], root: Path):
    base = root if root.is_dir() else root.parent
    return -1, _stat_digest(found, base), None  # -1: known once the arrays are read


def _open_mnist(path, image_size, channels, *, progress=True, crop=0, max_images=0, files=None):
    return mnist_dataset(path, image_size, channels, progress=progress, crop=crop, max_images=max_images)


def _mnist_fingerprint(spec: str, root: Path, max_images: int):
    found = find_idx_images(root)
    if not found:
        raise DataError(f"no IDX image file in {spec!r}")
    return _arrays_fingerprint(found[:1], root)


def _open_cifar10(path, image_size, channels, *, progress=True, crop=0, max_images=0, files=None):
    return cifar10_dataset(path, image_size, channels, progress=progress, crop=crop, max_images=max_images)


def _cifar10_fingerprint(spec: str, root: Path, max_images: int):
    found = find_cifar_batches(root)
    if not found:
        raise DataError(f"no CIFAR-10 python batches in {spec!r}")
    return _arrays_fingerprint(found, root)


# In the order --data-format lists them: the general case (a folder of images) first. A
# folder is detected from the last record back: an LMDB (data.mdb) whatever else it holds,
# CIFAR-10 batches before IDX files (torchvision keeps both under one root), an image folder
# when nothing else claims it. A file is tried in table order, by name, then by content.
FORMATS: dict[str, DataFormat] = {f.name: f for f in (
    DataFormat("folder", 64, 3, cached=True, open=_open_folder, fingerprint=_folder_fingerprint,
               claims_folder=lambda p: True),
    DataFormat("mnist", 32, 1, cached=False, open=_open_mnist, fingerprint=_mnist_fingerprint,
               claims_folder=lambda p: bool(find_idx_images(p)),
               claims_file_name=lambda name: "idx" in name and "ubyte" in name,
               claims_file_head=lambda head: len(head) == 4 and head[:2] == b"\0\0" and head[2] == 0x08),
    DataFormat("cifar10", 32, 3, cached=False, open=_open_cifar10, fingerprint=_cifar10_fingerprint,
               claims_folder=lambda p: bool(find_cifar_batches(p)),
               claims_file_name=lambda name: name.startswith(("data_batch", "test_batch")),
               claims_file_head=lambda head: head[:1] == b"\x80"),  # pickle protocol >= 2
    DataFormat("lmdb", 64, 3, cached=True, open=_open_lmdb, fingerprint=_lmdb_fingerprint,
               claims_folder=is_lmdb),
)}
DATA_FORMATS = ("auto", *FORMATS)  # the choices of --data-format


def check_format(data_format: str) -> None:
    if data_format not in DATA_FORMATS:
        raise DataError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")


def detect_format(path: str | Path) -> str:
    """'mnist', 'cifar10', 'lmdb' (a folder holding data.mdb) or 'folder' for an existing
    path (DataError otherwise)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {str(p)!r} does not exist")
    if not p.is_file():
        return next(f.name for f in reversed(FORMATS.values()) if f.claims_folder(p))
    name = p.name.lower()
    for f in FORMATS.values():
        if f.claims_file_name(name):
            return f.name
    with open(p, "rb") as fh:
        head = fh.read(4)
    for f in FORMATS.values():
        if f.claims_file_head(head):
            return f.name
    raise DataError(
        f"cannot tell the format of file {str(p)!r}: give a folder of images, an MNIST IDX "
        "file or a CIFAR-10 batch (or set data_format)"
    )


def format_of(spec, data_format: str = "auto") -> DataFormat:
    """The record of an existing data PATH: ``data_format``'s, or the detected one when it
    is "auto" (DataError when the path does not exist)."""
    name = detect_format(spec) if data_format == "auto" else data_format
    if not Path(spec).exists():
        raise DataError(f"data path {spec!r} does not exist")
    return FORMATS[name]
