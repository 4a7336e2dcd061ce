"""The --fast section of the comparison study (``--section fast``): WGAN-GP trained eagerly and
with the trainer's ``--fast`` switches, at the same budget, on the same seeds, so the report can
say whether the fast path changes sample quality. It must not: the verdict compares the gap
between the two paths with the seed-to-seed spread of each."""
from __future__ import annotations

from pathlib import Path

from .runs import DATA_TITLE, FAST, classifier_cells, figure_samples, fmt_or_na, provenance_lines, run_name, \
    score_run

EAGER = "wgan-gp"
PAIR = (EAGER, *FAST)  # eager first, then its --fast twin
# The measures compared (lower is better for cfid and kl_uniform, higher for the others).
COMPARED = ("cfid", "is_score", "classes_covered", "kl_uniform")


def fast_jobs(data: str, seeds: list[int]) -> list[tuple[str, str, int]]:
    """(data, run, seed) of every run the section needs; the eager run at the study's seed is
    the main section's own "wgan-gp" run (the same folder, trained once)."""
    return [(data, r, s) for s in seeds for r in PAIR]


def verdict(rows: list[dict], key: str) -> dict:
    """Per path, the values over seeds and their spread (max - min); the gap between the two
    paths' means; within = the gap is no larger than the larger of the two spreads."""
    vals = {p: [r["scores"][key] for r in rows if r["path"] == p] for p in ("eager", "fast")}
    spread = {p: (max(v) - min(v)) if v else None for p, v in vals.items()}
    mean = {p: sum(v) / len(v) if v else None for p, v in vals.items()}
    if None in mean.values() or None in spread.values():
        return {"values": vals, "spread": spread, "gap": None, "within": None}
    gap = abs(mean["fast"] - mean["eager"])
    return {"values": vals, "spread": spread, "gap": gap, "within": gap <= max(spread.values())}


def score_fast(out: Path, args, evaluator, data: str) -> dict:
    rows = []
    for seed in args.fast_seeds:
        for name in PAIR:
            rn = run_name(name, seed, args.seed)
            run_dir = out / "runs" / data / rn
            row = score_run(data, rn, run_dir, args, evaluator)
            row["path"] = "fast" if name in FAST else "eager"
            rows.append(row)
    return {"data": data, "seeds": list(args.fast_seeds), "runs": rows,
            "verdict": {k: verdict(rows, k) for k in COMPARED},
            "figures": {"samples": figure_samples(data, rows, out, args.seed, f"{data}_fast_samples.png").name}}


def fast_lines(fast: dict) -> list[str]:
    st, data = fast["settings"], fast["data"]
    rows = fast["runs"]
    lines = [
        f"## --fast against eager WGAN-GP on {DATA_TITLE[data]}",
        "",
        *provenance_lines(fast),
        "The same WGAN-GP run (budget, model, paper settings) trained eagerly and with `--fast` (on a CPU: "
        "torch.compile with inductor's penalty formula and channels_last; bf16 autocast only where the CPU has "
        "native bf16), on seeds " + ", ".join(str(s) for s in fast["seeds"]) + f"; scored like the main section "
        f"({st['final_n']} samples, same noise). The two paths do not give bit-identical runs (compiled kernels "
        "sum in another order, and the rounding differences grow over training like a change of seed), so the "
        "question is whether the fast path's scores lie within the seed-to-seed spread of the eager ones.",
        "",
        "| run | path | seed | generator steps | cFID | IS | classes | KL(hist‖U) | train time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["scores"]
        lines.append(f"| {r['run']} | {r['path']} | {r['seed']} | {r['steps']} | {classifier_cells(s)} | "
                     f"{r['train_time_s']:.0f} |")
    lines += ["", "Gap between the paths' means against the larger seed-to-seed spread (max - min over seeds) "
              "of either path:", "", "| measure | eager spread | fast spread | gap of means | within the spread |",
              "|---|---|---|---|---|"]
    for key, v in fast["verdict"].items():
        ok = {True: "yes", False: "**no**", None: "n/a"}[v["within"]]
        lines.append(f"| {key} | {fmt_or_na(v['spread']['eager'], '.3f')} | {fmt_or_na(v['spread']['fast'], '.3f')}"
                     f" | {fmt_or_na(v['gap'], '.3f')} | {ok} |")
    lines += ["", "Predicted-class counts (classes 0-9):", ""]
    lines += [f"- {r['run']}: {r['counts']}" for r in rows]
    grid = fast["figures"]["samples"]
    lines += ["", f"Final samples (same noise for every run):\n\n![fast vs eager samples]({grid})", ""]
    return lines
