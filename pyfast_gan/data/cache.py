"""The decoded-dataset cache: a data PATH (image folder, LMDB, MNIST, CIFAR-10) is decoded
once, in worker processes, into one uint8 file of N x C x S x S images plus a small JSON
index, under ``$PYFAST_GAN_CACHE/data`` (default ``~/.cache/pyfast_gan/data``). Later runs,
and every torchrun rank, open that file instead of decoding again (training batches are read
from it with ``pread``; whole-dataset readers get a memory map), so start-up time and
resident memory do not grow with the dataset.

The cache key hashes the settings (image size, channels, crop, max_images) with the content
fingerprint of the source's format (:data:`~.formats.FORMATS`; folder: every file's relative
path, size and mtime; LMDB: data.mdb's size and mtime and the record count; MNIST/CIFAR:
their files' sizes and mtimes), so a changed source or setting gets a new cache. An index is
trusted only when its data file has the exact size it records and the same checksum of 64
sampled blocks (a truncated or overwritten cache is rebuilt, with a message). Files are
written under a temporary name and renamed into place (data first, index last), one builder
at a time per key (a lock file; a second process waits, then opens what the first built).

Every byte trained on is checked: the data file ends with a CRC-32 of each image row,
computed by the decode workers, and the batch reader verifies each row it reads against it.
A row damaged outside the sampled blocks stops the run with one line and drops the index, so
the next start rebuilds the cache. Decode workers die with their parent (PR_SET_PDEATHSIG)
and never hold the build lock (a POSIX lock, not inherited by fork), so a builder killed
mid-build leaves nothing that blocks the next one.

The cache's view of a source (format, settings, fingerprint, key) is ``source.py``; decoding
into the file (in order, in forked workers) is ``decode_pool.py``; this module holds the file
format, its checks, the build lock and the readers.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
import warnings
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyfast_gan._paths import cache_dir

from .dataset import DataError
from .decode import first_failure
from .decode_pool import CRC as _CRC
from .decode_pool import decode_into as _decode_into
from .formats import FORMATS
from .source import CACHE_VERSION, Source, describe_source  # noqa: F401 - the cache's public names

DATA_CACHE_CHOICES = ("auto", "on", "off")
_SAMPLE_BLOCKS, _BLOCK = 64, 4096


class CacheUnavailable(DataError):
    """The cache folder cannot be created, locked or written: ``reason`` says why; the
    message adds the two ways around it. ``--data-cache auto`` decodes into memory instead."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"{reason}; use --data-cache off (decode into memory), or point "
                         "PYFAST_GAN_CACHE at a writable folder")


def cache_root() -> Path:
    """$PYFAST_GAN_CACHE/data, else $XDG_CACHE_HOME/pyfast_gan/data, else
    ~/.cache/pyfast_gan/data (the folder the digits classifier's cache lives in)."""
    return cache_dir() / "data"


