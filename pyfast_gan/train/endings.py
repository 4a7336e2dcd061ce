"""How a training run ends when it cannot end well, each in one line that says which checkpoint
was kept: repeated non-finite steps (the last good state is written first), a failed write (a
full disk, a read-only folder) and a Ctrl-C outside the loop's own handling. Earlier
checkpoints stay intact: every write is a temporary file, then a rename."""
from __future__ import annotations

import errno
from pathlib import Path

from pyfast_gan.artifacts import checkpoint as ckpt_mod


class TrainingStopped(RuntimeError):
    """Training ended without reaching a healthy end: non-finite losses or gradients (exit
    code 3), a failed write such as a full disk (1) or a second Ctrl-C (130). The message is
    one line that says which checkpoint was kept."""

    def __init__(self, message: str, code: int = 3):
        super().__init__(message)
        self.code = code


def write_failure(e: BaseException) -> str | None:
    """What a failed write means, in one line, or None when ``e`` is not one (an OSError with
    an errno: no space left, permission denied, read-only file system...)."""
    if not isinstance(e, OSError) or e.errno is None:
        return None
    where = f" {e.filename}" if e.filename else ""
    full = " (the disk is full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"cannot write{where}: {e.strerror or e}{full}"


def kept(out: Path) -> str:
    """Which checkpoint a run that ends now leaves behind, for its last message."""
    latest = out / "checkpoints" / "latest.pt"
    if not latest.exists():
        return "no checkpoint had been written yet"
    step = ckpt_mod.checkpoint_step(latest)
    return f"the last good checkpoint is kept at {latest}" + (f" (step {step})" if step is not None else "")


def stopped_by(run, e: BaseException) -> TrainingStopped | None:
    """The one-line TrainingStopped for a failed write (exit 1) or a Ctrl-C (130) that ended
    ``run``; None for any other error (raised as it is, with its traceback)."""
    if isinstance(e, KeyboardInterrupt):
        return TrainingStopped(f"interrupted at step {run.generator_steps}; {kept(Path(run.cfg.out))}", code=130)
    why = write_failure(e)
    if why is None:
        return None
    return TrainingStopped(f"stopped at step {run.generator_steps}: {why}; {kept(Path(run.cfg.out))}", code=1)


def end_nonfinite(run, bad: int, stopped: bool) -> None:
    """Write the last good state and raise TrainingStopped. Skipped steps change no weights,
    optimizer state, EMA or batch-norm statistics (GANStep), so the current state holds the
    weights of the last step with an applied update; a run that applied none since it started
    keeps what it had. ``bad``: the consecutive skipped steps; ``stopped``: at --max-nonfinite
    (else the run reached --steps on skipped steps)."""
    cfg, step, out, start = run.cfg, run.generator_steps, run.out, run.start_step
    good = int(run.last_applied) if run.last_applied is not None else start
    latest = out / "checkpoints" / "latest.pt"
    if good > start:
        run.save(periodic=False)
        held = (f"{latest} holds step {step}" + (f" (the weights of step {good}, the last with a finite update)"
                                                  if good < step else ""))
    else:
        held = kept(out)
    why = (f"{bad} consecutive steps with a non-finite loss or gradient were skipped "
           f"(--max-nonfinite {cfg.max_nonfinite})")
    more = "" if stopped else f" --steps N (N > {step})"
    raise TrainingStopped(
        f"{'stopped' if stopped else 'ended'} at step {step}: {why}; {held}. Resume it, or an earlier "
        f"checkpoints/step_*.pt, with a lower learning rate (flags given with --resume replace the "
        f"checkpoint's): python -m pyfast_gan.train --resume {out} --lr LR{more}; or try --amp off, or check the data.")
