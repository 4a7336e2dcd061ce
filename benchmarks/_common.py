"""Shared benchmark plumbing: timing, environment capture, tables, JSON results.

Every benchmark prints ratios measured in the same run, so the noise of a shared
machine hits baseline and candidate alike.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
import time
from typing import Callable

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], device, *, warmup: int = 3, iters: int = 20,
            min_time: float = 0.0, clock: str = "wall") -> dict:
    """Median/min time of ``fn`` in ms: CUDA events on GPU; on CPU wall time, or with
    ``clock="cpu"`` the process's CPU time (time.process_time), which on a shared machine
    leaves out the time other processes hold the cores."""
    device = torch.device(device)
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    now = time.process_time if clock == "cpu" else time.perf_counter
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    t_start = time.perf_counter()
    while len(times) < iters or (time.perf_counter() - t_start) < min_time:
        if device.type == "cuda":
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = now()
            fn()
            times.append((now() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "iters": len(times)}


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10)
        return sha + ("+dirty" if dirty.stdout.strip() else "")
    except Exception:
        return "unknown"


def environment(device) -> dict:
    device = torch.device(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "commit": git_commit(),
    }
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        env["device"] = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return env


def print_table(rows: list[dict], columns: list[str]) -> None:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
        return "-" if v is None else str(v)

    widths = {c: max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in columns} if rows else {c: len(c) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for r in rows:
        print("  ".join(fmt(r.get(c)).ljust(widths[c]) for c in columns))


def save_results(name: str, device, rows: list[dict], extra: dict | None = None, path: str | None = None) -> str:
    env = environment(device)
    # letters, digits, '.', '_' and '-' only: the names the device tool brings back
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", env["device"]).strip("_")[:40]
    if path is None:
        # PYFAST_GAN_RESULTS_DIR: scripts/gpu_session.sh writes straight into the device tool's
        # return folder (and its --dry-run never overwrites the committed results).
        outdir = os.environ.get("PYFAST_GAN_RESULTS_DIR") or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "results")
        os.makedirs(outdir, exist_ok=True)
        path = os.path.join(outdir, f"{name}_{env['device_type']}_{tag}.json")
    with open(path, "w") as f:
        json.dump({"benchmark": name, "environment": env, "results": rows, **(extra or {})}, f, indent=2)
    return path


SPEED_COLUMNS = ["impl", "shape", "dtype", "median_ms", "min_ms", "speedup_vs_ref", "speedup_vs_compiled", "GB/s"]


def compare_steps(steps: dict[str, Callable[[], object]], device, *, rounds: int, iters: int, shape, dname: str,
                  nbytes: int) -> list[dict]:
    """Times ``steps`` (must include "reference") in interleaved rounds; one row per impl.

    Impls take turns within each round so the noise of a shared machine hits all of
    them alike; medians over all rounds give the speedups.
    """
    for s in steps.values():  # compile / first-call costs stay out of the timings
        s()
    med = {n: [] for n in steps}
    mins = {n: [] for n in steps}
    names = list(steps)
    for r in range(rounds):
        # Rotate the order each round so no impl always runs first after a switch.
        for name in names[r % len(names):] + names[:r % len(names)]:
            s = steps[name]
            t = time_fn(s, device, warmup=1, iters=iters)
            med[name].append(t["median_ms"])
            mins[name].append(t["min_ms"])
    ref = statistics.median(med["reference"])
    comp = statistics.median(med["reference+compile"]) if "reference+compile" in med else None
    rows = []
    for name in steps:
        m = statistics.median(med[name])
        rows.append({
            "impl": name, "shape": "x".join(map(str, shape)), "dtype": dname,
            "median_ms": m, "min_ms": min(mins[name]),
            "speedup_vs_ref": ref / m, "speedup_vs_compiled": (comp / m) if comp else None,
            "GB/s": nbytes / (m * 1e-3) / 1e9,
        })
    return rows


def speed_cli(name: str, doc: str | None, run: Callable, shapes: list, dtypes: dict, argv=None) -> list[dict]:
    """Command line of the fwd+bwd speed benchmarks: ``run(device, shapes, dtypes, rounds, iters, with_compile)``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=8, help="timed calls per impl per round")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd reference")
    p.add_argument("--shapes", default="all", help="'all' or e.g. 256x3x64x64,64x3x96x96")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--save", action="store_true", help="write JSON to benchmarks/results/")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    shapes = shapes if a.shapes == "all" else [tuple(int(x) for x in s.split("x")) for s in a.shapes.split(",")]
    dtypes = {k: dtypes[k] for k in a.dtypes.split(",")}
    env = environment(device)
    print(f"# {name} fwd+bwd on {env['device']} ({env['cpu_threads']} threads), torch {env['torch']}")
    rows = run(device, shapes, dtypes, a.rounds, a.iters, not a.no_compile)
    print_table(rows, SPEED_COLUMNS)
    if a.save:
        print("saved", save_results(name, device, rows))
    return rows
