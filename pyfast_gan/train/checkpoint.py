"""Checkpoints: everything needed to continue a run bitwise-exactly, written atomically."""
from __future__ import annotations

import os
import random
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


def save_atomic(obj, path: str | os.PathLike) -> None:
    """torch.save to a temp file in the same directory, fsync, then os.replace, so a crash
    mid-write never leaves a truncated file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    # weights_only=False: the checkpoint holds numpy/python RNG states (tuples, ndarrays).
    # Only load checkpoints you wrote yourself.
    return torch.load(path, map_location=map_location, weights_only=False)
