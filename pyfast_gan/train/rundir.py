"""The run directory: checked before anything is built or written (a new run never
overwrites an existing one, and a --resume never writes into another run's directory), and
held by one trainer at a time (a lock on the directory itself, released by the OS when the
trainer dies). What a ``--resume`` changes of the saved settings, and whether the data given
now is the checkpoint's, is said here too."""
from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import time
from pathlib import Path

from pyfast_gan.data import EMBEDDED_DATA, TOY_DATASETS

# (No import of .config, which imports this module: TrainConfig is named in annotations only.)

# Fields that define the models and data; a resumed run cannot change them (the data may be
# given under another path when it is the same data: other_data below).
FROZEN_ON_RESUME = ("loss", "data", "data_format", "image_size", "channels", "arch", "base",
                    "z_dim", "critic_norm", "began_embed", "cogan_domain", "data_b", "crop", "max_images")
# Fields a resumed run takes from its checkpoint whatever is given now, and why: a new value
# would be recorded in config.json without changing the training (the weights of a resume
# with --seed 99 are bit-identical to a plain resume's), so it is refused instead.
FIXED_ON_RESUME = {
    "seed": "the checkpoint's random streams continue where they stopped",
    "n_samples": "the sample grids keep the checkpoint's fixed noise",
    "began_k0": "BEGAN's k_t continues from the checkpoint's value",
}


def default_out_dir(cfg: "TrainConfig") -> str:
    """runs/<loss>-<data>-<YYYYmmdd-HHMMSS>: the name a run without --out asks for (made, or
    suffixed when taken, by :func:`new_run_dir`)."""
    data = cfg.data if cfg.data in TOY_DATASETS + EMBEDDED_DATA else Path(cfg.data.rstrip("/\\")).name
    return os.path.join("runs", f"{cfg.loss}-{data}-{time.strftime('%Y%m%d-%H%M%S')}")


# The files that make a folder a run's (written by Run.start, the metrics writer and save).
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints/latest.pt")


def checkpoints_in(run_dir: Path) -> list[Path]:
    """The checkpoints a run directory holds (no temporaries: those end in .tmpPID)."""
    folder = Path(run_dir) / "checkpoints"
    return sorted(folder.glob("*.pt")) if folder.is_dir() else []


def resume_checkpoint(resume: str | os.PathLike) -> Path | None:
    """The checkpoint --resume names (a file, a run directory or its checkpoints/), or None for
    a run directory that holds a config.json and no checkpoint at all: a run that stopped
    before its first one, which a --resume trains from step 0. ValueError otherwise."""
    from pyfast_gan.artifacts import checkpoint as ckpt_mod

    try:
        return ckpt_mod.find_checkpoint(resume)
    except ValueError:
        p = Path(resume)
        run = p.parent if p.name == "checkpoints" else p
        others = checkpoints_in(run)
        if others:  # no latest.pt, but step_N.pt or best.pt: let the user pick one
            raise ValueError(f"--resume {resume}: no checkpoints/latest.pt there; resume from one of "
                             f"its checkpoints, e.g. --resume {others[-1]}") from None
        if (run / "config.json").is_file():
            return None
        raise


