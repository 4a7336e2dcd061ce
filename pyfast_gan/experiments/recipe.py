"""``python -m pyfast_gan.experiments.recipe``: the search behind the no-argument run's recipe.

Each candidate is a set of trainer flags on top of the no-argument run (WGAN-GP on the 5,000
real MNIST digits of ``--data mnist``). Every candidate trains on each seed in its own
``python -m pyfast_gan.train`` process, timed from start to exit as a user would time it
(start-up, compilation, training, grids and checkpoints), with ``--ema 0.999`` so that one run
scores both generators: the raw one and its moving average (the average does not change
training). The final checkpoint is scored like ``python -m pyfast_gan.evaluate`` scores it:
the real-MNIST judge on 10,000 samples (cFID, classes covered, KL to uniform).

The report (``OUT/RESULTS.md``, rows in ``OUT/results.json``) lists every run and, per
candidate and generator, the median over its seeds; the recipe kept is the candidate with the
best median cFID whose median wall time fits the budget. A run already scored is reused, so
the search can be stopped and continued.

    python -m pyfast_gan.experiments.recipe                          # every candidate, seeds 0 1 2
    python -m pyfast_gan.experiments.recipe --candidates base32-fast --seeds 0
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

def _flags(*, fast: bool, base: int = 16, lr: str = "1e-4", beta1: str = "0", n_critic: int = 2,
           steps: int = 1200, extra: tuple = ()) -> list[str]:
    """A candidate's whole recipe as trainer flags, so it means the same whatever the defaults."""
    return ["--fast" if fast else "--no-fast", "--base", str(base), "--lr", lr, "--betas", beta1, "0.9",
            "--n-critic", str(n_critic), "--steps", str(steps), *extra]


# name -> the flags of one candidate (WGAN-GP on --data mnist, batch 64, z 64, --ema 0.999).
CANDIDATES = {
    "default": [],  # the no-argument run as it is now (--fast auto)
    "default-no-fast": ["--no-fast"],  # the same where the CPU has no native bf16
    # the no-argument run before this search: the WGAN-GP paper's Adam settings
    "paper": _flags(fast=False, n_critic=5),
    "adam-0.5": _flags(fast=False, lr="2e-4", beta1="0.5", n_critic=5),
    "adam-0.5-2000": _flags(fast=False, lr="2e-4", beta1="0.5", n_critic=5, steps=2000),
    "adam-0.5-lr4e-4-2000": _flags(fast=False, lr="4e-4", beta1="0.5", n_critic=5, steps=2000),
    "adam-nc2-lr4e-4-3600": _flags(fast=False, lr="4e-4", beta1="0.5", steps=3600),
    "fast-base32": _flags(fast=True, base=32, lr="2e-4", beta1="0.5", n_critic=5),
    "fast-base32-beta0": _flags(fast=True, base=32, lr="2e-4", n_critic=5),
    "fast-base32-lr1e-4": _flags(fast=True, base=32, beta1="0.5", n_critic=5),
    "fast-base32-lr4e-4": _flags(fast=True, base=32, lr="4e-4", beta1="0.5", n_critic=5),
    "fast-base32-lr8e-4": _flags(fast=True, base=32, lr="8e-4", beta1="0.5", n_critic=5),
    # the moving average over a shorter window (the flags given last win over --ema 0.999)
    "fast-base32-ema0.99": _flags(fast=True, base=32, lr="2e-4", beta1="0.5", n_critic=5, extra=("--ema", "0.99")),
    "fast-base32-nc2": _flags(fast=True, base=32, lr="4e-4", beta1="0.5", steps=2400),
    "fast-base32-nc2-3600": _flags(fast=True, base=32, lr="4e-4", beta1="0.5", steps=3600),
    "fast-base32-nc2-lr6e-4-3600": _flags(fast=True, base=32, lr="6e-4", beta1="0.5", steps=3600),
    "fast-base16-lr4e-4-3000": _flags(fast=True, lr="4e-4", beta1="0.5", n_critic=5, steps=3000),
    "fast-base48": _flags(fast=True, base=48, lr="2e-4", beta1="0.5", n_critic=5, steps=700),
    "bf16-base32": _flags(fast=False, base=32, lr="2e-4", beta1="0.5", n_critic=5,
                          extra=("--amp", "bf16", "--channels-last")),
}
KEYS = ("cfid", "classes_covered", "kl_uniform")
BUDGET_S = 300.0


