"""End-to-end runs of ``python -m pyfast_gan.train`` (through main(argv), and one real
subprocess) with tiny models: every loss, toy and image data, outputs, sample.py,
bad flags, non-finite handling."""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyfast_gan import sample as sample_mod
from pyfast_gan.train import main

# Tiny but real: DCGAN base 4 at 32x32 on the embedded digits, few steps.
TINY = ["--base", "4", "--z-dim", "8", "--batch-size", "8", "--n-critic", "2", "--n-samples", "9",
        "--no-progress"]
TOY = ["--data", "8gaussians", "--base", "16", "--batch-size", "32", "--n-critic", "2",
       "--n-samples", "200", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")



def _read_jsonl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _check_outputs(out: Path, steps: int, sample_every: int, ckpt_every: int, loss: str):
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["loss"] == loss and cfg["steps"] == steps and cfg["out"] == str(out)
    recs = _read_jsonl(out / "metrics.jsonl")
    train_recs = [r for r in recs if "loss_d" in r]
    assert [r["step"] for r in train_recs] == list(range(1, steps + 1))
    for r in train_recs:
        for k in ("loss_d", "loss_g", "wasserstein", "grad_norm_d", "grad_norm_g", "time", "img_per_s",
                  "skipped"):
            assert k in r, k
        assert math.isfinite(r["loss_d"]) and math.isfinite(r["loss_g"]) and r["skipped"] == 0
        if loss == "wgan-gp":
            assert r["gp"] >= 0
    assert train_recs[0]["img_per_s"] is None  # warm-up excluded
    assert train_recs[-1]["img_per_s"] > 0
    for s in range(sample_every, steps + 1, sample_every):
        assert (out / "samples" / f"step_{s:06d}.png").is_file()
    assert (out / "samples" / f"step_{steps:06d}.png").is_file()
    assert (out / "plots" / "losses.png").stat().st_size > 1000
    assert (out / "checkpoints" / "latest.pt").is_file()
    for s in range(ckpt_every, steps + 1, ckpt_every):
        assert (out / "checkpoints" / f"step_{s:06d}.pt").is_file()
    ck = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    assert ck["step"] == steps
    return recs, ck


@pytest.mark.parametrize("loss", ["dcgan", "wgan", "wgan-gp", "lsgan", "hinge"])
def test_each_loss_end_to_end_on_digits(tmp_path, loss):
    out = tmp_path / "run"
    steps = 6
    rc = main(["--loss", loss, "--steps", str(steps), "--out", str(out), "--sample-every", "3",
               "--checkpoint-every", "4", "--log-every", "1", *TINY])
    assert rc == 0
    recs, ck = _check_outputs(out, steps, 3, 4, loss)
    from PIL import Image

    img = Image.open(out / "samples" / f"step_{steps:06d}.png")
    assert img.mode == "L" and img.width > 3 * 32  # a 3x3 grid of 32x32 digits (upscaled)
    arr = np.asarray(img)
    assert arr.std() > 0  # not a blank image
    if loss == "wgan":
        c = ck["config"]["clip_value"]
        for name, p in ck["D"].items():
            if p.is_floating_point() and "running" not in name:
                assert p.abs().max() <= c + 1e-7, name


def test_toy_run_scatter_and_mode_coverage(tmp_path):
    out = tmp_path / "toy"
    rc = main(["--steps", "4", "--out", str(out), "--sample-every", "2", "--log-every", "2", *TOY])
    assert rc == 0
    recs = _read_jsonl(out / "metrics.jsonl")
    cov = [r for r in recs if "modes_covered" in r]
    assert [r["step"] for r in cov] == [2, 4]
    assert all(r["num_modes"] == 8 and 0 <= r["modes_covered"] <= 8 for r in cov)
    from PIL import Image

    assert Image.open(out / "samples" / "step_000004.png").size[0] >= 300  # a matplotlib figure
    # sample.py draws from the toy checkpoint as a scatter plot too.
    png = tmp_path / "toy.png"
    assert sample_mod.main(["--checkpoint", str(out), "--n", "100", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000


def test_sample_cli_from_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert main(["--steps", "2", "--out", str(out), "--ema", "0.9", *TINY]) == 0
    png = tmp_path / "grid.png"
    ck = out / "checkpoints" / "latest.pt"
    assert sample_mod.main(["--checkpoint", str(ck), "--n", "16", "--out", str(png), "--seed", "3"]) == 0
    from PIL import Image

    a = np.asarray(Image.open(png))
    assert a.ndim == 2 and a.std() > 0
    # Same seed -> same grid (the run kept an EMA generator: it is the default, --ema says so);
    # the raw generator gives a different one.
    png2, png3 = tmp_path / "g2.png", tmp_path / "g3.png"
    sample_mod.main(["--checkpoint", str(ck), "--n", "16", "--out", str(png2), "--seed", "3", "--ema"])
    sample_mod.main(["--checkpoint", str(ck), "--n", "16", "--out", str(png3), "--seed", "3", "--no-ema"])
    assert np.array_equal(a, np.asarray(Image.open(png2)))
    assert not np.array_equal(a, np.asarray(Image.open(png3)))


def test_sample_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sample_mod.main(["--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")])
    assert "no checkpoint found" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["--steps", "1", "--out", str(out), "--ema", "0", *TINY]) == 0  # no average kept
    with pytest.raises(SystemExit):
        sample_mod.main(["--checkpoint", str(out), "--ema", "--out", str(tmp_path / "x.png")])
    assert "no EMA generator" in capsys.readouterr().err


def test_config_file_run_and_saved_config_reuse(tmp_path):
    cfgf = tmp_path / "run.toml"
    cfgf.write_text('loss = "hinge"\nsteps = 3\nbase = 4\nz_dim = 8\nbatch_size = 8\nprogress = false\n')
    out = tmp_path / "a"
    assert main(["--config", str(cfgf), "--out", str(out), "--steps", "2"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["loss"] == "hinge" and saved["steps"] == 2 and saved["base"] == 4
    # The saved config.json is itself a valid --config file.
    out2 = tmp_path / "b"
    assert main(["--config", str(out / "config.json"), "--out", str(out2)]) == 0
    a = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)["G"]
    b = torch.load(out2 / "checkpoints" / "latest.pt", weights_only=False)["G"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same config -> same weights


def test_image_folder_data_and_switches(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs" / "sub"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "run"
    rc = main(["--data", str(tmp_path / "imgs"), "--data-format", "folder", "--image-size", "32",
               "--steps", "2", "--out", str(out), "--channels-last", "--lazy-gp", "2", "--impl", "reference",
               "--seed", "5", *TINY])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["channels"], cfg["image_size"], cfg["seed"]) == (3, 32, 5)
    assert Image.open(out / "samples" / "step_000002.png").mode == "RGB"


def test_amp_bf16_runs_on_cpu(tmp_path):
    out = tmp_path / "run"
    assert main(["--amp", "bf16", "--steps", "2", "--out", str(out), "--log-every", "1", *TINY]) == 0
    recs = [r for r in _read_jsonl(out / "metrics.jsonl") if "loss_d" in r]
    assert all(math.isfinite(r["loss_d"]) for r in recs)


def test_wgan_schedule_and_adam_clip_path(tmp_path):
    out = tmp_path / "run"
    # --optimizer adam with --loss wgan takes the per-parameter clip_weights_ path.
    assert main(["--loss", "wgan", "--optimizer", "adam", "--wgan-schedule", "--steps", "1",
                 "--out", str(out), *TINY]) == 0
    ck = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    assert ck["critic_steps"] == 100  # the first 25 generator steps use 100 critic steps
    for name, p in ck["D"].items():
        if p.is_floating_point() and "running" not in name:
            assert p.abs().max() <= 0.01 + 1e-7, name


@pytest.mark.parametrize("argv,match", [
    (["--loss", "vae"], "invalid choice: 'vae'"),
    (["--image-size", "48"], "--image-size: 48 is not supported"),
    (["--data", "/no/such/dir"], "--data: path does not exist"),
    (["--steps", "0"], "--steps: must be >= 1"),
    (["--batch-size", "8192"], "--batch-size 8192 is larger than the dataset"),
    (["--device", "cuda"], "--device cuda"),
])
def test_bad_flags_exit_with_clear_message(tmp_path, capsys, argv, match):
    if argv == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path / "o"), "--no-progress"])
    assert e.value.code == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o" / "checkpoints").exists()  # failed before anything was built