def resume_dir(resume: str | os.PathLike) -> Path:
    """The run directory of what --resume names: a checkpoint's folder above checkpoints/."""
    path = resume_checkpoint(resume)
    if path is None:
        p = Path(resume)
        return p.parent if p.name == "checkpoints" else p
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def same_dir(a: Path, b: Path) -> bool:
    """Whether two paths name one directory (the absolute paths where one is missing)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.absolute() == b.absolute()


def new_run_dir(name: str | os.PathLike) -> Path:
    """Make the default run directory ``name``, or ``name-2``, ``name-3``... when another run
    took it (two runs started in the same second): chosen by an exclusive mkdir, so two
    trainers never share one."""
    base = Path(name)
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        for i in range(1, 10_000):
            cand = base if i == 1 else base.with_name(f"{base.name}-{i}")
            try:
                cand.mkdir()
                return cand
            except FileExistsError:
                continue
    except OSError as e:
        raise ValueError(f"--out {base}: cannot write in {base.parent} ({e.strerror or e})") from None
    raise ValueError(f"--out {base}: 9999 runs of that name already; choose an --out")


def check_out_dir(cfg: "TrainConfig") -> Path:
    """The run directory, checked before anything is built or written: a new run never
    overwrites an existing one, a --resume writes into its own run directory or a new one
    (never another run's), and the directory must be creatable and writable (probed with a
    temporary file, which also catches a read-only disk). Without --out the default name is
    made here, unique (:func:`new_run_dir`). A folder that holds a run's config.json or
    metrics.jsonl but no checkpoint (a run that stopped before its first) is not a run to
    keep: a new run starts over it (Run.start says so)."""
    if cfg.out:
        out = Path(cfg.out)
    elif int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 makes the folder and alone writes
        out = Path(default_out_dir(cfg))
    else:
        out = new_run_dir(default_out_dir(cfg))
    for sub in ("", "samples", "plots", "checkpoints", "tensorboard"):
        if (out / sub).exists() and not (out / sub).is_dir():
            raise ValueError(f"--out {out}: {out / sub} exists and is not a directory")
    ckpts = checkpoints_in(out) if out.is_dir() else []
    held = [n for n in RUN_FILES if (out / n).exists()]
    if ckpts and "checkpoints/latest.pt" not in held:
        held.append(f"checkpoints/{ckpts[-1].name}")
    if ckpts and not cfg.resume:
        raise ValueError(f"--out {out} holds a run already ({', '.join(held)}); nothing was changed. "
                         f"Continue it with --resume {out}, or choose a new --out")
    if ckpts and not same_dir(out, resume_dir(cfg.resume)):
        src = resume_dir(cfg.resume)
        raise ValueError(f"--out {out} holds another run already ({', '.join(held)}); nothing was changed. "
                         f"--resume {cfg.resume} continues in {src}, or in a new, empty --out")
    probe = next(p for p in [out / "checkpoints", out, *out.absolute().parents] if p.exists())
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write in {probe} ({e.strerror or e})") from None
    return out


def lock_run_dir(out: Path) -> int:
    """Take the run directory's lock for the life of the trainer and return its file
    descriptor; the OS releases it when the process dies. The lock is an exclusive ``flock``
    on the directory itself, which tidying up cannot delete (a lock file can be: a second
    trainer would then lock a new one and write beside the first). ``RUN/.lock`` holds the
    holder's PID for the message. A second trainer on the same directory (with --resume or
    not) is refused here, before it touches any file. Readers (sample, evaluate) never take
    it. Where a file system cannot flock a directory, the lock file is locked instead."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as e:
        raise ValueError(f"--out {out}: cannot open the run directory ({e.strerror or e})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        _refuse(out)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EBADF, errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP):
            raise ValueError(f"--out {out}: cannot lock the run directory ({e.strerror or e})") from None
        return _lock_file(out)
    try:
        _write_pid(out)
    except OSError as e:
        os.close(fd)
        raise ValueError(f"--out {out}: cannot create the run's lock file ({e.strerror or e})") from None
    return fd


def _holder(out: Path) -> str:
    try:
        return (out / ".lock").read_bytes()[:32].decode(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


def _refuse(out: Path):
    raise ValueError(f"--out {out}: another trainer (PID {_holder(out)}) is running in this run directory "
                     f"(it holds the directory's lock); nothing was changed. Wait for it to end or stop it, "
                     f"then --resume {out}") from None


def _write_pid(out: Path) -> None:
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    finally:
        os.close(fd)


def _lock_file(out: Path) -> int:
    """The fallback lock: ``flock`` on RUN/.lock."""
    try:
        fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create the run's lock file ({e.strerror or e})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        _refuse(out)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


# -- the data a --resume is given ---------------------------------------------------------
def data_fingerprint(spec: str, settings: dict) -> str | None:
    """What a data PATH holds, wherever it lies: its format and the data cache's content
    fingerprint (every file's name relative to the path, size and modification time;
    data/formats.py). None for the built-in sets (a name, not a path). ``settings``: the run's
    config (data_format, image_size, channels, crop, max_images)."""
    if not spec or spec in TOY_DATASETS + EMBEDDED_DATA:
        return None
    from pyfast_gan.data.source import describe_source

    s = describe_source(spec, settings.get("data_format", "auto"), settings.get("image_size") or None,
                        settings.get("channels") or None, settings.get("crop", 0), settings.get("max_images", 0))
    return f"{s.kind}:{s.fingerprint}"


def run_data_fingerprints(cfg: "TrainConfig") -> dict:
    """The fingerprints a checkpoint keeps of its data PATHs (--data, --data-b), so that a
    --resume can accept the data under another path (moved, or spelled otherwise)."""
    settings, out = cfg.to_dict(), {}
    for k in ("data", "data_b"):
        try:  # --data-format names --data's format; --data-b's is detected
            fp = data_fingerprint(getattr(cfg, k), settings if k == "data" else {**settings, "data_format": "auto"})
        except (ValueError, OSError):  # read by the run already; a fingerprint is a convenience
            fp = None
        if fp:
            out[k] = fp
    return out


def other_data(given: str, saved: str, saved_fp: str | None, settings: dict) -> str | None:
    """Why ``given`` (--data now) is not the checkpoint's data ``saved``, or None when it is:
    the same built-in set, the same file or folder (another spelling: a trailing slash, an
    absolute path), or the same content elsewhere (its fingerprint equals the checkpoint's,
    ``saved_fp``, or, for a checkpoint without one, that of ``saved`` where it still is)."""
    builtin = TOY_DATASETS + EMBEDDED_DATA
    if given == saved:
        return None
    if given in builtin or saved in builtin:
        return "another data set"
    if not os.path.exists(given):
        return f"{given!r} does not exist"
    if os.path.exists(saved) and os.path.samefile(given, saved):
        return None
    if saved_fp is None and not os.path.exists(saved):
        return (f"the checkpoint's data {saved!r} is not there, and the checkpoint (written before data "
                f"fingerprints were kept) cannot tell whether {given!r} holds the same")
    then = saved_fp or data_fingerprint(saved, settings)
    if data_fingerprint(given, settings) != then:
        return (f"{given!r} holds other data: its files' names, sizes or modification times differ from "
                "the checkpoint's; a moved folder keeps them, a copy made with cp -r does not, cp -a does")
    return None


def check_resume(values: dict, explicit: set[str], saved: dict, data_fps: dict) -> None:
    """Refuse the flags a resume cannot apply, with a ValueError naming the flag (``values``:
    the config resolved so far; ``explicit``: the flags given now; ``saved``, ``data_fps``: the
    checkpoint's config and data fingerprints). Refused: the models' and data's
    (FROZEN_ON_RESUME; the data may be the same under another path), those the checkpoint
    fixes (FIXED_ON_RESUME), and --ema 0 where the checkpoint keeps an average that it would
    drop. A refused flag is never recorded in config.json as if it had been applied."""
    for k in sorted(explicit & set(FROZEN_ON_RESUME)):
        if k in ("data", "data_b") and saved.get(k) is not None:
            settings = saved if k == "data" else {**saved, "data_format": "auto"}
            why = other_data(values[k], saved[k], data_fps.get(k), settings)
            if why:
                raise ValueError(f"--{k.replace('_', '-')}: cannot change from {saved[k]!r} to {values[k]!r} "
                                 f"when resuming ({why})")
        elif _listed(values[k]) != _listed(saved.get(k)):
            raise ValueError(f"--{k.replace('_', '-')}: cannot change from {saved.get(k)!r} to "
                             f"{values[k]!r} when resuming (the checkpoint's models and data depend on it)")
    for k, why in FIXED_ON_RESUME.items():
        if k == "began_k0" and saved.get("loss") != "began":
            continue  # no effect without BEGAN (checks.ignored_flags says so)
        if k in explicit and k in saved and values[k] != saved[k]:
            raise ValueError(f"--{k.replace('_', '-')}: cannot change from {saved[k]!r} to {values[k]!r} when "
                             f"resuming ({why}); start a new run for another value")
    if "ema" in explicit and values["ema"] == 0 and saved.get("ema", 0) > 0:
        raise ValueError(f"--ema 0: the checkpoint keeps an EMA average of the generator (decay "
                         f"{saved['ema']:g}) that resuming without it would drop; resume with --ema "
                         f"{saved['ema']:g} (or another decay), or sample and evaluate with --no-ema "
                         "for the raw generator")
    for k in ("data", "data_b"):
        v = saved.get(k)
        if k not in explicit and v and v not in TOY_DATASETS + EMBEDDED_DATA and not os.path.exists(v):
            raise ValueError(f"--{k.replace('_', '-')}: the checkpoint's data {v!r} is not there (moved or "
                             f"removed); pass --{k.replace('_', '-')} PATH where it is now: its content is "
                             "checked against the checkpoint's")


def _listed(v):
    return list(v) if isinstance(v, tuple) else v


# What a --resume may change about the training (not the models or data, config.py's
# FROZEN_ON_RESUME): each one given now is said once.
RESUME_SETTINGS = ("optimizer", "lr", "lr_g", "betas", "clip_value", "gp_weight", "lazy_gp", "n_critic",
                   "lr_decay", "plateau_steps", "ema", "ema_rampup", "began_gamma", "began_lambda_k")


def _show(v) -> str:
    if isinstance(v, (list, tuple)):
        return " ".join(map(_show, v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def resume_changes(saved: dict, cfg: "TrainConfig") -> list[str]:
    """One line per training setting whose value now differs from the checkpoint's, and one
    for data found under another path."""
    now = cfg.to_dict()
    out = []
    for k in RESUME_SETTINGS:
        old, new = saved.get(k), now[k]
        if k in saved and (list(old) if isinstance(old, tuple) else old) != new:
            out.append(f"--{k.replace('_', '-')} {_show(new)} replaces the checkpoint's {_show(old)}")
    for k in ("data", "data_b"):
        if saved.get(k) and saved[k] != now[k]:
            out.append(f"--{k.replace('_', '-')} {now[k]}: the same data as the checkpoint's {saved[k]} "
                       f"(recorded as {now[k]} from now on)")
    return out
