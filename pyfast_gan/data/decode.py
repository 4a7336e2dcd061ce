"""Decoding a whole dataset into memory (:func:`decode_all`): the path a run takes when its
images are not read from the data cache (``--data-cache off``, CoGAN's two domains, the
evaluator's reference images). Decoding into the cache file is :mod:`.decode_pool`."""
from __future__ import annotations

import warnings

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .dataset import DataError, ImageDataset, TensorImageDataset


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
    # than those of the same run reading its images from the data cache.
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
