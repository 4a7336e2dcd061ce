"""Run outputs: sample grids (pillow), toy scatter plots and loss curves (matplotlib Agg),
metrics.jsonl."""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (H', W', C) grid, C in {1, 3}."""
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    x = images.detach().float().cpu().clamp(-1, 1)
    x = ((x + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    grid = torch.zeros(c, ncol * (h + padding) + padding, nrow * (w + padding) + padding, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        y0, x0 = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, y0:y0 + h, x0:x0 + w] = x[i]
    return grid.permute(1, 2, 0).numpy()


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None,
                    scale: int = 0) -> None:
    from PIL import Image

    arr = image_grid(images, nrow)
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, mode="L" if arr.shape[2] == 1 else "RGB")
    if scale == 0:  # small images are hard to judge: upscale tiny grids (nearest keeps pixels)
        scale = max(1, 256 // max(images.shape[-1], 1) // 2)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    _atomic_pil_save(img, path)


def save_samples(x: torch.Tensor, path: str | os.PathLike) -> None:
    """The samples themselves as float32: a ``.npy`` array (numpy.load) or a ``.pt`` tensor
    (torch.load), written whole or not at all."""
    from .checkpoint import save_atomic

    x = x.detach().float().cpu().contiguous()
    if Path(path).suffix.lower() == ".npy":
        save_atomic(x.numpy(), path, writer=lambda arr, f: np.save(f, arr))
    else:
        save_atomic(x, path)


@contextlib.contextmanager
def _atomic_path(path):
    """A temporary path beside ``path`` to write, renamed onto ``path`` if the block succeeds and
    removed either way. It keeps the target's suffix: pillow and matplotlib pick the format
    from it (x.jpg is a JPEG, not PNG bytes under a .jpg name), and an unknown suffix fails
    before any write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_pil_save(img, path) -> None:
    with _atomic_path(path) as tmp:
        img.save(tmp)


