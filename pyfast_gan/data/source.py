"""What the data cache knows of a data PATH before decoding anything: its format, settings,
image count and the format's content fingerprint (:data:`~.formats.FORMATS`), hashed with
the settings into the cache key."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .dataset import ImageDataset, check_crop_max_images, check_size_channels
from .embedded import EMBEDDED_DATA
from .formats import FORMATS, check_format, format_of

# 2: the data file ends with one little-endian CRC-32 per image row, so every row read for
# training is checked; a version-1 cache (without them) is rebuilt.
CACHE_VERSION = 2


@dataclass
class Source:
    """A data PATH as the cache sees it, described without decoding anything."""

    kind: str                     # its format: a key of FORMATS
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
        if self._ds is None:
            self._ds = FORMATS[self.kind].open(self.path, self.image_size, self.channels, progress=progress,
                                               crop=self.crop, max_images=self.max_images, files=self.files)
        return self._ds


def describe_source(spec: str, data_format: str = "auto", image_size: int | None = None,
                    channels: int | None = None, crop: int = 0, max_images: int = 0) -> Source | None:
    """The cache's view of a data PATH (None for the embedded sets, which are not cached).
    Cheap: lists and stats files, reads no pixels. DataError as open_dataset gives them."""
    if spec in EMBEDDED_DATA:
        return None
    check_format(data_format)
    check_crop_max_images(crop, max_images)
    fmt = format_of(spec, data_format)
    root = Path(spec).resolve()
    size, ch = image_size or fmt.image_size, channels or fmt.channels
    check_size_channels(size, ch)
    count, fp, files = fmt.fingerprint(spec, root, max_images)
    return Source(fmt.name, str(root), size, ch, crop, max_images, fp, count, files)
