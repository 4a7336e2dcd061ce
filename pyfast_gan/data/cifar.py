"""CIFAR-10 "python version" batches (cifar-10-batches-py/data_batch_1..5), from a local path."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .dataset import DataError, TensorImageDataset, check_size_channels
from .transforms import center_crop_uint8, convert_channels, resize_uint8

# The batches are pickles: allow only what a CIFAR batch needs (numpy arrays), so a
# hostile file cannot run code.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def load_cifar_batch(path: str | Path) -> np.ndarray:
    """uint8 (N, 3, 32, 32) images of one batch file (dict with b'data' (N, 3072))."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            d = _Unpickler(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any failure: not a readable batch
        raise DataError(f"{str(path)!r} is not a CIFAR-10 python batch: {type(e).__name__}: {e}") from e
    if not isinstance(d, dict) or b"data" not in d:
        raise DataError(f"{str(path)!r} is not a CIFAR-10 python batch (no b'data' key)")
    data = np.asarray(d[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{str(path)!r}: b'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if b"labels" in d and len(d[b"labels"]) != data.shape[0]:
        raise DataError(f"{str(path)!r}: {len(d[b'labels'])} labels for {data.shape[0]} images")
    # Rows are 1024 red, 1024 green, 1024 blue values, each 32x32 row-major.
    return data.reshape(-1, 3, 32, 32)


def find_cifar_batches(root: Path) -> list[Path]:
    """data_batch_* files (else test_batch) in ``root`` or root/cifar-10-batches-py."""
    if root.is_file():
        return [root]
    for d in (root, root / "cifar-10-batches-py"):
        batches = sorted(p for p in d.glob("data_batch_*") if p.is_file())
        if batches:
            return batches
        if (d / "test_batch").is_file():
            return [d / "test_batch"]
    return []


def cifar10_dataset(
    path: str | Path, image_size: int = 32, channels: int = 3, progress: bool = True, crop: int = 0,
    max_images: int = 0,
) -> TensorImageDataset:
    check_size_channels(image_size, channels)
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {str(path)!r} does not exist")
    files = find_cifar_batches(path)
    if not files:
        raise DataError(f"no CIFAR-10 python batches (data_batch_1 ... or test_batch) in {str(path)!r}")
    x = torch.from_numpy(np.concatenate([load_cifar_batch(f) for f in files])[:max_images or None])
    x = center_crop_uint8(x, crop, str(path))
    x = resize_uint8(convert_channels(x, channels), image_size, progress, desc="resizing CIFAR-10")
    return TensorImageDataset(x, source=str(files[0].parent if len(files) > 1 else files[0]))
