"""``python -m pyfast_gan.train``: DCGAN / WGAN / WGAN-GP / LSGAN / hinge / BEGAN / CoGAN training.

Programmatic use::

    from pyfast_gan.train import parse_args, resolve, train
    cfg, explicit = parse_args(["--loss", "wgan", "--steps", "100"])
    train(resolve(cfg, explicit))

    from pyfast_gan.train import build        # everything a run needs, nothing written
    run = build(resolve(cfg, explicit))
    stats = run.iteration()                    # n_critic critic steps + 1 generator step
"""
from __future__ import annotations

import sys

from .checks import ignored_flags
from .config import TrainConfig, build_parser, command_line_flags, fast_note, parse_args, resolve
from .endings import TrainingStopped
from .loop import train
from .run import Run, build

__all__ = ["TrainConfig", "build_parser", "parse_args", "resolve", "train", "build", "Run",
           "TrainingStopped", "main"]


def main(argv=None, hooks: dict | None = None) -> int:
    """CLI entry point. Returns the process exit code: 0 done, 130 interrupted (checkpoint
    written), 3 ended on non-finite values, 1 a failed write (disk full, read-only); bad flags
    or data, or a run directory another trainer holds, exit via argparse (code 2)."""
    cfg, explicit = parse_args(argv)
    parser = build_parser()
    try:
        resolved = resolve(cfg, explicit)
        for msg in [fast_note(resolved, explicit), *ignored_flags(resolved, command_line_flags(argv))]:
            if msg:
                print(f"[pyfast_gan.train] {msg}", file=sys.stderr, flush=True)
        result = train(resolved, hooks=hooks)
    except TrainingStopped as e:
        print(f"pyfast_gan.train: {e}", file=sys.stderr, flush=True)
        return e.code
    except KeyboardInterrupt:  # before the loop's own Ctrl-C handling: set-up, data cache build
        print("pyfast_gan.train: interrupted before training started; no checkpoint was written",
              file=sys.stderr, flush=True)
        return 130
    except ValueError as e:  # bad flag / data (pyfast_gan.data.DataError is a ValueError)
        parser.error(str(e))
    return 130 if result["status"] == "interrupted" else 0
