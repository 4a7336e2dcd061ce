"""How a training run ends when it cannot end well, each in one line that says which checkpoint
was kept: repeated non-finite steps (the last good state is written first, and the last
checkpoint from before a blow-up is offered), data going bad under the run and a failed write
(the state is written if the disk allows), and a Ctrl-C outside the loop's own handling.
Earlier checkpoints stay intact: every write is a temporary file, then a rename."""
from __future__ import annotations

import errno
import math
import os
import resource
import shutil
import statistics
from pathlib import Path

from pyfast_gan.artifacts import checkpoint as ckpt_mod
from pyfast_gan.data import DataError

# A logged loss over SANE_FACTOR x the run's median (and over SANE_FLOOR) marks a blow-up: a
# diverging GAN's losses grow by orders of magnitude before they turn non-finite.
SANE_FACTOR, SANE_FLOOR = 100.0, 10.0


class TrainingStopped(RuntimeError):
    """Training ended without reaching a healthy end: non-finite losses or gradients (exit
    code 3), a failed write such as a full disk (1) or a second Ctrl-C (130). The message is
    one line that says which checkpoint was kept."""

    def __init__(self, message: str, code: int = 3):
        super().__init__(message)
        self.code = code


def write_failure(e: BaseException) -> str | None:
    """What a failed write means, in one line, or None when ``e`` is not one (an OSError with
    an errno: no space left, permission denied, read-only file system, a file size limit...)."""
    if not isinstance(e, OSError) or e.errno is None:
        return None
    where = f" {e.filename}" if e.filename else ""
    why = ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why = " (the disk is full)"
    elif e.errno == errno.EFBIG:  # Python ignores SIGXFSZ: the write fails with EFBIG instead
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        size = "" if limit == resource.RLIM_INFINITY else f" of {limit / 2**20:.1f} MiB"
        why = f" (the file size limit{size}, `ulimit -f`, not the disk: raise the limit)"
    return f"cannot write{where}: {e.strerror or e}{why}"


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


def save_state(run, began: int | None, failed: str | None = None) -> str:
    """Write the run's state as latest.pt when the disk allows and say what latest.pt holds:
    for a run stopped by something other than its training (data, a failed write), whose
    weights are healthy. ``began``: the critic steps done when the step it stopped inside
    began (None: it stopped between steps). ``failed``: the write failure that stopped it."""
    out, step = run.out, run.generator_steps
    latest = out / "checkpoints" / "latest.pt"
    partial = began is not None and run.step.critic_steps > began  # that step's critic updates so far
    if not partial and ckpt_mod.checkpoint_step(latest) == step:
        return f"{latest} holds step {step}"
    if (step == run.start_step and not partial) or run.world > 1:
        # nothing trained since the start; under torchrun the write would need every rank
        return kept(out)
    try:
        run.save(periodic=False)
    except OSError as e:
        why = write_failure(e)
        if why is None:
            raise
        return f"{kept(out)}; writing step {step} failed too" + ("" if why == failed else f" ({why})")
    note = ""
    if partial:
        note = f" and part of step {step + 1} (stopped inside it: resuming is not bitwise exact)"
    elif began is not None:
        note = (f" (stopped as step {step + 1} began: its data position is one batch on, so resuming "
                f"is not bitwise exact)")
    return f"the state is written to {latest}: step {step}{note}"


def end_failure(run, e: BaseException, began: int | None) -> None:
    """Raise the ending of a run stopped by its data going bad (a DataError, exit 2) or a failed
    write (TrainingStopped, exit 1), after writing its state when the disk allows; ``e`` as it
    is for any other error."""
    if isinstance(e, DataError):
        raise DataError(f"{e}; {save_state(run, began)}") from None
    why = write_failure(e)
    if why is None:
        raise e
    raise TrainingStopped(f"stopped at step {run.generator_steps}: {why}; {save_state(run, began, why)}",
                          code=1) from None


def end_held(run) -> str:
    """What latest.pt holds at a run's healthy end, for its last message. A run that trained
    no step (``--resume A --out NEW --steps N`` with N at A's step) writes its state there
    first when that is not already it, so the message is true of NEW."""
    step, latest = run.generator_steps, run.out / "checkpoints" / "latest.pt"
    if step != run.start_step:
        return f"checkpoints/latest.pt holds step {step}"
    if ckpt_mod.checkpoint_step(latest) == step:
        return f"no step was trained; {latest} holds step {step}"
    if run.world > 1:  # the write would be collective, and the ranks may see different files
        return f"no step was trained; {kept(run.out)}"
    run.save(periodic=False)
    return f"no step was trained; {latest} is written now and holds step {step}"


def loss_scale(run) -> float | None:
    """--amp fp16's loss scale (the smaller of the two GradScalers'); None without fp16."""
    s = [x for x in (run.step.scaler_d, run.step.scaler_g) if x.is_enabled()]
    return min(x.get_scale() for x in s) if s else None


