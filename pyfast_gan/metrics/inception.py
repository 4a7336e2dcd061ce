"""The FID Inception-v3 feature network (pool3, 2048-D), built exactly as pytorch-fid builds it.

FID and KID are only comparable across papers when the features come from the TensorFlow
Inception graph of 2015-12-05 that TTUR used; pytorch-fid ships those weights ported to
PyTorch together with the patched blocks (TF-style average pooling, max pooling in the last
block) that reproduce that graph. We import pytorch-fid's blocks and torchvision's model
rather than copying them so that the architecture cannot drift from the reference.

No weights are downloaded at run time: they must already be on disk (see ``INCEPTION_HELP``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PYTORCH_FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
# torch-fidelity converts the same TF graph itself and names every tensor exactly as
# torchvision / pytorch-fid do (its utils/util_convert_inception_weights.py), so its
# file loads into this network unchanged.
TORCH_FIDELITY_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_ENV = "PYFAST_GAN_INCEPTION_WEIGHTS"
WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + PYTORCH_FID_WEIGHTS
)

INCEPTION_HELP = (
    "FID/KID need the FID Inception-v3 weights, which are never downloaded at run time. "
    f"Download {WEIGHTS_URL} (about 92 MB) on a machine with internet access, then either "
    "pass it with --inception-weights PATH, set the environment variable "
    f"{WEIGHTS_ENV} to the file (or to the folder holding it), or put it in the torch hub "
    f"cache, $TORCH_HOME/hub/checkpoints/{PYTORCH_FID_WEIGHTS} (TORCH_HOME defaults to "
    "~/.cache/torch), where pytorch-fid itself caches it. torch-fidelity's cached "
    f"{TORCH_FIDELITY_WEIGHTS} is found there as well."
)

_WEIGHT_NAMES = (PYTORCH_FID_WEIGHTS, TORCH_FIDELITY_WEIGHTS)
# Blocks of torchvision's Inception3 that pytorch-fid runs up to pool3, in order.
_BLOCKS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
    "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c",
)


def find_inception_weights(path: str | os.PathLike | None = None) -> Path | None:
    """Locate the FID Inception weights without downloading anything.

    Order: the explicit ``path``; then ``$PYFAST_GAN_INCEPTION_WEIGHTS`` (a file, or a folder
    holding one of the known file names); then ``torch.hub.get_dir()/checkpoints``, where
    pytorch-fid and torch-fidelity cache their downloads (honours ``$TORCH_HOME``).
    An explicit path or environment value that does not exist raises FileNotFoundError, since
    silently falling back would hide a typo. Returns None when nothing is found.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"Inception weights file not found: {p}. {INCEPTION_HELP}")
        return p
    dirs = []
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        p = Path(env).expanduser()
        if p.is_file():
            return p
        if not p.is_dir():
            raise FileNotFoundError(f"${WEIGHTS_ENV}={env} is neither a file nor a folder. {INCEPTION_HELP}")
        dirs.append(p)
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    for d in dirs:
        for name in _WEIGHT_NAMES:
            if (d / name).is_file():
                return d / name
    return None


def build_fid_inception_v3() -> nn.Module:
    """pytorch-fid's ``fid_inception_v3`` architecture with random weights and no download.

    The constructor of FIDInceptionV3 loads real weights into it; tests use it to write
    weight files with the right key names.
    """
    try:
        import torchvision
        from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2
    except ImportError as e:
        raise ImportError(
            "FID/KID features need torchvision and pytorch-fid: pip install torchvision pytorch-fid"
        ) from e
    # init_weights=False as in pytorch-fid: the weights are overwritten anyway.
    net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


def _load_state_dict(path: Path) -> dict:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds for a file that is not one
        why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ValueError(f"{path}: not a torch weights file ({why}). {INCEPTION_HELP}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    return sd


class FIDInceptionV3(nn.Module):
    """Pool3 features (N, 2048) of the FID Inception network, always in eval mode.

    Input: float (N, C, H, W) in [-1, 1] (the generator's range), C in {1, 3}. Preprocessing
    matches pytorch-fid's ``InceptionV3(resize_input=True, normalize_input=True)``: bilinear
    resize to 299x299 (align_corners=False). pytorch-fid resizes [0, 1] images and then maps
    them to [-1, 1]; bilinear interpolation is affine-equivariant, so resizing [-1, 1] directly
    gives the same result up to float rounding (checked in tests/test_inception.py).

    Weights: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` or torch-fidelity's
    ``weights-inception-2015-12-05-6726825d.pth`` (same key names); a raw state dict or one
    wrapped in ``{"state_dict": ...}``. The unused 1008-way ``fc`` stays in the module so the
    files load strictly: a wrong or truncated file fails loudly instead of giving random features.
    """

    def __init__(self, weights_path: str | os.PathLike):
        super().__init__()
        path = find_inception_weights(weights_path)
        net = build_fid_inception_v3()
        sd = _load_state_dict(path)
        try:
            res = net.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ValueError(f"{path}: tensors do not fit the FID Inception network: {e}") from e
        if res.missing_keys or res.unexpected_keys:
            raise ValueError(
                f"{path} is not an FID Inception state dict: {len(res.missing_keys)} missing keys "
                f"(e.g. {res.missing_keys[:3]}), {len(res.unexpected_keys)} unexpected keys "
                f"(e.g. {res.unexpected_keys[:3]}). {INCEPTION_HELP}"
            )
        for name in _BLOCKS:
            self.add_module(name, getattr(net, name))
        self.fc = net.fc
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True):
        """Stay in eval mode: train-mode BatchNorm would use batch statistics and update the
        running ones, silently changing the features."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected float images in [-1, 1], got {x.dtype}; use extract_features for uint8")
        x = x.to(self.fc.weight.dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        for name in _BLOCKS:
            x = getattr(self, name)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1).float()


def _batches(images, batch_size: int):
    """Yield chunks of at most batch_size from a tensor or an iterable of tensors (or of
    (images, labels, ...) tuples, as DataLoaders yield)."""
    if torch.is_tensor(images):
        images = (images,)
    for b in images:
        if isinstance(b, (tuple, list)):
            b = b[0]
        yield from torch.split(b, batch_size)


@torch.no_grad()
def extract_features(net: nn.Module, images, batch_size: int = 50, device="cpu", progress: bool = False) -> np.ndarray:
    """Features of all images as float64 (N, 2048), ready for statistics.

    ``images``: a tensor (N, C, H, W), float in [-1, 1] or uint8 (mapped by x / 127.5 - 1), or
    an iterable of such batches. Batches are re-split to ``batch_size`` to bound memory.
    ``net`` is moved to ``device`` (in place).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    net.to(device)
    out = []
    total = len(images) if torch.is_tensor(images) else None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="inception features", unit="img")
    for b in _batches(images, batch_size):
        b = b.to(device)
        b = b.float() / 127.5 - 1.0 if b.dtype == torch.uint8 else b
        out.append(net(b).cpu().double().numpy())
        if bar is not None:
            bar.update(len(b))
    if bar is not None:
        bar.close()
    if not out:
        raise ValueError("no images given")
    return np.concatenate(out)
