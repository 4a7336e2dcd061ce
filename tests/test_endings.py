"""How a run ends when it cannot end well (pyfast_gan/train/endings.py, loop.py's _end) and the
outputs it leaves: a torn metrics line, data or a disk failing under the run, a resume with
nothing to train, fp16 warm-up against divergence, a Ctrl-C or a file size limit during a
checkpoint write."""
from __future__ import annotations

import errno
import json
import resource
from pathlib import Path

import pytest
import torch

from pyfast_gan.artifacts import checkpoint as ckpt_mod
from pyfast_gan.artifacts import outputs
from pyfast_gan.data import DataError
from pyfast_gan.train import main
from pyfast_gan.train.endings import write_failure

TINY = ["--base", "4", "--z-dim", "8", "--batch-size", "8", "--n-critic", "2", "--n-samples", "9",
        "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _steps(out: Path) -> list[int]:
    return [r["step"] for r in outputs.read_metrics(out / "metrics.jsonl") if "loss_d" in r]


def _ck_step(out: Path) -> int:
    return torch.load(out / "checkpoints" / "latest.pt", weights_only=False)["step"]


def _rc(argv, **kw) -> int:
    try:
        return main(argv, **kw)
    except SystemExit as e:
        return e.code


def _on_batch(fail_at: int, make):
    """on_start hook: the batcher's ``fail_at``-th call (from 0) raises ``make()``."""
    def on_start(run):
        inner, count = run.batcher.next, [0]

        def next_batch(n):
            count[0] += 1
            if count[0] - 1 >= fail_at:
                raise make()
            return inner(n)

        run.batcher.next = next_batch
    return on_start


def test_a_torn_last_metrics_line_is_dropped_on_resume_and_said(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--steps", "2", "--log-every", "1", "--out", str(out), *TINY]) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss_d": 0.12')  # a run killed mid-write
    capsys.readouterr()
    assert main(["--resume", str(out), "--steps", "4", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "dropped its last line, cut mid-write by a stopped run" in err, err
    # was: the first new line glued onto the torn one, both lost ([1, 2, 4])
    assert _steps(out) == [1, 2, 3, 4]
    assert (out / "metrics.jsonl").read_text().endswith("}\n")


def test_damaged_data_mid_run_writes_the_state_and_says_which_step(tmp_path, capsys):
    out = tmp_path / "run"
    damaged = _on_batch(11, lambda: DataError("data cache X is damaged: image 3 does not match"))
    # n_critic 2: batch 11 is step 6's second critic batch; step 6's first critic update is applied
    rc = _rc(["--steps", "50", "--checkpoint-every", "1000", "--out", str(out), *TINY], hooks={"on_start": damaged})
    assert rc == 2  # was: exit 2 and no checkpoint, steps 1-5 lost
    err = capsys.readouterr().err
    latest = out / "checkpoints" / "latest.pt"
    assert "is damaged" in err and f"the state is written to {latest}: step 5 and part of step 6" in err
    assert _ck_step(out) == 5
    # damage at a step's first batch: no update of it was applied
    out2 = tmp_path / "run2"
    rc = _rc(["--steps", "50", "--checkpoint-every", "1000", "--out", str(out2), *TINY],
             hooks={"on_start": _on_batch(10, lambda: DataError("damaged"))})
    assert rc == 2 and _ck_step(out2) == 5
    assert "step 5 (stopped as step 6 began" in capsys.readouterr().err


def test_a_full_disk_mid_run_writes_the_state_when_it_can(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_write = outputs.MetricsWriter.write

    def write(self, rec):
        if rec.get("step") == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        real_write(self, rec)

    monkeypatch.setattr(outputs.MetricsWriter, "write", write)
    assert main(["--steps", "50", "--log-every", "1", "--checkpoint-every", "1000", "--out", str(out), *TINY]) == 1
    err = capsys.readouterr().err
    assert "(the disk is full)" in err and f"{out / 'checkpoints' / 'latest.pt'}: step 3" in err, err
    assert _ck_step(out) == 3  # was: no checkpoint, steps 1-3 lost
    # the checkpoint cannot be written either: said, and nothing claims otherwise
    out2 = tmp_path / "run2"

    def full(obj, path, writer=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ckpt_mod, "save_atomic", full)
    assert main(["--steps", "50", "--log-every", "1", "--checkpoint-every", "1000", "--out", str(out2), *TINY]) == 1
    err = capsys.readouterr().err
    assert "no checkpoint had been written yet; writing step 3 failed too" in err, err
    assert not (out2 / "checkpoints" / "latest.pt").exists()


def test_too_few_decodable_images_exit_2_before_anything_is_written(tmp_path, capsys):
    import warnings

    import numpy as np
    from PIL import Image

    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(src / f"{i:03d}.png")
    whole = (src / "000.png").read_bytes()
    for i in range(3):
        (src / f"bad{i}.png").write_bytes(whole[:100])
    out = tmp_path / "run"
    args = ["--data", str(src), *TINY, "--steps", "1", "--data-cache", "on", "--out", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _rc([*args, "--batch-size", "4"]) == 2
        err = capsys.readouterr().err
        assert "only 2 of the 5 images" in err and "Traceback" not in err
        assert not (out / "config.json").exists()  # was: written, and the folder blocked
        assert main([*args, "--batch-size", "2"]) == 0  # the same --out is free


def test_resume_into_a_new_out_with_nothing_to_train_says_what_is_true(tmp_path, capsys):
    a, new = tmp_path / "a", tmp_path / "new"
    assert main(["--steps", "3", "--out", str(a), *TINY]) == 0
    capsys.readouterr()
    assert main(["--resume", str(a), "--out", str(new), "--steps", "3", "--no-progress"]) == 0
    text = capsys.readouterr().out
    latest = new / "checkpoints" / "latest.pt"
    assert f"no step was trained; {latest} is written now and holds step 3" in text, text
    assert _ck_step(new) == 3  # was: "latest.pt holds step 30" with NEW/checkpoints empty
    assert main(["--resume", str(a), "--steps", "2", "--no-progress"]) == 0
    assert f"no step was trained; {a / 'checkpoints' / 'latest.pt'} holds step 3" in capsys.readouterr().out


def test_fp16_warm_up_is_not_a_divergence(tmp_path, capsys):
    out = tmp_path / "run"
    # the first steps of --amp fp16 overflow while GradScaler lowers its scale from 65536
    assert main(["--amp", "fp16", "--steps", "1", "--out", str(out), *TINY]) == 0  # was: exit 3
    err = capsys.readouterr().err
    assert "no update applied yet" in err and "not a divergence" in err, err
    assert _ck_step(out) == 1
    assert main(["--resume", str(out), "--steps", "30", "--no-progress"]) == 0  # and it goes on


def _poison(indices):
    def on_start(run):
        inner, count = run.batcher.next, [0]

        def next_batch(n):
            x = inner(n)
            count[0] += 1
            return x * float("nan") if (count[0] - 1) in indices else x

        run.batcher.next = next_batch
    return on_start


def test_a_run_that_never_applied_an_update_says_nothing_diverged(tmp_path, capsys):
    out = tmp_path / "run"

    def on_start(run):  # every critic and generator step non-finite from the first one
        _poison(set(range(10_000)))(run)
        with torch.no_grad():
            next(run.G.parameters()).fill_(float("nan"))

    rc = main(["--steps", "20", "--max-nonfinite", "3", "--out", str(out), *TINY], hooks={"on_start": on_start})
    assert rc == 3
    err = capsys.readouterr().err
    assert "no update was applied since step 0" in err and "nothing diverged" in err, err
    assert "Resume it" not in err and "--resume" not in err


def test_after_a_blow_up_the_checkpoint_from_before_it_is_offered(tmp_path, capsys):
    out = tmp_path / "run"

    def on_step(run):  # the weights blow up after step 6 (checkpointed), then the values turn NaN
        if run.generator_steps == 6:
            with torch.no_grad():
                for p in run.D.parameters():
                    p.mul_(1e3)

    rc = main(["--steps", "50", "--log-every", "1", "--checkpoint-every", "2", "--max-nonfinite", "3",
               "--out", str(out), *TINY],
              hooks={"on_start": _poison(set(range(16, 10_000))), "on_step": on_step})
    assert rc == 3
    err = capsys.readouterr().err
    before = out / "checkpoints" / "step_000006.pt"
    recs = outputs.read_metrics(out / "metrics.jsonl")
    assert abs(next(r for r in recs if r["step"] == 7)["loss_d"]) > 1e3  # steps 7-8: huge, finite
    assert f"the last checkpoint from before is {before} (step 6)" in err, err
    assert f"--resume {before} --lr LR" in err
    assert _ck_step(out) > 8  # latest.pt still holds the state it stopped in


def test_a_second_ctrl_c_during_a_checkpoint_write_is_an_interruption(tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def interrupted_save(obj, f):
        class Cut:
            def __init__(self):
                self.n = 0

            def write(self, b):
                self.n += 1
                if self.n == 3:
                    raise KeyboardInterrupt
                return f.write(b)

            def flush(self):
                f.flush()

        real_save(obj, Cut())

    out = tmp_path / "run"
    assert main(["--steps", "2", "--out", str(out), *TINY]) == 0
    monkeypatch.setattr(torch, "save", interrupted_save)
    rc = main(["--resume", str(out), "--steps", "4", "--checkpoint-every", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 130, err  # was: 1, "torch.save could not write the file (... MiB free on that disk)"
    assert "interrupted at step 3" in err and "MiB free" not in err and "cannot write" not in err
    assert _ck_step(out) == 2  # latest.pt intact


def test_a_file_size_limit_is_named_not_the_disk(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(OSError) as e:
            ckpt_mod.save_atomic({"w": torch.zeros(100_000)}, tmp_path / "latest.pt")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert e.value.errno == errno.EFBIG
    msg = write_failure(e.value)
    assert "ulimit -f" in msg and "MiB free" not in msg and "disk is full" not in msg, msg
    assert not list(tmp_path.iterdir())  # no temporary left


def test_metrics_writer_repairs_a_torn_line_before_appending(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "lo')
    said = []
    w = outputs.MetricsWriter(p, step=5, say=said.append)
    w.write({"step": 2})
    assert outputs.read_metrics(p) == [{"step": 1}, {"step": 2}]
    assert len(said) == 1 and "dropped its last line" in said[0]