def test_empty_data_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--no-progress"])
    assert e.value.code == 2
    assert str(tmp_path / "empty") in capsys.readouterr().err


def _poison_batches(indices):
    """on_start hook: the real batches of these critic steps (counted from 0) are NaN, as a
    corrupt image or an overflowing input would make them."""
    def on_start(run):
        inner, count = run.batcher.next, [0]

        def next_batch(n):
            x = inner(n)
            count[0] += 1
            return x * float("nan") if (count[0] - 1) in indices else x

        run.batcher.next = next_batch
    return on_start


def test_nonfinite_steps_are_skipped(tmp_path):
    out = tmp_path / "run"
    snap = {}

    def on_step(run):
        snap[run.generator_steps] = [p.detach().clone() for p in run.D.parameters()]

    rc = main(["--steps", "4", "--out", str(out), "--log-every", "1", *TINY],
              hooks={"on_start": _poison_batches({2, 3}), "on_step": on_step})
    assert rc == 0
    recs = [r for r in _read_jsonl(out / "metrics.jsonl") if "loss_d" in r]
    # n_critic=2: critic steps 2 and 3 are generator step 2's; both skipped, nothing applied.
    assert [r["skipped"] for r in recs] == [0, 2, 0, 0]
    assert all(torch.equal(a, b) for a, b in zip(snap[1], snap[2]))
    assert not all(torch.equal(a, b) for a, b in zip(snap[2], snap[3]))
    assert all(torch.isfinite(p).all() for p in snap[4])
    ck = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    assert ck["nonfinite_total"] == 2


