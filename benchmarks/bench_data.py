"""The decoded-dataset cache (issue 14) at growing dataset sizes.

For each N the benchmark writes a synthetic folder of N JPEGs (smooth random pictures,
128 x 128 by default, never blank), then starts the trainer's set-up twice as separate
processes, each ``pyfast_gan.train.build`` for a DCGAN-64 WGAN-GP run (batch 64, n_critic 5)
followed by training iterations:

* run 1, ``--data-cache on`` with an empty cache: builds it (decode in worker processes);
  reported: build time and images/s;
* run 2, the same command again: opens the memory map; reported: time from the process's
  launch to the end of its first training iteration, its peak resident memory (its own
  ``ru_maxrss``, and at the end its anonymous and file-backed resident memory), and the data share of step time (time spent in ``batcher.next`` / time of
  the timed iterations);
* with ``--compare-off``, run 3: ``--data-cache off`` (decode the folder into memory, as
  before the cache), the same measures, for comparison.

The integrity check's cost (issue 22: every image row read from the cache is checked against
its CRC-32): after the timed iterations, runs 1 and 2 time ``--check-batches`` random batches
read with the check and without it (``crc_ms``: the extra milliseconds per batch), and
``crc_share`` is that cost over the time of one iteration (its batches x crc_ms / iteration
time). The reads run on the batch thread, one batch ahead of the step, so ``data_share``
(the step's wait for its batch) already includes the check and stays the number that matters.

The folder and the cache are removed afterwards (``--keep`` keeps them).

    python benchmarks/bench_data.py --n 200 --steps 1 --n-critic 1        # quick check
    python benchmarks/bench_data.py --n 2000 20000 --compare-off --save
    python benchmarks/bench_data.py --n 2000 20000 100000 --save           # minutes of CPU
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, print_table, save_results  # noqa: E402

COLUMNS = ["n", "run", "build_s", "build_img_s", "launch_to_first_step_s", "build_call_s",
           "peak_rss_mib", "rss_anon_mib", "rss_file_mib", "data_share", "crc_ms", "crc_share", "it_s",
           "cache_mib"]
MEASURES = ("launch_to_first_step_s", "build_call_s", "peak_rss_mib", "rss_anon_mib", "rss_file_mib",
            "data_share", "crc_ms", "crc_share", "it_s")


def _rss_split() -> dict:
    """End-of-run resident memory split (Linux /proc/self/status): RssAnon is the process's
    own memory; RssFile counts file pages it has mapped (the cache's pages touched so far:
    shared with other processes and the page cache, dropped under memory pressure, and
    mapped in large folios, so far more than the bytes read)."""
    out = {"rss_anon_mib": None, "rss_file_mib": None}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:")):
                    key = "rss_anon_mib" if line.startswith("RssAnon") else "rss_file_mib"
                    out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def _write_range(args):
    root, start, stop, size = args
    from PIL import Image

    for i in range(start, stop):
        rng = np.random.default_rng(i)
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        img = small.resize((size, size), Image.Resampling.BICUBIC)
        sub = os.path.join(root, f"{i // 1000:04d}")
        os.makedirs(sub, exist_ok=True)
        img.save(os.path.join(sub, f"{i:07d}.jpg"), quality=90)
    return stop - start


def make_jpeg_folder(root: str, n: int, size: int, workers: int) -> float:
    """``n`` smooth random JPEGs (8x8 noise upsampled) in folders of 1000; returns seconds."""
    t0 = time.perf_counter()
    step = 500
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_write_range, [(root, s, min(s + step, n), size) for s in range(0, n, step)]))
    return time.perf_counter() - t0


def check_cost(rows, batch_size: int, batches: int) -> float:
    """Milliseconds per batch that checking each row's CRC-32 adds to reading it (the median
    of ``batches`` random batches read with the check, minus the same batches read without)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    idx = [torch.randint(rows.shape[0], (batch_size,), generator=gen) for _ in range(batches)]
    crcs, times = rows.crcs, {}
    try:
        for mode in ("warm", "check", "plain", "check", "plain"):  # warm: the page cache, not timed
            rows.crcs = None if mode == "plain" else crcs
            t = []
            for i in idx:
                t0 = time.perf_counter()
                rows.gather(i)
                t.append(time.perf_counter() - t0)
            times[mode] = times.get(mode, []) + t
    finally:
        rows.crcs = crcs
    return 1e3 * (float(np.median(times["check"])) - float(np.median(times["plain"])))