def _checksum(path: Path, size: int) -> str:
    """sha256 of 64 blocks of 4 KiB spread over the file (and its last block): catches a file
    overwritten or cut by something other than this module without reading gigabytes."""
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        offsets = sorted({min(size - 1, size * k // _SAMPLE_BLOCKS) for k in range(_SAMPLE_BLOCKS)}
                         | {max(0, size - _BLOCK)}) if size else []
        for off in offsets:
            f.seek(off)
            h.update(f.read(_BLOCK))
    return h.hexdigest()


def _rows_nbytes(shape) -> int:
    n, c, s, _ = shape
    return n * c * s * s


def _read_crcs(path: Path, shape) -> np.ndarray:
    """The row CRC-32 table stored after the images."""
    return np.fromfile(path, _CRC, count=shape[0], offset=_rows_nbytes(shape))


def _paths(source: Source, root: Path) -> tuple[Path, Path, Path]:
    stem = source.stem()
    return root / f"{stem}.u8", root / f"{stem}.json", root / f"{stem}.lock"


def _check(source: Source, data: Path, index: Path) -> tuple[dict | None, str]:
    """(the index, "") when the cache for ``source`` is complete and intact, else (None, why)."""
    if not index.exists():
        return None, "missing"
    try:
        idx = json.loads(index.read_text())
        want = {"version": CACHE_VERSION, "key": source.key(), "fingerprint": source.fingerprint}
        if any(idx.get(k) != v for k, v in want.items()):
            return None, "its index belongs to another source or version"
        shape = idx["shape"]
        nbytes = _rows_nbytes(shape) + shape[0] * _CRC.itemsize
        have = data.stat().st_size if data.exists() else None
        if have != nbytes:
            return None, f"data file is {have} bytes, the index says {nbytes}"
        if _checksum(data, nbytes) != idx["checksum"]:
            return None, "data file does not match the index's checksum"
        if zlib.crc32(_read_crcs(data, shape)) != idx["rows_crc32"]:
            return None, "its table of row checksums does not match the index"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"unreadable index ({type(e).__name__}: {e})"
    return idx, ""


def _remove(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


@contextlib.contextmanager
def _lock(path: Path, say):
    """An exclusive lock on ``path``, held by one builder of a cache at a time, released by
    the kernel when the holder dies. A POSIX record lock (lockf), not flock: flock locks are
    shared with forked children, so decode workers outliving a killed trainer kept the lock
    and every later start waited forever; record locks belong to one process.
    The holder writes its PID into the file, for the waiting message."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            say(f"data cache: waiting for another process (PID {holder}) building {path.with_suffix('.u8').name}")
            fcntl.lockf(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _build(source: Source, data: Path, index: Path, num_workers: int, progress: bool, say) -> None:
    """Decode ``source`` into ``data`` and write ``index`` (caller holds the lock)."""
    for stale in data.parent.glob(data.name + ".tmp*"):  # left by a builder that died
        _remove(stale)
    tmp = data.with_name(f"{data.name}.tmp{os.getpid()}")
    tmp_index = index.with_name(f"{index.name}.tmp{os.getpid()}")
    t0 = time.perf_counter()
    try:
        ds = source.dataset(progress)
        with open(tmp, "wb") as f:
            n, crcs, skipped = _decode_into(f, ds, num_workers, progress)
            f.write(crcs.tobytes())
            f.flush()
            os.fsync(f.fileno())
        if n == 0:
            raise DataError(f"no readable images in {source.path!r}: all {len(skipped)} failed to decode "
                            f"({first_failure(skipped)})")
        if skipped:
            first = "; ".join(f"{d} ({e})" for d, e in skipped[:3])
            warnings.warn(f"skipped {len(skipped)} unreadable image(s) of {n + len(skipped)} while "
                          f"decoding {source.path}: {first}" + (" ..." if len(skipped) > 3 else ""),
                          stacklevel=3)
        shape = [n, source.channels, source.image_size, source.image_size]
        meta = {"version": CACHE_VERSION, "key": source.key(), "source": source.path, "kind": source.kind,
                "fingerprint": source.fingerprint, **source.settings(), "shape": shape,
                "num_items": n + len(skipped), "num_skipped": len(skipped),
                "skipped": [[d, e] for d, e in skipped[:1000]],
                "checksum": _checksum(tmp, n * (source.channels * source.image_size ** 2 + _CRC.itemsize)),
                "rows_crc32": zlib.crc32(crcs),
                "build_s": round(time.perf_counter() - t0, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp_index.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, data)          # data first: an index never points at a partial file
        os.replace(tmp_index, index)
    except OSError as e:
        what = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else (e.strerror or str(e))
        raise CacheUnavailable(f"cannot build the data cache for {source.path!r} in {str(data.parent)!r}: "
                               f"{what}") from None
    finally:
        _remove(tmp, tmp_index)
    dt = time.perf_counter() - t0
    say(f"data cache: decoded {n} images of {source.path} in {dt:.1f} s ({n / max(dt, 1e-9):.0f} img/s) "
        f"into {data}")


def _drop_index(index: Path, checksum: str) -> bool:
    """Remove ``index`` if it still describes the damaged file (its sampled checksum is
    ``checksum``), so the next start rebuilds; a newer build's index is left alone."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(index.read_text()).get("checksum") == checksum:
            index.unlink()
            return True
    return False


class CacheRows:
    """Batches read from the cache file with ``pread``: each image is copied from the page
    cache straight into the batch's own (optionally pinned) buffer, so no page of the file is
    mapped into the process. Gathering through the memory map instead leaves every page it
    touched (and the kernel's read-around) resident, which grows with the dataset.

    ``crcs``: each row's CRC-32 (the table the cache file ends with); every row read is
    checked against it, so no damaged byte reaches a batch. ``index``/``checksum``: the
    cache's index and its sampled checksum, dropped on damage so the next start rebuilds."""

    def __init__(self, path: Path, shape, crcs: np.ndarray | None = None, index: Path | None = None,
                 checksum: str = ""):
        self.path, self.shape = Path(path), tuple(int(s) for s in shape)
        self.row = int(np.prod(self.shape[1:]))
        self.crcs = crcs  # a uint32 array: 4 bytes an image (a list of ints would take 36)
        self.index, self.checksum = index, checksum
        self.fd = os.open(self.path, os.O_RDONLY)
        self._close = weakref.finalize(self, os.close, self.fd)

    def gather(self, idx: torch.Tensor, pin: bool = False) -> torch.Tensor:
        """uint8 (len(idx), C, S, S): the rows ``idx`` of the file, in that order, each
        verified against its CRC-32 (DataError on a mismatch)."""
        out = torch.empty((idx.numel(),) + self.shape[1:], dtype=torch.uint8, pin_memory=pin)
        buf = out.numpy()
        crcs = self.crcs
        for j, i in enumerate(idx.tolist()):
            if os.preadv(self.fd, [buf[j]], i * self.row) != self.row:
                raise DataError(f"data cache {self.path} is shorter than its index says "
                                f"(image {i} of {self.shape[0]}); delete it to rebuild")
            if crcs is not None and zlib.crc32(buf[j]) != int(crcs[i]):
                self._damaged(i)
        return out

    def verify_all(self, chunk: int = 4096) -> None:
        """Check every row (DataError on the first damaged one), for a reader about to use
        the whole file at once (the dataset copied to the GPU whole)."""
        n = self.shape[0]
        for s in range(0, n, chunk):
            self.gather(torch.arange(s, min(s + chunk, n)))

    def _damaged(self, i: int):
        dropped = self.index is not None and _drop_index(self.index, self.checksum)
        raise DataError(f"data cache {self.path} is damaged: image {i} of {self.shape[0]} does not match "
                        "the checksum it was built with (the file changed on disk); "
                        + ("its index is removed, so the next run rebuilds it" if dropped
                           else "delete it to rebuild"))


@dataclass
class DataCache:
    """An opened cache: ``images`` is a uint8 (N, C, S, S) tensor over the memory-mapped file
    (copy-on-write: pages are read from the file on demand and shared by every process), for
    whole-dataset readers (the evaluator); ``rows`` reads training batches without the map."""

    data_path: Path
    index: dict
    images: torch.Tensor
    built: bool
    rows: CacheRows

    @property
    def num_skipped(self) -> int:
        return int(self.index.get("num_skipped", 0))


def _map(data: Path, index: Path, idx: dict, built: bool) -> DataCache:
    arr = np.memmap(data, dtype=np.uint8, mode="c", shape=tuple(idx["shape"]))
    rows = CacheRows(data, idx["shape"], _read_crcs(data, idx["shape"]), index, idx["checksum"])
    return DataCache(data, idx, torch.from_numpy(arr), built, rows)


def open_cache(source: Source, *, num_workers: int = 0, progress: bool = True, say=print,
               root: Path | None = None, build: bool = True) -> DataCache:
    """The cache for ``source``: opened when it exists and is intact, else built (under the
    lock; a process that finds another building waits and then opens its result). With
    ``build=False`` a missing cache is a DataError (torchrun ranks other than 0)."""
    root = Path(root) if root is not None else cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheUnavailable(f"cannot create the data cache folder {str(root)!r}: {e.strerror or e}") from None
    data, index, lock = _paths(source, root)
    idx, _ = _check(source, data, index)
    if idx is not None:
        return _map(data, index, idx, False)
    try:
        lock_cm = _lock(lock, say)
        lock_cm.__enter__()
    except OSError as e:
        raise CacheUnavailable(f"cannot lock the data cache {str(lock)!r}: {e.strerror or e}") from None
    try:
        idx, why = _check(source, data, index)
        if idx is not None:
            return _map(data, index, idx, False)
        if not build:
            raise DataError(f"the data cache for {source.path!r} was not built ({data}: {why})")
        if why != "missing":
            say(f"data cache: {data} is not usable ({why}); rebuilding it")
        _remove(index, data)
        _build(source, data, index, num_workers, progress, say)
        idx, why = _check(source, data, index)
        if idx is None:  # what was just written does not read back: never train on it
            raise DataError(f"the data cache {str(data)!r} just built does not verify ({why})")
        return _map(data, index, idx, True)
    finally:
        lock_cm.__exit__(None, None, None)


def open_shared(source: Source, *, rank: int, world: int, num_workers: int = 0, progress: bool = True,
                say=print, root: Path | None = None) -> DataCache:
    """open_cache under torchrun: rank 0 takes the build lock before the others pass a
    barrier, so they block on the lock (no collective timeout, however long the build takes)
    and then open the file rank 0 wrote; if rank 0 failed, they fail too instead of waiting."""
    if world == 1:
        return open_cache(source, num_workers=num_workers, progress=progress, say=say, root=root)
    import torch.distributed as dist

    root = Path(root) if root is not None else cache_root()
    if rank == 0:
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock_cm = _lock(_paths(source, root)[2], say)
            lock_cm.__enter__()
        except OSError as e:
            dist.barrier()
            raise CacheUnavailable(f"cannot lock the data cache in {str(root)!r}: {e.strerror or e}") from None
        dist.barrier()
        try:
            idx, why = _check(source, *_paths(source, root)[:2])
            if idx is None:
                if why != "missing":
                    say(f"data cache: {_paths(source, root)[0]} is not usable ({why}); rebuilding it")
                _remove(*_paths(source, root)[:2])
                _build(source, *_paths(source, root)[:2], num_workers, progress, say)
        finally:
            lock_cm.__exit__(None, None, None)
        out = open_cache(source, root=root, say=say, build=False)
        out.built = idx is None
    else:
        dist.barrier()
        out = open_cache(source, root=root, say=say, build=False)
    dist.barrier()  # every rank has its map before training starts
    return out


class TrainingImages:
    """The trainer's images, decided before any pixel is decoded: ``count`` (-1 when only
    decoding tells: MNIST/CIFAR through the cache), ``image_size`` and ``channels`` for the
    checks build() makes first, then :meth:`load` -> (uint8 (N, C, S, S) tensor, mapped).

    ``cache``: "on" caches every data PATH, "off" decodes into memory on every run, "auto"
    caches the formats whose record says so (``DataFormat.cached``: those decoded file by
    file, image folders and LMDB) and keeps the others (MNIST / CIFAR-10: bulk arrays,
    decoded in seconds) in memory, and decodes into memory when the cache folder cannot be
    written (one line says so). The embedded sets (digits,
    mnist) are never cached."""

    def __init__(self, spec: str, *, data_format: str = "auto", image_size: int | None = None,
                 channels: int | None = None, crop: int = 0, max_images: int = 0, cache: str = "auto",
                 progress: bool = True, root: Path | None = None):
        from . import EMBEDDED_DATA, open_dataset

        self.root = Path(root) if root is not None else None
        self.cache = cache

        if cache not in DATA_CACHE_CHOICES:
            raise DataError(f"data_cache must be one of {DATA_CACHE_CHOICES}, got {cache!r}")
        self.source, self.ds = None, None
        if cache != "off" and spec not in EMBEDDED_DATA:
            self.source = describe_source(spec, data_format, image_size, channels, crop, max_images)
            if cache == "auto" and not FORMATS[self.source.kind].cached:
                self.source = None
        if self.source is None:
            self.ds = open_dataset(spec, data_format=data_format, image_size=image_size, channels=channels,
                                   progress=progress, crop=crop, max_images=max_images)
            self.count, self.image_size, self.channels = len(self.ds), self.ds.image_size, self.ds.channels
        else:
            s = self.source
            if s.count < 0:  # MNIST / CIFAR-10: the index knows, else the arrays (needed to build)
                idx, _ = _check(s, *_paths(s, self.root or cache_root())[:2])
                s.count = idx["shape"][0] if idx is not None else len(s.dataset(progress))
            self.count, self.image_size, self.channels = s.count, s.image_size, s.channels

    def __len__(self) -> int:
        return self.count

    def load(self, *, num_workers: int = 0, progress: bool = True, say=print, rank: int = 0,
             world: int = 1, batch_size: int = 0) -> tuple[torch.Tensor, CacheRows | None]:
        """(images, rows): the decoded images, and the cache's batch reader when they are a
        memory map of the cache (None when they were decoded into memory).

        ``failed`` then holds how many files of the source did not decode (also set on the
        returned tensor as ``num_failed``, with ``source``, for the batcher's message). With
        ``batch_size`` > 0, fewer images left than one global batch (``batch_size`` x
        ``world``) is a DataError saying how many decoded and how many failed: the count
        checked before decoding included files that turned out unreadable."""
        images, rows, self.failed = self._load(num_workers, progress, say, rank, world)
        source = self.source.path if self.source is not None else self.ds.source
        if batch_size and images.shape[0] < batch_size * world:
            from .batch import too_few_images

            raise DataError(too_few_images(batch_size, world, images.shape[0], self.failed, source))
        if self.failed:  # a tensor takes attributes; the embedded sets' shared tensors are never marked
            images.num_failed, images.source = self.failed, source
        return images, rows

    def _load(self, num_workers, progress, say, rank, world):
        """(images, rows, files that did not decode)."""
        from . import decode_all

        def in_memory(ds):  # num_skipped: files whose header or pixels did not read
            return decode_all(ds, num_workers=num_workers, progress=progress), None, ds.num_skipped

        if self.source is None:
            return in_memory(self.ds)
        t0 = time.perf_counter()
        try:
            c = open_shared(self.source, rank=rank, world=world, num_workers=num_workers, progress=progress,
                            say=say, root=self.root)
        except CacheUnavailable as e:
            # torchrun ranks would each decide alone; they keep the error, which names the fixes
            if self.cache != "auto" or world > 1:
                raise
            say(f"data cache: {e.reason}; decoding into memory instead")
            return in_memory(self.source.dataset(progress))
        if not c.built:
            say(f"data cache: opened {c.data_path} ({c.images.shape[0]} images, {self.image_size}x"
                f"{self.image_size}) in {time.perf_counter() - t0:.2f} s"
                + (f"; {c.num_skipped} unreadable file(s) were skipped when it was built" if c.num_skipped else ""))
        return c.images, c.rows, c.num_skipped