def test_repeated_nonfinite_stops_with_message(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["--steps", "50", "--out", str(out), "--max-nonfinite", "5", "--checkpoint-every", "1", *TINY],
              hooks={"on_start": _poison_batches(set(range(4, 10_000)))})
    assert rc == 3
    err = capsys.readouterr().err
    assert "consecutive steps with a non-finite loss or gradient" in err
    # the state it stopped in is written: the critic's weights are those of step 2 (critic
    # steps 0-3 were fine), the generator's steps used no real batch and were applied
    assert f"{out / 'checkpoints' / 'latest.pt'} holds step 5" in err
    assert f"--resume {out} --lr LR" in err
    ck = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    two = torch.load(out / "checkpoints" / "step_000002.pt", weights_only=False)
    assert ck["step"] == 5 and all(torch.equal(v, two["D"][k]) for k, v in ck["D"].items())
    assert all(torch.isfinite(v).all() for v in ck["D"].values() if v.is_floating_point())
    # checked at checkpoint steps here (every step): it stopped within one step of the limit
    assert "stopped at step 5: 6 consecutive" in err


def test_run_ending_on_skipped_steps_writes_its_last_good_state(tmp_path, capsys):
    """A streak below --max-nonfinite at --steps: the last state is written, the message says
    which step it holds, and the exit code is not 0."""
    out = tmp_path / "run"
    snap = {}

    def on_step(run):
        snap[run.generator_steps] = {k: v.clone() for k, v in run.D.state_dict().items()}

    rc = main(["--steps", "4", "--out", str(out), "--checkpoint-every", "1000", *TINY],
              hooks={"on_start": _poison_batches(set(range(4, 10_000))), "on_step": on_step})
    assert rc == 3
    err = capsys.readouterr().err
    assert f"ended at step 4: 4 consecutive steps" in err and "holds step 4" in err
    ck = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    assert ck["step"] == 4  # the critic as it was after its last applied step (step 2)
    assert all(torch.equal(v, snap[2][k]) for k, v in ck["D"].items())
    # and resuming it with a lower learning rate is what the message says it is
    assert main(["--resume", str(out), "--steps", "5", "--lr", "1e-5", "--no-progress"]) == 0
    assert torch.load(out / "checkpoints" / "latest.pt", weights_only=False)["opt_d"]["param_groups"][0]["lr"] == 1e-5


