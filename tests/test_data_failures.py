"""A data folder that is unlucky rather than wrong: a dangling symlink, too few files that
decode for one batch, a decode worker killed mid-build, a FIFO with an image's name, a file
name that is not UTF-8; and ``python -m pyfast_gan.evaluate`` unable to write its JSON. Each
ends as one line (a warning, or exit 2 naming the file and the fix), never a traceback, and
leaves nothing that blocks the next run."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyfast_gan.data import DataError, decode_all, open_dataset
from pyfast_gan.data import images as images_mod
from pyfast_gan.data.batch import ImageBatcher
from pyfast_gan.data.cache import TrainingImages, describe_source, open_cache
from pyfast_gan.data.formats import _stat_digest
from pyfast_gan.data.images import list_images

pytestmark = pytest.mark.usefixtures("one_thread")

# The trainer's quickest run on a folder: nothing here gets past building the data.
TINY = ["--base", "4", "--z-dim", "8", "--batch-size", "4", "--n-critic", "1", "--n-samples", "4",
        "--no-progress", "--image-size", "32", "--no-tensorboard"]


def _pngs(root: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


def _quiet_open(src: Path, root: Path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_cache(describe_source(str(src), "auto", 32), root=root, progress=False,
                          say=lambda m: None, **kw)


@contextlib.contextmanager
def _deadline(seconds: int):
    """TimeoutError instead of a test that hangs (opening a FIFO waits for a writer)."""
    def _raise(*_):
        raise TimeoutError(f"still waiting after {seconds} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _leftovers(cache_root: Path) -> list[str]:
    """Files a build leaves behind when it fails: temporary data or index files."""
    return sorted(p.name for p in cache_root.rglob("*") if ".tmp" in p.name)


# ---- a dangling symlink ---------------------------------------------------------------------

def test_a_dangling_symlink_is_skipped_with_one_warning_naming_it(tmp_path, capsys):
    from pyfast_gan.train import main

    src = _pngs(tmp_path / "imgs", 6)
    (src / "gone.png").symlink_to(tmp_path / "nowhere" / "x.png")
    (src / "ok_link.png").symlink_to(src / "000.png")  # a link to a file is an image like any other
    with pytest.warns(UserWarning, match=r"skipped 1 file.*gone\.png \(a symlink to a missing file\)"):
        files = list_images(src)
    assert [f.name for f in files] == [f"{i:03d}.png" for i in range(6)] + ["ok_link.png"]
    root = tmp_path / "cache"
    c = _quiet_open(src, root)  # was: FileNotFoundError from the fingerprint's os.stat
    assert c.images.shape[0] == 7 and c.num_skipped == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(decode_all(open_dataset(str(src), image_size=32), progress=False)) == 7  # --data-cache off
    # only dangling links: the folder's one-line DataError, the trainer's exit 2
    only = tmp_path / "only_links"
    only.mkdir()
    (only / "a.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(SystemExit) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(["--data", str(only), *TINY, "--steps", "1", "--data-cache", "on", "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no images in folder" in err and "Traceback" not in err


def test_a_file_that_vanishes_while_fingerprinting_names_it(tmp_path):
    src = _pngs(tmp_path / "imgs", 3)
    files = list_images(src)
    files[1].unlink()
    with pytest.raises(DataError, match=r"001\.png.*rerun"):
        _stat_digest(files, src)


# ---- fewer decodable images than one batch ----------------------------------------------------

def _two_of_five(root: Path) -> Path:
    """Two good PNGs and three whose header reads but whose pixels are cut off."""
    _pngs(root, 2)
    whole = (root / "000.png").read_bytes()
    for i in range(3):
        (root / f"bad{i}.png").write_bytes(whole[:100])
    return root


@pytest.mark.parametrize("cache", ["on", "off"])
def test_too_few_decodable_images_for_a_batch_is_one_line_naming_the_counts(tmp_path, capsys, cache):
    from pyfast_gan.train import main

    src = _two_of_five(tmp_path / "imgs")
    with pytest.raises(SystemExit) as e, warnings.catch_warnings():  # was: a RuntimeError traceback
        warnings.simplefilter("ignore")
        main(["--data", str(src), *TINY, "--steps", "2", "--data-cache", cache, "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "only 2 of the 5 images" in err and "3 failed" in err and "--batch-size 4 is larger than the 2" in err, err
    assert "Traceback" not in err and "RuntimeError" not in err


def test_training_images_load_checks_the_batch_against_what_decoded(tmp_path):
    src = _two_of_five(tmp_path / "imgs")
    for cache in ("on", "off"):
        ti = TrainingImages(str(src), image_size=32, cache=cache, root=tmp_path / "cache", progress=False)
        assert len(ti) == 5  # the count checked before decoding: every header reads
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(DataError, match=r"only 2 of the 5 images.*3 failed.*lower --batch-size to 2"):
                ti.load(num_workers=1, progress=False, say=lambda m: None, batch_size=4)
            x, _ = ti.load(num_workers=1, progress=False, say=lambda m: None)
        assert ti.failed == 3 and x.shape[0] == 2 and x.num_failed == 3
        with pytest.raises(DataError, match=r"only 2 of the 5 images.*--batch-size 2 x 2 processes"):
            ImageBatcher(x, torch.device("cpu"), torch.Generator().manual_seed(0), world_size=2).next(2)
    # a dataset that is simply small keeps its message, now a DataError (still a ValueError)
    with pytest.raises(DataError, match=r"--batch-size 8 is larger than the dataset \(4 images\)"):
        ImageBatcher(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.device("cpu"),
                     torch.Generator().manual_seed(0)).next(8)


# ---- a decode worker killed during the cache build -------------------------------------------

def test_a_killed_decode_worker_is_one_line_suggesting_one_worker(tmp_path, monkeypatch, capsys):
    from pyfast_gan.train import main

    src = _pngs(tmp_path / "imgs", 80)  # two chunks of 64: two workers
    cache_root = tmp_path / "cache"
    monkeypatch.setenv("PYFAST_GAN_CACHE", str(cache_root))
    parent, real = os.getpid(), images_mod.load_image

    def oom_killed(*a, **kw):  # what the kernel's OOM killer does to a worker
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **kw)

    monkeypatch.setattr(images_mod, "load_image", oom_killed)
    args = ["--data", str(src), *TINY, "--steps", "1", "--data-cache", "on"]
    with pytest.raises(SystemExit) as e:  # was: a BrokenProcessPool traceback
        main([*args, "--num-workers", "2", "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "decode worker died" in err and "memory may be short" in err and "--num-workers 1" in err, err
    assert "Traceback" not in err and "BrokenProcessPool" not in err
    # nothing left behind: no partial file, the lock free, the next build succeeds
    assert _leftovers(cache_root) == [] and not list(cache_root.rglob("*.u8"))
    monkeypatch.setattr(images_mod, "load_image", real)
    with _deadline(120):
        c = _quiet_open(src, cache_root / "data", num_workers=2)
    assert c.built and c.images.shape[0] == 80


# ---- a FIFO or other non-regular file with an image's name -----------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_png_is_skipped_with_a_warning_instead_of_hanging(tmp_path):
    src = _pngs(tmp_path / "imgs", 4)
    os.mkfifo(src / "pipe.png")
    (src / "folder.png").mkdir()  # a folder with an image's name is walked, not listed
    with pytest.warns(UserWarning, match=r"skipped 1 file.*pipe\.png \(a FIFO\)"):
        assert [f.name for f in list_images(src)] == [f"{i:03d}.png" for i in range(4)]
    with _deadline(60):  # was: start-up waiting forever for a writer on the FIFO
        c = _quiet_open(src, tmp_path / "cache")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = decode_all(open_dataset(str(src), image_size=32), progress=False)
    assert c.images.shape[0] == 4 and torch.equal(c.images.clone(), x)


# ---- a file name that is not UTF-8 ---------------------------------------------------------

def _non_utf8(parent: Path, stem: bytes) -> Path:
    p = Path(os.fsdecode(bytes(parent) + b"/" + stem))
    try:
        p.touch()
        p.unlink()
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    return p


def test_names_that_are_not_utf8_are_cached(tmp_path):
    src = _pngs(tmp_path / "imgs", 4)
    odd = _non_utf8(src, b"caf\xe9.png")
    Image.fromarray(np.full((36, 40, 3), 7, np.uint8)).save(odd)
    root = tmp_path / "cache"
    c = _quiet_open(src, root)  # was: "'utf-8' codec can't encode character '\udce9'"
    assert c.images.shape[0] == 5 and c.built
    assert not _quiet_open(src, root).built  # the index reads back: opened, not rebuilt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(c.images.clone(), decode_all(open_dataset(str(src), image_size=32), progress=False))
    # a folder so named, and a file in it that cannot decode (its name goes into the index)
    folder = _non_utf8(tmp_path, b"d\xe9")
    _pngs(folder, 4)
    (folder / odd.name).write_bytes(b"not a png")
    c = _quiet_open(folder, root)
    assert c.images.shape[0] == 4 and c.num_skipped == 1
    assert c.index["source"] == str(folder.resolve())


def test_utf8_names_keep_their_fingerprint(tmp_path):
    """Hashing names as bytes changes nothing for UTF-8 names: existing caches keep their key."""
    src = _pngs(tmp_path / "imgs", 2)
    (src / "été.png").write_bytes((src / "000.png").read_bytes())
    files = list_images(src)
    h = hashlib.sha256()
    for p in files:  # the digest as it was computed before
        st = os.stat(p)
        h.update(f"{p.relative_to(src)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    assert _stat_digest(files, src) == h.hexdigest()


# ---- evaluate cannot write its JSON ------------------------------------------------------------

def test_evaluate_prints_the_scores_when_the_json_cannot_be_written(tmp_path, monkeypatch, capsys):
    from pyfast_gan.evaluate import build_parser
    from pyfast_gan.evaluate import main as evaluate
    from pyfast_gan.train import main as train

    run = tmp_path / "toy"
    assert train(["--data", "25gaussians", "--steps", "2", "--base", "8", "--batch-size", "16", "--no-progress",
                  "--no-tensorboard", "--out", str(run)]) == 0
    capsys.readouterr()
    # a read-only run directory (chmod does not stop root, so the write is refused here)
    real = Path.write_text

    def read_only(self, *a, **kw):
        if self.parent == run:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", read_only)
    argv = ["--checkpoint", str(run), "--n", "200", "--metrics", "modes", "--no-progress"]
    assert evaluate(argv) == 1  # was: the scores, then an OSError traceback
    out, err = capsys.readouterr()
    assert "modes_covered" in out and "wrote" not in out
    want = run / "eval_step_000002.json"
    assert str(want) in err and "Permission denied" in err and "--json PATH" in err and "computed" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir() if p.name.startswith((".eval", "eval"))) == []
    # --json elsewhere writes it; a path under a file is the same one line
    assert evaluate([*argv, "--json", str(tmp_path / "scores.json")]) == 0
    assert json.loads((tmp_path / "scores.json").read_text())["step"] == 2
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    capsys.readouterr()
    assert evaluate([*argv, "--json", str(blocker / "sub" / "e.json")]) == 1
    err = capsys.readouterr().err
    assert str(blocker / "sub" / "e.json") in err and "is a file, not a folder" in err and "Traceback" not in err
    assert "1 = scores printed" in build_parser().format_help().replace("\n", " ").replace("  ", " ")
