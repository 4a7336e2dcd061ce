"""The edge of the command lines (issue 15): nothing overwritten or lost, bad input is a
one-line error with exit code 2 (never a traceback), flags that do nothing are named, and
TensorBoard logs. Each CLI case runs the real command in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyfast_gan.train import main as train_main

TINY = ["--base", "4", "--z-dim", "8", "--batch-size", "8", "--n-critic", "2", "--n-samples", "4",
        "--no-progress"]
TOY = ["--data", "8gaussians", "--base", "8", "--batch-size", "16", "--n-critic", "1", "--n-samples", "64",
       "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


def cli(module: str, *argv, env=None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}  # None: unset
    return subprocess.run([sys.executable, "-m", f"pyfast_gan.{module}", *map(str, argv)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def assert_usage_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2 and one error line naming what is wrong: no traceback, no usage block."""
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "usage:" not in r.stderr, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, r.stderr[-2000:]
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert train_main(["--steps", "2", "--out", str(out), "--log-every", "1", *TINY]) == 0
    return out


# -- 1-3: run directories are never overwritten, checked before anything is built ----------
def test_existing_run_is_never_overwritten(digits_run, tmp_path):
    before = snapshot(digits_run)
    r = cli("train", "--out", digits_run, "--steps", "3", *TINY)
    assert_usage_error(r, str(digits_run), "holds a run already", f"--resume {digits_run}", "new --out")
    # the run's own config.json as --config names the same directory through its out key
    r = cli("train", "--config", digits_run / "config.json", "--steps", "3")
    assert_usage_error(r, "holds a run already")
    assert snapshot(digits_run) == before