def test_reused_config_json_warns_only_about_flags_typed(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["--loss", "dcgan", "--steps", "1", "--out", str(first), *TINY]) == 0
    capsys.readouterr()
    # config.json lists every field, gp_weight and clip_value among them: nobody chose them
    assert main(["--config", str(first / "config.json"), "--out", str(tmp_path / "second"), "--steps", "1"]) == 0
    assert "no effect" not in capsys.readouterr().err
    assert main(["--config", str(first / "config.json"), "--out", str(tmp_path / "third"), "--steps", "1",
                 "--gp-weight", "5"]) == 0
    err = capsys.readouterr().err
    assert err.count("no effect") == 1 and "--gp-weight: no effect with --loss dcgan" in err


def test_fp32_eager_reference_is_no_autocast_and_cuda_home_note_is_quiet(caplog):
    import logging
    import warnings

    from pyfast_gan.step.objective import autocast, quiet_cuda_home_note

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch: "In CPU autocast, but the target dtype is not supported"
        with autocast("cpu", torch.float32):
            assert not torch.is_autocast_enabled("cpu")
    quiet_cuda_home_note()
    log = logging.getLogger("torch.utils.cpp_extension")
    with caplog.at_level(logging.WARNING, logger=log.name):
        log.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        log.warning("another note")
    assert [r.getMessage() for r in caplog.records] == ["another note"]


