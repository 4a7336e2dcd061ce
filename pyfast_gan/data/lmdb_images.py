"""An LMDB of encoded images, the format LSUN ships (bedroom_train_lmdb/data.mdb: key ->
webp bytes), read with the ``lmdb`` package and decoded like folder files (load_image)."""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from .dataset import DataError, ImageDataset, check_size_channels
from .images import load_image


def is_lmdb(path: str | os.PathLike) -> bool:
    """True for a folder holding data.mdb (the layout ``lmdb.open(path)`` reads)."""
    p = Path(path)
    return p.is_dir() and (p / "data.mdb").is_file()


_ENVS: dict = {}  # (pid, real path) -> this process's environment of that LMDB


def _close_envs() -> None:
    """Close every environment this process holds, before it forks: py-lmdb refuses to open
    in a child an environment its parent had open ("already open in this process"), and an
    environment must not be used across a fork, so each worker opens its own after the fork
    (otherwise every record of a >64-record LMDB fails with 2+ decode workers). The parent
    reopens on its next read. LMDB is only read from one thread of a process here."""
    for key in [k for k in _ENVS if k[0] == os.getpid()]:
        _ENVS.pop(key).close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_close_envs)


def open_env(root: str | os.PathLike):
    """This process's read-only environment of ``root`` (opened once, no lock file written
    next to the data); DataError naming the path when the package is missing, the file is
    not a readable LMDB, or it is shorter than its header says (an interrupted copy: reading
    past its end would kill the process with SIGBUS)."""
    key = (os.getpid(), os.path.realpath(root))
    if key in _ENVS:
        return _ENVS[key]
    try:
        import lmdb
    except ImportError as e:
        raise DataError(f"reading the LMDB {str(root)!r} needs the lmdb package (pip install lmdb)") from e
    try:
        env = lmdb.open(str(root), readonly=True, lock=False, readahead=False, meminit=False, max_readers=256)
        # The last page in use is in the header; every page up to it must be in the file.
        need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        have = os.path.getsize(Path(root) / "data.mdb")
    except lmdb.Error as e:
        raise DataError(f"cannot read the LMDB {str(root)!r}: {type(e).__name__}: {e}") from e
    if have < need:
        env.close()
        raise DataError(f"the LMDB {str(root)!r} is truncated: data.mdb is {have} bytes, its header "
                        f"needs {need} (an interrupted copy?); copy it again")
    _ENVS[key] = env
    return env


def lmdb_entries(root: str | os.PathLike) -> int:
    """The number of records (from the database header, without reading them)."""
    return int(open_env(root).stat()["entries"])


class LMDBDataset(ImageDataset):
    """Images stored as encoded bytes in an LMDB, in key order; the first ``max_images``
    when > 0 (the WGAN paper's LSUN runs). Values that do not decode are skipped at decode
    time (decode_all, or the data cache's builder), like unreadable folder files."""

    def __init__(self, root: str | os.PathLike, image_size: int = 64, channels: int = 3, crop: int = 0,
                 max_images: int = 0):
        check_size_channels(image_size, channels)
        root = Path(root)
        if not root.exists():
            raise DataError(f"data path {str(root)!r} does not exist")
        if not is_lmdb(root):
            raise DataError(f"data path {str(root)!r} is not an LMDB folder (no data.mdb in it)")
        self.source = str(root)
        self.image_size, self.channels, self.crop = image_size, channels, crop
        self.num_skipped = 0
        env = open_env(root)
        try:
            import lmdb

            with env.begin() as txn:
                keys = []
                for k in txn.cursor().iternext(keys=True, values=False):
                    keys.append(bytes(k))
                    if max_images and len(keys) >= max_images:
                        break
        except lmdb.Error as e:
            raise DataError(f"cannot read the LMDB {str(root)!r}: {type(e).__name__}: {e}") from e
        if not keys:
            raise DataError(f"no images in the LMDB {str(root)!r} (it has no records)")
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> torch.Tensor:
        # a forked worker opens its own environment here (_close_envs)
        with open_env(self.source).begin() as txn:
            buf = txn.get(self.keys[i])
        if buf is None:
            raise KeyError(f"key {self.keys[i]!r} vanished")
        return load_image(io.BytesIO(buf), self.image_size, self.channels, self.crop)

    def describe(self, i: int) -> str:
        return f"{self.source} key {self.keys[i].decode(errors='replace')}"

    def _drop(self, indices: list[int]) -> None:
        gone = set(indices)
        self.keys = [k for j, k in enumerate(self.keys) if j not in gone]
