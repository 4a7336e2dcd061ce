"""The runs every section of the comparison study shares (``compare`` for DCGAN/WGAN/WGAN-GP,
``extension`` for LSGAN/BEGAN/CoGAN, ``fast`` for --fast against eager WGAN-GP): the run table
and per-data budget, training one run in its own trainer process, scoring a finished run, and
the figures drawn from the scored rows."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from pyfast_gan.artifacts.outputs import pyplot, read_metrics, save_figure
from pyfast_gan._cli import flags_alone

# name -> (loss, extra trainer flags)
RUNS = {
    "dcgan": ("dcgan", []),
    "wgan-nc1": ("wgan", ["--n-critic", "1"]),
    "wgan-nc2": ("wgan", ["--n-critic", "2"]),
    "wgan-nc4": ("wgan", ["--n-critic", "4"]),
    "wgan-nc5": ("wgan", ["--n-critic", "5"]),
    "wgan-gp": ("wgan-gp", []),
}
# The extension: more of the source study's variants, on one image set (see pyfast_gan.experiments.extension).
EXTENSION = {
    "lsgan": ("lsgan", []),
    "began": ("began", []),
    # BEGAN with its balance term started in its working range and aimed at gamma = 1: the
    # paper's k_0 = 0 leaves k_t near 0 for the whole 1,200-step budget and the generator
    # collapses (see the report's notes); lambda_k stays the paper's.
    "began-tuned": ("began", ["--began-k0", "0.15", "--began-gamma", "1.0"]),
    "cogan-negative": ("cogan", ["--cogan-domain", "negative"]),
    "cogan-edges": ("cogan", ["--cogan-domain", "edges"]),
}
# The --fast check (see pyfast_gan.experiments.fast_vs_eager): WGAN-GP with the trainer's --fast
# switches, beside the eager "wgan-gp" run, each on several seeds.
FAST = {"wgan-gp-fast": ("wgan-gp", ["--fast"])}
ALL_RUNS = {**RUNS, **EXTENSION, **FAST}  # run name -> (loss, flags), every section
SECTIONS = ("all", "main", "extension", "fast", "budget")
IMAGE_DATA = ("mnist", "digits")  # the embedded labelled sets, scored by their digit classifier
DATA = (*IMAGE_DATA, "25gaussians")
# Per-data budget: the trainer's own defaults for that data (pyfast_gan.train.config), the
# batch size every run shares, and how often the metrics are taken during training.
_IMAGE_BUDGET = dict(steps=1200, batch_size=64, eval_every=100, base=16)
BUDGET = {**{d: _IMAGE_BUDGET for d in IMAGE_DATA}, "25gaussians": dict(steps=3000, batch_size=256, eval_every=250)}
DATA_TITLE = {"mnist": "real MNIST", "digits": "the 8x8 digits", "25gaussians": "25 Gaussians"}


def run_name(name: str, seed: int, study_seed: int) -> str:
    """A run's folder and row name: the run table's name at the study's seed, else name-seedS."""
    return name if seed == study_seed else f"{name}-seed{seed}"


def _checkpoint_step(run_dir: Path) -> int:
    p = run_dir / "checkpoints" / "latest.pt"
    if not p.is_file():
        return -1
    try:
        return int(torch.load(p, map_location="cpu", weights_only=False)["step"])
    except Exception:
        return -1


def paper_flags(loss: str, data: str) -> list[str]:
    """On the image sets, each loss's paper settings and the budget's width, spelled out: the
    no-argument run's recipe for WGAN-GP on the embedded digits is not the study's subject."""
    if data not in IMAGE_DATA:
        return []
    from pyfast_gan.losses import PRESETS

    p = PRESETS[loss]
    out = ["--base", str(BUDGET[data]["base"]), "--lr", str(p["lr"]), "--n-critic", str(p["n_critic"]), "--ema", "0"]
    return out + (["--betas", *map(str, p["betas"])] if "betas" in p else [])