def test_num_workers_help_says_what_zero_means(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0 = one per CPU core when building the decoded-dataset cache" in text


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_module_entry_point_subprocess(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "pyfast_gan.train", "--steps", "2", "--out", str(out), *TINY],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resolved config:" in r.stdout and (out / "checkpoints" / "latest.pt").is_file()
    # `python -m pyfast_gan.sample` (run in-process: a second interpreter start costs a minute
    # on a loaded runner).
    import runpy

    png = tmp_path / "g.png"
    old_argv = sys.argv
    sys.argv = ["pyfast_gan.sample", "--checkpoint", str(out), "--n", "4", "--out", str(png)]
    try:
        with pytest.raises(SystemExit) as e:
            runpy.run_module("pyfast_gan.sample", run_name="__main__")
    finally:
        sys.argv = old_argv
    assert e.value.code == 0 and png.is_file()


@pytest.mark.slow  # ~25 s: inductor compiles a DCGAN critic's penalty graph on 2 cores
def test_fast_on_cpu_end_to_end(tmp_path, capsys):
    from pyfast_gan.train.config import cpu_has_fast_bf16

    out = tmp_path / "run"
    # --cuda-graphs on a CPU says so once and the run continues uncaptured
    seen = {}
    assert main(["--fast", "--cuda-graphs", "--device", "cpu", "--steps", "7", "--log-every", "7",
                 "--out", str(out), *TINY],
                hooks={"on_step": lambda run: seen.setdefault("objective", run.step.objective)}) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["channels_last"] and cfg["compile"] and cfg["compile_penalty"] == "reference"
    assert cfg["impl"] == "auto" and cfg["amp"] == ("bf16" if cpu_has_fast_bf16() else "off")
    err = capsys.readouterr().err
    assert err.count("CUDA graphs need a CUDA device") == 1
    obj = seen["objective"]  # compiled, and checked against eager at the first step
    assert obj.mode == "compile" and obj.fallback_reason is None
    rec = [r for r in _read_jsonl(out / "metrics.jsonl") if "loss_d" in r][-1]
    assert rec["step"] == 7 and math.isfinite(rec["loss_d"])
    # compile time is reported once, apart from img_per_s, which is timed after the warm-up
    # steps that hold the compilation
    assert rec["compile_time_s"] == pytest.approx(obj.compile_time_s, abs=1e-3) and rec["compile_time_s"] > 0
    assert rec["img_per_s"] > 0 and 2 * 8 / rec["img_per_s"] < rec["compile_time_s"]
    assert err.count("--compile: compile time") == 1


@pytest.mark.cuda
@pytest.mark.parametrize("loss", ["wgan-gp", "wgan"])
def test_cuda_graphs_cli_on_cuda(tmp_path, capsys, loss):
    out = tmp_path / "run"
    assert main(["--loss", loss, "--cuda-graphs", "--amp", "bf16", "--device", "cuda", "--steps", "12",
                 "--log-every", "6", "--checkpoint-every", "6", "--out", str(out), *TINY]) == 0
    err = capsys.readouterr().err
    assert "captured" in err, err[-2000:]
    recs = [r for r in _read_jsonl(out / "metrics.jsonl") if "loss_d" in r]
    assert [r["step"] for r in recs] == [6, 12]
    assert all(math.isfinite(r["loss_d"]) and math.isfinite(r["loss_g"]) for r in recs)
    assert recs[0]["capture_time_s"] > 0 and recs[-1]["img_per_s"] > 0
    ck = torch.load(out / "checkpoints" / "latest.pt", weights_only=False)
    assert ck["step"] == 12 and ck["critic_steps"] == 12 * 2
    assert all(torch.isfinite(v).all() for v in ck["D"].values() if v.is_floating_point())
    # the graphed run resumes (into a fresh capture) and continues
    assert main(["--resume", str(out), "--steps", "14", "--log-every", "2", "--no-progress"]) == 0
    assert torch.load(out / "checkpoints" / "latest.pt", weights_only=False)["step"] == 14


def test_compile_time_reported_apart_from_img_per_s(tmp_path, capsys):
    out = tmp_path / "run"
    seen = {}
    rc = main([*TOY, "--compile", "--steps", "7", "--log-every", "7", "--out", str(out)],
              hooks={"on_step": lambda run: seen.setdefault("objective", run.step.objective)})
    assert rc == 0
    obj = seen["objective"]
    assert obj.mode == "compile" and obj.fallback_reason is None
    rec = [r for r in _read_jsonl(out / "metrics.jsonl") if "loss_d" in r][0]
    assert rec["compile_time_s"] == pytest.approx(obj.compile_time_s, abs=1e-3) and rec["compile_time_s"] > 0
    # img_per_s is timed after the warm-up steps, which hold the compilation
    assert rec["img_per_s"] > 0 and 2 * 32 / rec["img_per_s"] < rec["compile_time_s"]
    assert capsys.readouterr().err.count("--compile: compile time") == 1


class _Recorder:
    """Wraps the run's critic objective: draws the penalty's alpha itself (as the objective
    would, same RNG stream) and keeps the first call's inputs for an independent check."""

    def __init__(self, inner, log):
        self.inner, self.log = inner, log

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, critic, real, fake, step_index=0, alpha=None):
        alpha = torch.rand(real.shape[0]) if alpha is None else alpha
        if not self.log:
            self.log.append((copy.deepcopy(critic), real.clone(), fake.clone(), alpha.clone()))
        return self.inner(critic, real, fake, step_index, alpha=alpha)


def test_gp_is_the_unweighted_penalty_eager_and_compiled(tmp_path):
    from pyfast_gan.step.objective import has_trace_autograd_ops

    if not has_trace_autograd_ops():
        pytest.skip("torch lacks trace_autograd_ops")
    gps, first = {}, {}
    for mode in ("eager", "compile"):
        out = tmp_path / mode
        log = []

        def on_start(run, log=log):
            run.step.objective = _Recorder(run.step.objective, log)

        argv = [*TOY, "--n-critic", "1", "--steps", "3", "--log-every", "1", "--out", str(out)]
        assert main(argv + (["--compile"] if mode == "compile" else []), hooks={"on_start": on_start}) == 0
        gps[mode] = [r["gp"] for r in _read_jsonl(out / "metrics.jsonl") if "gp" in r]
        first[mode] = log[0]
    assert len(gps["eager"]) == 3
    np.testing.assert_allclose(gps["compile"], gps["eager"], rtol=1e-4, atol=1e-6)
    critic, real, fake, alpha = first["eager"]
    a = alpha.view(-1, 1)
    x_hat = (a * real + (1 - a) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat)
    expected = ((g.norm(2, dim=1) - 1) ** 2).mean().item()  # lambda (0.1 here) not included
    assert gps["eager"][0] == pytest.approx(expected, rel=1e-5, abs=1e-7)


