"""One object that scores a generator with every measure that applies to its data: used by
``python -m pyfast_gan.evaluate``, by the trainer's ``--eval-every`` and by the comparison study.

Metric groups (``metrics=`` names):

* ``modes``      8/25 Gaussians: modes covered, high-quality fraction (:func:`mode_coverage`);
* ``toy_fd``     any toy data: Fréchet distance between generated and real 2-D points;
* ``classifier`` the embedded digits or mnist: cfid, is_score, classes_covered, kl_uniform, with
  that set's classifier (:mod:`.digits_classifier`);
* ``fid``, ``kid`` any image data, with the FID Inception network's weights (:mod:`.inception`).

"auto" means every group that applies and can run; fid/kid are left out of "auto" (with the
reason in :attr:`Evaluator.skipped`) when no Inception weights are found, but asking for them
by name without weights is an error that says where to get them.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pyfast_gan.data.embedded import EMBEDDED_DATA
from pyfast_gan.data.toy import TOY_DATASETS

from .frechet import feature_statistics, frechet_distance

METRIC_GROUPS = ("modes", "toy_fd", "classifier", "fid", "kid")

# What each reported number means, for the evaluate table and the report.
DESCRIPTIONS = {
    "modes_covered": "modes with >= 10% of a uniform share of high-quality samples",
    "high_quality_fraction": "samples within 3 std of a mode",
    "toy_fd": "Frechet distance to real points (2-D), lower is better",
    "cfid": "Frechet distance in the digits classifier's features, lower is better",
    "is_score": "Inception-Score formula with the digits classifier, 1..10, higher is better",
    "classes_covered": "digit classes with >= 10% of a uniform share of predictions",
    "kl_uniform": "KL(predicted-class histogram || uniform), 0 = balanced, 2.30 = one class",
    "mean_confidence": "mean top class probability of the digits classifier",
    "fid": "FID (Inception-v3 pool3), lower is better",
    "kid_mean": "KID x 1 (polynomial-kernel MMD^2, unbiased), lower is better",
    "kid_std": "KID standard deviation over subsets",
}


def applicable(data: str) -> tuple[str, ...]:
    if data in ("8gaussians", "25gaussians"):
        return ("modes", "toy_fd")
    if data in TOY_DATASETS:
        return ("toy_fd",)
    if data in EMBEDDED_DATA:
        return ("classifier", "fid", "kid")
    return ("fid", "kid")


def _file_id(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha1(f"{path.name}:{st.st_size}".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


class Evaluator:
    """Scores generators on ``data`` (a toy name, "digits", "mnist" or a dataset path).

    ``real``: for image data, the dataset as a uint8 tensor (N, C, H, W) (the trainer passes the
    one it decoded; otherwise it is opened from ``data``/``data_format``/``image_size``/
    ``channels``). ``n`` generated samples are drawn from fixed noise (``seed``), so scores at
    different steps or of different runs see the same z. Nothing here touches the global RNG.
    """

    def __init__(self, data: str, *, metrics=("auto",), real: torch.Tensor | None = None,
                 data_format: str = "auto", image_size: int | None = None, channels: int | None = None,
                 n: int = 10000, batch_size: int = 250, seed: int = 0, inception_weights: str | None = None,
                 device="cpu", progress: bool = False, max_real: int = 50000):
        if isinstance(metrics, str):
            metrics = [m for m in metrics.replace(",", " ").split() if m]
        metrics = list(metrics) or ["auto"]
        bad = [m for m in metrics if m not in METRIC_GROUPS + ("auto",)]
        if bad:
            raise ValueError(f"unknown metric(s) {bad}: choose from {('auto',) + METRIC_GROUPS}")
        if n < 2:
            raise ValueError(f"n must be >= 2, got {n}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.n, self.batch_size, self.seed = data, int(n), int(batch_size), int(seed)
        self.device = torch.device(device)
        self.progress = progress
        self.skipped: dict[str, str] = {}
        fits = applicable(data)
        if "auto" in metrics:
            wanted = list(fits)
        else:
            wanted = list(dict.fromkeys(metrics))
            misfit = [m for m in wanted if m not in fits]
            if misfit:
                raise ValueError(f"metric(s) {misfit} do not apply to data {data!r} (it has {list(fits)})")
        self.inception = None
        if {"fid", "kid"} & set(wanted):
            from .inception import INCEPTION_HELP, find_inception_weights

            try:
                path = find_inception_weights(inception_weights or None)
            except FileNotFoundError as e:
                raise ValueError(str(e)) from e
            if path is None:
                if "auto" in metrics:
                    for m in ("fid", "kid"):
                        if m in wanted:
                            wanted.remove(m)
                            self.skipped[m] = "no Inception weights found (--inception-weights PATH)"
                else:
                    raise ValueError("fid/kid need the FID Inception network's weights. " + INCEPTION_HELP)
            else:
                self.inception_path = path
        self.metrics = tuple(wanted)

        self.toy = None
        if data in TOY_DATASETS:
            from pyfast_gan.data import ToySampler

            sampler = ToySampler(data)
            real_pts = sampler.sample(self.n, torch.Generator().manual_seed(self.seed + 1))
            self.toy = (sampler, real_pts, feature_statistics(real_pts))
        self.classifier = None
        if "classifier" in self.metrics:
            from .digits_classifier import load_digits_classifier

            self.classifier = load_digits_classifier(device=self.device, progress=progress, data=data)
        self.real_features = None
        if {"fid", "kid"} & set(self.metrics):
            self._prepare_inception(real, data_format, image_size, channels, max_real)

    # ---- reference features for FID/KID ---------------------------------------------------
    def _prepare_inception(self, real, data_format, image_size, channels, max_real):
        from pyfast_gan._paths import cache_dir
        from .inception import FIDInceptionV3, extract_features

        try:
            self.inception = FIDInceptionV3(str(self.inception_path)).to(self.device)
        except ImportError as e:  # torchvision / pytorch-fid missing: a usage error, said plainly
            raise ValueError(str(e)) from e
        if real is None:
            from pyfast_gan.data import decode_all, open_dataset

            ds = open_dataset(self.data, data_format=data_format, image_size=image_size, channels=channels,
                              progress=self.progress)
            real = decode_all(ds, progress=self.progress)
        if real.dtype != torch.uint8 or real.dim() != 4:
            raise ValueError(f"real images must be a uint8 (N, C, H, W) tensor, got {real.dtype} {tuple(real.shape)}")
        if real.shape[0] > max_real:
            keep = torch.randperm(real.shape[0], generator=torch.Generator().manual_seed(self.seed))[:max_real]
            real = real[keep.sort().values]
        # Reference features are cached per dataset content and weights file: computing them
        # for 50k images takes minutes on a GPU and far longer on a CPU.
        h = hashlib.sha1(real.contiguous().numpy().tobytes())
        h.update(_file_id(self.inception_path).encode())
        path = cache_dir() / "fid_stats" / f"{h.hexdigest()[:20]}.npz"
        if path.exists():
            try:
                with np.load(path) as z:
                    self.real_features = z["features"].astype(np.float64)
                    self.real_stats = (z["mu"], z["sigma"])
                return
            except Exception as e:
                print(f"pyfast_gan: recomputing unreadable reference statistics {path} ({e})", file=sys.stderr)
        t0 = time.perf_counter()
        if self.progress:
            print(f"pyfast_gan: Inception features of {real.shape[0]} real images (cached at {path})",
                  file=sys.stderr, flush=True)
        feats = extract_features(self.inception, real, batch_size=self.batch_size, device=self.device,
                                 progress=self.progress)
        self.real_features = feats
        self.real_stats = feature_statistics(feats)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
        np.savez(tmp, features=feats.astype(np.float32), mu=self.real_stats[0], sigma=self.real_stats[1])
        os.replace(tmp, path)
        if self.progress:
            print(f"pyfast_gan: reference features done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    # ---- scoring ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, G: torch.nn.Module, z_dim: int):
        """Yields batches of ``n`` samples (float32, on the evaluator's device) from fixed noise."""
        g = torch.Generator().manual_seed(self.seed)
        z = torch.randn(self.n, z_dim, generator=g)
        was = G.training
        G.eval()
        try:
            for i in range(0, self.n, self.batch_size):
                yield G(z[i:i + self.batch_size].to(self.device)).float()
        finally:
            G.train(was)

    def __call__(self, G: torch.nn.Module, z_dim: int) -> dict:
        """Scores of generator ``G`` (its parameters' device must be the evaluator's)."""
        return self.score_batches(self.generate(G, z_dim))

    def score_batches(self, batches) -> dict:
        """Scores of samples given as an iterable of batches (images in [-1, 1] or 2-D points):
        the same measures for real data give the reference values."""
        t0 = time.perf_counter()
        pts, cls_f, cls_p, inc_f = [], [], [], []
        n = 0
        if self.progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=-(-self.n // self.batch_size), desc="evaluating", unit="batch",
                           file=sys.stderr, leave=False)
        for x in batches:
            n += x.shape[0]
            if self.toy is not None:
                pts.append(x.cpu())
            if self.classifier is not None:
                f, p = self.classifier.features_and_probs(x)
                cls_f.append(f)
                cls_p.append(p)
            if self.inception is not None:
                from .inception import extract_features

                inc_f.append(extract_features(self.inception, x, batch_size=self.batch_size, device=self.device))
        out: dict = {"n": n}
        if self.toy is not None:
            sampler, real_pts, (rmu, rsig) = self.toy
            x = torch.cat(pts).double()
            finite = torch.isfinite(x).all(dim=1)
            out["nonfinite_samples"] = int((~finite).sum())
            if "modes" in self.metrics:
                from .modes import mode_coverage

                cov = mode_coverage(x, sampler.modes, sampler.std)
                out.update(modes_covered=cov["covered"], num_modes=cov["num_modes"],
                           high_quality_fraction=cov["high_quality_fraction"], mode_counts=cov["counts"])
            if "toy_fd" in self.metrics:
                xf = x[finite]
                out["toy_fd"] = (frechet_distance(*feature_statistics(xf), rmu, rsig) if xf.shape[0] >= 2
                                 else float("inf"))
        if self.classifier is not None:
            from .digits_classifier import classifier_scores

            out.update(classifier_scores(torch.cat(cls_f), torch.cat(cls_p), self.classifier.ref_mu,
                                         self.classifier.ref_sigma))
            out["classifier_test_accuracy"] = self.classifier.test_accuracy
        if self.inception is not None:
            feats = np.concatenate(inc_f)
            if "fid" in self.metrics:
                out["fid"] = frechet_distance(*feature_statistics(feats), *self.real_stats)
            if "kid" in self.metrics:
                from .kid import kernel_inception_distance

                k = kernel_inception_distance(self.real_features, feats, seed=self.seed)
                out.update(kid_mean=k["mean"], kid_std=k["std"])
        out["eval_time_s"] = round(time.perf_counter() - t0, 3)
        return out


# The headline score of a result: the first of these it holds (each lower-is-better).
HEADLINE = ("cfid", "fid", "toy_fd")


def headline(result: dict) -> tuple[str, float] | None:
    """(name, value) of ``result``'s headline score, or None when it has none."""
    key = next((k for k in HEADLINE if k in result), None)
    return (key, float(result[key])) if key else None


def scalar_items(result: dict) -> dict:
    """The scalar entries of a result (what goes into metrics.jsonl lines and tables)."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