def save_toy_scatter(fake: torch.Tensor, real: torch.Tensor, path: str | os.PathLike,
                     title: str = "", modes: torch.Tensor | None = None) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    r = real.detach().float().cpu().numpy()
    f = fake.detach().float().cpu().numpy()
    ax.scatter(r[:, 0], r[:, 1], s=3, c="tab:orange", alpha=0.5, label="real")
    ax.scatter(f[:, 0], f[:, 1], s=3, c="tab:blue", alpha=0.5, label="generated")
    if modes is not None:
        m = modes.detach().float().cpu().numpy()
        ax.scatter(m[:, 0], m[:, 1], s=30, marker="x", c="k", label="modes")
    lim = max(np.abs(r).max(), 1.0) * 1.3
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl; a line cut by a crash is left out."""
    return _read_metrics(Path(path))[0]


def _read_metrics(path: Path) -> tuple[list[dict], list[str], bool]:
    """(records, the lines that do not parse, whether the file ends without a newline: a run
    killed mid-write leaves its last line torn)."""
    if not path.is_file():
        return [], [], False
    text = path.read_bytes().decode("utf-8", errors="replace")
    out, bad = [], []
    for line in text.splitlines():
        line = line.strip()
        if line:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad.append(line)
                continue
            if isinstance(rec, dict):
                out.append(rec)
            else:
                bad.append(line)
    return out, bad, bool(text) and not text.endswith("\n")


def plot_losses(records: list[dict], path: str | os.PathLike) -> None:
    """plots/losses.png: critic/generator losses, Wasserstein estimate and penalty (BEGAN:
    k_t and M_global), and images/s, against generator step."""
    plt = pyplot()

    recs = [r for r in records if "loss_d" in r]
    panels = [("losses", ("loss_d", "loss_g")), ("critic", ("wasserstein", "gp")),
              ("throughput", ("img_per_s",))]
    if any("m_global" in r for r in recs):
        panels.insert(2, ("BEGAN: balance k_t and convergence M_global", ("k_t", "m_global")))
    evals = [r for r in records if "modes_covered" in r]
    if evals:
        panels.append(("mode coverage", ("modes_covered",)))
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.3 * len(panels)), dpi=100, sharex=True)
    for ax, (title, keys) in zip(axes, panels):
        src = evals if keys == ("modes_covered",) else recs
        for k in keys:
            pts = [(r["step"], r[k]) for r in src if r.get(k) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=k, lw=1)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="best")
    axes[-1].set_xlabel("generator step")
    save_figure(fig, path)


# Evaluation panels (pyfast_gan.metrics.evaluator) in the order plots/metrics.png shows them.
EVAL_PANELS = ("cfid", "classes_covered", "is_score", "kl_uniform", "fid", "kid_mean",
               "modes_covered", "high_quality_fraction", "toy_fd")


def plot_metrics(records: list[dict], path: str | os.PathLike, keys=EVAL_PANELS) -> None:
    """plots/metrics.png: each evaluation measure (records with an "eval" dict) against step."""
    evals = [(r["step"], r["eval"]) for r in records if isinstance(r.get("eval"), dict)]
    keys = [k for k in keys if any(k in e for _, e in evals)]
    if not keys:
        return
    plt = pyplot()

    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 1.9 * len(keys)), dpi=100, sharex=True, squeeze=False)
    for ax, k in zip(axes[:, 0], keys):
        pts = [(s, e[k]) for s, e in evals if e.get(k) is not None]
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", ms=3, lw=1)
        ax.set_title(k, fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("generator step")
    save_figure(fig, path)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> Path:
    """tight_layout, then write the PNG atomically (a crash never leaves half a file) and close."""
    plt = pyplot()
    fig.tight_layout()
    try:
        with _atomic_path(path) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return Path(path)


def _say(msg: str) -> None:
    print(f"[pyfast_gan.train] {msg}", file=sys.stderr, flush=True)


class MetricsWriter:
    """metrics.jsonl, and the same scalars (plus sample grids) as TensorBoard events when
    ``tensorboard`` names a folder (``torch.utils.tensorboard``). ``step``: the run's step at
    start; on resume, lines and events logged after it are dropped (they will be redone)."""

    def __init__(self, path: str | os.PathLike, tensorboard: str | os.PathLike | None = None, step: int = 0,
                 say=None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records, bad, torn = _read_metrics(self.path)
        if bad or torn:
            # A line torn by a killed run would swallow the next line appended to it (both
            # lost): the file is rewritten from the lines that parse, before anything is added.
            last = self.path.read_bytes().decode("utf-8", errors="replace").rstrip().rsplit("\n", 1)[-1].strip()
            if torn and bad and bad[-1] == last:
                what = f"dropped its last line, cut mid-write by a stopped run ({last[:60]!r}...)"
                if len(bad) > 1:
                    what += f", and {len(bad) - 1} other unreadable line(s)"
            else:
                what = f"dropped {len(bad)} unreadable line(s)" if bad else "ended its last line with a newline"
            (say or _say)(f"{self.path}: {what}; its {len(self.records)} other records are kept")
            self._rewrite(self.records)
        self.truncate_after(step)
        self.tb = None
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(tensorboard), purge_step=step + 1 if step else None)

    def image(self, path: str | os.PathLike, step: int) -> None:
        """A saved sample grid or scatter plot, as the 'samples' image at ``step``."""
        if self.tb is not None:
            from PIL import Image

            self.tb.add_image("samples", np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the checkpoint's step (they will be redone)."""
        keep = [r for r in self.records if r.get("step", 0) <= step]
        if len(keep) != len(self.records):
            self.records = keep
            self._rewrite(keep)

    def _rewrite(self, records: list[dict]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            group = "eval" if "eval" in record else ("samples" if "modes_covered" in record else "train")
            for k, v in {**record, **record.get("eval", {})}.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{group}/{k}", v, record["step"])
