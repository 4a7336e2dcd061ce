"""Training data: image folders, LMDBs of encoded images (LSUN), MNIST IDX, CIFAR-10 batches,
the embedded labelled sets (digits, mnist), toy 2-D; decoded once into a memory-mapped cache (cache.py).

Image sources give uint8 (C, S, S) tensors; :func:`to_float` maps them to [-1, 1]. What
each format of a data PATH is (detection, opening, defaults, cache fingerprint) is one
record of :data:`~.formats.FORMATS`.
"""
from __future__ import annotations

from pathlib import Path

from .cifar import cifar10_dataset
from .dataset import DataError, ImageDataset, TensorImageDataset, check_crop_max_images
from .decode import decode_all
from .digits import digits_dataset
from .embedded import EMBEDDED_DATA, embedded_labelled
from .formats import DATA_FORMATS, check_format, detect_format, format_of
from .images import IMAGE_EXTENSIONS, ImageFolderDataset, load_image
from .lmdb_images import LMDBDataset
from .mnist import mnist_dataset, read_idx
from .toy import TOY_DATASETS, ToySampler
from .transforms import to_float


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
    folder holding data.mdb), else an image folder (:func:`detect_format`). ``image_size``
    and ``channels`` default to the format's record (:data:`~.formats.FORMATS`): 32 (digits,
    mnist, cifar10) or 64 (folders, lmdb), and the data's own channels (1 for digits/mnist,
    3 for cifar10/folders/lmdb). ``crop`` > 0: center crop to crop x crop
    before the resize; ``max_images`` > 0: the first N images only.
    """
    check_crop_max_images(crop, max_images)
    check_format(data_format)
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
    fmt = format_of(spec, data_format)
    return fmt.open(spec, image_size or fmt.image_size, channels or fmt.channels, progress=progress,
                    crop=crop, max_images=max_images)


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
