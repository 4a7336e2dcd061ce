"""What the data cache knows of a data PATH before decoding anything: its kind, settings,
image count and a content fingerprint (folder: every file's relative path, size and mtime;
LMDB: data.mdb's size and mtime and the record count; MNIST/CIFAR: their files' sizes and
mtimes), hashed with the settings into the cache key."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ._common import DataError, ImageDataset

# 2: the data file ends with one little-endian CRC-32 per image row (issue 22)
CACHE_VERSION = 2


@dataclass
class Source:
    """A data PATH as the cache sees it, described without decoding anything."""

    kind: str                     # folder | lmdb | mnist | cifar10
    path: str                     # absolute
    image_size: int
    channels: int
    crop: int
    max_images: int
    fingerprint: str
    count: int                    # images before any is skipped (files, records, array rows)
    files: list | None = field(default=None, repr=False)  # folder: the fingerprinted listing
    _ds: ImageDataset | None = field(default=None, repr=False)

    def settings(self) -> dict:
        return {"image_size": self.image_size, "channels": self.channels, "crop": self.crop,
                "max_images": self.max_images}

    def key(self) -> str:
        blob = json.dumps({"version": CACHE_VERSION, "kind": self.kind, "path": self.path,
                           "fingerprint": self.fingerprint, **self.settings()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def stem(self) -> str:
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(self.path).name)[:40]
        s = self.settings()
        return (f"{self.kind}-{name}-{s['image_size']}px-c{s['channels']}"
                + (f"-crop{self.crop}" if self.crop else "") + f"-{self.key()}")

    def dataset(self, progress: bool = True) -> ImageDataset:
        """The dataset to decode when building (folders: the fingerprinted file list as is)."""
        from . import open_dataset
        from .images import ImageFolderDataset

        if self._ds is None:
            if self.kind == "folder":
                self._ds = ImageFolderDataset(self.path, self.image_size, self.channels, crop=self.crop,
                                              files=self.files)
            else:
                self._ds = open_dataset(self.path, self.kind, self.image_size, self.channels,
                                        progress=progress, crop=self.crop, max_images=self.max_images)
        return self._ds


def _stat_digest(paths, root: Path | None = None) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        name = str(Path(p).relative_to(root)) if root is not None else str(p)
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def describe_source(spec: str, data_format: str = "auto", image_size: int | None = None,
                    channels: int | None = None, crop: int = 0, max_images: int = 0) -> Source | None:
    """The cache's view of a data PATH (None for the embedded sets, which are not cached).
    Cheap: lists and stats files, reads no pixels. DataError as open_dataset gives them."""
    from . import DATA_FORMATS, EMBEDDED_DATA, detect_format
    from ._common import check_crop_max_images, check_size_channels
    from .cifar import find_cifar_batches
    from .images import IMAGE_EXTENSIONS, list_images
    from .lmdb_images import LMDBDataset, is_lmdb, lmdb_entries
    from .mnist import find_idx_images

    if spec in EMBEDDED_DATA:
        return None
    if data_format not in DATA_FORMATS:
        raise DataError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    check_crop_max_images(crop, max_images)
    p = Path(spec)
    kind = detect_format(p) if data_format == "auto" else data_format
    if not p.exists():
        raise DataError(f"data path {spec!r} does not exist")
    root = p.resolve()
    size = image_size or (64 if kind in ("folder", "lmdb") else 32)
    ch = channels or (1 if kind == "mnist" else 3)
    check_size_channels(size, ch)
    files = None
    if kind == "folder":
        if not root.is_dir():
            raise DataError(f"data path {spec!r} is not a folder of images")
        files = list_images(root)[:max_images or None]
        if not files:
            raise DataError(f"no images in folder {spec!r} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})")
        count, fp = len(files), _stat_digest(files, root)
    elif kind == "lmdb":
        if not is_lmdb(root):
            LMDBDataset(spec)  # raises the folder's DataError
        entries = lmdb_entries(root)
        if entries == 0:
            raise DataError(f"no images in the LMDB {spec!r} (it has no records)")
        count = min(entries, max_images) if max_images else entries
        fp = _stat_digest([root / "data.mdb"], root) + f":{entries}"
    else:
        found = find_idx_images(root) if kind == "mnist" else find_cifar_batches(root)
        if not found:
            raise DataError(f"no {'IDX image file' if kind == 'mnist' else 'CIFAR-10 python batches'} in {spec!r}")
        found = found[:1] if kind == "mnist" else found
        base = root if root.is_dir() else root.parent
        count, fp = -1, _stat_digest(found, base)  # -1: known once the arrays are read
    return Source(kind, str(root), size, ch, crop, max_images, fp, count, files)
