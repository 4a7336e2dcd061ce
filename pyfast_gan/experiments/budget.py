"""The equal-time section of the comparison study (``--section budget``): DCGAN, WGAN and
WGAN-GP on ``--ext-data``, each at its paper's settings and at a few others, every run given
the same training time (``--budget-s`` seconds) instead of the same number of steps, so that
the seeds' claims can be tested at a budget a user spends.

How the time is made equal: a short calibration run of each (loss, n_critic) measures its
seconds per generator step (from the trainer's own clock between log records, so start-up and
the first steps are left out), and each run then trains ``round(budget / seconds per step)``
steps. Runs are thus reproducible (a step count, not a stopwatch), and the table shows the time
each really took. Each loss's best settings are those with the lowest cFID on the study's seed;
its paper settings, its best settings and WGAN with one critic step per generator step then run
on every seed of ``--budget-seeds``, and the claims are judged on medians over those seeds.
"""
from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyfast_gan.artifacts.outputs import pyplot, read_metrics, save_figure

from .runs import classifier_cells, critic_tracking, figure_samples, fmt_or_na, provenance_lines, score_run, \
    train_run

# name -> (loss, trainer flags on top of the loss's paper settings; last flag wins)
BUDGET_RUNS = {
    "dcgan-paper": ("dcgan", []),
    "dcgan-lr1e-4": ("dcgan", ["--lr", "1e-4"]),
    "dcgan-lr4e-4": ("dcgan", ["--lr", "4e-4"]),
    "dcgan-beta2-0.9": ("dcgan", ["--betas", "0.5", "0.9"]),
    "wgan-paper": ("wgan", []),
    "wgan-nc1": ("wgan", ["--n-critic", "1"]),
    "wgan-nc2": ("wgan", ["--n-critic", "2"]),
    "wgan-lr2e-4": ("wgan", ["--lr", "2e-4"]),
    "wgan-gp-paper": ("wgan-gp", []),
    "wgan-gp-beta0.5": ("wgan-gp", ["--lr", "2e-4", "--betas", "0.5", "0.9"]),
    "wgan-gp-lr4e-4": ("wgan-gp", ["--lr", "4e-4", "--betas", "0.5", "0.9"]),
    "wgan-gp-nc2-lr4e-4": ("wgan-gp", ["--lr", "4e-4", "--betas", "0.5", "0.9", "--n-critic", "2"]),
}
LOSSES = ("dcgan", "wgan", "wgan-gp")
# Run on every seed besides each loss's paper and best settings: the n_critic claim's other side.
ALSO_ON_EVERY_SEED = ("wgan-nc1",)
EVALS_PER_RUN = 10  # scored this many times during each run (the critic-tracking correlation)
TRACKS = 0.7  # a Spearman correlation at least this strong counts as "tracks"


def n_critic(name: str) -> int:
    from pyfast_gan.losses import PRESETS

    loss, flags = BUDGET_RUNS[name]
    return int(flags[flags.index("--n-critic") + 1]) if "--n-critic" in flags else int(PRESETS[loss]["n_critic"])


def cost_key(name: str) -> str:
    """Runs with the same key cost the same per generator step (the same networks, loss and
    n_critic; the optimizer's settings do not change the cost)."""
    return f"{BUDGET_RUNS[name][0]}-nc{n_critic(name)}"


def seconds_per_step(records: list[dict]) -> float:
    """Training seconds per generator step between the first and last log records (the trainer's
    clock: start-up and the steps before the first record left out)."""
    recs = [r for r in records if "time" in r and "loss_d" in r]
    if len(recs) < 2 or recs[-1]["step"] <= recs[0]["step"]:
        raise RuntimeError("calibration run logged fewer than two records; raise --budget-calib-steps")
    return (recs[-1]["time"] - recs[0]["time"]) / (recs[-1]["step"] - recs[0]["step"])


