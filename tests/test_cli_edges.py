"""The edge of the command lines (issue 15): nothing overwritten or lost, bad input is a
one-line error with exit code 2 (never a traceback), flags that do nothing are named, and
TensorBoard logs. Every case runs the commands' real entry points (``main(argv)`` of
pyfast_gan.train/sample/evaluate), in process, or in one fresh interpreter per environment when
a case needs its own (``cli_many(..., env=)``): starting torch costs seconds per process on this
CPU. One case runs ``python -m`` itself."""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import traceback
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


def _run_cases(payload) -> list[dict]:
    """Each ``(module, argv, cwd)`` through ``pyfast_gan.<module>.main(argv)`` as ``python -m``
    would run it: the exit code from the return value or SystemExit, an uncaught exception a
    traceback on stderr and exit 1; stdout and stderr captured per case."""
    results = []
    for module, argv, cwd in payload:
        out, err, code = io.StringIO(), io.StringIO(), 0
        here = os.getcwd()
        try:
            if cwd:
                os.chdir(cwd)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = importlib.import_module("pyfast_gan." + module).main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            err.write(traceback.format_exc())
            code = 1
        finally:
            os.chdir(here)
        results.append({"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
    return results


_DRIVER = ("import json, sys; sys.path.insert(0, sys.argv[1]); from test_cli_edges import _run_cases; "
           "print(json.dumps(_run_cases(json.load(sys.stdin))))")


def cli_many(*cases, env=None) -> list[subprocess.CompletedProcess]:
    """Run each ``(module, argv)`` or ``(module, argv, cwd)`` through ``pyfast_gan.<module>.main``
    one after the other (:func:`_run_cases`): in this process, or, when ``env`` is given, in one
    fresh interpreter with that environment (None unsets a variable)."""
    payload = [(m, list(map(str, argv)), str(rest[0]) if rest else None) for m, argv, *rest in cases]
    if env is None:
        results = _run_cases(payload)
    else:
        env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
        env = {k: v for k, v in env.items() if v is not None}
        r = subprocess.run([sys.executable, "-c", _DRIVER, str(Path(__file__).parent)],
                           input=json.dumps(payload), capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        results = json.loads(r.stdout.splitlines()[-1])
    return [subprocess.CompletedProcess([m, *argv], d["returncode"], d["stdout"], d["stderr"])
            for (m, argv, _), d in zip(payload, results)]


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
    # the run's own config.json as --config names the same directory through its out key
    r1, r2 = cli_many(("train", ["--out", digits_run, "--steps", "3", *TINY]),
                      ("train", ["--config", digits_run / "config.json", "--steps", "3"]))
    assert_usage_error(r1, str(digits_run), "holds a run already", f"--resume {digits_run}", "new --out")
    assert_usage_error(r2, "holds a run already")
    assert snapshot(digits_run) == before


def test_out_that_cannot_be_written_fails_before_training(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("not a folder")
    r1, r2, r3 = cli_many(*[("train", ["--out", out, "--steps", "1", *TINY])
                            for out in (a_file, a_file / "run", tmp_path / "run")])
    assert_usage_error(r1, "not a directory")
    assert_usage_error(r2, "cannot write")
    assert_usage_error(r3, "not a directory")
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


def test_stale_temporaries_are_removed_on_resume(digits_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    stale = run / "checkpoints" / ".latest.pt.tmp999999"
    stale.write_bytes(b"half a checkpoint")
    assert train_main(["--resume", str(run), "--steps", "3"]) == 0
    assert not stale.exists() and f"removed {stale}" in capsys.readouterr().err
    assert torch.load(run / "checkpoints" / "latest.pt", weights_only=False)["step"] == 3


def test_resume_of_a_finished_run_says_nothing_ran(digits_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "done"
    shutil.copytree(digits_run, run)
    assert train_main(["--resume", str(run)]) == 0
    assert "nothing to train: the run is at step 2 and --steps is 2" in capsys.readouterr().err


# -- 4: outputs of sample and evaluate --------------------------------------------------------
def test_sample_and_evaluate_output_paths(digits_run, tmp_path):
    before = snapshot(digits_run)
    here = tmp_path / "cwd"
    here.mkdir()
    r_dir, r_suffix, r_nrow, r_jpg, r_json = cli_many(
        ("sample", ["--checkpoint", digits_run, "--out", here], here),
        ("sample", ["--checkpoint", digits_run, "--out", tmp_path / "g.xyz"]),
        ("sample", ["--checkpoint", digits_run, "--nrow", "-3"]),
        ("sample", ["--checkpoint", digits_run, "--n", "4", "--out", tmp_path / "g.jpg"]),
        ("evaluate", ["--checkpoint", digits_run, "--json", tmp_path, "--n", "64"]))
    assert_usage_error(r_dir, "is a directory")
    assert os.listdir(here) == []  # no temporary left behind
    assert_usage_error(r_suffix, "unknown image suffix")
    assert_usage_error(r_nrow, "--nrow")
    assert r_jpg.returncode == 0, r_jpg.stderr[-2000:]
    assert (tmp_path / "g.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, not PNG bytes
    assert_usage_error(r_json, "is a directory")
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


BAD_KINDS = ["truncated", "garbage", "empty", "foreign", "partial"]


@pytest.fixture(scope="module")
def bad_checkpoint_results(bad_checkpoints, tmp_path_factory):
    """Each bad checkpoint given to train --resume, sample and evaluate (one interpreter)."""
    outs = {kind: tmp_path_factory.mktemp(kind) for kind in BAD_KINDS}
    cases = [case for kind in BAD_KINDS for case in (
        ("train", ["--resume", bad_checkpoints[kind], "--out", outs[kind] / "r"]),
        ("sample", ["--checkpoint", bad_checkpoints[kind], "--out", outs[kind] / "g.png"]),
        ("evaluate", ["--checkpoint", bad_checkpoints[kind], "--n", "64"]))]
    results = iter(cli_many(*cases))
    return {kind: (outs[kind], [next(results) for _ in range(3)]) for kind in BAD_KINDS}


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_checkpoints_are_one_line_errors(bad_checkpoints, bad_checkpoint_results, kind):
    out, results = bad_checkpoint_results[kind]
    for r in results:
        assert_usage_error(r, str(bad_checkpoints[kind]), "not a")
    assert not (out / "r").exists() and not (out / "g.png").exists()


# -- 6-8, 12, 13: flags --------------------------------------------------------------------------
BAD_FLAGS = [
    (["--impl", "cuda"], "--impl cuda: cannot run"),
    (["--impl", "triton"], "--impl triton: cannot run"),
    (["--lr", "inf"], "--lr"), (["--lr-g", "inf"], "--lr-g"), (["--lr-g", "nan"], "--lr-g"),
    (["--gp-weight", "inf"], "--gp-weight"), (["--gp-weight", "nan"], "--gp-weight"),
    (["--clip-value", "nan"], "--clip-value"), (["--seed", "99999999999999999999"], "--seed"),
    (["--lr", "-1e-4"], "--lr: must be > 0 and finite, got -0.0001"),
    (["--loss", "vae"], "invalid choice"),
]


@pytest.fixture(scope="module")
def bad_flag_results(tmp_path_factory):
    outs = [tmp_path_factory.mktemp("flags") / "o" for _ in BAD_FLAGS]
    # without the interpreter, Triton cannot run on a CPU
    results = cli_many(*[("train", [*argv, "--out", out, "--device", "cpu", *TINY])
                         for (argv, _), out in zip(BAD_FLAGS, outs)], env={"TRITON_INTERPRET": "0"})
    return list(zip(outs, results))


@pytest.mark.parametrize("i", range(len(BAD_FLAGS)), ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags_are_one_line_errors(bad_flag_results, i):
    argv, fragment = BAD_FLAGS[i]
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out, r = bad_flag_results[i]
    assert_usage_error(r, fragment)
    assert not out.exists()


def test_python_dash_m_exits_2_with_one_line():
    """The real ``python -m`` entry point, once: exit status 2 and the one error line."""
    assert_usage_error(cli("train", "--lr", "-1e-4", "--device", "cpu"), "--lr: must be > 0 and finite")


def test_flags_that_do_nothing_are_named(tmp_path, capsys):
    argv = [*TOY, "--steps", "1", "--image-size", "64", "--channels", "3", "--out", str(tmp_path / "a")]
    assert train_main(argv) == 0
    err = capsys.readouterr().err
    assert "--image-size: no effect on 2-D toy data" in err and "--channels: no effect" in err
    assert train_main([*TOY, "--steps", "1", "--loss", "dcgan", "--gp-weight", "5", "--clip-value", "0.1",
                       "--lazy-gp", "2", "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    for flag in ("--gp-weight", "--lazy-gp", "--clip-value"):
        assert err.count(f"{flag}: no effect with --loss dcgan") == 1, flag


def test_help_shows_the_defaults_runs_get():
    r, r_sample = cli_many(("train", ["--help"]), ("sample", ["--help"]))
    assert r.returncode == 0 and r_sample.returncode == 0
    text = " ".join(r.stdout.split())
    assert "(default: 500; digits/mnist: 200; toy data: 250)" in text  # --sample-every
    assert "(default: 10; toy data: 20)" in text  # --log-every
    assert text.count("Default: runs/<loss>-<data>-<YYYYmmdd-HHMMSS>") == 1 and "(default: '')" not in text
    assert "--max-nonfinite" in text and "Checked at log and checkpoint steps" in text
    assert "scatter plot over real data for 2-D toy data)." in " ".join(r_sample.stdout.split())


# -- 10: evaluate on image data ------------------------------------------------------------------
def test_evaluate_image_run_without_or_with_bad_weights(tmp_path, monkeypatch):
    # the messages under test come after the check for FID's packages
    pytest.importorskip("torchvision")
    pytest.importorskip("pytorch_fid")
    from PIL import Image
    import numpy as np

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    run = tmp_path / "run"
    assert train_main(["--data", str(folder), "--image-size", "32", "--steps", "1", "--out", str(run), *TINY]) == 0
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no Inception weights anywhere
    monkeypatch.delenv("PYFAST_GAN_INCEPTION_WEIGHTS", raising=False)
    bogus = tmp_path / "weights.pth"
    bogus.write_text("not weights")
    r_none, r_bogus = cli_many(("evaluate", ["--checkpoint", run, "--n", "16"]),
                               ("evaluate", ["--checkpoint", run, "--n", "16", "--inception-weights", bogus]))
    assert_usage_error(r_none, "nothing to measure", "fid")
    assert_usage_error(r_bogus, str(bogus), "not a torch weights file")


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


def test_bad_checkpoint_reason_is_never_cut_mid_sentence(tmp_path, monkeypatch):
    from pyfast_gan.artifacts import checkpoint as ckpt_mod

    why = ("PytorchStreamReader failed locating file data.pkl: file not found. " * 2
           + "This archive was written by a different writer; its records do not line up\nsecond line")

    def unreadable(*a, **k):
        raise RuntimeError(why)

    monkeypatch.setattr(torch, "load", unreadable)
    with pytest.raises(ValueError) as e:
        ckpt_mod.load(tmp_path / "x.pt")
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith("file not found. PytorchStreamReader failed locating file "
                                            "data.pkl: file not found)")
