"""The decoded-dataset cache: bit-exact round trips for folders, LMDB, MNIST and
CIFAR-10; rebuilds on a changed source or setting and on a damaged cache; one cache from
two concurrent builders; crop; batches from the map equal today's in-memory batches, in one
process, over two gloo processes and across a resume; errors name the path.

Issue 22: damage anywhere in the file is caught before it is trained on; a build leaves the
trainer's torch threads alone; a builder killed mid-build leaves no worker and no lock
behind; LMDB with several decode workers; a truncated LMDB; an unwritable cache folder."""
from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import pickle
import resource
import signal
import socket
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyfast_gan.data import DataError, decode_all, detect_format, load_image, open_dataset
from pyfast_gan.data import cache as cache_mod
from pyfast_gan.data.batch import ImageBatcher, MappedBatcher, peek
from pyfast_gan.data.cache import CacheRows, TrainingImages, describe_source, open_cache, open_shared


def _folder(root: Path, n: int = 10, seed: int = 0) -> Path:
    """Random RGB pictures of assorted sizes and formats, plus one corrupt file."""
    rng = np.random.default_rng(seed)
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 256, (30 + 3 * i, 40 + (i % 4) * 5, 3), dtype=np.uint8))
        if i % 3 == 0:
            img.save(root / "sub" / f"{i:03d}.jpg", quality=90)
        else:
            img.save(root / f"{i:03d}.png")
    (root / "broken.png").write_bytes(b"not a png at all" * 8)
    return root


