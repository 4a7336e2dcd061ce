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
from pyfast_gan.artifacts.checkpoint import save_atomic

IMG = ["--base", "4", "--z-dim", "8", "--n-critic", "2", "--n-samples", "4", "--no-progress",
       "--log-every", "1", "--sample-every", "1000"]
TOY = ["--data", "8gaussians", "--base", "16", "--batch-size", "32", "--n-critic", "2",
       "--n-samples", "64", "--no-progress", "--log-every", "1", "--sample-every", "1000"]

VARIANTS = {
    # WGAN-GP on images: GP alpha RNG, batch-norm generator, EMA; batch 64 x 2 critic steps x
    # 20 steps = 2560 > 1797 digits, so the data order crosses an epoch boundary.
    "wgan-gp-digits": ["--loss", "wgan-gp", "--data", "digits", "--batch-size", "64", "--ema", "0.9", *IMG],
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


# -- issue 22: one trainer per run directory; resumes take the new settings; one-line endings ----
QQ = ["--steps", "2", "--batch-size", "4", "--base", "8", "--n-critic", "1", "--no-progress",
      "--image-size", "32", "--seed", "5"]


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_second_trainer_on_a_running_directory_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*QQ, "--out", str(run)]) == 0
    seen = {}

    def on_step(r):  # the first trainer is mid-run (it holds the lock): start a second one
        if r.generator_steps == 3:
            before = _files(run)
            for argv in (["--resume", str(run), "--steps", "9", "--no-progress"], [*QQ, "--out", str(run)]):
                with pytest.raises(SystemExit) as e:
                    main(argv)
                seen.setdefault("codes", []).append(e.value.code)
            seen["same"] = _files(run) == before

    assert main(["--resume", str(run), "--steps", "4", "--no-progress"], hooks={"on_step": on_step}) == 0
    assert seen == {"codes": [2, 2], "same": True}  # both refused; not one byte changed
    err = capsys.readouterr().err
    assert f"another trainer (PID {os.getpid()}) is running in this run directory" in err
    assert _ck(run)["step"] == 4  # the first run went on to its end
    assert main(["--resume", str(run), "--steps", "5", "--no-progress"]) == 0  # released at its end


def test_resume_flags_replace_the_checkpoints_optimizer_settings(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*QQ, "--out", str(run), "--lr", "1e-4", "--betas", "0", "0.9", "--lr-decay", "none"]) == 0
    capsys.readouterr()
    groups = {}

    def on_start(r):
        groups["d"] = dict(r.opt_d.param_groups[0])
        groups["g"] = dict(r.opt_g.param_groups[0])

    assert main(["--resume", str(run), "--steps", "3", "--lr", "5e-4", "--betas", "0.5", "0.99",
                 "--no-progress"], hooks={"on_start": on_start}) == 0
    for g in groups.values():
        assert float(g["lr"]) == 5e-4 and tuple(g["betas"]) == (0.5, 0.99)
    err = capsys.readouterr().err
    assert "--lr 0.0005 replaces the checkpoint's 0.0001" in err
    assert "--betas 0.5 0.99 replaces the checkpoint's 0 0.9" in err
    assert err.count("replaces the checkpoint's") == 2  # said once each, nothing else


def test_resume_with_another_optimizer_keeps_the_networks_and_starts_fresh_state(tmp_path, capsys):
    from pyfast_gan.optim import RMSpropClip

    run = tmp_path / "run"
    assert main([*QQ, "--out", str(run)]) == 0
    weights = _ck(run)["G"]
    seen = {}

    def on_start(r):
        seen["opt"] = type(r.opt_d)
        seen["same_g"] = all(torch.equal(v, weights[k]) for k, v in r.G.state_dict().items())

    assert main(["--resume", str(run), "--steps", "3", "--optimizer", "rmsprop", "--no-progress"],
                hooks={"on_start": on_start}) == 0
    assert seen == {"opt": RMSpropClip, "same_g": True}
    assert "rmsprop starts with fresh state" in capsys.readouterr().err
    assert _ck(run)["step"] == 3


def _fail_at_step(step: int, exc: BaseException, target=torch, name="save"):
    """on_step hook: from the end of generator step ``step`` on, ``target.name`` raises ``exc``."""
    def on_step(r):
        if r.generator_steps == step:
            def boom(*a, **k):
                raise exc
            setattr(target, name, boom)
    return on_step


TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1216 vs 1114")


@pytest.mark.parametrize("kind", ["torch-disk-full", "enospc", "read-only", "grid-enospc"])
def test_failed_writes_are_one_line_and_keep_the_last_checkpoint(tmp_path, capsys, monkeypatch, kind):
    import errno

    from pyfast_gan.artifacts import outputs

    run = tmp_path / "run"
    save, grid = torch.save, outputs.save_image_grid
    monkeypatch.setattr(torch, "save", save)  # restored after the test, whatever the hook set
    monkeypatch.setattr(outputs, "save_image_grid", grid)
    exc, target, name = {
        "torch-disk-full": (TORCH_FULL, torch, "save"),
        "enospc": (OSError(errno.ENOSPC, "No space left on device"), torch, "save"),
        "read-only": (PermissionError(errno.EACCES, "Permission denied", str(run / "checkpoints")), torch, "save"),
        "grid-enospc": (OSError(errno.ENOSPC, "No space left on device", "grid.png"), outputs, "save_image_grid"),
    }[kind]
    rc = main([*QQ, "--steps", "4", "--out", str(run), "--checkpoint-every", "1", "--sample-every", "1"],
              hooks={"on_step": _fail_at_step(1, exc, target, name)})
    assert rc == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pyfast_gan.train:")]
    assert len(err) == 1 and err[0].startswith("pyfast_gan.train: stopped at step 2: cannot write")
    # A failed sample grid leaves room for the checkpoint: the state of step 2 is written then
    # (no step lost); where torch.save itself fails, step 1's checkpoint is what is kept.
    kept_step = 2 if kind == "grid-enospc" else 1
    if kind == "grid-enospc":
        assert "latest.pt: step 2" in err[0]
    else:
        assert "(step 1)" in err[0] and "writing step 2 failed too" in err[0]
    if kind in ("enospc", "grid-enospc"):
        assert "the disk is full" in err[0]
    if kind == "torch-disk-full":  # torch never says why; the free space on that disk is told
        assert "torch.save could not write the file (" in err[0] and "MiB free on that disk" in err[0]
    monkeypatch.undo()
    assert _ck(run)["step"] == kept_step  # the earlier checkpoint is intact, or the newer state written
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]


def test_ctrl_c_before_training_is_one_line(tmp_path, capsys, monkeypatch):
    from pyfast_gan.train import loop

    def interrupted(*a, **k):  # as a Ctrl-C while the data cache is built
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "build", interrupted)
    assert main([*QQ, "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pyfast_gan.train: interrupted before training started; no checkpoint was written"]