def cpu_name() -> str:
    """The CPU's model name and whether it computes bf16 natively (AMX, AVX512-BF16)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    native = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return f"{name} ({', '.join(native) if native else 'no native bf16'})"


def train(name: str, seed: int, run_dir: Path, threads: int, cold: bool = False) -> float:
    """Train one candidate on one seed in its own process; its wall time in seconds. ``cold``:
    with an empty torch.compile cache, as a new user's first run compiles."""
    cmd = [sys.executable, "-m", "pyfast_gan.train", "--seed", str(seed), "--out", str(run_dir),
           "--ema", "0.999", "--no-progress", *CANDIDATES[name]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if cold:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(run_dir.with_name(run_dir.name + ".inductor-cache"))
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.with_suffix(".log")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{name} seed {seed} failed (exit {rc}); see {log}")
    return wall


def score(run_dir: Path, evaluator) -> dict:
    """The judge's scores of the final checkpoint's raw generator and of its moving average."""
    from pyfast_gan.metrics.evaluator import scalar_items
    from pyfast_gan.sample import load_generator

    out = {}
    for which, ema in (("raw", False), ("ema", True)):
        G, cfg = load_generator(str(run_dir), ema=ema, device="cpu")
        res = scalar_items(evaluator(G, cfg["z_dim"]))
        out[which] = {k: res[k] for k in KEYS}
    out["steps"] = cfg["step"]
    out["base"] = cfg["base"]
    out["fast"] = cfg.get("fast") in (True, "on")  # runs from before --fast auto saved a bool
    out["amp"] = cfg.get("amp")
    return out


def summary(rows: list[dict], threads: int) -> dict:
    """Per candidate and thread count: the median over its seeds of the wall time and of each
    score, per generator; ``full``: run on all ``threads``, the only rows judged against the
    budget (a one-thread screening row is named "NAME (1 thread)")."""
    out = {}
    for name, t in dict.fromkeys((r["candidate"], r.get("threads", 0)) for r in rows):
        rs = [r for r in rows if r["candidate"] == name and r.get("threads", 0) == t]
        s = {"seeds": [r["seed"] for r in rs], "wall_s": statistics.median(r["wall_s"] for r in rs),
             "threads": [t], "full": t == threads}
        name = name if t == threads else f"{name} ({t} thread{'s' if t > 1 else ''})"
        for g in ("raw", "ema"):
            s[g] = {k: statistics.median(r[g][k] for r in rs) for k in KEYS}
        out[name] = s
    return out


def best(summ: dict, budget: float) -> tuple[str, str] | None:
    """(candidate, generator) with the lowest median cFID among those whose median wall fits."""
    fits = [(s[g]["cfid"], name, g) for name, s in summ.items() if s["full"] and s["wall_s"] <= budget
            for g in ("raw", "ema")]
    return min(fits)[1:] if fits else None


def report(rows: list[dict], meta: dict) -> str:
    summ = summary(rows, meta["threads"])
    pick = best(summ, meta["budget_s"])
    lines = [
        "# The no-argument run's recipe: candidates on real MNIST",
        "",
        f"Machine: {meta['machine']}; {meta['threads']} threads; torch {meta['torch']}; commit {meta['commit']}; "
        f"{meta['date']}.",
        "",
        "Regenerate: `python -m pyfast_gan.experiments.recipe` (add `--candidates NAME ...` and `--seeds ...` "
        "for part of it; `--threads 1` runs each candidate on one thread, to screen recipes beside other work: "
        "such rows say so and are not judged against the budget). Each run: `python -m pyfast_gan.train "
        "--seed S --ema 0.999 FLAGS` (WGAN-GP on `--data mnist`, batch 64), timed from start to exit; "
        "`default` is the no-argument run itself; (cold): run with an empty torch.compile cache, as a new "
        "user's first run compiles (`--cold`). Scores: the real-MNIST "
        "judge on 10,000 samples of the final checkpoint, as `python -m pyfast_gan.evaluate` gives them "
        "(cFID: lower is better, real digits score about 3.6; classes: of 10; KL to uniform: 0 is "
        "balanced). raw: the generator; ema: its moving average (ramped decay, batch-norm statistics "
        "measured for the averaged weights).",
        "",
        "## Every run",
        "",
        "| candidate | flags | seed | threads | wall s | steps | raw cFID | raw classes | raw KL | ema cFID | ema classes | ema KL |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        flags = " ".join(CANDIDATES.get(r["candidate"], r.get("flags", [])))
        lines.append(f"| {r['candidate']} | {f'`{flags}`' if flags else '(none)'} | "
                     f"{r['seed']} | {r.get('threads', '?')} | {r['wall_s']:.0f}{' (cold)' if r.get('cold_compile') else ''} | "
                     f"{r['steps']} | {r['raw']['cfid']:.1f} | "
                     f"{r['raw']['classes_covered']} | {r['raw']['kl_uniform']:.3f} | {r['ema']['cfid']:.1f} | "
                     f"{r['ema']['classes_covered']} | {r['ema']['kl_uniform']:.3f} |")
    lines += ["", f"## Medians over seeds (budget: {meta['budget_s']:.0f} s of wall time)", "",
              "| candidate | seeds | threads | wall s | fits | raw cFID | raw classes | ema cFID | ema classes |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, s in sorted(summ.items(), key=lambda kv: min(kv[1]["raw"]["cfid"], kv[1]["ema"]["cfid"])):
        fits = ("yes" if s["wall_s"] <= meta["budget_s"] else "no") if s["full"] else "not timed"
        lines.append(f"| {name} | {', '.join(map(str, s['seeds']))} | {', '.join(map(str, s['threads']))} | "
                     f"{s['wall_s']:.0f} | {fits} | {s['raw']['cfid']:.1f} | "
                     f"{s['raw']['classes_covered']:g} | {s['ema']['cfid']:.1f} | {s['ema']['classes_covered']:g} |")
    if pick:
        lines += ["", f"Best within the budget: **{pick[0]}**, sampled from the {'moving average' if pick[1] == 'ema' else 'raw generator'} "
                      f"(median cFID {summ[pick[0]][pick[1]]['cfid']:.1f} over seeds "
                      f"{', '.join(map(str, summ[pick[0]]['seeds']))})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from pyfast_gan._cli import ArgumentParser

    p = ArgumentParser(prog="python -m pyfast_gan.experiments.recipe", description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES),
                   help="candidates to train and score (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--out", default="docs/results/recipe", help="report folder (default: docs/results/recipe)")
    p.add_argument("--runs", default="runs/recipe", help="folder of the runs themselves (default: runs/recipe)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads per run (default: all cores)")
    p.add_argument("--n", type=int, default=10000, help="samples scored per generator (default: 10000)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="wall-time budget in seconds (default: 300)")
    p.add_argument("--cold", action="store_true",
                   help="each run compiles with an empty torch.compile cache, as a new user's first run does")
    args = p.parse_args(argv)
    import torch

    from pyfast_gan.metrics.evaluator import Evaluator

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    rows = json.loads(res_path.read_text())["rows"] if res_path.exists() else []
    evaluator = Evaluator("mnist", n=args.n, seed=0, device="cpu")
    for name in args.candidates:
        for seed in args.seeds:
            if any(r["candidate"] == name and r["seed"] == seed for r in rows):
                continue
            run_dir = Path(args.runs) / name / f"seed{seed}"
            if run_dir.exists():
                run_dir.rename(run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
            print(f"[recipe] {name} seed {seed}: training", flush=True)
            wall = train(name, seed, run_dir, args.threads, args.cold)
            row = {"candidate": name, "flags": CANDIDATES[name], "seed": seed, "wall_s": round(wall, 1),
                   "threads": args.threads, "cold_compile": args.cold,
                   "run": str(run_dir), **score(run_dir, evaluator)}
            rows.append(row)
            print(f"[recipe] {name} seed {seed}: {wall:.0f} s, raw cFID {row['raw']['cfid']:.1f}, "
                  f"ema cFID {row['ema']['cfid']:.1f}", flush=True)
            res_path.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"machine": cpu_name(), "threads": os.cpu_count() or 1,
            "torch": torch.__version__, "commit": commit or "unknown", "budget_s": args.budget,
            "date": time.strftime("%Y-%m-%d")}
    (out / "RESULTS.md").write_text(report(rows, meta))
    print(f"[recipe] wrote {out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
