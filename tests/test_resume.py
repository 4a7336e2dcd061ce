"""Checkpoint/resume exactness and interruption (Ctrl-C, SIGINT/SIGTERM)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyfast_gan.train import main
from pyfast_gan.train.checkpoint import save_atomic

IMG = ["--base", "4", "--z-dim", "8", "--n-critic", "2", "--n-samples", "4", "--no-progress",
       "--log-every", "1", "--sample-every", "1000"]
TOY = ["--data", "8gaussians", "--base", "16", "--batch-size", "32", "--n-critic", "2",
       "--n-samples", "64", "--no-progress", "--log-every", "1", "--sample-every", "1000"]

VARIANTS = {
    # WGAN-GP on images: GP alpha RNG, batch-norm generator, EMA; batch 64 x 2 critic steps x
    # 20 steps = 2560 > 1797 digits, so the data order crosses an epoch boundary.
    "wgan-gp-digits": ["--loss", "wgan-gp", "--batch-size", "64", "--ema", "0.9", *IMG],
    # WGAN with the fused RMSpropClip on toy data (data from the seeded sampler).
    "wgan-toy": ["--loss", "wgan", *TOY],
    # DCGAN with fp16 autocast and GradScaler state.
    "dcgan-fp16": ["--loss", "dcgan", "--batch-size", "8", "--amp", "fp16", *IMG],
}

pytestmark = pytest.mark.usefixtures("one_thread")



def _ck(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "latest.pt", weights_only=False)


def _assert_tree_equal(a, b, where=""):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"differs at {where}"
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_tree_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_tree_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_same_state(ca: dict, cb: dict):
    assert ca["step"] == cb["step"] and ca["critic_steps"] == cb["critic_steps"]
    for key in ("G", "D", "ema", "opt_g", "opt_d", "scaler_g", "scaler_d", "data"):
        _assert_tree_equal(ca[key], cb[key], key)
    assert torch.equal(ca["rng"]["torch_cpu"], cb["rng"]["torch_cpu"])
    assert torch.equal(ca["rng"]["data_gen"], cb["rng"]["data_gen"])


def _losses(out: Path) -> list[tuple]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss_d"], r["loss_g"]) for r in recs if "loss_d" in r]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_is_bitwise_exact(tmp_path, variant):
    args = VARIANTS[variant]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main([*args, "--steps", "20", "--out", str(full)]) == 0
    assert main([*args, "--steps", "10", "--out", str(part)]) == 0
    assert main(["--resume", str(part), "--steps", "20", "--no-progress"]) == 0
    ca, cb = _ck(full), _ck(part)
    assert ca["step"] == 20
    _assert_same_state(ca, cb)
    if variant == "wgan-gp-digits":
        assert ca["data"]["epoch"] >= 1
    if variant == "dcgan-fp16" and ca["scaler_g"] is not None:
        assert ca["scaler_g"]["scale"] == cb["scaler_g"]["scale"]
    # The resumed run logged the same losses, and each step exactly once.
    assert _losses(full) == _losses(part)


def test_keyboard_interrupt_writes_checkpoint_and_resumes_exactly(tmp_path, capsys):
    args = ["--loss", "wgan-gp", "--batch-size", "16", *IMG]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*args, "--steps", "10", "--out", str(full)]) == 0

    def on_step(run):
        if run.generator_steps == 4:
            raise KeyboardInterrupt  # as Ctrl-C would, between two steps

    rc = main([*args, "--steps", "10", "--out", str(cut), "--checkpoint-every", "1000"], hooks={"on_step": on_step})
    assert rc == 130
    err = capsys.readouterr().err
    assert "interrupted at step 4" in err and f"--resume {cut}" in err
    assert _ck(cut)["step"] == 4
    assert main(["--resume", str(cut), "--no-progress"]) == 0
    _assert_same_state(_ck(full), _ck(cut))


def test_sigint_subprocess_writes_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyfast_gan.train", *TOY, "--steps", "100000", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted at step" in err and "checkpoint written" in err
    ck = _ck(out)
    assert 2 <= ck["step"] < 100000
    logged = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert max(logged) == ck["step"]


def test_sigterm_stops_at_a_step_boundary(tmp_path, capsys):
    args = ["--loss", "wgan", *TOY]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*args, "--steps", "6", "--out", str(full)]) == 0

    def on_step(run):
        if run.generator_steps == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends before killing a job

    assert main([*args, "--steps", "6", "--out", str(cut)], hooks={"on_step": on_step}) == 130
    assert "interrupted at step 3" in capsys.readouterr().err
    assert main(["--resume", str(cut), "--no-progress"]) == 0
    _assert_same_state(_ck(full), _ck(cut))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_atomic_save_never_leaves_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    save_atomic({"x": torch.arange(5)}, path)

    def boom(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"x": torch.arange(7)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["x"], torch.arange(5))  # the old file is intact
    assert os.listdir(tmp_path) == ["latest.pt"]  # no temp file left behind


def test_resume_rejects_model_changes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TOY, "--steps", "2", "--out", str(out)]) == 0
    with pytest.raises(SystemExit):
        main(["--resume", str(out), "--base", "32"])
    assert "--base: cannot change" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--resume", str(tmp_path / "missing")])
    assert "--resume" in capsys.readouterr().err
