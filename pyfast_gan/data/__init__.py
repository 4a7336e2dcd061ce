"""Training data: image folders, LMDBs of encoded images (LSUN), MNIST IDX, CIFAR-10 batches,
the embedded labelled sets (digits, mnist), toy 2-D; decoded once into a memory-mapped cache (cache.py).

Image sources give uint8 (C, S, S) tensors; :func:`to_float` maps them to [-1, 1].
"""
from __future__ import annotations

from pathlib import Path

from ._common import DataError, ImageDataset, TensorImageDataset, check_crop_max_images, decode_all, to_float
from .cifar import cifar10_dataset, find_cifar_batches
from .digits import digits_dataset
from .embedded import EMBEDDED_DATA, embedded_labelled
from .images import IMAGE_EXTENSIONS, ImageFolderDataset, load_image
from .lmdb_images import LMDBDataset, is_lmdb
from .mnist import find_idx_images, mnist_dataset, read_idx
from .toy import TOY_DATASETS, ToySampler

DATA_FORMATS = ("auto", "folder", "mnist", "cifar10", "lmdb")


def detect_format(path: str | Path) -> str:
    """'mnist', 'cifar10', 'lmdb' (a folder holding data.mdb) or 'folder' for an existing
    path (DataError otherwise)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {str(p)!r} does not exist")
    if p.is_file():
        name = p.name.lower()
        if "idx" in name and "ubyte" in name:
            return "mnist"
        if name.startswith(("data_batch", "test_batch")):
            return "cifar10"
        with open(p, "rb") as f:
            head = f.read(4)
        if len(head) == 4 and head[:2] == b"\0\0" and head[2] == 0x08:
            return "mnist"
        if head[:1] == b"\x80":  # pickle protocol >= 2
            return "cifar10"
        raise DataError(
            f"cannot tell the format of file {str(p)!r}: give a folder of images, an MNIST IDX "
            "file or a CIFAR-10 batch (or set data_format)"
        )
    if is_lmdb(p):
        return "lmdb"
    if find_cifar_batches(p):
        return "cifar10"
    if find_idx_images(p):
        return "mnist"
    return "folder"


def open_dataset(
    spec: str,
    data_format: str = "auto",
    image_size: int | None = None,
    channels: int | None = None,
    progress: bool = True,
    crop: int = 0,
    max_images: int = 0,
) -> ImageDataset:
    """The image dataset named by ``spec``: an embedded set ("digits", "mnist": the name always
    means it, a folder of that name is "./mnist") or a PATH (DataError when it does not exist,
    is empty or holds no readable image).

    ``data_format`` "auto" detects MNIST IDX files, CIFAR-10 python batches, an LMDB (a
    folder holding data.mdb), else an image folder. ``image_size`` defaults to 32 (digits,
    mnist, cifar10) or 64 (folders, lmdb); ``channels`` to the data's own (1 for
    digits/mnist, 3 for cifar10/folders/lmdb). ``crop`` > 0: center crop to crop x crop
    before the resize; ``max_images`` > 0: the first N images only.
    """
    check_crop_max_images(crop, max_images)
    if data_format not in DATA_FORMATS:
        raise DataError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    if not isinstance(spec, (str, Path)) or str(spec) == "":
        raise DataError(f"data must be one of {', '.join(EMBEDDED_DATA)} or a path, got {spec!r}")
    spec = str(spec)
    if spec in TOY_DATASETS:
        raise DataError(f"{spec!r} is 2-D toy data, not images: use ToySampler({spec!r})")
    # A bare embedded name always means the embedded set; a folder of that name is "./NAME".
    if spec in EMBEDDED_DATA:
        if data_format != "auto":
            raise DataError(f"data {spec!r} is the embedded dataset; data_format must be 'auto', got {data_format!r}")
        if crop or max_images:
            raise DataError(f"--crop and --max-images apply to a data PATH, not to the embedded {spec!r}")
        return embedded_labelled(spec, image_size or 32, channels or 1)[0]
    fmt = detect_format(spec) if data_format == "auto" else data_format
    if not Path(spec).exists():
        raise DataError(f"data path {spec!r} does not exist")
    if fmt == "mnist":
        return mnist_dataset(spec, image_size or 32, channels or 1, progress=progress, crop=crop,
                             max_images=max_images)
    if fmt == "cifar10":
        return cifar10_dataset(spec, image_size or 32, channels or 3, progress=progress, crop=crop,
                               max_images=max_images)
    if fmt == "lmdb":
        return LMDBDataset(spec, image_size or 64, channels or 3, crop=crop, max_images=max_images)
    return ImageFolderDataset(spec, image_size or 64, channels or 3, progress=progress, crop=crop,
                              max_images=max_images)


__all__ = [
    "DATA_FORMATS",
    "EMBEDDED_DATA",
    "IMAGE_EXTENSIONS",
    "TOY_DATASETS",
    "DataError",
    "ImageDataset",
    "ImageFolderDataset",
    "LMDBDataset",
    "TensorImageDataset",
    "ToySampler",
    "cifar10_dataset",
    "decode_all",
    "detect_format",
    "digits_dataset",
    "embedded_labelled",
    "load_image",
    "mnist_dataset",
    "open_dataset",
    "read_idx",
    "to_float",
]