def calibrate(data: str, names: list[str], out: Path, args) -> dict:
    """Seconds per generator step of every cost key among ``names`` (one short run each, kept in
    OUT/runs/DATA/budget/_calibration and reused when there)."""
    keys = {cost_key(n): n for n in reversed(names)}  # the first run with each key measures it
    rates = {}
    for key, name in sorted(keys.items()):
        run_dir = out / "runs" / data / "budget" / "_calibration" / key
        train_run(data, name, args, run_dir, spec=BUDGET_RUNS[name], steps=args.budget_calib_steps, eval_every=0,
                  extra_flags=("--log-every", str(max(1, args.budget_calib_steps // 8))))
        rates[key] = seconds_per_step(read_metrics(run_dir / "metrics.jsonl"))
    return rates


def steps_for(name: str, rates: dict, budget_s: float) -> int:
    return max(1, round(budget_s / rates[cost_key(name)]))


def run_dir_of(out: Path, data: str, name: str, seed: int) -> Path:
    return out / "runs" / data / "budget" / f"{name}-seed{seed}"


def _train_all(jobs: list[tuple[str, int]], data: str, out: Path, args, rates: dict, say) -> None:
    def one(job):
        name, seed = job
        steps = steps_for(name, rates, args.budget_s)
        rec = train_run(data, name, args, run_dir_of(out, data, name, seed), seed=seed, spec=BUDGET_RUNS[name],
                        steps=steps, eval_every=max(1, steps // EVALS_PER_RUN))
        say(f"budget {name} seed {seed}: {steps} steps, " +
            ("reused" if rec["reused"] else f"trained in {rec['wall_s']:.0f} s"))

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        list(ex.map(one, jobs))


def median_of(rows: list[dict], name: str, key: str):
    vals = [r["scores"][key] if key in r["scores"] else r.get(key) for r in rows if r["run"] == name]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def time_to_reach(row: dict, target: float) -> float | None:
    """Training seconds (the trainer's clock at the nearest log at or before the evaluation)
    until the run's cFID first fell to ``target`` or below; None if it never did."""
    for h in row["history"]:
        if h.get("cfid") is not None and h["cfid"] <= target:
            t = time_at(row, h["step"])
            return 0.0 if t is None else t
    return None


def claims(rows: list[dict], best: dict, seeds: list[int]) -> list[dict]:
    """The seeds' four claims, each with its numbers and a verdict: "holds", "does not hold" or a
    qualified answer. ``rows``: scored runs (run, loss, seed, scores, tracking, history, losses);
    ``best``: loss -> its best run name."""
    med = lambda name: median_of(rows, name, "cfid")  # noqa: E731
    out = []
    # 1. WGAN-GP beats DCGAN on sample quality.
    pairs = {"paper": ("wgan-gp-paper", "dcgan-paper"), "best": (best["wgan-gp"], best["dcgan"])}
    wins = {k: _wins(rows, a, b, seeds) for k, (a, b) in pairs.items()}
    beats = {k: med(a) is not None and med(b) is not None and med(a) < med(b) for k, (a, b) in pairs.items()}
    out.append({"claim": "WGAN-GP beats DCGAN on sample quality",
                "numbers": "; ".join(f"{k} settings: WGAN-GP ({a}) median cFID {fmt_or_na(med(a), '.1f')} vs DCGAN "
                                     f"({b}) {fmt_or_na(med(b), '.1f')}, lower on {wins[k]}/{len(seeds)} seeds"
                                     for k, (a, b) in pairs.items()),
                "verdict": _both(beats["paper"], beats["best"])})
    # 2. Weight clipping learns slowly: WGAN's best ends worst, and the others pass its final score early.
    w = best["wgan"]
    others = [best["dcgan"], best["wgan-gp"]]
    fracs = []
    for o in others:
        for s in seeds:
            wr, orow = _row(rows, w, s), _row(rows, o, s)
            if wr and orow:
                t = time_to_reach(orow, wr["scores"]["cfid"])
                total = max((r["time"] for r in orow["losses"] if r.get("time") is not None), default=None)
                if t is not None and total:
                    fracs.append((o, t / total))
    slowest = med(w) is not None and all(med(o) is not None and med(w) > med(o) for o in others)
    frac_txt = "; ".join(f"{o} reached WGAN's final cFID after a median {100 * statistics.median(f for n, f in fracs if n == o):.0f}% "
                         "of its training time" for o in others if any(n == o for n, _ in fracs))
    out.append({"claim": "weight clipping learns slowly",
                "numbers": f"best WGAN ({w}) median cFID {fmt_or_na(med(w), '.1f')}, best DCGAN "
                           f"{fmt_or_na(med(others[0]), '.1f')}, best WGAN-GP {fmt_or_na(med(others[1]), '.1f')}"
                           + (f"; {frac_txt}" if frac_txt else ""),
                "verdict": "holds" if slowest else "does not hold"})
    # 3. n_critic helps WGAN (at equal time, fewer critic steps buy more generator steps).
    nc5, nc1 = med("wgan-paper"), med("wgan-nc1")
    wins = _wins(rows, "wgan-paper", "wgan-nc1", seeds)
    nc2 = med("wgan-nc2")
    out.append({"claim": "n_critic helps WGAN",
                "numbers": f"n_critic 5 (paper) median cFID {fmt_or_na(nc5, '.1f')} vs n_critic 1 {fmt_or_na(nc1, '.1f')}"
                           f" (lower on {wins}/{len(seeds)} seeds); n_critic 2 {fmt_or_na(nc2, '.1f')} (seed "
                           f"{seeds[0]} only)",
                "verdict": "n/a" if None in (nc5, nc1) else ("holds" if nc5 < nc1 else "does not hold")})
    # 4. The critic's value tracks quality (for WGAN and WGAN-GP; the DCGAN loss's does not).
    rho = {loss: [r["tracking"] for r in rows if r["loss"] == loss and r.get("tracking") is not None] for loss in LOSSES}
    mrho = {k: statistics.median(v) if v else None for k, v in rho.items()}
    tracks = {k: v is not None and v >= TRACKS for k, v in mrho.items()}
    out.append({"claim": "the critic's value tracks quality",
                "numbers": "; ".join(f"{k}: median ρ {fmt_or_na(mrho[k], '+.2f')} over {len(rho[k])} runs "
                                     f"(min {fmt_or_na(min(rho[k]) if rho[k] else None, '+.2f')})" for k in LOSSES),
                "verdict": "n/a" if mrho["wgan"] is None and mrho["wgan-gp"] is None else
                           ("holds" if tracks["wgan"] and tracks["wgan-gp"] else
                            "holds for WGAN-GP only" if tracks["wgan-gp"] else
                            "holds for WGAN only" if tracks["wgan"] else "does not hold")
                + (f"; DCGAN's tracks as well (ρ ≥ {TRACKS})" if tracks["dcgan"] else "")})
    return out


def _row(rows, name, seed):
    return next((r for r in rows if r["run"] == name and r["seed"] == seed), None)


def _cfid(rows, name, seed):
    r = _row(rows, name, seed)
    return None if r is None else r["scores"]["cfid"]


def _wins(rows, a, b, seeds) -> int:
    """On how many seeds run ``a`` scored a lower cFID than run ``b`` (seeds with both)."""
    pairs = [(_cfid(rows, a, s), _cfid(rows, b, s)) for s in seeds]
    return sum(1 for x, y in pairs if x is not None and y is not None and x < y)


def _both(paper: bool, best: bool) -> str:
    return {(True, True): "holds", (False, False): "does not hold",
            (True, False): "holds at the paper settings, not at the best ones",
            (False, True): "holds at the best settings, not at the paper ones"}[(paper, best)]


def run_budget(out: Path, args, evaluator, data: str, say) -> dict:
    """Calibrate, sweep on the study's seed, pick each loss's best, repeat the finalists on every
    seed, score and judge. Returns the section's results."""
    names = list(args.budget_runs)
    missing = [n for n in ("dcgan-paper", "wgan-paper", "wgan-gp-paper") if n not in names]
    if missing:
        raise RuntimeError(f"--budget-runs must include each loss's paper settings (missing: {', '.join(missing)})")
    rates = calibrate(data, names, out, args)
    say("budget calibration (s per generator step): " + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    seed0 = args.budget_seeds[0]
    _train_all([(n, seed0) for n in names], data, out, args, rates, say)

    def scored(name, seed):
        row = score_run(data, name, run_dir_of(out, data, name, seed), args, evaluator)
        row.update(run=name, flags=BUDGET_RUNS[name][1], tracking=critic_tracking(row, "cfid"))
        return row

    rows = [scored(n, seed0) for n in names]
    best = {loss: min((r for r in rows if r["loss"] == loss), key=lambda r: r["scores"]["cfid"])["run"]
            for loss in LOSSES}
    finalists = list(dict.fromkeys([f"{loss}-paper" for loss in LOSSES] + list(best.values())
                                   + [n for n in ALSO_ON_EVERY_SEED if n in names]))
    more = [(n, s) for s in args.budget_seeds[1:] for n in finalists]
    _train_all(more, data, out, args, rates, say)
    rows += [scored(n, s) for n, s in more]
    seeds = list(args.budget_seeds)
    fig_rows = [_row(rows, n, seed0) for n in finalists if n != "wgan-nc1"]
    part = {"data": data, "budget_s": args.budget_s, "seeds": seeds, "rates": rates, "best": best,
            "finalists": finalists, "runs": rows, "claims": claims(rows, best, seeds),
            "figures": {"samples": figure_samples(data, fig_rows, out, seed0, f"{data}_budget_samples.png").name,
                        "metric": figure_cfid_vs_time(fig_rows, out, f"{data}_budget_cfid_vs_time.png").name}}
    return lean(part)


def lean(part: dict) -> dict:
    """The section as results.json keeps it: each evaluation with its training time, and not
    the per-log loss records the claims and figures were made from (thousands per run)."""
    for row in part["runs"]:
        if "losses" in row:
            for h in row["history"]:
                h["time"] = time_at(row, h["step"])
            del row["losses"]
    return part


def figure_cfid_vs_time(rows: list[dict], out: Path, name: str) -> Path:
    """cFID against the trainer's clock, one line per run: learning speed at equal time."""
    fig, ax = pyplot().subplots(figsize=(6.4, 3.8), dpi=110)
    for row in rows:
        pts = [(time_at(row, h["step"]), h["cfid"]) for h in row["history"] if h.get("cfid") is not None]
        pts = [p for p in pts if p[0] is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", ms=2, lw=1, label=row["run"])
    ax.set_yscale("log")
    ax.set_xlabel("training time (s, the trainer's clock)", fontsize=8)
    ax.set_title("classifier FID (log) during training", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return save_figure(fig, out / name)


def time_at(row: dict, step: int) -> float | None:
    times = [r["time"] for r in row["losses"] if r.get("time") is not None and r["step"] <= step]
    return times[-1] if times else None


def budget_lines(part: dict) -> list[str]:
    st, rows = part["settings"], part["runs"]
    seeds = part["seeds"]
    lines = [
        "## Equal training time: DCGAN, WGAN and WGAN-GP at their paper settings and at their best",
        "",
        *provenance_lines(part),
        f"Every run trains for the same time, {part['budget_s']:g} s of training at {st['threads']} thread(s) "
        "(not the same number of steps): a calibration run of each loss and n_critic measured its seconds per "
        "generator step (" + ", ".join(f"{k}: {v:.3f}" for k, v in part["rates"].items()) + "), and each run "
        "trains the steps that fit. The train time column is the trainer's own clock, which also counts the "
        f"{EVALS_PER_RUN} evaluations during the run ({st['eval_n']} samples each) and the sample grids. Width "
        "16, batch 64, no moving average. The sweep ran on seed " + str(seeds[0]) + "; each loss's best setting "
        "(lowest cFID there), its paper setting and WGAN with n_critic 1 then ran on seeds "
        + ", ".join(map(str, seeds)) + f". Scored like the main section ({st['final_n']} samples, same noise).",
        "",
        "| run | loss | flags beyond the paper's | seed | n_critic | generator steps | critic steps | train time (s) | "
        "cFID | IS | classes | KL(hist‖U) | ρ(critic gap, cFID) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        flags = f"`{' '.join(r['flags'])}`" if r["flags"] else "(paper)"
        lines.append(f"| {r['run']} | {r['loss']} | {flags} | {r['seed']} | {r['n_critic']} | {r['steps']} | "
                     f"{r['critic_steps']} | {r['train_time_s']:.0f} | {classifier_cells(r['scores'])} | "
                     f"{fmt_or_na(r['tracking'], '+.2f')} |")
    lines += ["", "Medians over seeds " + ", ".join(map(str, seeds)) + ":", "",
              "| run | seeds | median cFID | median classes | median ρ |", "|---|---|---|---|---|"]
    for n in part["finalists"]:
        ss = [r["seed"] for r in rows if r["run"] == n]
        lines.append(f"| {n}{' (best ' + r_loss(rows, n) + ')' if n in part['best'].values() else ''} | "
                     f"{', '.join(map(str, ss))} | {fmt_or_na(median_of(rows, n, 'cfid'), '.1f')} | "
                     f"{fmt_or_na(median_of(rows, n, 'classes_covered'), 'g')} | "
                     f"{fmt_or_na(median_of(rows, n, 'tracking'), '+.2f')} |")
    lines += ["", "The seeds' claims at this budget:", "", "| claim | numbers | verdict |", "|---|---|---|"]
    for c in part["claims"]:
        lines.append(f"| {c['claim']} | {c['numbers']} | **{c['verdict']}** |")
    figs = part["figures"]
    lines += ["", f"Final samples of seed {seeds[0]} (same noise for every run):\n\n![budget samples]({figs['samples']})",
              "", f"cFID against training time, seed {seeds[0]}:\n\n![budget cFID vs time]({figs['metric']})", ""]
    return lines


def r_loss(rows: list[dict], name: str) -> str:
    return next(r["loss"] for r in rows if r["run"] == name)

