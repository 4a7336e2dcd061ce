"""Checkpoints: everything needed to continue a run bitwise-exactly, written atomically."""
from __future__ import annotations

import errno
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch


def rng_state(data_gen: torch.Generator | None = None) -> dict:
    state = {
        "torch_cpu": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if data_gen is not None:
        state["data_gen"] = data_gen.get_state()
    return state


def set_rng_state(state: dict, data_gen: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch_cpu"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if data_gen is not None and "data_gen" in state:
        data_gen.set_state(state["data_gen"])


def save_atomic(obj, path: str | os.PathLike, writer=None) -> None:
    """``writer(obj, file)`` (torch.save; numpy.save for an array) to a temp file in the same
    directory, fsync, then os.replace, so a crash mid-write never leaves a truncated file under
    the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            (writer or torch.save)(obj, f)  # looked up at call time: tests replace torch.save
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except RuntimeError as e:
        # torch's zip writer reports a failed write (a full disk, a quota) as "[enforce fail
        # at inline_container.cc ...] unexpected pos" or "PytorchStreamWriter failed writing":
        # an OSError like any other failed write, so callers handle one kind. What made the
        # write fail is the error it happened in, when there is one: a Ctrl-C (raised again as
        # itself) or the file's own OSError (EFBIG under `ulimit -f`, ENOSPC...).
        if "inline_container" not in str(e) and "PytorchStreamWriter" not in str(e):
            raise
        tmp.unlink(missing_ok=True)
        cause = underlying(e)
        if isinstance(cause, KeyboardInterrupt):
            raise cause from None
        if isinstance(cause, OSError) and cause.errno is not None:
            raise OSError(cause.errno, f"torch.save could not write the file ({cause.strerror or cause})",
                          str(path)) from None
        free = shutil.disk_usage(path.parent).free
        raise OSError(errno.ENOSPC if free < 64 << 20 else errno.EIO,
                      f"torch.save could not write the file ({first_sentences(str(e), 120)}; "
                      f"{free / 2**20:.0f} MiB free on that disk)", str(path)) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def underlying(e: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or errno-carrying OSError that ``e`` was raised while handling
    (its ``__context__`` chain), or None."""
    seen, c = set(), e.__context__
    while c is not None and id(c) not in seen:
        if isinstance(c, KeyboardInterrupt) or (isinstance(c, OSError) and c.errno is not None):
            return c
        seen.add(id(c))
        c = c.__context__
    return None


def first_sentences(text: str, limit: int = 200) -> str:
    """The first line of ``text``, cut at a sentence end so it stays under ``limit`` characters
    where it can (the first sentence is always kept whole): one line that never stops
    mid-sentence."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    parts = re.split(r"(?<=[.!?])\s+", line)
    out = parts[0]
    for part in parts[1:]:
        if len(out) + 1 + len(part) > limit:
            break
        out += " " + part
    return out.rstrip(".")


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The generator step a checkpoint holds, read without loading its tensors (mmap); None
    when it is missing or unreadable."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["step"])
    except Exception:  # noqa: BLE001 - any unreadable file means: unknown
        return None


def find_checkpoint(path: str | os.PathLike) -> Path:
    """Accept a checkpoint file, a run directory or its checkpoints/ directory."""
    p = Path(path)
    if p.is_file():
        return p
    for cand in (p / "checkpoints" / "latest.pt", p / "latest.pt"):
        if cand.is_file():
            return cand
    raise ValueError(f"no checkpoint found in {str(path)!r} "
                     "(expected a .pt file or a run directory with checkpoints/latest.pt)")


# What every pyfast_gan training checkpoint holds (sample/evaluate need the first three).
REQUIRED = ("config", "step", "G", "D", "critic_steps", "opt_g", "opt_d", "rng", "data", "fixed_noise")


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    """A training checkpoint, or ValueError naming the file when it is truncated, empty,
    not a torch file, or not a pyfast_gan checkpoint (a model's bare state_dict, say)."""
    try:
        # weights_only=False: the checkpoint holds numpy/python RNG states (tuples, ndarrays).
        # Only load checkpoints you wrote yourself.
        ck = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds for a bad file
        why = first_sentences(str(e)) or type(e).__name__
        raise ValueError(f"{path}: not a readable checkpoint (truncated, empty or not a torch "
                         f"file: {why})") from None
    missing = [k for k in REQUIRED if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise ValueError(f"{path}: not a pyfast_gan training checkpoint (missing {', '.join(missing)})")
    if not isinstance(ck["config"], dict) or not isinstance(ck["G"], dict):
        raise ValueError(f"{path}: not a pyfast_gan training checkpoint (malformed config or weights)")
    return ck


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete temporaries that a killed process left in a run directory (``.NAME.tmpPID`` from
    :func:`save_atomic` and the figure writers, ``metrics.jsonl.tmp``); returns them."""
    run_dir = Path(run_dir)
    gone = []
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "samples", run_dir / "plots"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            own = p.name.startswith(".") and f".tmp{os.getpid()}" in p.name
            if p.is_file() and not own and ((p.name.startswith(".") and ".tmp" in p.name)
                                            or p.name == "metrics.jsonl.tmp"):
                p.unlink()
                gone.append(p)
    return gone
