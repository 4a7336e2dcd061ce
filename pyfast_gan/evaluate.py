"""``python -m pyfast_gan.evaluate --checkpoint PATH``: score a trained generator with every
measure that applies to its data (mode coverage for toy mixtures, the digits classifier's
cFID / IS / classes covered / KL for the embedded digits and mnist, FID and KID with Inception weights),
print a table and write the numbers as JSON.

Exit status: 0 when the scores were printed and written; 1 when they were printed but the
JSON file could not be written (a read-only run directory, a full disk: the message names the
file and --json PATH writes it elsewhere); 2 for a bad flag, checkpoint or data."""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import sys
from pathlib import Path

import torch

from pyfast_gan.metrics.evaluator import DESCRIPTIONS, METRIC_GROUPS


def build_parser() -> argparse.ArgumentParser:
    from pyfast_gan._cli import ArgumentParser

    p = ArgumentParser(
        prog="python -m pyfast_gan.evaluate", description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog="Metric groups: modes (8/25 Gaussians), toy_fd (toy data), classifier (digits, mnist: cfid, is_score, "
               "classes_covered, kl_uniform), fid and kid (images; need the FID Inception weights, "
               "pt_inception-2015-12-05-6726825d.pth from pytorch-fid). 'auto' = all that apply; fid/kid "
               "are skipped with a note when no weights are found. "
               "Exit status: 0 = scores printed and written; 1 = scores printed, but the JSON file could not "
               "be written (the message names it; --json PATH writes it elsewhere); 2 = bad flag, checkpoint "
               "or data, nothing scored.")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint file (.pt) or run directory (uses checkpoints/latest.pt)")
    p.add_argument("--n", type=int, default=10000, help="generated samples to score (default: 10000)")
    p.add_argument("--metrics", nargs="+", default=["auto"], metavar="GROUP",
                   help=f"metric groups: auto or any of {', '.join(METRIC_GROUPS)} (default: auto)")
    p.add_argument("--inception-weights", default="",
                   help="FID Inception weights file (default: pytorch-fid's or torch-fidelity's cached "
                        "file under $TORCH_HOME/hub/checkpoints, or $PYFAST_GAN_INCEPTION_WEIGHTS)")
    p.add_argument("--data", default="",
                   help="dataset path for FID/KID reference features when it moved since training "
                        "(default: the path in the checkpoint's config)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="score the generator's moving average (--ema; the run must have kept one) or the raw "
                        "generator (--no-ema) (default: the average when the run kept one)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=250, help="generation batch size (default: 250)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="device (default: auto = cuda when available)")
    p.add_argument("--json", default="",
                   help="output JSON (default: eval_step_XXXXXX.json in the run directory; when it cannot "
                        "be written the scores are still printed and the exit status is 1)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.4g}" if abs(v) < 1e4 else f"{v:.1f}")
    return str(v)


def format_table(result: dict) -> str:
    rows = [(k, _fmt(v), DESCRIPTIONS.get(k, "")) for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{k:<{w0}}  {v:>{w1}}  {d}".rstrip() for k, v, d in rows)


def default_json_path(checkpoint: Path, step: int) -> Path:
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run / f"eval_step_{step:06d}.json"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error(f"--n must be >= 2, got {args.n}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.json and Path(args.json).is_dir():
        parser.error(f"--json {args.json}: is a directory; give a file name such as "
                     f"{Path(args.json) / 'eval.json'}")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    from pyfast_gan.sample import describe_generator, load_generator
    from pyfast_gan.artifacts import checkpoint as ckpt_mod

    try:
        path = ckpt_mod.find_checkpoint(args.checkpoint)
        G, cfg = load_generator(str(path), ema=args.ema, device=device)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    step = cfg["step"]
    from pyfast_gan.data import EMBEDDED_DATA, TOY_DATASETS, DataError
    from pyfast_gan.metrics.evaluator import Evaluator

    data = cfg["data"]
    spec = args.data or data
    try:
        ev = Evaluator(data if data in EMBEDDED_DATA or data in TOY_DATASETS else spec,
                       metrics=args.metrics, data_format=cfg.get("data_format", "auto"),
                       image_size=cfg.get("image_size") or None, channels=cfg.get("channels") or None,
                       n=args.n, batch_size=args.batch_size, seed=args.seed,
                       inception_weights=args.inception_weights or None, device=device, progress=args.progress)
    except (ValueError, FileNotFoundError, DataError) as e:
        parser.error(str(e))
    for m, why in ev.skipped.items():
        print(f"note: {m} skipped: {why}", file=sys.stderr)
    if not ev.metrics:
        parser.error(f"nothing to measure for {data!r}: " + "; ".join(f"{m}: {why}" for m, why in ev.skipped.items()))
    out = Path(args.json) if args.json else default_json_path(path, step)
    try:
        if cfg.get("arch") == "cogan":  # each domain and the pair correspondence, as the trainer scores it
            from pyfast_gan.metrics.cogan import flat_cogan_scores, score_cogan
            from pyfast_gan.data.cogan import cogan_domain

            result = flat_cogan_scores(score_cogan(G, ev, cogan_domain(cfg)))
        else:
            result = ev(G, cfg["z_dim"])
    except ValueError as e:  # e.g. an --inception-weights file that is not the network's
        parser.error(str(e).splitlines()[0])
    record = {"checkpoint": str(path), "step": step, "loss": cfg["loss"], "data": data,
              "generator": cfg["generator"], "ema": cfg["generator"] == "ema",
              "seed": args.seed, "metrics": list(ev.metrics), "skipped": ev.skipped, **result}
    print(f"{cfg['loss']} on {data}, step {step}, {args.n} samples of {describe_generator(cfg)} ({path})")
    print(format_table(result))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        try:  # a file that is either whole or absent, never a half-written one
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(tmp, out)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            why = "the disk is full"
        elif isinstance(e, (FileExistsError, NotADirectoryError)):  # mkdir met a file on the way
            why = "a part of its path is a file, not a folder"
        else:
            why = e.strerror or str(e)
        print(f"python -m pyfast_gan.evaluate: the scores above were computed, but {str(out)!r} could not be "
              f"written: {why}; pass --json PATH to write them elsewhere", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
