"""scripts/gpu_session.sh, checked on the CPU through its --dry-run: each stage writes its
files into $OUT as it goes (a stage killed at the device call's limit still returns its log),
within the device tool's limits (at most 8 files a call, names of letters, digits, '.', '_'
and '-')."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "gpu_session.sh"


def _run(args, out, timeout=None):
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    cmd = ["bash", str(SCRIPT), *args]
    if timeout:
        cmd = ["timeout", str(timeout)] + cmd
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)


def _check_names(out):
    files = sorted(p.name for p in Path(out).iterdir())
    assert len(files) <= 8, files
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    return files


def test_usage_error():
    proc = _run(["c"], "/nonexistent")
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_a_stage_killed_half_way_leaves_its_log(tmp_path):
    """The benchmark stage under `timeout 20`: killed long before it ends, its log is in $OUT
    with the commands that ran so far."""
    proc = _run(["b", "--dry-run"], tmp_path, timeout=20)
    assert proc.returncode == 124, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = (tmp_path / "b_bench.log").read_text()
    assert "bench_gradient_norm_penalty.py" in log and "reference" in log
    _check_names(tmp_path)


@pytest.mark.slow
def test_dry_run_of_both_stages(tmp_path):
    a = _run(["a", "--dry-run"], tmp_path / "a")
    assert a.returncode == 0, a.stdout[-3000:] + a.stderr[-3000:]
    assert _check_names(tmp_path / "a") == ["a_build.log", "a_env.txt", "a_tests_device.log", "a_tests_rest.log"]
    assert "passed" in (tmp_path / "a" / "a_tests_device.log").read_text()
    b = _run(["b", "--dry-run"], tmp_path / "b")
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    files = _check_names(tmp_path / "b")
    assert "b_bench.log" in files and len([f for f in files if f.endswith(".json")]) == 6, files
