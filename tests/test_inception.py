"""FID Inception features checked against pytorch-fid itself, with random weights (the real
ones cannot be downloaded here). Inception at 299x299 costs ~0.1-1 s per image on a 2-core
CPU, so every check feeds only a few small images."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("torchvision")
pytest.importorskip("pytorch_fid")

from pytorch_fid.inception import InceptionV3  # noqa: E402

from pyfast_gan.metrics.inception import (  # noqa: E402
    PYTORCH_FID_WEIGHTS,
    TORCH_FIDELITY_WEIGHTS,
    WEIGHTS_ENV,
    FIDInceptionV3,
    build_fid_inception_v3,
    extract_features,
    find_inception_weights,
)


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds random FID Inception weights under pytorch-fid's name.

    With default init and unit BN statistics the activations shrink ~6x per layer (pool3
    ~1e-8), which would make any comparison vacuous; one train-mode pass with cumulative BN
    averaging calibrates the running statistics so the features are large and image-dependent.
    """
    net = build_fid_inception_v3()
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0.0, 0.2, generator=g)
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 3, 128, 128, generator=g) * 2 - 1)
    home = tmp_path_factory.mktemp("torch_home")
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(net.state_dict(), ckpt / PYTORCH_FID_WEIGHTS)
    return home


@pytest.fixture(scope="module")
def weights(torch_home):
    return torch_home / "hub" / "checkpoints" / PYTORCH_FID_WEIGHTS


@pytest.fixture(scope="module")
def ours(weights):
    return FIDInceptionV3(weights)


@pytest.fixture(scope="module")
def reference(torch_home):
    """pytorch-fid's own network; it finds the cached file under TORCH_HOME, so no download."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        return InceptionV3([3], resize_input=True, normalize_input=True).eval()


def _rand_images(n, c, size, seed):
    """Random non-zero images in [-1, 1] (the generator's range)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g) * 2 - 1


def _reference_features(reference, x):
    with torch.no_grad():
        return reference((x + 1) / 2)[0].flatten(1).double().numpy()


def _assert_same_features(a, b):
    scale = np.abs(b).max()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_resize_commutes_with_range_map():
    # pytorch-fid resizes [0, 1] and then maps to [-1, 1]; we resize [-1, 1] directly.
    for size in (32, 64):
        x = _rand_images(4, 3, size, seed=size)
        a = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        b = 2 * F.interpolate((x + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False) - 1
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [32, 64])
def test_features_match_pytorch_fid(ours, reference, size):
    x = _rand_images(2, 3, size, seed=size)
    # batch_size=1 also checks that batching does not change the result.
    feats = extract_features(ours, x, batch_size=1)
    ref = _reference_features(reference, x)
    assert feats.shape == (2, 2048) and feats.dtype == np.float64
    _assert_same_features(feats, ref)
    # The features depend on the image far beyond the tolerance: the check is not vacuous.
    assert np.abs(ref[0] - ref[1]).max() > 1e-2 * np.abs(ref).max()


def test_grayscale_is_repeated_to_rgb(ours, reference):
    x = _rand_images(1, 1, 32, seed=7)
    with torch.no_grad():
        feats = ours(x)
    assert feats.dtype == torch.float32 and feats.shape == (1, 2048)
    _assert_same_features(feats.double().numpy(), _reference_features(reference, x.repeat(1, 3, 1, 1)))


def test_extract_features_uint8_and_iterables(ours):
    g = torch.Generator().manual_seed(3)
    u8 = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    # An iterable of batches, one given as a DataLoader-style (images, labels) pair.
    feats = extract_features(ours, [u8[:1], (u8[1:], torch.zeros(1))], progress=True)
    with torch.no_grad():
        direct = ours(u8.float() / 127.5 - 1).double().numpy()
    _assert_same_features(feats, direct)


def test_bad_images_raise(ours):
    with pytest.raises(ValueError, match="expected images"):
        ours(torch.zeros(1, 2, 32, 32))
    with pytest.raises(ValueError, match="uint8"):
        ours(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_stays_in_eval_mode_and_accepts_wrapped_state_dict(weights, tmp_path):
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": torch.load(weights, weights_only=True), "epoch": 1}, wrapped)
    net = FIDInceptionV3(wrapped)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 94
    net.train()
    assert not net.training and not any(m.training for m in bns)
    assert not any(p.requires_grad for p in net.parameters())


def test_wrong_keys_raise_naming_the_file(tmp_path):
    bad = tmp_path / "not_inception.pth"
    torch.save({"conv.weight": torch.zeros(1), "fc.weight": torch.zeros(1008, 2048)}, bad)
    with pytest.raises(ValueError, match="not_inception.pth"):
        FIDInceptionV3(bad)


def test_find_weights_in_torch_home(torch_home, weights, monkeypatch, tmp_path):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    assert find_inception_weights() == weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert find_inception_weights() is None
    # torch-fidelity's cached copy is found too.
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / TORCH_FIDELITY_WEIGHTS).touch()
    assert find_inception_weights() == ckpt / TORCH_FIDELITY_WEIGHTS


def test_find_weights_explicit_and_env(weights, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert find_inception_weights(str(weights)) == weights
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        find_inception_weights(tmp_path / "missing.pth")
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    assert find_inception_weights() == weights
    monkeypatch.setenv(WEIGHTS_ENV, str(weights.parent))
    assert find_inception_weights() == weights
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_inception_weights()