def train_run(data: str, name: str, args, run_dir: Path, seed: int | None = None, *, spec=None,
              steps: int | None = None, eval_every: int | None = None, extra_flags: tuple = ()) -> dict:
    """Train (or resume, or reuse) one run (``seed``: default the study's) in its own process;
    returns its record. ``spec``: its (loss, flags), default the run table's entry for ``name``;
    ``steps``/``eval_every``: default the study's (``args``, else the data's budget);
    ``extra_flags``: more trainer flags (given last)."""
    loss, extra = spec or ALL_RUNS[name]
    seed = args.seed if seed is None else seed
    b = BUDGET[data]
    steps = steps or args.steps or b["steps"]
    eval_every = (args.eval_every or b["eval_every"]) if eval_every is None else eval_every
    done = _checkpoint_step(run_dir)
    if done >= steps:
        return {"data": data, "run": name, "reused": True}
    cmd = [sys.executable, "-m", "pyfast_gan.train", "--loss", loss, "--data", data, "--steps", str(steps),
           *paper_flags(loss, data),
           "--batch-size", str(b["batch_size"]), "--seed", str(seed), "--out", str(run_dir),
           "--eval-every", str(eval_every), "--eval-n", str(args.eval_n),
           "--device", args.device, "--no-progress",
           # eager unless the run says --fast: the study's runs do not change with the machine
           *flags_alone(extra), *extra_flags]
    if done >= 0:
        cmd = [sys.executable, "-m", "pyfast_gan.train", "--resume", str(run_dir), "--steps", str(steps),
               "--no-progress"]
    elif (run_dir / "config.json").exists():
        # An attempt that died before its first checkpoint: the trainer never overwrites a
        # run, so keep it aside and start again.
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.aborted-{time.strftime('%Y%m%d-%H%M%S')}"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(run_dir / "train.log", "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise RuntimeError(f"{data}/{name} failed (exit {rc}); see {run_dir / 'train.log'}")
    return {"data": data, "run": name, "reused": False, "wall_s": time.perf_counter() - t0}


def score_run(data: str, name: str, run_dir: Path, args, evaluator) -> dict:
    from pyfast_gan.metrics.evaluator import scalar_items
    from pyfast_gan.sample import load_generator

    G, cfg = load_generator(str(run_dir), device="cpu")
    ck = torch.load(run_dir / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)
    res = evaluator(G, cfg["z_dim"])
    recs = read_metrics(run_dir / "metrics.jsonl")
    return {
        "data": data, "run": name, "dir": str(run_dir), "loss": cfg["loss"], "seed": cfg["seed"],
        "fast": cfg.get("fast") in (True, "on"),  # a bool in runs from before --fast auto
        "n_critic": cfg["n_critic"],
        "optimizer": cfg["optimizer"], "lr": cfg["lr"], "betas": cfg["betas"], "batch_size": cfg["batch_size"],
        "steps": int(ck["step"]), "critic_steps": int(ck["critic_steps"]),
        "train_time_s": round(float(ck.get("elapsed", 0.0)), 1),
        "scores": scalar_items(res),
        "counts": res.get("class_counts") or res.get("mode_counts"),
        "history": [{"step": r["step"], **r["eval"]} for r in recs if isinstance(r.get("eval"), dict)],
        "losses": [{k: r[k] for k in ("step", "time", "loss_d", "loss_g", "wasserstein", "m_global", "k_t") if k in r}
                   for r in recs if "loss_d" in r],
    }


def critic_tracking(row: dict, key: str, stat: str = "wasserstein") -> float | None:
    """Spearman correlation, over the evaluation steps, between the critic's gap
    E[D(real)] - E[D(fake)] (the Wasserstein estimate for WGAN and WGAN-GP; logged as
    "wasserstein" for every loss) averaged since the previous evaluation, and the metric
    ``key``. The WGAN paper's claim is that its critic value tracks sample quality (a
    strongly positive value against a lower-is-better metric); the DCGAN loss does not.
    ``stat="m_global"``: the same for BEGAN's convergence measure (lower is better, so it
    tracks quality when the value is strongly positive too)."""
    from scipy.stats import spearmanr

    hist = [h for h in row["history"] if key in h]
    xs, ys, prev = [], [], 0
    for h in hist:
        gaps = [r[stat] for r in row["losses"] if prev < r["step"] <= h["step"] and r.get(stat) is not None]
        prev = h["step"]
        if gaps:
            xs.append(sum(gaps) / len(gaps))
            ys.append(h[key])
    if len(xs) < 3 or len(set(ys)) < 2 or len(set(xs)) < 2:
        return None
    return float(spearmanr(xs, ys).statistic)