def _direct(path, **kw) -> torch.Tensor:
    """Today's in-memory decoding (no cache)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return decode_all(open_dataset(str(path), **kw), progress=False)


def _open(path, root, *, size=32, channels=None, crop=0, max_images=0, fmt="auto", say=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = describe_source(str(path), fmt, size, channels, crop, max_images)
        return open_cache(src, root=root, progress=False, say=say or (lambda m: None), **kw)


def _write_idx(path, arr):
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
                     + arr.astype(np.uint8).tobytes())


def _write_cifar(path, data):
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": [0] * len(data)}, f, protocol=2)


def _lmdb(root: Path, blobs: list[bytes]) -> Path:
    lmdb = pytest.importorskip("lmdb")  # only the LMDB tests need the package

    env = lmdb.open(str(root), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, b in enumerate(blobs):
            txn.put(f"{i:08d}".encode(), b)
    env.close()
    return root


def _png_bytes(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# ---- round trips ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["folder", "mnist", "cifar10"])
def test_cache_round_trip_equals_direct_decoding(tmp_path, kind):
    rng = np.random.default_rng(1)
    if kind == "folder":
        src, kw = _folder(tmp_path / "imgs"), dict(image_size=32)
    elif kind == "mnist":
        src = tmp_path / "mnist"
        src.mkdir()
        _write_idx(src / "train-images-idx3-ubyte", rng.integers(0, 256, (9, 28, 28), dtype=np.uint8))
        kw = dict(image_size=32)
    else:
        src = tmp_path / "cifar"
        src.mkdir()
        _write_cifar(src / "data_batch_1", rng.integers(0, 256, (5, 3072), dtype=np.uint8))
        _write_cifar(src / "data_batch_2", rng.integers(0, 256, (4, 3072), dtype=np.uint8))
        kw = dict(image_size=32, channels=1)
    want = _direct(src, **kw)
    assert want.float().std() > 10  # random pictures, not a blank tensor
    root = tmp_path / "cache"
    first = _open(src, root, size=kw["image_size"], channels=kw.get("channels"))
    assert first.built and torch.equal(first.images, want)
    again = _open(src, root, size=kw["image_size"], channels=kw.get("channels"))
    assert not again.built and torch.equal(again.images, want)
    # one data file and one index, nothing temporary left over
    names = sorted(p.suffix for p in root.iterdir())
    assert names == [".json", ".lock", ".u8"]
    if kind == "folder":
        assert first.index["num_skipped"] == 1 and "broken.png" in first.index["skipped"][0][0]


def test_training_images_modes(tmp_path):
    """auto caches folders, keeps MNIST in memory; on caches MNIST; off never caches."""
    src = _folder(tmp_path / "imgs", n=6)
    mn = tmp_path / "mnist"
    mn.mkdir()
    _write_idx(mn / "train-images-idx3-ubyte", np.random.default_rng(2).integers(0, 256, (5, 28, 28), dtype=np.uint8))
    root = tmp_path / "cache"
    quiet = dict(say=lambda m: None, num_workers=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, mapped = TrainingImages(str(src), image_size=32, cache="auto", root=root, progress=False).load(**quiet)
        assert mapped and torch.equal(x, _direct(src, image_size=32))
        ti = TrainingImages(str(mn), cache="auto", root=root, progress=False)
        assert ti.ds is not None and not ti.load(**quiet)[1]
        ti = TrainingImages(str(mn), cache="on", root=root, progress=False)
        assert len(ti) == 5 and ti.load(**quiet)[1]
        ti = TrainingImages(str(mn), cache="on", root=root, progress=False)  # count from the index
        assert len(ti) == 5 and ti.source._ds is None
        assert not TrainingImages(str(src), image_size=32, cache="off", root=root, progress=False).load(**quiet)[1]


# ---- invalidation ---------------------------------------------------------------------------

def test_changed_source_or_setting_builds_a_new_cache(tmp_path):
    src = _folder(tmp_path / "imgs", n=8)
    root = tmp_path / "cache"
    base = _open(src, root)
    assert base.built

    def check(expect_built=True, **kw):
        c = _open(src, root, **kw)
        assert c.built == expect_built
        assert torch.equal(c.images, _direct(src, image_size=kw.get("size", 32), crop=kw.get("crop", 0)))
        return c

    # add a file
    Image.fromarray(np.full((33, 35, 3), 77, np.uint8)).save(src / "new.png")
    c = check()
    assert c.images.shape[0] == base.images.shape[0] + 1
    # modify a file's pixels (same name; a new size and mtime)
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (50, 50, 3), dtype=np.uint8)).save(src / "001.png")
    check()
    # remove a file
    (src / "002.png").unlink()
    c = check()
    assert c.images.shape[0] == base.images.shape[0]
    # unchanged source: opened, not built
    check(expect_built=False)
    # other settings: size, crop
    check(size=64)
    check(crop=28)
    assert len(list(root.glob("*.u8"))) == 6


def test_damaged_cache_is_rebuilt_with_a_message(tmp_path):
    src = _folder(tmp_path / "imgs", n=6)
    root = tmp_path / "cache"
    want = _open(src, root).images.clone()
    data = next(root.glob("*.u8"))
    index = data.with_suffix(".json")
    damage = [
        ("truncated", lambda: os.truncate(data, data.stat().st_size - 100), "bytes, the index says"),
        ("overwritten", lambda: data.write_bytes(b"\xff" * data.stat().st_size), "checksum"),
        ("bad index", lambda: index.write_text("{not json"), "unreadable index"),
    ]
    for what, harm, why in damage:
        harm()
        msgs = []
        c = _open(src, root, say=msgs.append)
        assert c.built, what
        assert any("not usable" in m and why in m for m in msgs), (what, msgs)
        assert torch.equal(c.images, want), what


def _concurrent_builder(src, root, q):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msgs = []
        c = open_cache(describe_source(str(src), "auto", 32), root=root, progress=False, say=msgs.append,
                       num_workers=1)
        q.put((c.built, c.images.numpy().tobytes(), msgs))


def test_two_concurrent_builders_leave_one_valid_cache(tmp_path, monkeypatch):
    src = _folder(tmp_path / "imgs", n=12)
    root = tmp_path / "cache"
    real_build = cache_mod._build

    def slow_build(*a, **kw):  # hold the lock long enough that the second process must wait
        import time

        time.sleep(1.0)
        return real_build(*a, **kw)

    monkeypatch.setattr(cache_mod, "_build", slow_build)
    ctx = mp.get_context("fork")  # the children inherit the slowed builder
    q = ctx.Queue()
    procs = [ctx.Process(target=_concurrent_builder, args=(src, root, q)) for _ in range(2)]
    for p in procs:
        p.start()
    out = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(b for b, _, _ in out) == [False, True]  # one built, the other opened it
    waited = [m for b, _, msgs in out if not b for m in msgs]
    assert any("waiting for another process" in m for m in waited), waited
    want = _direct(src, image_size=32).numpy().tobytes()
    assert all(x == want for _, x, _ in out)
    assert sorted(p.suffix for p in root.iterdir()) == [".json", ".lock", ".u8"]


# ---- LMDB, crop -----------------------------------------------------------------------------

def test_lmdb_read_cache_and_max_images(tmp_path):
    rng = np.random.default_rng(4)
    arrs = [rng.integers(0, 256, (40 + i, 36, 3), dtype=np.uint8) for i in range(7)]
    blobs = [_png_bytes(a) for a in arrs]
    blobs[3] = b"corrupt value"
    src = _lmdb(tmp_path / "bedroom_train_lmdb", blobs)
    assert detect_format(src) == "lmdb"
    want = torch.stack([load_image(io.BytesIO(b), 32, 3) for i, b in enumerate(blobs) if i != 3])
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        direct = decode_all(open_dataset(str(src), image_size=32), progress=False)
    assert torch.equal(direct, want)
    c = _open(src, tmp_path / "cache")
    assert c.built and torch.equal(c.images, want) and c.index["num_skipped"] == 1
    # --max-images: the first N records, in key order, with their own cache
    c4 = _open(src, tmp_path / "cache", max_images=4)
    assert c4.built and torch.equal(c4.images, want[:3])
    # a corrupt LMDB is a one-line error naming it
    bad = tmp_path / "bad_lmdb"
    bad.mkdir()
    (bad / "data.mdb").write_bytes(os.urandom(9000))
    assert detect_format(bad) == "lmdb"
    for opener in (lambda: open_dataset(str(bad)), lambda: _open(bad, tmp_path / "cache")):
        with pytest.raises(DataError, match="bad_lmdb") as e:
            opener()
        assert "\n" not in str(e.value)


def test_crop_is_a_center_crop_before_the_resize(tmp_path):
    rng = np.random.default_rng(6)
    arr = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)  # H 50, W 70
    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(arr).save(root / "a.png")
    # no resize: exactly the numpy center box (left (70-32)//2 = 19, top (50-32)//2 = 9)
    got = load_image(root / "a.png", 32, 3, crop=32)
    assert torch.equal(got, torch.from_numpy(arr[9:41, 19:51]).permute(2, 0, 1))
    # with a resize: PIL's crop then PIL's bicubic resize
    ref = Image.fromarray(arr).crop((15, 5, 55, 45)).resize((32, 32), Image.Resampling.BICUBIC)
    got = load_image(root / "a.png", 32, 3, crop=40)
    assert torch.equal(got, torch.from_numpy(np.asarray(ref)).permute(2, 0, 1))
    # through the cache, and for MNIST arrays (the same box on a tensor)
    c = _open(root, tmp_path / "cache", crop=40)
    assert torch.equal(c.images[0], got)
    mn = tmp_path / "mnist"
    mn.mkdir()
    digits = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    _write_idx(mn / "train-images-idx3-ubyte", digits)
    x = decode_all(open_dataset(str(mn), image_size=20, crop=20))
    assert torch.equal(x, torch.from_numpy(digits[:, 4:24, 4:24]).unsqueeze(1))
    # an image smaller than the crop is skipped; every file too small is an error
    with pytest.raises(DataError, match="no readable images"):
        _open(root, tmp_path / "cache", crop=60)


# ---- batches --------------------------------------------------------------------------------

@pytest.mark.parametrize("reader", ["pread", "map"])
@pytest.mark.parametrize("rank,world", [(0, 1), (1, 2)])
def test_mapped_batches_equal_in_memory_batches(tmp_path, rank, world, reader):
    rng = np.random.default_rng(7)
    n, b = 23, 4  # 23 % 8 != 0: epochs end with a dropped remainder
    path = tmp_path / "x.u8"
    path.write_bytes(rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8).tobytes())
    mapped = torch.from_numpy(np.memmap(path, np.uint8, mode="c", shape=(n, 3, 8, 8)))
    ref = ImageBatcher(mapped.clone(), torch.device("cpu"), torch.Generator().manual_seed(5), rank=rank,
                       world_size=world)
    rows = CacheRows(path, (n, 3, 8, 8)) if reader == "pread" else None
    got = MappedBatcher(mapped, torch.device("cpu"), torch.Generator().manual_seed(5), rank=rank,
                        world_size=world, rows=rows)
    saved = None
    for i in range(20):  # several epochs
        if i == 6:
            torch.testing.assert_close(peek(got, b), peek(ref, b), rtol=0, atol=0)
        if i == 9:
            saved, gstate = got.state_dict(), got.gen.get_state()
        x, y = got.next(b), ref.next(b)
        assert torch.equal(x, y), i
    assert got.epoch == ref.epoch >= 3
    # restoring a saved position replays the same batches (what --resume does)
    got.load_state_dict(saved)
    got.gen.set_state(gstate)
    ref2 = ImageBatcher(mapped.clone(), torch.device("cpu"), torch.Generator().manual_seed(5), rank=rank,
                        world_size=world)
    for i in range(20):
        y = ref2.next(b)
        if i >= 9:
            assert torch.equal(got.next(b), y), i


def _mapped_rss_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc/self/smaps")
def test_batches_from_the_cache_leave_the_map_unread(tmp_path):
    # The trainer's reader (CacheRows, pread) copies batches without faulting the map's pages
    # in, so resident memory does not grow with the dataset; gathering through the map does.
    src = _folder(tmp_path / "imgs", n=64)
    c = _open(src, tmp_path / "cache")
    path = c.data_path.resolve()
    bt = MappedBatcher(c.images, torch.device("cpu"), torch.Generator().manual_seed(1), rows=c.rows)
    seen = torch.cat([bt.next(8) for _ in range(16)])  # two epochs of the 64 images
    assert seen.shape == (128, 3, 32, 32) and _mapped_rss_kib(path) == 0
    want = torch.from_numpy(np.fromfile(path, np.uint8, count=c.images.numel()).reshape(c.images.shape))
    assert torch.equal(c.rows.gather(torch.tensor([5, 0, 63, 5])), want[[5, 0, 63, 5]])
    assert torch.equal(c.images.index_select(0, torch.arange(64)), want)
    assert _mapped_rss_kib(path) > 0  # the check itself can fail: the map does become resident
    with pytest.raises(DataError, match="shorter than its index"):
        CacheRows(path, (65,) + tuple(want.shape[1:])).gather(torch.tensor([64]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_worker(rank, port, src, root, out):
    from pyfast_gan.step import distributed as fd

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        fd.init_distributed(device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            src_ = describe_source(src, "auto", 32)
            c = open_shared(src_, rank=rank, world=2, root=Path(root), progress=False, say=lambda m: None,
                            num_workers=1)
        bt = MappedBatcher(c.images, torch.device("cpu"), torch.Generator().manual_seed(3), rank=rank, world_size=2,
                           rows=c.rows)
        torch.save({"built": c.built, "batches": [bt.next(3) for _ in range(5)]}, f"{out}.{rank}")
    finally:
        fd.cleanup()


def test_two_gloo_processes_share_one_cache(tmp_path):
    src = _folder(tmp_path / "imgs", n=12)
    root = tmp_path / "cache"
    out = str(tmp_path / "res")
    torch.multiprocessing.start_processes(_gloo_worker, args=(_free_port(), str(src), str(root), out), nprocs=2,
                                          join=True, start_method="fork")
    r0, r1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    assert (r0["built"], r1["built"]) == (True, False)  # rank 0 built, rank 1 mapped its file
    assert len(list(root.glob("*.u8"))) == 1
    # today's result: one process, in memory, global batch 2 x 3
    one = ImageBatcher(_direct(src, image_size=32), torch.device("cpu"), torch.Generator().manual_seed(3))
    for x0, x1 in zip(r0["batches"], r1["batches"]):
        assert torch.equal(torch.cat([x0, x1]), one.next(6))


# ---- the trainer ----------------------------------------------------------------------------

TINY = ["--base", "4", "--z-dim", "8", "--batch-size", "4", "--n-critic", "2", "--n-samples", "4",
        "--no-progress", "--log-every", "1", "--sample-every", "1000", "--image-size", "32",
        "--no-tensorboard"]


def test_resume_is_bitwise_with_the_cache_and_equals_in_memory(tmp_path, one_thread, capsys):
    from pyfast_gan.train import main

    src = str(_folder(tmp_path / "imgs", n=9))  # 9 good images, batch 4 x 2 critic steps: epochs turn over
    args = ["--data", src, *TINY]
    full, part, mem = tmp_path / "full", tmp_path / "part", tmp_path / "mem"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*args, "--data-cache", "on", "--steps", "4", "--out", str(full)]) == 0
        assert "data cache: decoded 9 images" in capsys.readouterr().err
        assert main([*args, "--data-cache", "on", "--steps", "2", "--out", str(part)]) == 0
        assert "data cache: opened" in capsys.readouterr().err
        assert main(["--resume", str(part), "--steps", "4", "--no-progress"]) == 0
        assert main([*args, "--data-cache", "off", "--steps", "4", "--out", str(mem)]) == 0
    ca, cb, cm = (torch.load(p / "checkpoints" / "latest.pt", weights_only=False) for p in (full, part, mem))
    assert ca["step"] == cb["step"] == 4 and ca["data"]["epoch"] >= 1
    for key in ("G", "D"):
        for k in ca[key]:
            assert torch.equal(ca[key][k], cb[key][k]), (key, k)  # resumed == uninterrupted
            assert torch.equal(ca[key][k], cm[key][k]), (key, k)  # cached == in memory
    assert torch.equal(ca["data"]["perm"], cb["data"]["perm"]) and ca["data"]["offset"] == cb["data"]["offset"]


def test_errors_name_the_path_and_leave_no_partial_cache(tmp_path, capsys):
    from pyfast_gan.train import main

    (tmp_path / "empty").mkdir()
    for data, what in ((tmp_path / "empty", "no images in folder"), (tmp_path / "missing", "does not exist")):
        with pytest.raises(SystemExit) as e:
            main(["--data", str(data), "--data-cache", "on", "--out", str(tmp_path / "o"), "--no-progress"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert str(data) in err and what in err
    # a full disk while building: the file size limit makes writes fail as ENOSPC would
    src = _folder(tmp_path / "imgs", n=8)
    root = tmp_path / "cache"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (5000, hard))
    try:
        with pytest.raises(DataError, match="cannot build the data cache") as e:
            _open(src, root, num_workers=1)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert str(src) in str(e.value) and "\n" not in str(e.value)
    assert not list(root.glob("*.u8*")) and not list(root.glob("*.json*"))  # nothing half-written
    assert _open(src, root).built  # and the next run builds it


# ---- damage, killed builders, forked workers, unreadable sources ----------------------------

def _cifar(root: Path, n: int, seed: int = 0) -> Path:
    root.mkdir(parents=True)
    _write_cifar(root / "data_batch_1", np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8))
    return root


def _unsampled_rows(data: Path, shape) -> list[int]:
    """Rows of a cache file that none of the open-time check's sampled blocks touches."""
    size, row = data.stat().st_size, int(np.prod(shape[1:]))
    k, b = cache_mod._SAMPLE_BLOCKS, cache_mod._BLOCK
    starts = {min(size - 1, size * j // k) for j in range(k)} | {max(0, size - b)}
    return [i for i in range(shape[0]) if all(i * row >= s + b or (i + 1) * row <= s for s in starts)]


def _zero_rows(data: Path, shape, rows) -> None:
    m = np.memmap(data, np.uint8, mode="r+", shape=tuple(shape))
    m[rows] = 0
    m.flush()
    del m


def test_damage_outside_the_sampled_blocks_is_caught_before_it_is_trained_on(tmp_path):
    src = _cifar(tmp_path / "cifar", 300)  # 300 x 12 KiB at 64 px: most rows escape 64 sampled blocks
    root = tmp_path / "cache"
    built = _open(src, root, size=64)
    want = built.images.clone()
    assert want.float().std() > 10
    rows = _unsampled_rows(built.data_path, want.shape)
    assert len(rows) > 150
    for reader in ("batches", "whole"):
        _zero_rows(built.data_path, want.shape, rows)
        c = _open(src, root, size=64)
        assert not c.built  # the open-time check samples blocks: this damage passes it ...
        with pytest.raises(DataError, match="is damaged") as e:  # ... the reader does not
            if reader == "batches":
                bt = MappedBatcher(c.images, torch.device("cpu"), torch.Generator().manual_seed(0), rows=c.rows)
                for _ in range(40):
                    bt.next(16)
            else:  # the dataset copied to the GPU whole is checked first
                c.rows.verify_all()
        msg = str(e.value)
        assert str(c.data_path) in msg and "next run rebuilds it" in msg and "\n" not in msg
        again = _open(src, root, size=64)  # the index was dropped: rebuilt, intact
        assert again.built and torch.equal(again.images, want)
    # damage to the table of row checksums is found when the cache is opened
    size = again.data_path.stat().st_size
    with open(again.data_path, "r+b") as f:
        f.seek(size - 4 * 300 + 40)
        f.write(b"\0\0\0\0")
    msgs = []
    assert _open(src, root, size=64, say=msgs.append).built
    assert any("not usable" in m for m in msgs), msgs


def test_the_trainer_stops_with_one_line_on_a_damaged_cache_and_the_next_run_rebuilds(tmp_path, capsys):
    from pyfast_gan.train import main

    src = _cifar(tmp_path / "cifar", 300, seed=1)
    args = ["--data", str(src), *TINY, "--image-size", "64", "--data-cache", "on", "--steps", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "data cache: decoded 300 images" in capsys.readouterr().err
    data = cache_mod._paths(describe_source(str(src), "auto", 64), cache_mod.cache_root())[0]
    shape = (300, 3, 64, 64)
    _zero_rows(data, shape, _unsampled_rows(data, shape))
    with pytest.raises(SystemExit) as e:
        main([*args, "--out", str(tmp_path / "b")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "data cache: opened" in err and "is damaged" in err and "Traceback" not in err
    assert main([*args, "--out", str(tmp_path / "c")]) == 0
    assert "data cache: decoded 300 images" in capsys.readouterr().err


def test_a_cache_build_leaves_the_trainers_threads_alone(tmp_path, capsys):
    # One decode worker decodes in the trainer's own process: it used to set torch to one
    # thread there, for the whole run, whose weights then differed from the next run's.
    from pyfast_gan.train import main

    src = _folder(tmp_path / "imgs", n=48)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert _open(src, tmp_path / "cache", num_workers=1).built
        assert torch.get_num_threads() == 2
        outs = [tmp_path / "first", tmp_path / "second"]
        for out, what in zip(outs, ("decoded 48 images", "opened")):
            torch.set_num_threads(2)  # each run starts as a fresh process does
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert main(["--data", str(src), *TINY, "--data-cache", "on", "--steps", "2",
                             "--out", str(out)]) == 0
            assert what in capsys.readouterr().err
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    a, b = (torch.load(o / "checkpoints" / "latest.pt", weights_only=False) for o in outs)
    for key in ("G", "D"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _build_in_child(src, root, num_workers, q):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = open_cache(describe_source(str(src), "auto", 32), root=root, progress=False, say=lambda m: None,
                       num_workers=num_workers)
        q.put((c.built, c.images.numpy().tobytes()))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from Linux's /proc")
def test_a_builder_killed_mid_build_leaves_no_worker_and_no_lock(tmp_path, monkeypatch):
    from pyfast_gan.data import images as images_mod

    src = _folder(tmp_path / "imgs", n=140)  # 3 chunks of 64: two decode workers
    root = tmp_path / "cache"
    real_load = images_mod.load_image

    def slow_load(*a, **kw):  # the workers are still decoding when their parent is killed
        import time

        time.sleep(0.1)
        return real_load(*a, **kw)

    monkeypatch.setattr(images_mod, "load_image", slow_load)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    builder = ctx.Process(target=_build_in_child, args=(src, root, 2, q))
    builder.start()
    workers = []
    for _ in range(300):
        workers = _children(builder.pid)
        if len(workers) >= 2:
            break
        import time

        time.sleep(0.05)
    assert len(workers) >= 2, workers
    os.kill(builder.pid, signal.SIGKILL)
    builder.join(10)
    monkeypatch.setattr(images_mod, "load_image", real_load)
    again = ctx.Process(target=_build_in_child, args=(src, root, 1, q))
    try:
        import time

        deadline = time.monotonic() + 10
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, workers)), "decode workers outlived their killed parent"
        again.start()
        built, images = q.get(timeout=60)  # a lock left behind made this wait forever
        assert built and images == _direct(src, image_size=32).numpy().tobytes()
        again.join(10)
        assert again.exitcode == 0
    finally:
        for pid in [*workers, again.pid]:
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_lmdb_with_more_than_64_records_and_two_workers(tmp_path):
    # py-lmdb refuses, in a forked worker, an environment its parent had open: every record
    # failed to decode as soon as the build used two workers (more than one chunk of 64).
    rng = np.random.default_rng(8)
    blobs = [_png_bytes(rng.integers(0, 256, (20 + i % 7, 24, 3), dtype=np.uint8)) for i in range(100)]
    src = _lmdb(tmp_path / "church_outdoor_train_lmdb", blobs)
    want = torch.stack([load_image(io.BytesIO(b), 32, 3) for b in blobs])
    c = _open(src, tmp_path / "cache", num_workers=2)
    assert c.built and torch.equal(c.images, want) and c.index["num_skipped"] == 0
    # --data-cache off decodes in DataLoader workers, forked too
    assert torch.equal(decode_all(open_dataset(str(src), image_size=32), num_workers=2, progress=False), want)


def _main_in_child(argv, err_path):
    """The trainer in a forked process, its stderr in ``err_path``: a crash (SIGBUS) kills the
    child only, and its exit code tells."""
    from pyfast_gan.train import main

    import sys

    sys.stderr = open(err_path, "w", buffering=1)  # noqa: SIM115 - open until os._exit
    torch.set_num_threads(1)
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    sys.stderr.flush()
    os._exit(code)


def test_a_truncated_lmdb_is_one_line_and_exit_2_before_training(tmp_path):
    rng = np.random.default_rng(9)
    src = _lmdb(tmp_path / "bedroom_train_lmdb",
                [_png_bytes(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)) for _ in range(100)])
    mdb = src / "data.mdb"
    os.truncate(mdb, mdb.stat().st_size // 2)  # an interrupted copy
    err, out = tmp_path / "err.txt", tmp_path / "run"
    p = mp.get_context("fork").Process(target=_main_in_child,
                                       args=(["--data", str(src), *TINY, "--steps", "1", "--out", str(out)], err))
    p.start()
    p.join(120)
    text = err.read_text()
    assert p.exitcode == 2, (p.exitcode, text[-2000:])  # it was -7: SIGBUS, nothing printed
    assert "is truncated" in text and str(src) in text and "Traceback" not in text
    assert not (out / "checkpoints").exists()
    with pytest.raises(DataError, match="is truncated"):
        open_dataset(str(src))


def test_every_image_failing_names_the_first_reason(tmp_path, capsys):
    from pyfast_gan.train import main

    root = tmp_path / "small"
    root.mkdir()
    for i in range(16):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / f"{i}.png")
    reason = "is smaller than --crop 60"
    with pytest.raises(DataError, match=reason):
        _open(root, tmp_path / "cache", crop=60)
    with pytest.raises(DataError, match=reason), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decode_all(open_dataset(str(root), image_size=32, crop=60), progress=False)
    for cache in ("on", "off"):
        with pytest.raises(SystemExit) as e, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main(["--data", str(root), *TINY, "--crop", "60", "--data-cache", cache, "--out", str(tmp_path / cache)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "all 16" in err and reason in err, err


def test_an_unwritable_cache_folder_names_the_ways_around_it(tmp_path, monkeypatch, capsys):
    from pyfast_gan.train import main

    src = _folder(tmp_path / "imgs", n=8)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PYFAST_GAN_CACHE", str(blocker / "cache"))  # cannot be created
    args = ["--data", str(src), *TINY, "--steps", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SystemExit) as e:
            main([*args, "--data-cache", "on", "--out", str(tmp_path / "on")])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "cannot create the data cache folder" in err and "--data-cache off" in err and "PYFAST_GAN_CACHE" in err
        # auto: one line, then the images are decoded into memory and the run trains
        assert main([*args, "--data-cache", "auto", "--out", str(tmp_path / "auto")]) == 0
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if "data cache" in ln]
        assert len(lines) == 1 and "decoding into memory instead" in lines[0], err
        assert (tmp_path / "auto" / "checkpoints" / "latest.pt").is_file()
        # a lock that cannot be taken: the same two ways named, and auto's fallback
        root = tmp_path / "cache"
        source = describe_source(str(src), "auto", 32)
        cache_mod._paths(source, root)[2].mkdir(parents=True)  # a folder where the lock file goes
        with pytest.raises(DataError, match="cannot lock the data cache") as e:
            open_cache(source, root=root, progress=False, say=lambda m: None)
        assert "--data-cache off" in str(e.value) and "PYFAST_GAN_CACHE" in str(e.value)
        said = []
        x, rows = TrainingImages(str(src), image_size=32, cache="auto", root=root, progress=False).load(
            say=said.append, num_workers=1, progress=False)
    assert rows is None and torch.equal(x, _direct(src, image_size=32))
    assert len(said) == 1 and "cannot lock" in said[0] and "decoding into memory instead" in said[0]
