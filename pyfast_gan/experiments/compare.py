"""``python -m pyfast_gan.experiments compare``: DCGAN vs WGAN (n_critic 1, 2, 4, 5) vs WGAN-GP
on real MNIST (the 5,000 digits of ``--data mnist``) and on 25 Gaussians, with the same budget
and seeds, scored by pyfast_gan.metrics and written up as a markdown report with images.

Budget: every run trains the same number of generator steps with the same batch size,
architecture, width, noise size and seed; each loss keeps its paper's optimizer settings
(pyfast_gan.losses.PRESETS; for toy data also the toy defaults of pyfast_gan.train.config).
So runs with more critic steps per generator step spend more computation: the report shows
the critic iterations and the wall time next to the scores.

The extension (``--section extension``): LSGAN and BEGAN beside them on the image set
``--ext-data`` (BEGAN twice: the paper's settings, and ``began-tuned`` with the flags
``EXTENSION`` gives it), and CoGAN on two pairs of digit domains (digits/negatives,
digits/edges), scored per domain and by the correspondence of its pairs against shuffled pairs.
BEGAN is not run on 25 Gaussians: its critic is an auto-encoder, and auto-encoding a 2-D point
through a bottleneck of its own size has nothing to compress. The --fast check (``--section
fast``): WGAN-GP eager and with ``--fast`` on ``--ext-data``, on each of ``--fast-seeds``. The
equal-time section (``--section budget``, pyfast_gan.experiments.budget): DCGAN, WGAN and
WGAN-GP on ``--ext-data``, each given ``--budget-s`` seconds of training, at their paper
settings and a small sweep, with a verdict on each of the papers' claims.
``--section extension``, ``fast`` or ``budget`` trains and scores only those runs and rewrites the report
with the other sections kept as they are in results.json. The 8x8 digits stay available
(``--data digits``, ``--ext-data digits``).

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

from .budget import BUDGET_RUNS, budget_lines, run_budget
from .extension import extension_lines, score_extension
from .fast_vs_eager import fast_jobs, fast_lines, score_fast
from .runs import ALL_RUNS, DATA, DATA_TITLE, EXTENSION, IMAGE_DATA, RUNS, SECTIONS, classifier_cells, \
    critic_tracking, figure_losses, figure_metric_vs_step, figure_samples, fmt_or_na, run_name, score_run, train_run


def build_parser() -> argparse.ArgumentParser:
    from pyfast_gan._cli import ArgumentParser

    p = ArgumentParser(prog="python -m pyfast_gan.experiments",
                       description="Studies that train several runs and report their scores.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="DCGAN vs WGAN (n_critic sweep) vs WGAN-GP, same budget and seeds",
                       description=__doc__.split("\n\n")[0].replace("``", ""),
                       epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--data", nargs="+", default=["mnist", "25gaussians"], choices=DATA,
                   help="datasets of the main section (default: mnist 25gaussians)")
    c.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS),
                   help="runs to compare (default: all)")
    c.add_argument("--section", default="all", choices=SECTIONS,
                   help="main: the DCGAN/WGAN/WGAN-GP study; extension: LSGAN, BEGAN and CoGAN on --ext-data; "
                        "fast: --fast vs eager WGAN-GP on --ext-data; budget: DCGAN, WGAN and WGAN-GP at equal "
                        "training time, paper and swept settings, on --ext-data (a part run alone keeps the others from "
                        "OUT/results.json); all: every part (default)")
    c.add_argument("--ext-runs", nargs="+", default=list(EXTENSION), choices=list(EXTENSION),
                   help="extension runs (default: all)")
    c.add_argument("--ext-data", default="mnist", choices=IMAGE_DATA,
                   help="image set of the extension and --fast sections (default: mnist)")
    c.add_argument("--fast-seeds", nargs="+", type=int, default=[0, 1],
                   help="seeds of the --fast vs eager WGAN-GP runs (default: 0 1)")
    c.add_argument("--budget-s", type=float, default=120.0,
                   help="budget section: seconds of training every run gets (default: 120)")
    c.add_argument("--budget-seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="budget section: the sweep runs on the first seed, the finalists on all (default: 0 1 2)")
    c.add_argument("--budget-runs", nargs="+", default=list(BUDGET_RUNS), choices=list(BUDGET_RUNS),
                   help="budget section: the sweep (default: all; each loss's -paper run is required)")
    c.add_argument("--budget-calib-steps", type=int, default=40,
                   help="budget section: generator steps of each calibration run (default: 40)")
    c.add_argument("--steps", type=int, default=0,
                   help="generator steps of every run (default: per data, mnist/digits 1200, 25gaussians 3000)")
    c.add_argument("--eval-every", type=int, default=0,
                   help="score every K steps during training (default: mnist/digits 100, 25gaussians 250)")
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


def baseline_is_training_split(data: str) -> bool:
    """Which real digits the baseline scores: the classifier split's training part where the
    held-out digits are cFID's reference (mnist: scoring those against themselves would give
    0), else the held-out part."""
    from pyfast_gan.metrics.digits_classifier import JUDGES

    return JUDGES[data]["reference"] == "held_out"


def real_baseline(data: str, n: int, seed: int, evaluator) -> dict:
    """The same measures on real data (see :func:`baseline_is_training_split`), or true
    25-Gaussian samples."""
    from pyfast_gan.metrics.evaluator import scalar_items

    if data in IMAGE_DATA:
        from pyfast_gan.metrics.digits_classifier import digits_with_labels, split_indices

        images, labels = digits_with_labels(data)
        tr, te = split_indices(labels)
        return scalar_items(evaluator.score_batches([images[tr if baseline_is_training_split(data) else te]]))
    from pyfast_gan.data import ToySampler

    return scalar_items(evaluator.score_batches([ToySampler(data).sample(n, torch.Generator().manual_seed(seed + 99))]))


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


# What the classifier scores of an image set are measured against (the report's wording).
JUDGE_TEXT = {
    "digits": ("the digits classifier (`pyfast_gan.metrics.digits_classifier`, test accuracy {acc} on the held-out "
               "20% of the 8x8 digits)", "all 1,797 real digits"),
    "mnist": ("the real-MNIST judge (`pyfast_gan.metrics.digits_classifier`, trained on 4,000 of the 5,000 real "
              "MNIST digits; accuracy {acc} on the other 1,000, which evaluation never trains on)",
              "those 1,000 held-out real digits"),
}


def write_report(out: Path, results: dict, args, argv: list[str]) -> Path:
    ext = results.get("extension")
    fast = results.get("fast")
    budget = results.get("budget")
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
        lines += [f"## {data} ({DATA_TITLE[data]})", ""]
        if data in IMAGE_DATA:
            acc = rows[0]["scores"].get("classifier_test_accuracy") if rows else None
            judge, reference = JUDGE_TEXT[data]
            lines += [
                f"Scored with {args.final_n} samples per run by {judge.format(acc=fmt_or_na(acc, '.4f'))}. cFID: "
                f"Fréchet distance in its 128-d features to {reference} (lower is "
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
                             f"{classifier_cells(s)} | {fmt_or_na(r['tracking'], '+.2f')} | {r['train_time_s']:.0f} |")
            split = "the judge's training split" if baseline_is_training_split(data) else "held-out split"
            real = "real MNIST digits" if data == "mnist" else "real digits"
            lines.append(f"| {real} ({split}, n={base['n']}) | | | | | {classifier_cells(base)} | | |")
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
                             f"{s['toy_fd']:.4f} | {fmt_or_na(r['tracking'], '+.2f')} | {r['train_time_s']:.0f} |")
            lines.append(f"| true distribution (n={base['n']}) | | | | | {base['modes_covered']}/{base['num_modes']}"
                         f" | {base['high_quality_fraction']:.3f} | {base['toy_fd']:.4f} | | |")
        lines += ["", "ρ: Spearman correlation over the evaluation steps between the critic's gap E[D(real)] - "
                  "E[D(fake)] (for WGAN and WGAN-GP the Wasserstein estimate) and the "
                  + ("cFID" if data in IMAGE_DATA else "toy FD") + ": close to +1 when the critic's value tracks "
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
    if fast is not None:
        lines += fast_lines(fast)
    notes = out / "NOTES.md"  # what the images show, written by whoever looked at them
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    if budget is not None:
        lines += budget_lines(budget)
        notes = out / "NOTES_budget.md"  # the same for the equal-time section
        if notes.is_file():
            lines += [notes.read_text().rstrip(), ""]
    lines += ["Numbers: `results.json` next to this report. Runs (checkpoints, metrics.jsonl, logs) are not "
              "committed; the commands above recreate them.", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


SETTINGS = ("jobs", "threads", "eval_n", "final_n", "seed", "fast_seeds", "budget_s", "budget_seeds")


def compare(args, argv: list[str]) -> dict:
    from pyfast_gan.metrics.evaluator import Evaluator

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    main_part = args.section in ("all", "main")
    ext_part = args.section in ("all", "extension")
    fast_part = args.section in ("all", "fast")
    budget_part = args.section in ("all", "budget")
    jobs = [(d, r, args.seed) for d in args.data for r in args.runs] if main_part else []
    jobs += [(args.ext_data, r, args.seed) for r in args.ext_runs] if ext_part else []
    jobs += [j for j in fast_jobs(args.ext_data, args.fast_seeds) if j not in jobs] if fast_part else []
    _say(f"{len(jobs)} runs ({', '.join(f'{d}/{run_name(r, s, args.seed)}' for d, r, s in jobs)}), "
         f"{args.jobs} at a time; runs in {out / 'runs'}")
    from pyfast_gan.metrics.digits_classifier import load_digits_classifier

    for d in dict.fromkeys([d for d, _, _ in jobs if d in IMAGE_DATA] + ([args.ext_data] if budget_part else [])):
        load_digits_classifier(progress=True, data=d)  # trained once here, not in every run at the same time
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="runs", unit="run", disable=not args.progress, file=sys.stderr)

    def one(job):
        d, r, seed = job
        name = run_name(r, seed, args.seed)
        rec = train_run(d, r, args, out / "runs" / d / name, seed=seed)
        bar.update(1)
        _say(f"{d}/{name}: " + ("reused (already finished)" if rec["reused"] else f"trained in {rec['wall_s']:.0f} s"))
        return rec

    # The longest runs first (BEGAN's auto-encoder critic, WGAN-GP), so the pool ends together.
    order = sorted(jobs, key=lambda j: ALL_RUNS[j[1]][0] not in ("began", "wgan-gp"))
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        list(ex.map(one, order))
    bar.close()
    _say(f"training done in {time.perf_counter() - t0:.0f} s; scoring with {args.final_n} samples each")
    torch.set_num_threads(max(1, args.jobs * args.threads))
    settings = {k: getattr(args, k) for k in SETTINGS}
    # A part not run now is kept as it is in results.json (maybe from another commit).
    prev = out / "results.json"
    results = json.loads(prev.read_text()) if args.section != "all" and prev.is_file() else {}
    if main_part:
        results.update({"machine": _machine(), "argv": argv, "settings": settings, "data": args.data, "runs": {},
                        "baselines": {}, "figures": {}})
    results.setdefault("machine", _machine())
    for k, v in (("data", []), ("runs", {}), ("baselines", {}), ("figures", {})):
        results.setdefault(k, v)
    evaluators = {}

    def evaluator(d):
        if d not in evaluators:
            evaluators[d] = Evaluator(d, n=args.final_n, seed=args.seed, device="cpu")
        return evaluators[d]

    for d in args.data if main_part else []:
        rows = []
        for r in args.runs:
            row = score_run(d, r, out / "runs" / d / r, args, evaluator(d))
            row["tracking"] = critic_tracking(row, "cfid" if d in IMAGE_DATA else "toy_fd")
            rows.append(row)
        results["runs"][d] = rows
        results["baselines"][d] = real_baseline(d, args.final_n, args.seed, evaluator(d))
        results["figures"][d] = {
            "samples": figure_samples(d, rows, out, args.seed).name,
            "losses": figure_losses(d, rows, out).name,
            "metric": figure_metric_vs_step(d, rows, out).name,
        }
    part = {"machine": _machine(), "argv": argv, "settings": settings}
    if ext_part:
        results["extension"] = {**part, "data": args.ext_data,
                                **score_extension(out, args, evaluator(args.ext_data), args.ext_data)}
    if fast_part:
        results["fast"] = {**part, **score_fast(out, args, evaluator(args.ext_data), args.ext_data)}
    if budget_part:
        results["budget"] = {**part, **run_budget(out, args, evaluator(args.ext_data), args.ext_data, _say)}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report = write_report(out, results, args, argv)
    _say(f"report: {report}")
    return results


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
    for name in ("fast_seeds", "budget_seeds"):
        seeds = getattr(args, name)
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            parser.error(f"--{name.replace('_', '-')} must be distinct seeds >= 0, got {' '.join(map(str, seeds))}")
    if args.budget_s <= 0 or args.budget_calib_steps < 2:
        parser.error("--budget-s must be > 0 and --budget-calib-steps >= 2")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.command == "compare":
        try:
            compare(args, argv)
        except RuntimeError as e:
            print(f"pyfast_gan.experiments: {e}", file=sys.stderr)
            return 1
    return 0
