"""The run directory: checked before anything is built or written (a new run never overwrites
an existing one), and held by one trainer at a time (its own lock file, released by the OS
when the trainer dies). What a ``--resume`` changes of the saved settings is said here too."""
from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from .config import TrainConfig, default_out_dir


def check_out_dir(cfg: TrainConfig) -> Path:
    """The run directory, checked before anything is built or written: a new run never
    overwrites an existing one, and the directory must be creatable and writable (probed with
    a temporary file, which also catches a read-only disk)."""
    out = Path(cfg.out or default_out_dir(cfg))
    for sub in ("", "samples", "plots", "checkpoints", "tensorboard"):
        if (out / sub).exists() and not (out / sub).is_dir():
            raise ValueError(f"--out {out}: {out / sub} exists and is not a directory")
    held = [n for n in ("config.json", "metrics.jsonl", "checkpoints/latest.pt") if (out / n).exists()]
    if held and not cfg.resume:
        raise ValueError(f"--out {out} holds a run already ({', '.join(held)}); nothing was changed. "
                         f"Continue it with --resume {out}, or choose a new --out")
    probe = next(p for p in [out / "checkpoints", out, *out.absolute().parents] if p.exists())
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write in {probe} ({e.strerror or e})") from None
    return out


def lock_run_dir(out: Path) -> int:
    """Take the run directory's own lock (``RUN/.lock``, an exclusive ``flock``) for the life of
    the trainer and return its file descriptor; the OS releases it when the process dies. A
    second trainer on the same directory (with --resume or not) is refused here, before it
    touches any file. Readers (sample, evaluate) never take it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create the run's lock file ({e.strerror or e})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ValueError(f"--out {out}: another trainer (PID {holder}) is running in this run directory "
                         f"(it holds {out / '.lock'}); nothing was changed. Wait for it to end or stop it, "
                         f"then --resume {out}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd



# What a --resume may change about the training (not the models or data, config.py's
# FROZEN_ON_RESUME): each one given now is said once.
RESUME_SETTINGS = ("optimizer", "lr", "lr_g", "betas", "clip_value", "gp_weight", "lazy_gp", "n_critic",
                   "lr_decay", "plateau_steps", "ema", "ema_rampup", "began_gamma", "began_lambda_k")


def _show(v) -> str:
    if isinstance(v, (list, tuple)):
        return " ".join(map(_show, v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def resume_changes(saved: dict, cfg: TrainConfig) -> list[str]:
    """One line per training setting whose value now differs from the checkpoint's."""
    now = cfg.to_dict()
    out = []
    for k in RESUME_SETTINGS:
        old, new = saved.get(k), now[k]
        if k in saved and (list(old) if isinstance(old, tuple) else old) != new:
            out.append(f"--{k.replace('_', '-')} {_show(new)} replaces the checkpoint's {_show(old)}")
    return out
