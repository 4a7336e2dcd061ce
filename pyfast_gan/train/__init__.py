"""``python -m pyfast_gan.train``: DCGAN / WGAN / WGAN-GP / LSGAN / hinge training.

Programmatic use::

    from pyfast_gan.train import TrainConfig, parse_args, resolve, train
    cfg, explicit = parse_args(["--loss", "wgan", "--steps", "100"])
    train(resolve(cfg, explicit), explicit)
"""
from __future__ import annotations

import sys

from .config import TrainConfig, build_parser, parse_args, resolve
from .loop import TrainingStopped, train

__all__ = ["TrainConfig", "build_parser", "parse_args", "resolve", "train", "TrainingStopped", "main"]


def main(argv=None, hooks: dict | None = None) -> int:
    """CLI entry point. Returns the process exit code: 0 done, 130 interrupted (checkpoint
    written), 3 stopped on non-finite values; bad flags or data exit via argparse (code 2)."""
    cfg, explicit = parse_args(argv)
    parser = build_parser()
    try:
        if cfg.resume:
            # The checkpoint's config is the base; presets must not overwrite it.
            resolved = cfg
        else:
            resolved = resolve(cfg, explicit)
        result = train(resolved, explicit, hooks=hooks)
    except TrainingStopped as e:
        print(f"pyfast_gan.train: {e}", file=sys.stderr, flush=True)
        return 3
    except ValueError as e:  # bad flag / data (pyfast_gan.data.DataError is a ValueError)
        parser.error(str(e))
    return 130 if result["status"] == "interrupted" else 0
