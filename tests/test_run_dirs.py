"""Run directories and --resume: a resume never writes into another run's folder, the lock
survives a tidied-up lock file, flags a resume cannot apply are refused (not recorded), the
default folders of runs started together never collide, a folder with no checkpoint is
reused or trained from step 0 (and says which), and the data is compared by what it is, not
by how its path is spelled."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pyfast_gan.train import main

QQ = ["--steps", "2", "--batch-size", "4", "--base", "8", "--n-critic", "1", "--no-progress",
      "--image-size", "32", "--seed", "5", "--log-every", "1"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _step(run: Path) -> int:
    return torch.load(run / "checkpoints" / "latest.pt", weights_only=False)["step"]


def _refused(argv, capsys) -> str:
    """Exit 2 and the one error line."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "a"
    assert main([*QQ, "--ema", "0.9", "--out", str(out)]) == 0
    return out


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    (to / ".lock").unlink(missing_ok=True)
    return to


def test_resume_never_writes_into_another_runs_folder(run_a, tmp_path, capsys):
    a = _copy(run_a, tmp_path / "a")
    b = tmp_path / "b"
    assert main([*QQ, "--seed", "3", "--out", str(b)]) == 0
    before_a, before_b = _files(a), _files(b)
    msg = _refused(["--resume", str(a), "--out", str(b), "--steps", "3"], capsys)
    assert f"--out {b} holds another run already" in msg and "nothing was changed" in msg
    assert _files(b) == before_b and _files(a) == before_a
    # its own folder, spelled otherwise, is its own
    assert main(["--resume", str(a / "checkpoints" / "latest.pt"), "--out", f"{a}/", "--steps", "3"]) == 0
    assert _step(a) == 3
    # a new, empty --out is allowed, and the message says so
    new = tmp_path / "new"
    before_a = _files(a)
    assert main(["--resume", str(a), "--out", str(new), "--steps", "4"]) == 0
    assert f"into {new}, a new run directory ({a} is not changed)" in capsys.readouterr().err
    assert _step(new) == 4 and _files(a) == before_a


def test_deleting_the_lock_file_does_not_let_a_second_trainer_in(run_a, tmp_path, capsys):
    run = _copy(run_a, tmp_path / "run")
    seen = {}

    def on_step(r):  # tidying up the run folder while the trainer runs, then a second trainer
        if r.generator_steps == 3:
            (run / ".lock").unlink()
            before = _files(run)
            for argv in (["--resume", str(run), "--steps", "9", "--no-progress"], [*QQ, "--out", str(run)]):
                with pytest.raises(SystemExit) as e:
                    main(argv)
                seen.setdefault("codes", []).append(e.value.code)
            seen["same"] = _files(run) == before

    assert main(["--resume", str(run), "--steps", "4", "--no-progress"], hooks={"on_step": on_step}) == 0
    assert seen == {"codes": [2, 2], "same": True}
    assert "another trainer (PID unknown) is running in this run directory" in capsys.readouterr().err
    assert _step(run) == 4
    assert main(["--resume", str(run), "--steps", "5", "--no-progress"]) == 0  # released at its end
    assert (run / ".lock").read_text().strip() == str(os.getpid())