# ---- the start-up hint when the model is too wide for the CPU (issue 24) ---------------------
def test_slow_step_on_cpu_is_said_once_with_the_flags_that_help(tmp_path, capsys, monkeypatch):
    from pyfast_gan.train import cost

    seen = []

    def slow(G, D, **kw):
        seen.append(kw)
        return 9.0

    monkeypatch.setattr(cost, "estimate_step_seconds", slow)
    out = tmp_path / "wide"
    assert main(["--steps", "2", "--out", str(out), *TINY, "--base", "32"]) == 0
    err = capsys.readouterr().err
    assert err.count("should take ~9 s on a CPU") == 1
    assert "--base 16 (now 32" in err and "--fast" in err and "nothing was changed" in err
    assert seen == [dict(z_dim=8, batch_size=8, n_critic=2, uses_gp=True)]
    assert json.loads((out / "config.json").read_text())["base"] == 32  # what the user asked for

    # already narrow and --fast: no flag left to suggest, but the hint still says how slow
    hint = cost.slow_cpu_hint(9.0, base=16, fast=True)
    assert "should take ~9 s" in hint and "--base" not in hint and "--fast" not in hint
    assert "--fast" not in cost.slow_cpu_hint(3.0, base=64, fast=True)


def test_no_slow_step_hint_for_small_presets_or_toy_data(tmp_path, capsys, monkeypatch):
    from pyfast_gan.train import cost

    assert main(["--steps", "1", "--out", str(tmp_path / "d"), *TINY]) == 0  # measured, not patched
    assert "should take" not in capsys.readouterr().err

    def never(*a, **kw):
        raise AssertionError("toy data has no image step to time")

    monkeypatch.setattr(cost, "estimate_step_seconds", never)
    assert main(["--steps", "1", "--out", str(tmp_path / "t"), *TOY]) == 0
    assert cost.slow_cpu_hint(1.5, base=64, fast=False) is None


def test_step_estimate_from_flops_flags_the_image_preset_not_the_digits_default():
    from pyfast_gan.models import build_models
    from pyfast_gan.train.cost import SLOW_STEP_S, estimate_step_seconds, step_flops

    def models(base, size=32, channels=1):
        torch.manual_seed(3)
        return build_models("dcgan", image_size=size, channels=channels, z_dim=100, base=base, critic_norm="layer")

    G, D = models(64)
    before = [t.clone() for t in (*G.state_dict().values(), *D.state_dict().values())]
    rng = torch.get_rng_state()
    wgan_gp = dict(z_dim=100, batch_size=64, n_critic=5, uses_gp=True)
    flops = step_flops(G, D, **wgan_gp)
    assert 150e9 < flops < 160e9  # DCGAN base 64 on 1x32x32, batch 64, n_critic 5, with the penalty
    assert estimate_step_seconds(G, D, **wgan_gp) > SLOW_STEP_S  # the image preset on MNIST: hinted
    assert torch.equal(torch.get_rng_state(), rng)  # meta copies: no compute, no RNG, models untouched
    assert all(torch.equal(a, b) for a, b in zip(before, (*G.state_dict().values(), *D.state_dict().values())))
    assert all(p.grad is None and p.device.type == "cpu" for p in (*G.parameters(), *D.parameters()))
    # fewer critic steps, no penalty: cheaper; the default base 16: well under the line
    assert step_flops(G, D, z_dim=100, batch_size=64, n_critic=1, uses_gp=False) < flops / 5
    assert estimate_step_seconds(*models(16), **wgan_gp) < SLOW_STEP_S / 4
    assert estimate_step_seconds(*models(64, 64, 3), **wgan_gp) > 4 * SLOW_STEP_S