def child(a) -> None:
    """One trainer set-up + iterations; prints one JSON line."""
    import resource

    import torch

    from pyfast_gan.train import build, parse_args, resolve

    launched = float(a.launched)
    flags = ["--data", a.data, "--image-size", str(a.image_size), "--loss", "wgan-gp",
             "--batch-size", str(a.batch_size), "--n-critic", str(a.n_critic), "--device", "cpu",
             "--data-cache", a.cache, "--num-workers", str(a.workers), "--no-progress"]
    cfg, explicit = parse_args(flags)
    cfg = resolve(cfg, explicit)
    t0 = time.perf_counter()
    run = build(cfg)
    build_call = time.perf_counter() - t0
    inner, wait, calls = run.batcher.next, [0.0], [0]

    def timed_next(b):
        t = time.perf_counter()
        x = inner(b)
        wait[0] += time.perf_counter() - t
        calls[0] += 1
        return x

    run.batcher.next = timed_next
    run.iteration()
    first_step = time.time() - launched
    wait[0], calls[0] = 0.0, 0
    t1 = time.perf_counter()
    for _ in range(a.steps):
        run.iteration()
    total = time.perf_counter() - t1
    rows = getattr(run.batcher, "rows", None)
    crc_ms = check_cost(rows, a.batch_size, a.check_batches) if rows is not None and a.steps else None
    print(json.dumps({
        "build_call_s": build_call, "launch_to_first_step_s": first_step,
        "data_share": wait[0] / total if a.steps else None, "it_s": a.steps / total if a.steps else None,
        "crc_ms": crc_ms, "crc_share": crc_ms * 1e-3 * calls[0] / total if crc_ms is not None else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_images": int(run.real_u8.shape[0]), "threads": torch.get_num_threads(), **_rss_split(),
    }))


def run_child(data: str, cache: str, cache_dir: str, a) -> dict:
    env = dict(os.environ, PYFAST_GAN_CACHE=cache_dir)
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", "--data", data, "--cache", cache,
           "--image-size", str(a.image_size), "--batch-size", str(a.batch_size), "--n-critic", str(a.n_critic),
           "--steps", str(a.steps), "--workers", str(a.workers), "--check-batches", str(a.check_batches),
           "--launched", repr(time.time())]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"child failed ({r.returncode}):\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    out["log"] = [ln for ln in r.stderr.splitlines() if "data cache" in ln]
    return out


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[2000, 20000, 100000], help="dataset sizes")
    p.add_argument("--jpeg-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=64, help="training size (DCGAN-64)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-critic", type=int, default=5)
    p.add_argument("--steps", type=int, default=2, help="timed generator iterations after the first")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes")
    p.add_argument("--compare-off", action="store_true", help="also time --data-cache off (decode in memory)")
    p.add_argument("--check-batches", type=int, default=200,
                   help="random batches read with and without the CRC-32 check, for its cost")
    p.add_argument("--tmp", default=None, help="folder for the images and the cache (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the images and the cache")
    p.add_argument("--save", action="store_true", help="write JSON to benchmarks/results/")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--launched", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child:
        child(a)
        return []
    env = environment("cpu")
    print(f"# bench_data on {env['device']} ({os.cpu_count()} cores), torch {env['torch']}: "
          f"DCGAN-{a.image_size} WGAN-GP, batch {a.batch_size}, n_critic {a.n_critic}, {a.workers} decoders",
          flush=True)
    rows = []
    for n in a.n:
        work = tempfile.mkdtemp(prefix=f"bench_data_{n}_", dir=a.tmp)
        try:
            folder, cache_dir = os.path.join(work, "images"), os.path.join(work, "cache")
            gen_s = make_jpeg_folder(folder, n, a.jpeg_size, a.workers)
            print(f"N={n}: wrote {n} JPEGs in {gen_s:.1f} s", flush=True)
            first = run_child(folder, "on", cache_dir, a)
            built = [ln for ln in first["log"] if "decoded" in ln]
            index = next(f for f in os.listdir(os.path.join(cache_dir, "data")) if f.endswith(".json"))
            with open(os.path.join(cache_dir, "data", index)) as f:
                build_s = json.load(f)["build_s"]
            cache_mib = sum(os.path.getsize(os.path.join(cache_dir, "data", f))
                            for f in os.listdir(os.path.join(cache_dir, "data"))) / 2**20
            rows.append({"n": n, "run": "1: build cache", "build_s": build_s, "build_img_s": n / build_s,
                         **{k: first[k] for k in MEASURES}, "cache_mib": cache_mib,
                         "log": built})
            second = run_child(folder, "on", cache_dir, a)
            assert any("opened" in ln for ln in second["log"]), second["log"]
            rows.append({"n": n, "run": "2: open cache",
                         **{k: second[k] for k in MEASURES}, "cache_mib": cache_mib})
            if a.compare_off:
                off = run_child(folder, "off", cache_dir, a)
                rows.append({"n": n, "run": "off: in memory",
                             **{k: off[k] for k in MEASURES}})
            print_table(rows[-(3 if a.compare_off else 2):], COLUMNS)
        finally:
            if not a.keep:
                shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(rows, COLUMNS)
    if a.save:
        extra = {"settings": {"jpeg_size": a.jpeg_size, "image_size": a.image_size, "batch_size": a.batch_size,
                              "n_critic": a.n_critic, "timed_steps": a.steps, "decode_workers": a.workers,
                              "cpu_count": os.cpu_count(), "command": " ".join(sys.argv)}}
        print("saved", save_results("bench_data", "cpu", rows, extra))
    return rows


if __name__ == "__main__":
    main()
