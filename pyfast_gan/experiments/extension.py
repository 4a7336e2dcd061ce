"""The extension section of the comparison study (``--section extension``): LSGAN and BEGAN
(the paper's settings and ``began-tuned``) beside the main runs on one image set (real MNIST
by default, or the 8x8 digits), and CoGAN on two pairs of digit domains; scoring, figures and
the report section of these runs."""
from __future__ import annotations

from pathlib import Path

import torch

from pyfast_gan.artifacts.outputs import read_metrics, save_figure

from .runs import DATA_TITLE, EXTENSION, classifier_cells, critic_tracking, figure_losses, figure_metric_vs_step, \
    figure_samples, fmt_or_na, panels, provenance_lines, score_run


def score_cogan(data: str, name: str, run_dir: Path, args, evaluator) -> dict:
    """A CoGAN run: classifier scores of domain A (digits) and, for negatives, of domain B
    made digits again (its own inverse); the pair correspondence against shuffled pairs."""
    from pyfast_gan.metrics.cogan import score_cogan as scores_of
    from pyfast_gan.metrics.evaluator import scalar_items
    from pyfast_gan.sample import load_generator

    G, cfg = load_generator(str(run_dir), device="cpu")
    ck = torch.load(run_dir / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)
    domain = cfg["cogan_domain"]
    scores = scores_of(G, evaluator, domain)
    res_a, res_b = scores["a"], scores["b"]
    recs = read_metrics(run_dir / "metrics.jsonl")
    return {
        "data": data, "run": name, "dir": str(run_dir), "loss": "cogan", "domain": domain, "steps": int(ck["step"]),
        "critic_steps": int(ck["critic_steps"]), "batch_size": cfg["batch_size"],
        "train_time_s": round(float(ck.get("elapsed", 0.0)), 1),
        "scores_a": scalar_items(res_a), "counts_a": res_a.get("class_counts"),
        "scores_b": scalar_items(res_b) if res_b else None,
        "correspondence": scores["correspondence"],
        "history": [{"step": r["step"], **r["eval"]} for r in recs if isinstance(r.get("eval"), dict)],
        "losses": [{k: r[k] for k in ("step", "loss_d", "loss_g") if k in r} for r in recs if "loss_d" in r],
    }


def score_extension(out: Path, args, evaluator, data: str) -> dict:
    rows, cogan = [], []
    for name in args.ext_runs:
        run_dir = out / "runs" / data / name
        if EXTENSION[name][0] == "cogan":
            cogan.append(score_cogan(data, name, run_dir, args, evaluator))
            continue
        row = score_run(data, name, run_dir, args, evaluator)
        row["tracking"] = critic_tracking(row, "cfid")
        row["m_tracking"] = critic_tracking(row, "cfid", stat="m_global")
        last = next((r for r in reversed(row["losses"]) if r.get("m_global") is not None), None)
        row["final_k"], row["final_m"] = (last["k_t"], last["m_global"]) if last else (None, None)
        rows.append(row)
    figures = {}
    if rows:
        figures.update(samples=figure_samples(data, rows, out, args.seed, f"{data}_ext_samples.png").name,
                       metric=figure_metric_vs_step(data, rows, out, f"{data}_ext_metric_vs_step.png").name,
                       losses=figure_losses(data, rows, out, f"{data}_ext_losses.png").name)
        began = [r for r in rows if r["loss"] == "began"]
        if began:
            figures["began"] = figure_began(began, out).name
    if cogan:
        figures["cogan"] = figure_cogan(cogan, out, args.seed).name
    return {"runs": rows, "cogan": cogan, "figures": figures}


def figure_began(rows: list[dict], out: Path) -> Path:
    """Per BEGAN run, one row of panels: M_global and k_t (per log step), the classifier FID
    and the classes covered (per evaluation)."""
    fig, axes = panels(2 * len(rows), 5.2, 3.2, ncols=2)
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
        ax_q.set_title(f"{row['run']}: cFID; Spearman rho(M_global, cFID) = {fmt_or_na(row['m_tracking'], '+.2f')}",
                       fontsize=8)
    for a in axes:
        a.set_xlabel("generator step", fontsize=8)
        a.grid(alpha=0.3)
    return save_figure(fig, out / "began_convergence.png")


def figure_cogan(rows: list[dict], out: Path, seed: int) -> Path:
    """Each CoGAN run's pairs from the same 32 noise vectors, A and B side by side."""
    from pyfast_gan.models import pairs_side_by_side
    from pyfast_gan.sample import load_generator
    from pyfast_gan.artifacts.outputs import image_grid

    fig, axes = panels(len(rows), 4.4, 4.8)
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
    st = ext["settings"]
    data = ext.get("data", "digits")  # reports written before --ext-data ran on the digits
    where = DATA_TITLE[data]
    lines = [f"# LSGAN, BEGAN and CoGAN on {where}", ""] if title else []
    lines += [
        f"## Extension: LSGAN, BEGAN and CoGAN on {where}",
        "",
        *provenance_lines(ext),
        f"Same budget as the {data} section above (generator steps, batch size, width, noise size, seed); each loss "
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
            f"Scored like the {data} section ({st['final_n']} samples). ρ(M_global, cFID): Spearman correlation "
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
            lines.append(f"| {r['run']} | {r['loss']} | {r['steps']} | {classifier_cells(sc)} | "
                         f"{fmt_or_na(r['tracking'], '+.2f')} | "
                         f"{fmt_or_na(r['m_tracking'], '+.2f')} | {fmt_or_na(r['final_k'], '.4f')} | "
                         f"{fmt_or_na(r['final_m'], '.4f')} | {r['train_time_s']:.0f} |")
        lines += ["", "Predicted-class counts (classes 0-9):", ""]
        lines += [f"- {r['run']}: {r['counts']}" for r in rows]
        figs = ext["figures"]
        lines += ["", f"Final samples (same noise for every run):\n\n![extension samples]({figs['samples']})", "",
                  f"Scores during training:\n\n![extension metric vs step]({figs['metric']})", "",
                  f"Losses:\n\n![extension losses]({figs['losses']})", ""]
        if "began" in figs:
            lines += [f"BEGAN's M_global and k_t against the classifier FID:\n\n"
                      f"![BEGAN convergence]({figs['began']})", ""]
    if ext["cogan"]:
        lines += [
            "### CoGAN",
            "",
            "Two unpaired domains: the digits (A) and a transformation of them (B), A and B drawn from disjoint "
            f"halves of the {'5,000 MNIST' if data == 'mnist' else '1,797'} digits, so the training data holds no "
            "pair. Domain A is scored by the digits classifier; domain B too for negatives, after making them "
            "digits again (the negative is its own "
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