def sane_until(records: list[dict]) -> int | None:
    """The step of the last log record before the run's final trouble (records with skipped
    steps, a non-finite loss, or a loss over SANE_FACTOR x the run's median), or None."""
    recs = [r for r in records if "loss_d" in r]

    def size(r):
        return max(abs(r.get("loss_d", math.nan)), abs(r.get("loss_g", 0.0)))

    fine = [size(r) for r in recs if math.isfinite(size(r)) and not r.get("skipped")]
    if not fine:
        return None
    bound = max(SANE_FACTOR * statistics.median(fine), SANE_FLOOR)
    for r in reversed(recs):
        if not r.get("skipped") and math.isfinite(size(r)) and size(r) <= bound:
            return int(r["step"])
    return None


def keep_sane(run, before: int) -> Path | None:
    """The newest checkpoint of the run at or before step ``before`` (rank 0): latest.pt is
    copied to its step_NNNNNN.pt name first, so the state written next does not replace it."""
    folder = run.out / "checkpoints"
    found = [(ckpt_mod.checkpoint_step(p), p) for p in sorted(folder.glob("*.pt")) if p.name != "best.pt"]
    found = [(s, p) for s, p in found if s is not None and s <= before]
    if not found:
        return None
    step, path = max(found, key=lambda sp: (sp[0], sp[1].name != "latest.pt"))
    if path.name == "latest.pt":
        keep = folder / f"step_{step:06d}.pt"
        if not keep.exists():
            shutil.copyfile(path, keep.with_name(f".{keep.name}.tmp{os.getpid()}"))
            os.replace(keep.with_name(f".{keep.name}.tmp{os.getpid()}"), keep)
        path = keep
    return path


def end_nonfinite(run, bad: int, stopped: bool) -> str | None:
    """Write the last good state and raise TrainingStopped. Skipped steps change no weights,
    optimizer state, EMA or batch-norm statistics (GANStep), so the current state holds the
    weights of the last step with an applied update. A run that applied none since it started
    has not diverged: it says so, and under --amp fp16, where the first steps overflow while
    GradScaler lowers its scale, it returns 'warm-up' when it reached --steps (the state is
    written; nothing is wrong). After a blow-up the checkpoint from before it is offered.
    ``bad``: the consecutive skipped steps; ``stopped``: at --max-nonfinite (else the run
    reached --steps on skipped steps)."""
    cfg, step, out, start = run.cfg, run.generator_steps, run.out, run.start_step
    good = int(run.last_applied) if run.last_applied is not None else start
    latest = out / "checkpoints" / "latest.pt"
    scale = loss_scale(run)
    why = (f"{bad} consecutive steps with a non-finite loss or gradient were skipped "
           f"(--max-nonfinite {cfg.max_nonfinite})")
    ended = f"{'stopped' if stopped else 'ended'} at step {step}"
    if good <= start and scale is not None and not stopped:
        run.save(periodic=False)
        run.say(f"no update applied yet: the {step - start} steps of this run overflowed in fp16 while "
                f"--amp fp16's loss scale fell to {scale:g} (GradScaler halves it at each overflow: the "
                f"usual start of an fp16 run, not a divergence); {latest} holds step {step}, with the "
                f"weights it started from. Continue with: python -m pyfast_gan.train --resume {out} --steps N")
        return "warm-up"
    if good <= start:
        at = f" even at --amp fp16's loss scale {scale:g}" if scale is not None else ""
        raise TrainingStopped(
            f"{ended}: {why}, and no update was applied since step {start}: the weights are the ones "
            f"it started from (nothing diverged: its first steps give non-finite values{at}); {kept(out)}. "
            f"Check the data, or start again with a lower --lr, --amp bf16 or --amp off.")
    sane = sane_until(run.metrics.records) if run.metrics is not None else None
    before = keep_sane(run, sane) if run.main and sane is not None and sane < good else None
    run.save(periodic=False)
    held = (f"{latest} holds step {step}" + (f" (the weights of step {good}, the last with a finite update)"
                                             if good < step else ""))
    more = "" if stopped else f" --steps N (N > {step})"
    if before is not None:
        ck = ckpt_mod.checkpoint_step(before)
        raise TrainingStopped(
            f"{ended}: {why}; {held}. Its losses had grown past {SANE_FACTOR:g}x their median or turned "
            f"non-finite after step {sane}: the last checkpoint from before is {before} (step {ck}). Resume "
            f"that one with a lower learning rate (flags given with --resume replace the checkpoint's): "
            f"python -m pyfast_gan.train --resume {before} --lr LR; or try --amp off, or check the data.")
    raise TrainingStopped(
        f"{ended}: {why}; {held}. Resume it, or an earlier "
        f"checkpoints/step_*.pt, with a lower learning rate (flags given with --resume replace the "
        f"checkpoint's): python -m pyfast_gan.train --resume {out} --lr LR{more}; or try --amp off, or check the data.")
