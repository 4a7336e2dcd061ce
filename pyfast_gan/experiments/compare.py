"""``python -m pyfast_gan.experiments compare``: DCGAN vs WGAN (n_critic 1, 2, 4, 5) vs WGAN-GP
on the embedded digits and on 25 Gaussians, with the same budget and seeds, scored by
pyfast_gan.metrics and written up as a markdown report with images.

Budget: every run trains the same number of generator steps with the same batch size,
architecture, width, noise size and seed; each loss keeps its paper's optimizer settings
(pyfast_gan.losses.PRESETS; for toy data also the toy defaults of pyfast_gan.train.config).
So runs with more critic steps per generator step spend more computation: the report shows
the critic iterations and the wall time next to the scores.

The extension (``--section extension``): LSGAN and BEGAN beside them on the digits (BEGAN
twice: the paper's settings, and ``began-tuned`` with the flags ``EXTENSION`` gives it), and
CoGAN on two pairs of digit domains (digits/negatives, digits/edges), scored per domain and
by the correspondence of its pairs against shuffled pairs. BEGAN is not run on 25 Gaussians:
its critic is an auto-encoder, and auto-encoding a 2-D point through a bottleneck of its own
size has nothing to compress. ``--section extension`` trains and scores only these runs and
rewrites the report with the earlier sections kept as they are in results.json.

Each run is a ``python -m pyfast_gan.train`` process writing to OUT/runs/<data>/<run>/; a run
that already finished is reused and an interrupted one is resumed, so the study can be
stopped and restarted without losing work. The final checkpoints are scored with
``--final-n`` samples from the same fixed noise.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from pyfast_gan.train.outputs import pyplot, save_figure

# name -> (loss, extra trainer flags)
RUNS = {
    "dcgan": ("dcgan", []),
    "wgan-nc1": ("wgan", ["--n-critic", "1"]),
    "wgan-nc2": ("wgan", ["--n-critic", "2"]),
    "wgan-nc4": ("wgan", ["--n-critic", "4"]),
    "wgan-nc5": ("wgan", ["--n-critic", "5"]),
    "wgan-gp": ("wgan-gp", []),
}
# The extension: more of the source study's variants, on the digits only (see the docstring).
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
ALL_RUNS = {**RUNS, **EXTENSION}  # run name -> (loss, flags), both sections
SECTIONS = ("all", "main", "extension")
DATA = ("digits", "25gaussians")
# Per-data budget: the trainer's own defaults for that data (pyfast_gan.train.config), the
# batch size every run shares, and how often the metrics are taken during training.
BUDGET = {
    "digits": dict(steps=1200, batch_size=64, eval_every=100),
    "25gaussians": dict(steps=3000, batch_size=256, eval_every=250),
}


def build_parser() -> argparse.ArgumentParser:
    from pyfast_gan._cli import ArgumentParser

    p = ArgumentParser(prog="python -m pyfast_gan.experiments",
                       description="Studies that train several runs and report their scores.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="DCGAN vs WGAN (n_critic sweep) vs WGAN-GP, same budget and seeds",
                       description=__doc__.split("\n\n")[0].replace("``", ""),
                       epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--data", nargs="+", default=list(DATA), choices=DATA, help="datasets (default: both)")
    c.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS),
                   help="runs to compare (default: all)")
    c.add_argument("--section", default="all", choices=SECTIONS,
                   help="main: the DCGAN/WGAN/WGAN-GP study; extension: LSGAN, BEGAN and CoGAN on the digits "
                        "(the report keeps the other section from OUT/results.json); all: both (default)")
    c.add_argument("--ext-runs", nargs="+", default=list(EXTENSION), choices=list(EXTENSION),
                   help="extension runs (default: all)")
    c.add_argument("--steps", type=int, default=0,
                   help="generator steps of every run (default: per data, digits 1200, 25gaussians 3000)")
    c.add_argument("--eval-every", type=int, default=0,
                   help="score every K steps during training (default: digits 100, 25gaussians 250)")
    c.add_argument("--eval-n", type=int, default=2000, help="samples per evaluation during training (default: 2000)")
    c.add_argument("--final-n", type=int, default=10000, help="samples scored at the end (default: 10000)")
    c.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    c.add_argument("--jobs", type=int, default=2, help="runs trained at once (default: 2)")
    c.add_argument("--threads", type=int, default=1, help="CPU threads per run (default: 1)")
    c.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="training device")
    c.add_argument("--out", default="docs/results/compare", help="output folder (default: docs/results/compare)")
    c.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def _say(msg: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _checkpoint_step(run_dir: Path) -> int:
    p = run_dir / "checkpoints" / "latest.pt"
    if not p.is_file():
        return -1
    try:
        return int(torch.load(p, map_location="cpu", weights_only=False)["step"])
    except Exception:
        return -1


def train_run(data: str, name: str, args, run_dir: Path) -> dict:
    """Train (or resume, or reuse) one run in its own process; returns its record."""
    loss, extra = ALL_RUNS[name]
    b = BUDGET[data]
    steps = args.steps or b["steps"]
    done = _checkpoint_step(run_dir)
    if done >= steps:
        return {"data": data, "run": name, "reused": True}
    cmd = [sys.executable, "-m", "pyfast_gan.train", "--loss", loss, "--data", data, "--steps", str(steps),
           "--batch-size", str(b["batch_size"]), "--seed", str(args.seed), "--out", str(run_dir),
           "--eval-every", str(args.eval_every or b["eval_every"]), "--eval-n", str(args.eval_n),
           "--device", args.device, "--no-progress", *extra]
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


def _read_jsonl(path: Path) -> list[dict]:
    from pyfast_gan.train.outputs import read_metrics

    return read_metrics(path)


def score_run(data: str, name: str, run_dir: Path, args, evaluator) -> dict:
    from pyfast_gan.metrics.suite import scalar_items
    from pyfast_gan.sample import load_generator

    G, cfg = load_generator(str(run_dir), device="cpu")
    ck = torch.load(run_dir / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)
    res = evaluator(G, cfg["z_dim"])
    recs = _read_jsonl(run_dir / "metrics.jsonl")
    return {
        "data": data, "run": name, "loss": cfg["loss"], "n_critic": cfg["n_critic"],
        "optimizer": cfg["optimizer"], "lr": cfg["lr"], "betas": cfg["betas"], "batch_size": cfg["batch_size"],
        "steps": int(ck["step"]), "critic_steps": int(ck["critic_steps"]),
        "train_time_s": round(float(ck.get("elapsed", 0.0)), 1),
        "scores": scalar_items(res),
        "counts": res.get("class_counts") or res.get("mode_counts"),
        "history": [{"step": r["step"], **r["eval"]} for r in recs if isinstance(r.get("eval"), dict)],
        "losses": [{k: r[k] for k in ("step", "loss_d", "loss_g", "wasserstein", "m_global", "k_t") if k in r}
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


def real_baseline(data: str, n: int, seed: int, evaluator) -> dict:
    """The same measures on real data: the held-out digits split, or true 25-Gaussian samples."""
    from pyfast_gan.metrics.suite import scalar_items

    if data == "digits":
        from pyfast_gan.metrics.digits_classifier import digits_with_labels, split_indices

        images, labels = digits_with_labels()
        _, te = split_indices(labels)
        return scalar_items(evaluator.score_batches([images[te]]))
    from pyfast_gan.data import ToySampler

    return scalar_items(evaluator.score_batches([ToySampler(data).sample(n, torch.Generator().manual_seed(seed + 99))]))


# ---- figures ---------------------------------------------------------------------------------
def _panels(n: int, width: float, height: float, ncols: int = 3):
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
    from pyfast_gan.train.outputs import image_grid

    fig, axes = _panels(len(rows), 3.3, 3.6)
    real = ToySampler(data).sample(2000, torch.Generator().manual_seed(seed + 1)) if data != "digits" else None
    for ax, row in zip(axes, rows):
        G, cfg = load_generator(row["dir"], device="cpu")
        z = torch.randn(64 if data == "digits" else 1000, cfg["z_dim"], generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            x = G(z).float()
        s = row["scores"]
        if data == "digits":
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
    fig, axes = _panels(len(rows), 3.3, 2.6)
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
    keys = (("cfid", "classifier FID (log)"), ("classes_covered", "classes covered")) if data == "digits" else \
        (("modes_covered", "modes covered"), ("high_quality_fraction", "high-quality fraction"))
    fig, axes = _panels(len(keys), 5.2, 3.2)
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


# ---- report ----------------------------------------------------------------------------------
def _machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    except OSError:
        commit = ""
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU: {cpu}"
    return {"device": dev, "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "commit": commit or "unknown", "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}


def _f(v, fmt):
    return "n/a" if v is None else format(v, fmt)


def write_report(out: Path, results: dict, args, argv: list[str]) -> Path:
    ext = results.get("extension")
    # The main section's own command and settings: with --section extension it is the one kept
    # from results.json, run earlier (maybe on another commit).
    args = argparse.Namespace(**{**vars(args), **results.get("settings", {})})
    argv = results.get("argv", argv)
    m = results["machine"]
    lines = [] if not results["data"] else [
        "# DCGAN vs WGAN vs WGAN-GP: same budget, same seeds",
        "",
        "Produced by (from the repository root, after `bash scripts/setup.sh`):",
        "",
        "```",
        "python -m pyfast_gan.experiments " + " ".join(argv),
        "```",
        "",
        f"Machine: {m['device']}, {m['cpu_count']} cores; {args.jobs} runs at a time with {args.threads} "
        f"thread(s) each; torch {m['torch']}, Python {m['python']}, commit {m['commit']}, {m['date']}.",
        "",
        "Budget: every run of a dataset trains the same number of generator steps with the same batch size, "
        "model, width, noise size and seed (" + str(args.seed) + "). Each loss keeps its paper's optimizer "
        "settings (DCGAN: Adam 2e-4, betas (0.5, 0.999); WGAN: RMSprop 5e-5, clip 0.01; WGAN-GP: Adam 1e-4, "
        "betas (0, 0.9), lambda 10; toy data: the trainer's toy defaults, see `pyfast_gan/train/config.py`). "
        "Runs with more critic steps per generator step therefore use more computation: the critic steps "
        "and the training time (the trainer's own clock, start-up and evaluation excluded) are in the tables.",
        "",
        f"Train times are each run's wall clock while {args.jobs} runs shared the machine (and anything else "
        "running on it), so they compare only roughly; the critic-step counts are exact.",
        "",
        "The scores are not tuned: the table shows what these settings give in this budget.",
        "",
    ]
    for data in results["data"]:
        rows = results["runs"][data]
        base = results["baselines"][data]
        lines += [f"## {data}", ""]
        if data == "digits":
            acc = rows[0]["scores"].get("classifier_test_accuracy") if rows else None
            lines += [
                f"Scored with {args.final_n} samples per run by the digits classifier "
                f"(`pyfast_gan.metrics.digits_classifier`, test accuracy {_f(acc, '.4f')} on the held-out 20% "
                "of the digits). cFID: Fréchet distance in its 128-d features to all 1,797 real digits (lower is "
                "better); IS: exp E KL(p(y|x) || p(y)) (1 to 10); classes: digit classes receiving at least 10% "
                "of a uniform share of the predictions; KL: predicted-class histogram vs uniform (0 balanced, "
                "2.30 all one class).",
                "",
                "| run | loss | n_critic | generator steps | critic steps | cFID | IS | classes | KL(hist‖U) | "
                "ρ(critic gap, cFID) | train time (s) |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in rows:
                s = r["scores"]
                lines.append(f"| {r['run']} | {r['loss']} | {r['n_critic']} | {r['steps']} | {r['critic_steps']} | "
                             f"{s['cfid']:.1f} | {s['is_score']:.2f} | {s['classes_covered']}/10 | "
                             f"{s['kl_uniform']:.3f} | {_f(r['tracking'], '+.2f')} | {r['train_time_s']:.0f} |")
            lines.append(f"| real digits (held-out split, n={base['n']}) | | | | | {base['cfid']:.1f} | "
                         f"{base['is_score']:.2f} | {base['classes_covered']}/10 | {base['kl_uniform']:.3f} | | |")
            lines += ["", "Predicted-class counts of each run's samples (classes 0-9):", ""]
            for r in rows:
                lines.append(f"- {r['run']}: {r['counts']}")
        else:
            lines += [
                f"Scored with {args.final_n} samples per run. A sample is high quality when it lies within 3 "
                "standard deviations of its nearest mode; a mode is covered when it has at least 10% of a uniform "
                "share of the high-quality samples (`pyfast_gan.metrics.mode_coverage`). toy FD: Fréchet "
                "distance between generated and real points.",
                "",
                "| run | loss | n_critic | generator steps | critic steps | modes covered | high-quality fraction | "
                "toy FD | ρ(critic gap, toy FD) | train time (s) |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in rows:
                s = r["scores"]
                lines.append(f"| {r['run']} | {r['loss']} | {r['n_critic']} | {r['steps']} | {r['critic_steps']} | "
                             f"{s['modes_covered']}/{s['num_modes']} | {s['high_quality_fraction']:.3f} | "
                             f"{s['toy_fd']:.4f} | {_f(r['tracking'], '+.2f')} | {r['train_time_s']:.0f} |")
            lines.append(f"| true distribution (n={base['n']}) | | | | | {base['modes_covered']}/{base['num_modes']}"
                         f" | {base['high_quality_fraction']:.3f} | {base['toy_fd']:.4f} | | |")
        lines += ["", "ρ: Spearman correlation over the evaluation steps between the critic's gap E[D(real)] - "
                  "E[D(fake)] (for WGAN and WGAN-GP the Wasserstein estimate) and the "
                  + ("cFID" if data == "digits" else "toy FD") + ": close to +1 when the critic's value tracks "
                  "sample quality, as the WGAN paper reports for its critic and not for the DCGAN loss."]
        figs = results["figures"][data]
        lines += [
            "",
            f"Final samples (same noise for every run):\n\n![{data} samples]({figs['samples']})",
            "",
            f"Scores during training ({args.eval_n} samples per point):\n\n![{data} metric vs step]({figs['metric']})",
            "",
            f"Losses:\n\n![{data} losses]({figs['losses']})",
            "",
        ]
    if ext is not None:
        lines += extension_lines(ext, title=not results["data"])
    notes = out / "NOTES.md"  # what the images show, written by whoever looked at them
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    lines += ["Numbers: `results.json` next to this report. Runs (checkpoints, metrics.jsonl, logs) are not "
              "committed; the commands above recreate them.", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


SETTINGS = ("jobs", "threads", "eval_n", "final_n", "seed")


def compare(args, argv: list[str]) -> dict:
    from pyfast_gan.metrics.suite import Evaluator

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    main_part = args.section in ("all", "main")
    ext_part = args.section in ("all", "extension")
    jobs = [(d, r) for d in args.data for r in args.runs] if main_part else []
    jobs += [("digits", r) for r in args.ext_runs] if ext_part else []
    _say(f"{len(jobs)} runs ({', '.join(f'{d}/{r}' for d, r in jobs)}), {args.jobs} at a time; "
         f"runs in {out / 'runs'}")
    if any(d == "digits" for d, _ in jobs):
        from pyfast_gan.metrics.digits_classifier import load_digits_classifier

        load_digits_classifier(progress=True)  # train it once here, not in every run at the same time
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="runs", unit="run", disable=not args.progress, file=sys.stderr)

    def one(job):
        d, r = job
        rec = train_run(d, r, args, out / "runs" / d / r)
        bar.update(1)
        _say(f"{d}/{r}: " + ("reused (already finished)" if rec["reused"] else f"trained in {rec['wall_s']:.0f} s"))
        return rec

    # The longest runs first (BEGAN's auto-encoder critic, WGAN-GP), so the pool ends together.
    order = sorted(jobs, key=lambda j: ALL_RUNS[j[1]][0] not in ("began", "wgan-gp"))
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        list(ex.map(one, order))
    bar.close()
    _say(f"training done in {time.perf_counter() - t0:.0f} s; scoring with {args.final_n} samples each")
    torch.set_num_threads(max(1, args.jobs * args.threads))
    settings = {k: getattr(args, k) for k in SETTINGS}
    if main_part:
        results = {"machine": _machine(), "argv": argv, "settings": settings, "data": args.data, "runs": {},
                   "baselines": {}, "figures": {}}
    else:  # keep the main section as it is in results.json
        prev = out / "results.json"
        results = json.loads(prev.read_text()) if prev.is_file() else {}
        results.setdefault("machine", _machine())
        for k, v in (("data", []), ("runs", {}), ("baselines", {}), ("figures", {})):
            results.setdefault(k, v)
    for d in args.data if main_part else []:
        ev = Evaluator(d, n=args.final_n, seed=args.seed, device="cpu")
        rows = []
        for r in args.runs:
            row = score_run(d, r, out / "runs" / d / r, args, ev)
            row["dir"] = str(out / "runs" / d / r)
            row["tracking"] = critic_tracking(row, "cfid" if d == "digits" else "toy_fd")
            rows.append(row)
        results["runs"][d] = rows
        results["baselines"][d] = real_baseline(d, args.final_n, args.seed, ev)
        results["figures"][d] = {
            "samples": figure_samples(d, rows, out, args.seed).name,
            "losses": figure_losses(d, rows, out).name,
            "metric": figure_metric_vs_step(d, rows, out).name,
        }
    if ext_part:
        results["extension"] = {"machine": _machine(), "argv": argv, "settings": settings,
                                **score_extension(out, args, Evaluator("digits", n=args.final_n, seed=args.seed,
                                                                      device="cpu"))}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report = write_report(out, results, args, argv)
    _say(f"report: {report}")
    return results


# ---- the extension: LSGAN, BEGAN, CoGAN on the digits ---------------------------------------
def score_cogan(name: str, run_dir: Path, args, evaluator) -> dict:
    """A CoGAN run: classifier scores of domain A (digits) and, for negatives, of domain B
    made digits again (its own inverse); the pair correspondence against shuffled pairs."""
    from pyfast_gan.metrics.cogan import score_cogan as scores_of
    from pyfast_gan.metrics.suite import scalar_items
    from pyfast_gan.sample import load_generator

    G, cfg = load_generator(str(run_dir), device="cpu")
    ck = torch.load(run_dir / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)
    domain = cfg["cogan_domain"]
    scores = scores_of(G, evaluator, domain)
    res_a, res_b = scores["a"], scores["b"]
    recs = _read_jsonl(run_dir / "metrics.jsonl")
    return {
        "data": "digits", "run": name, "loss": "cogan", "domain": domain, "steps": int(ck["step"]),
        "critic_steps": int(ck["critic_steps"]), "batch_size": cfg["batch_size"],
        "train_time_s": round(float(ck.get("elapsed", 0.0)), 1),
        "scores_a": scalar_items(res_a), "counts_a": res_a.get("class_counts"),
        "scores_b": scalar_items(res_b) if res_b else None,
        "correspondence": scores["correspondence"],
        "history": [{"step": r["step"], **r["eval"]} for r in recs if isinstance(r.get("eval"), dict)],
        "losses": [{k: r[k] for k in ("step", "loss_d", "loss_g") if k in r} for r in recs if "loss_d" in r],
    }


def score_extension(out: Path, args, evaluator) -> dict:
    rows, cogan = [], []
    for name in args.ext_runs:
        run_dir = out / "runs" / "digits" / name
        if EXTENSION[name][0] == "cogan":
            row = score_cogan(name, run_dir, args, evaluator)
            row["dir"] = str(run_dir)
            cogan.append(row)
            continue
        row = score_run("digits", name, run_dir, args, evaluator)
        row["dir"] = str(run_dir)
        row["tracking"] = critic_tracking(row, "cfid")
        row["m_tracking"] = critic_tracking(row, "cfid", stat="m_global")
        last = next((r for r in reversed(row["losses"]) if r.get("m_global") is not None), None)
        row["final_k"], row["final_m"] = (last["k_t"], last["m_global"]) if last else (None, None)
        rows.append(row)
    figures = {}
    if rows:
        figures.update(samples=figure_samples("digits", rows, out, args.seed, "digits_ext_samples.png").name,
                       metric=figure_metric_vs_step("digits", rows, out, "digits_ext_metric_vs_step.png").name,
                       losses=figure_losses("digits", rows, out, "digits_ext_losses.png").name)
        began = [r for r in rows if r["loss"] == "began"]
        if began:
            figures["began"] = figure_began(began, out).name
    if cogan:
        figures["cogan"] = figure_cogan(cogan, out, args.seed).name
    return {"runs": rows, "cogan": cogan, "figures": figures}


def figure_began(rows: list[dict], out: Path) -> Path:
    """Per BEGAN run, one row of panels: M_global and k_t (per log step), the classifier FID
    and the classes covered (per evaluation)."""
    fig, axes = _panels(2 * len(rows), 5.2, 3.2, ncols=2)
    for (ax, ax_q), row in zip(zip(axes[0::2], axes[1::2]), rows):
        pts = [(r["step"], r["m_global"], r["k_t"]) for r in row["losses"] if r.get("m_global") is not None]
        if pts:
            xs, ms, ks = zip(*pts)
            ax.plot(xs, ms, lw=0.8, label="M_global")
            ax.plot(xs, ks, lw=0.8, label="k_t")
        ax.set_title(f"{row['run']}: convergence measure and balance", fontsize=9)
        ax.legend(fontsize=7)
        hist = [(h["step"], h["cfid"], h.get("classes_covered")) for h in row["history"] if "cfid" in h]
        if hist:
            xs, ys, cs = zip(*hist)
            ax_q.plot(xs, ys, marker="o", ms=2, lw=1, c="tab:red", label="cFID (log)")
            ax_q.set_yscale("log")
            if all(c is not None for c in cs):
                ax_c = ax_q.twinx()
                ax_c.plot(xs, cs, marker="s", ms=2, lw=0.8, c="tab:green", label="classes covered")
                ax_c.set_ylim(0, 10.5)
                ax_c.set_ylabel("classes covered", fontsize=8, color="tab:green")
        ax_q.set_title(f"{row['run']}: cFID; Spearman rho(M_global, cFID) = {_f(row['m_tracking'], '+.2f')}",
                       fontsize=8)
    for a in axes:
        a.set_xlabel("generator step", fontsize=8)
        a.grid(alpha=0.3)
    return save_figure(fig, out / "began_convergence.png")


def figure_cogan(rows: list[dict], out: Path, seed: int) -> Path:
    """Each CoGAN run's pairs from the same 32 noise vectors, A and B side by side."""
    from pyfast_gan.models import pairs_side_by_side
    from pyfast_gan.sample import load_generator
    from pyfast_gan.train.outputs import image_grid

    fig, axes = _panels(len(rows), 4.4, 4.8)
    for ax, row in zip(axes, rows):
        G, cfg = load_generator(row["dir"], device="cpu")
        z = torch.randn(32, cfg["z_dim"], generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            x = G(z).float()
        ax.imshow(image_grid(pairs_side_by_side(x, cfg["channels"]), nrow=8)[:, :, 0], cmap="gray", vmin=0, vmax=255)
        c = row["correspondence"]
        ax.set_title(f"{row['run']} (pairs: A | B)\ncorrespondence {c['paired']:.3f}, shuffled z {c['shuffled']:.3f}",
                     fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, out / "cogan_samples.png")


def extension_lines(ext: dict, title: bool = False) -> list[str]:
    m, st = ext["machine"], ext["settings"]
    lines = ["# LSGAN, BEGAN and CoGAN on the digits", ""] if title else []
    lines += [
        "## Extension: LSGAN, BEGAN and CoGAN on the digits",
        "",
        "Produced by:",
        "",
        "```",
        "python -m pyfast_gan.experiments " + " ".join(ext["argv"]),
        "```",
        "",
        f"Machine: {m['device']}, {m['cpu_count']} cores; {st['jobs']} runs at a time with {st['threads']} "
        f"thread(s) each; torch {m['torch']}, Python {m['python']}, commit {m['commit']}, {m['date']}.",
        "",
        "Same budget as the digits section above (generator steps, batch size, width, noise size, seed); each loss "
        "keeps its paper's settings (LSGAN: DCGAN's Adam 2e-4, betas (0.5, 0.999); BEGAN: Adam 1e-4, betas "
        "(0.5, 0.999), gamma 0.5, lambda_k 0.001, k_0 0, its auto-encoder critic and decoder-shaped generator "
        "(3x3 convs, ELU, nearest upsampling) with n = the width; CoGAN: DCGAN networks coupled in pairs, Adam "
        "2e-4). BEGAN's networks cost far more per step than the DCGAN ones at the same width (full-resolution "
        "3x3 convolutions): compare the train times. BEGAN is not run on 25 Gaussians: its critic is an "
        "auto-encoder, and auto-encoding a 2-D point through a bottleneck has nothing to compress.",
        "",
    ]
    names = [r["run"] for r in ext["runs"] + ext["cogan"]]
    flagged = [(n, EXTENSION[n][1]) for n in names if EXTENSION.get(n, (None, []))[1]]
    if flagged:
        lines += ["Trainer flags of each run beyond `--loss` and the budget (a BEGAN run with flags departs from the "
                  "paper's settings; the notes below say why):", ""]
        lines += [f"- {n}: `{' '.join(f)}`" for n, f in flagged] + [""]
    rows = ext["runs"]
    if rows:
        lines += [
            f"Scored like the digits section ({st['final_n']} samples). ρ(M_global, cFID): Spearman correlation "
            "over the evaluation steps between BEGAN's convergence measure M_global = L(x) + |γL(x) − L(G(z))| "
            "(mean since the previous evaluation) and the cFID; BEGAN's paper proposes M_global as a measure "
            "that tracks quality (a value near +1).",
            "",
            "| run | loss | generator steps | cFID | IS | classes | KL(hist‖U) | ρ(critic gap, cFID) | "
            "ρ(M_global, cFID) | final k_t | final M_global | train time (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            sc = r["scores"]
            lines.append(f"| {r['run']} | {r['loss']} | {r['steps']} | {sc['cfid']:.1f} | {sc['is_score']:.2f} | "
                         f"{sc['classes_covered']}/10 | {sc['kl_uniform']:.3f} | {_f(r['tracking'], '+.2f')} | "
                         f"{_f(r['m_tracking'], '+.2f')} | {_f(r['final_k'], '.4f')} | {_f(r['final_m'], '.4f')} | "
                         f"{r['train_time_s']:.0f} |")
        lines += ["", "Predicted-class counts (classes 0-9):", ""]
        lines += [f"- {r['run']}: {r['counts']}" for r in rows]
        figs = ext["figures"]
        lines += ["", f"Final samples (same noise for every run):\n\n![extension samples]({figs['samples']})", "",
                  f"Scores during training:\n\n![extension metric vs step]({figs['metric']})", "",
                  f"Losses:\n\n![extension losses]({figs['losses']})", ""]
        if "began" in figs:
            lines += [f"BEGAN's M_global and k_t against the classifier FID:\n\n![BEGAN convergence]({figs['began']})", ""]
    if ext["cogan"]:
        lines += [
            "### CoGAN",
            "",
            "Two unpaired domains: the digits (A) and a transformation of them (B), A and B drawn from disjoint "
            "halves of the 1,797 digits, so the training data holds no pair. Domain A is scored by the digits "
            "classifier; domain B too for negatives, after making them digits again (the negative is its own "
            "inverse); edge images have no inverse and get no classifier score. Pair correspondence: the fraction "
            "of pixels where T(A) and B agree within 0.25 on the [0, 1] scale (T: the domain's transformation), "
            "for the generated pairs and for the same images paired across shuffled z (the unpaired baseline); "
            f"{st['final_n']} pairs.",
            "",
            "| run | domain B | generator steps | cFID A | classes A | cFID B | classes B | correspondence | "
            "shuffled-z baseline | train time (s) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in ext["cogan"]:
            a, b, c = r["scores_a"], r["scores_b"], r["correspondence"]
            lines.append(f"| {r['run']} | {r['domain']} | {r['steps']} | {a['cfid']:.1f} | {a['classes_covered']}/10 | "
                         + (f"{b['cfid']:.1f} | {b['classes_covered']}/10 | " if b else "n/a | n/a | ")
                         + f"{c['paired']:.3f} | {c['shuffled']:.3f} | {r['train_time_s']:.0f} |")
        lines += ["", f"Pairs from the same z (A left, B right):\n\n![CoGAN pairs]({ext['figures']['cogan']})", ""]
    return lines


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("steps", "eval_every"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.eval_n < 2 or args.final_n < 2:
        parser.error("--eval-n and --final-n must be >= 2")
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.command == "compare":
        try:
            compare(args, argv)
        except RuntimeError as e:
            print(f"pyfast_gan.experiments: {e}", file=sys.stderr)
            return 1
    return 0