def test_out_that_cannot_be_written_fails_before_training(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_usage_error(cli("train", "--out", a_file, "--steps", "1", *TINY), "not a directory")
    assert_usage_error(cli("train", "--out", a_file / "run", "--steps", "1", *TINY), "cannot write")
    (tmp_path / "run" ).mkdir()
    (tmp_path / "run" / "checkpoints").write_text("not a folder")
    assert_usage_error(cli("train", "--out", tmp_path / "run", "--steps", "1", *TINY), "not a directory")
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoints"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert_usage_error(cli("train", "--out", ro / "run", "--steps", "1", *TINY), "cannot write")
    finally:
        ro.chmod(0o755)


def test_stale_temporaries_are_removed_on_resume(digits_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    stale = run / "checkpoints" / ".latest.pt.tmp999999"
    stale.write_bytes(b"half a checkpoint")
    r = cli("train", "--resume", run, "--steps", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not stale.exists() and f"removed {stale}" in r.stderr
    assert torch.load(run / "checkpoints" / "latest.pt", weights_only=False)["step"] == 3


def test_resume_of_a_finished_run_says_nothing_ran(digits_run, tmp_path):
    import shutil

    run = tmp_path / "done"
    shutil.copytree(digits_run, run)
    r = cli("train", "--resume", run)
    assert r.returncode == 0 and "nothing to train: the run is at step 2 and --steps is 2" in r.stderr


# -- 4: outputs of sample and evaluate --------------------------------------------------------
def test_sample_and_evaluate_output_paths(digits_run, tmp_path):
    before = snapshot(digits_run)
    assert_usage_error(cli("sample", "--checkpoint", digits_run, "--out", tmp_path, cwd=tmp_path), "is a directory")
    assert os.listdir(tmp_path) == []  # no temporary left behind
    assert_usage_error(cli("sample", "--checkpoint", digits_run, "--out", tmp_path / "g.xyz"), "unknown image suffix")
    assert_usage_error(cli("sample", "--checkpoint", digits_run, "--nrow", "-3"), "--nrow")
    r = cli("sample", "--checkpoint", digits_run, "--n", "4", "--out", tmp_path / "g.jpg")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "g.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, not PNG bytes
    assert_usage_error(cli("evaluate", "--checkpoint", digits_run, "--json", tmp_path, "--n", "64"),
                       "is a directory")
    assert snapshot(digits_run) == before


# -- 5: bad checkpoints -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_checkpoints(digits_run, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    good = (digits_run / "checkpoints" / "latest.pt").read_bytes()
    files = {"truncated": good[: len(good) // 2], "garbage": os.urandom(4096), "empty": b""}
    out = {}
    for name, data in files.items():
        (d / f"{name}.pt").write_bytes(data)
        out[name] = d / f"{name}.pt"
    torch.save({"weight": torch.randn(3, 3)}, d / "foreign.pt")
    out["foreign"] = d / "foreign.pt"
    ck = torch.load(digits_run / "checkpoints" / "latest.pt", weights_only=False)
    del ck["opt_g"], ck["D"]
    torch.save(ck, d / "partial.pt")
    out["partial"] = d / "partial.pt"
    return out


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "foreign", "partial"])
def test_bad_checkpoints_are_one_line_errors(bad_checkpoints, kind, tmp_path):
    path = bad_checkpoints[kind]
    for module, argv in (("train", ["--resume", path, "--out", tmp_path / "r"]),
                         ("sample", ["--checkpoint", path, "--out", tmp_path / "g.png"]),
                         ("evaluate", ["--checkpoint", path, "--n", "64"])):
        assert_usage_error(cli(module, *argv), str(path), "not a")
    assert not (tmp_path / "r").exists() and not (tmp_path / "g.png").exists()


# -- 6-8, 12, 13: flags --------------------------------------------------------------------------
@pytest.mark.parametrize("argv,fragment", [
    (["--impl", "cuda"], "--impl cuda: cannot run"),
    (["--impl", "triton"], "--impl triton: cannot run"),
    (["--lr", "inf"], "--lr"), (["--lr-g", "inf"], "--lr-g"), (["--lr-g", "nan"], "--lr-g"),
    (["--gp-weight", "inf"], "--gp-weight"), (["--gp-weight", "nan"], "--gp-weight"),
    (["--clip-value", "nan"], "--clip-value"), (["--seed", "99999999999999999999"], "--seed"),
    (["--lr", "-1e-4"], "--lr: must be > 0 and finite, got -0.0001"),
    (["--loss", "vae"], "invalid choice"),
])
def test_bad_flags_are_one_line_errors(argv, fragment, tmp_path):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    # without the interpreter, Triton cannot run on a CPU
    r = cli("train", *argv, "--out", tmp_path / "o", "--device", "cpu", *TINY, env={"TRITON_INTERPRET": "0"})
    assert_usage_error(r, fragment)
    assert not (tmp_path / "o").exists()


def test_flags_that_do_nothing_are_named(tmp_path):
    r = cli("train", *TOY, "--steps", "1", "--image-size", "64", "--channels", "3", "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--image-size: no effect on 2-D toy data" in r.stderr and "--channels: no effect" in r.stderr
    r = cli("train", *TOY, "--steps", "1", "--loss", "dcgan", "--gp-weight", "5", "--clip-value", "0.1",
            "--lazy-gp", "2", "--out", tmp_path / "b")
    assert r.returncode == 0, r.stderr[-2000:]
    for flag in ("--gp-weight", "--lazy-gp", "--clip-value"):
        assert r.stderr.count(f"{flag}: no effect with --loss dcgan") == 1, flag


def test_help_shows_the_defaults_runs_get():
    r = cli("train", "--help")
    text = " ".join(r.stdout.split())
    assert "(default: 500; digits: 200; toy data: 250)" in text  # --sample-every
    assert "(default: 10; toy data: 20)" in text  # --log-every
    assert text.count("Default: runs/<loss>-<data>-<YYYYmmdd-HHMMSS>") == 1 and "(default: '')" not in text
    assert "--max-nonfinite" in text and "Checked at log and checkpoint steps" in text
    r = cli("sample", "--help")
    assert "scatter plot over real data for 2-D toy data)." in " ".join(r.stdout.split())


# -- 10: evaluate on image data ------------------------------------------------------------------
def test_evaluate_image_run_without_or_with_bad_weights(tmp_path):
    from PIL import Image
    import numpy as np

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    run = tmp_path / "run"
    assert train_main(["--data", str(folder), "--image-size", "32", "--steps", "1", "--out", str(run), *TINY]) == 0
    env = {"TORCH_HOME": str(tmp_path / "torch_home"), "PYFAST_GAN_INCEPTION_WEIGHTS": None}
    assert_usage_error(cli("evaluate", "--checkpoint", run, "--n", "16", env=env), "nothing to measure", "fid")
    bogus = tmp_path / "weights.pth"
    bogus.write_text("not weights")
    assert_usage_error(cli("evaluate", "--checkpoint", run, "--n", "16", "--inception-weights", bogus, env=env),
                       str(bogus), "not a torch weights file")


# -- 22: TensorBoard ----------------------------------------------------------------------------
def test_tensorboard_has_the_scalars_and_the_sample_grid(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert train_main([*TOY, "--steps", "4", "--log-every", "2", "--sample-every", "2", "--out", str(run)]) == 0
    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    logged = {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if "loss_d" in r}
    for key in ("loss_d", "loss_g", "wasserstein", "gp", "grad_norm_x_hat"):
        events = ea.Scalars(f"train/{key}")
        assert [e.step for e in events] == [2, 4]
        assert [e.value for e in events] == pytest.approx([logged[2][key], logged[4][key]], rel=1e-6)
    assert "samples/modes_covered" in tags["scalars"]
    assert [e.step for e in ea.Images("samples")] == [2, 4] and ea.Images("samples")[0].width > 100
    # --no-tensorboard writes none
    assert train_main([*TOY, "--steps", "1", "--no-tensorboard", "--out", str(tmp_path / "b")]) == 0
    assert not (tmp_path / "b" / "tensorboard").exists()
