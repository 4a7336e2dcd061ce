"""Decoding a dataset into the cache file: in this process, or in forked worker processes
that die with their parent (PR_SET_PDEATHSIG: a trainer killed mid-build leaves no worker
behind), in source order, with a CRC-32 of each image row for the cache's
integrity check."""
from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import signal
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import torch
from tqdm.auto import tqdm

from .dataset import DataError, ImageDataset, TensorImageDataset

CRC = np.dtype("<u4")
_CHUNK = 64  # images per worker task: big enough to amortise the pickling, small for the bar


def row_crcs(images: np.ndarray) -> np.ndarray:
    """CRC-32 of each row (image) of a uint8 (N, ...) array, as little-endian uint32. zlib's
    CRC-32 runs at about 2.4 GB/s on one core here, 5 us per 64x64 RGB image, and releases the
    GIL, so the batch thread can check every image it reads."""
    return np.fromiter((zlib.crc32(r) for r in images), CRC, images.shape[0])


_WORKER_DS: ImageDataset | None = None
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies: a trainer killed during the
    build (kill -9, or SIGTERM from ``timeout``) must not leave decode workers running on.
    Elsewhere a no-op: orphaned workers may then linger, idle, but they never
    hold the build lock (see _lock), so no later start waits on them."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request was in place
        os._exit(1)


def _init_worker(ds: ImageDataset, parent: int) -> None:
    """A decode worker's set-up (in the worker only: one torch thread each, since the
    workers already use every core)."""
    global _WORKER_DS
    _die_with(parent)
    _WORKER_DS = ds
    torch.set_num_threads(1)


def _decode_range(bounds: tuple[int, int], ds: ImageDataset | None = None):
    """Images [start, stop) of ``ds`` (default: the worker's dataset) -> (uint8 array of the
    good ones, their row CRC-32s, [(index, error)] of the rest)."""
    ds = ds if ds is not None else _WORKER_DS
    start, stop = bounds
    out = np.empty((stop - start, ds.channels, ds.image_size, ds.image_size), np.uint8)
    k, bad = 0, []
    for i in range(start, stop):
        try:
            out[k] = ds[i].numpy()
            k += 1
        except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file"
            bad.append((i, f"{type(e).__name__}: {e}"))
    return out[:k], row_crcs(out[:k]), bad


def decode_into(f, ds: ImageDataset, num_workers: int, progress: bool) -> tuple[int, np.ndarray, list]:
    """Decode every image of ``ds`` in order into the open file ``f``; returns (images
    written, their row CRC-32s, [(description, error)] of the skipped ones)."""
    if isinstance(ds, TensorImageDataset):  # MNIST / CIFAR-10: decoded in bulk already
        arr = ds.images.contiguous().numpy()
        f.write(arr.tobytes())
        return len(ds), row_crcs(arr), []
    n = len(ds)
    ranges = [(s, min(s + _CHUNK, n)) for s in range(0, n, _CHUNK)]
    written, crcs, skipped = 0, [], []
    workers = max(1, min(num_workers or (os.cpu_count() or 1), len(ranges)))
    bar = tqdm(total=n, desc="building data cache", unit="img", disable=not progress, smoothing=0.1)
    with contextlib.ExitStack() as stack:
        stack.enter_context(bar)
        if workers == 1:  # in this process: _init_worker never runs here, so its torch thread count stays
            results = map(functools.partial(_decode_range, ds=ds), ranges)
        else:
            # fork: the workers inherit the dataset (a 3M-key LMDB listing is not pickled
            # per task); they decode with PIL and numpy only.
            pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init_worker,
                                       initargs=(ds, os.getpid()))
            # On an error or Ctrl-C, drop the chunks not started instead of decoding them all.
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            results = pool.map(_decode_range, ranges)  # in order: the cache keeps the source order
        try:
            for arr, crc, bad in results:
                f.write(arr.tobytes())
                crcs.append(crc)
                written += arr.shape[0]
                skipped += [(getattr(ds, "describe", str)(i), e) for i, e in bad]
                bar.update(arr.shape[0] + len(bad))
        except BrokenProcessPool:
            # A worker was killed (SIGKILL from the kernel's OOM killer, most often): each
            # holds a copy of what it decodes, so fewer workers need less memory.
            raise DataError(f"a decode worker died while building the data cache of "
                            f"{getattr(ds, 'source', '') or 'the data'} (killed by the system: memory may be "
                            f"short); rerun with --num-workers 1 (this build used {workers}); nothing of "
                            "it was kept") from None
    return written, np.concatenate(crcs) if crcs else np.empty(0, CRC), skipped