# ---- figures ---------------------------------------------------------------------------------


def panels(n: int, width: float, height: float, ncols: int = 3):
    """(figure, n axes) on a grid of at most ``ncols`` columns; unused cells hidden."""
    ncol = min(ncols, n)
    nrow = -(-n // ncol)
    fig, axes = pyplot().subplots(nrow, ncol, figsize=(width * ncol, height * nrow), dpi=110, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def figure_samples(data: str, rows: list[dict], out: Path, seed: int, name: str = "") -> Path:
    """Final samples of every run side by side, from the same 64 noise vectors."""
    from pyfast_gan.data import ToySampler
    from pyfast_gan.sample import load_generator
    from pyfast_gan.artifacts.outputs import image_grid

    fig, axes = panels(len(rows), 3.3, 3.6)
    image = data in IMAGE_DATA
    real = None if image else ToySampler(data).sample(2000, torch.Generator().manual_seed(seed + 1))
    for ax, row in zip(axes, rows):
        G, cfg = load_generator(row["dir"], device="cpu")
        z = torch.randn(64 if image else 1000, cfg["z_dim"], generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            x = G(z).float()
        s = row["scores"]
        if image:
            ax.imshow(image_grid(x, nrow=8)[:, :, 0], cmap="gray", vmin=0, vmax=255)
            sub = f"cFID {s['cfid']:.1f}, {s['classes_covered']}/10 classes"
        else:
            r = real.numpy()
            ax.scatter(r[:, 0], r[:, 1], s=1, c="tab:orange", alpha=0.4)
            ax.scatter(x[:, 0], x[:, 1], s=1, c="tab:blue", alpha=0.4)
            ax.set_xlim(-2.2, 2.2)
            ax.set_ylim(-2.2, 2.2)
            ax.set_aspect("equal")
            sub = f"{s['modes_covered']}/25 modes, HQ {s['high_quality_fraction']:.2f}"
        ax.set_title(f"{row['run']}\n{sub}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, out / (name or f"{data}_samples.png"))


def figure_losses(data: str, rows: list[dict], out: Path, name: str = "") -> Path:
    fig, axes = panels(len(rows), 3.3, 2.6)
    for ax, row in zip(axes, rows):
        for key, lab in (("loss_d", "critic loss"), ("loss_g", "generator loss")):
            pts = [(r["step"], r[key]) for r in row["losses"] if r.get(key) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, lw=0.8, label=lab)
        ax.set_title(row["run"], fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("generator step", fontsize=7)
    axes[0].legend(fontsize=6)
    return save_figure(fig, out / (name or f"{data}_losses.png"))


def figure_metric_vs_step(data: str, rows: list[dict], out: Path, name: str = "") -> Path:
    keys = (("cfid", "classifier FID (log)"), ("classes_covered", "classes covered")) if data in IMAGE_DATA else \
        (("modes_covered", "modes covered"), ("high_quality_fraction", "high-quality fraction"))
    fig, axes = panels(len(keys), 5.2, 3.2)
    for ax, (key, title) in zip(axes, keys):
        for row in rows:
            pts = [(h["step"], h[key]) for h in row["history"] if key in h]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=2, lw=1, label=row["run"])
        if key == "cfid":
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("generator step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return save_figure(fig, out / (name or f"{data}_metric_vs_step.png"))


def fmt_or_na(v, fmt):
    return "n/a" if v is None else format(v, fmt)


def provenance_lines(part: dict) -> list[str]:
    """A report section's command and machine, from its saved ``argv``, ``machine`` and ``settings``."""
    m, st = part["machine"], part["settings"]
    return [
        "Produced by:",
        "",
        "```",
        "python -m pyfast_gan.experiments " + " ".join(part["argv"]),
        "```",
        "",
        f"Machine: {m['device']}, {m['cpu_count']} cores; {st['jobs']} runs at a time with {st['threads']} "
        f"thread(s) each; torch {m['torch']}, Python {m['python']}, commit {m['commit']}, {m['date']}.",
        "",
    ]


def classifier_cells(s: dict) -> str:
    """The report's cFID | IS | classes | KL(hist‖U) cells of classifier scores ``s``."""
    return f"{s['cfid']:.1f} | {s['is_score']:.2f} | {s['classes_covered']}/10 | {s['kl_uniform']:.3f}"