def test_resume_refuses_flags_it_cannot_apply(run_a, tmp_path, capsys):
    run = _copy(run_a, tmp_path / "run")
    before = _files(run)
    for flags, want in ((["--seed", "99"], "--seed: cannot change from 5 to 99 when resuming"),
                        (["--n-samples", "4"], "--n-samples: cannot change from 64 to 4 when resuming"),
                        (["--ema", "0"], "--ema 0: the checkpoint keeps an EMA average")):
        assert want in _refused(["--resume", str(run), "--steps", "3", *flags], capsys)
    assert _files(run) == before  # config.json does not record them
    # the same values as the checkpoint's are no change
    assert main(["--resume", str(run), "--steps", "3", "--seed", "5", "--ema", "0.9"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["seed"], saved["n_samples"], saved["ema"]) == (5, 64, 0.9)


def test_default_run_folders_never_collide(tmp_path, monkeypatch):
    import time

    from pyfast_gan.train import parse_args, resolve
    from pyfast_gan.train.rundir import check_out_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda *a: "20250101-000000")  # all in one second
    cfg = resolve(*parse_args([*QQ, "--data", "digits"]), cuda_available=False)
    dirs = [check_out_dir(cfg) for _ in range(3)]
    assert [str(d) for d in dirs] == [os.path.join("runs", "wgan-gp-digits-20250101-000000" + s)
                                      for s in ("", "-2", "-3")]
    assert all(d.is_dir() for d in dirs)  # taken (mkdir) when chosen: no other trainer gets one
    assert main([*QQ, "--data", "digits"]) == 0  # and the trainer uses the next one
    assert _step(tmp_path / "runs" / "wgan-gp-digits-20250101-000000-4") == 2


def test_a_folder_without_a_checkpoint_is_reused_or_trained_from_step_0(run_a, tmp_path, capsys):
    # what a run that died before its first checkpoint leaves: config.json, metrics, samples
    for name in ("c", "d"):
        _copy(run_a, tmp_path / name)
        shutil.rmtree(tmp_path / name / "checkpoints")
    c, d = tmp_path / "c", tmp_path / "d"
    assert main([*QQ, "--out", str(c), "--steps", "3"]) == 0
    assert f"{c} held a run that stopped before its first checkpoint" in capsys.readouterr().err
    recs = [json.loads(x) for x in (c / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss_d" in r] == [1, 2, 3]  # no line of the dead run
    assert _step(c) == 3
    assert main(["--resume", str(d)]) == 0
    err = capsys.readouterr().err
    assert f"{d} holds no checkpoint (the run stopped before its first): training it from step 0" in err
    assert _step(d) == 2 and json.loads((d / "config.json").read_text())["ema"] == 0.9
    # a folder with checkpoints but no latest.pt: --resume names one
    (d / "checkpoints" / "latest.pt").rename(d / "checkpoints" / "step_000002.pt")
    msg = _refused(["--resume", str(d)], capsys)
    assert f"--resume {d}/checkpoints/step_000002.pt" in msg


@pytest.fixture
def image_run(tmp_path) -> tuple[Path, Path]:
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    run = tmp_path / "run"
    assert main([*QQ, "--data", str(folder), "--out", str(run)]) == 0
    return folder, run


def test_resume_compares_the_data_by_what_it_is(image_run, tmp_path, capsys):
    folder, run = image_run
    capsys.readouterr()
    # the same folder spelled otherwise: a trailing slash, a relative path
    assert main(["--resume", str(run), "--data", f"{folder}/", "--steps", "3"]) == 0
    assert f"--data {folder}/: the same data as the checkpoint's {folder}" in capsys.readouterr().err
    rel = os.path.relpath(folder)
    assert main(["--resume", str(run), "--data", rel, "--steps", "4"]) == 0
    # moved: the old path is gone, the new one holds the same files
    moved = tmp_path / "moved"
    folder.rename(moved)
    msg = _refused(["--resume", str(run), "--steps", "5"], capsys)
    assert "is not there (moved or removed); pass --data PATH" in msg
    assert main(["--resume", str(run), "--data", str(moved), "--steps", "5"]) == 0
    assert _step(run) == 5 and json.loads((run / "config.json").read_text())["data"] == str(moved)
    # other data under a new path is refused, and nothing is written
    other = tmp_path / "other"
    shutil.copytree(moved, other)
    os.utime(other / "0.png", (0, 0))
    before = _files(run)
    msg = _refused(["--resume", str(run), "--data", str(other), "--steps", "6"], capsys)
    assert f"{str(other)!r} holds other data" in msg
    assert _files(run) == before
