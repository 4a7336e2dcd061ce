"""``python -m pyfast_gan.sample --checkpoint PATH --n 64 --out grid.png``: draw samples from
a training checkpoint (an image grid, or a scatter plot over real data for 2-D toy data). With
``--out samples.npy`` (or ``.pt``) the samples themselves are written as a tensor, for another
judge. A run that kept a moving average of its generator (--ema) is sampled from that average
unless --no-ema."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


TOY_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")  # matplotlib's writers
TENSOR_SUFFIXES = (".npy", ".pt")  # the raw samples: numpy array or torch tensor, float32


def build_parser() -> argparse.ArgumentParser:
    from pyfast_gan._cli import ArgumentParser

    p = ArgumentParser(prog="python -m pyfast_gan.sample",
                       description=" ".join(__doc__.replace("``", "").split()))
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint file (.pt) or run directory (uses checkpoints/latest.pt)")
    p.add_argument("--n", type=int, default=64, help="number of samples (default: 64)")
    p.add_argument("--out", default="grid.png",
                   help="output file; the suffix names the format: an image grid (.png, .jpg, .webp, ...), "
                        "or the samples themselves as a float32 tensor, (N, C, H, W) in [-1, 1] "
                        "((N, 2) for toy data), in .npy (numpy.load) or .pt (torch.load) (default: grid.png)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="sample the generator's moving average (--ema; the run must have kept one) or the "
                        "raw generator (--no-ema) (default: the average when the run kept one)")
    p.add_argument("--nrow", type=int, default=0, help="images per grid row (default: 0 = square)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device (default: cpu)")
    return p


def load_generator(checkpoint: str, ema: bool | None = None, device: str = "cpu"):
    """(generator in eval mode, resolved training config dict with the checkpoint's "step" and
    "generator" ("ema" or "raw") added) from a checkpoint file or run directory. ``ema``: True
    requires the run's moving average, False takes the raw generator, None the average when the
    checkpoint has one. The average's batch-norm statistics are measured for its weights
    (:func:`pyfast_gan.models.ema.recompute_batch_norm`, seeded as the trainer seeds it)."""
    from pyfast_gan.models import build_models
    from pyfast_gan.models.ema import recompute_batch_norm
    from pyfast_gan.artifacts import checkpoint as ckpt_mod

    path = ckpt_mod.find_checkpoint(checkpoint)
    ck = ckpt_mod.load(path, map_location=device)
    has_ema = ck.get("ema") is not None
    if ema and not has_ema:
        raise ValueError(f"--ema: the checkpoint {path} has no EMA generator (train with --ema 0.999)")
    use_ema = has_ema if ema is None else ema
    cfg = {**ck["config"], "step": int(ck.get("step", 0)), "generator": "ema" if use_ema else "raw"}
    G, _ = build_models(cfg["arch"], image_size=cfg["image_size"], channels=cfg["channels"],
                        z_dim=cfg["z_dim"], base=cfg["base"], critic_norm=cfg["critic_norm"],
                        embed=cfg.get("began_embed", 0))
    G.load_state_dict(ck["ema"]["module"] if use_ema else ck["G"])
    G = G.to(device)
    if use_ema:
        recompute_batch_norm(G, cfg["z_dim"], seed=int(ck["ema"]["num_updates"]))
    return G.eval(), cfg


def describe_generator(cfg: dict) -> str:
    """Which generator a checkpoint's samples come from, for the line that reports them."""
    if cfg["generator"] == "ema":
        return f"the moving average of the generator (--ema {cfg.get('ema', 0):g})"
    return "the raw generator"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    if args.nrow < 0:
        parser.error(f"--nrow must be >= 0 (0 = square), got {args.nrow}")
    out = Path(args.out)
    if out.is_dir():
        parser.error(f"--out {out}: is a directory; give a file name such as {out / 'grid.png'}")
    from PIL import Image

    suffix = out.suffix.lower()
    if suffix not in Image.registered_extensions() and suffix not in TENSOR_SUFFIXES:
        parser.error(f"--out {out}: unknown image suffix {out.suffix!r} (use .png, .jpg, .webp, ...; "
                     f"or {', '.join(TENSOR_SUFFIXES)} for the samples as a tensor)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    try:
        G, cfg = load_generator(args.checkpoint, ema=args.ema, device=args.device)
    except (ValueError, RuntimeError) as e:  # RuntimeError: weights that do not fit the config
        parser.error(str(e).splitlines()[0])
    from pyfast_gan.data.toy import TOY_DATASETS as TOY_DATA
    from pyfast_gan.artifacts.outputs import save_image_grid, save_samples, save_toy_scatter

    gen = torch.Generator().manual_seed(args.seed)
    z = torch.randn(args.n, cfg["z_dim"], generator=gen).to(args.device)
    with torch.no_grad():
        x = G(z).float().cpu()
    if suffix in TENSOR_SUFFIXES:
        save_samples(x, out)
    elif cfg["data"] in TOY_DATA and suffix not in TOY_SUFFIXES:
        parser.error(f"--out {out}: a toy run's scatter plot is written as {', '.join(TOY_SUFFIXES)}")
    elif cfg["data"] in TOY_DATA:
        from pyfast_gan.data import ToySampler

        sampler = ToySampler(cfg["data"])
        real = sampler.sample(max(args.n, 1000), generator=torch.Generator().manual_seed(args.seed + 1))
        save_toy_scatter(x, real, out, title=f"{args.n} samples", modes=getattr(sampler, "modes", None))
    elif cfg["arch"] == "cogan":  # each pair (same z) side by side
        from pyfast_gan.models import pairs_side_by_side

        save_image_grid(pairs_side_by_side(x, cfg["channels"]), out, nrow=2 * (args.nrow or 8))
    else:
        save_image_grid(x, out, nrow=args.nrow or None)
    print(f"wrote {args.n} samples of {describe_generator(cfg)}, step {cfg['step']}, to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
