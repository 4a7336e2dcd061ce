"""What a valid training config is: :func:`validate` (a bad value is a ValueError naming its
flag) and :func:`ignored_flags` (flags that do nothing for this data and loss).

The choices themselves are defined where what they name lives (losses, models, data, the
toy sets) and imported here and by the flag table (:mod:`.config`)."""
from __future__ import annotations

import math
import os

from pyfast_gan.data import EMBEDDED_DATA, TOY_DATASETS
from pyfast_gan.losses import LOSSES
from pyfast_gan.models import ARCHS, IMAGE_SIZES

ARCH_CHOICES = ("auto", *ARCHS)  # auto: chosen from the data and loss (train.run)
# Losses that come with their own networks: the loss names the arch (auto resolves to it).
LOSS_ARCH = {"began": "began", "cogan": "cogan"}

# Seeds derived from the run's (data order, fixed noise, per-rank noise) add up to ~2**31,
# and torch.manual_seed takes at most 2**64 - 1.
MAX_SEED = 2**63 - 2**32


def ignored_flags(cfg: "TrainConfig", explicit: set[str]) -> list[str]:
    """Flags given that do nothing for this data and loss, one message each. ``explicit``:
    the flags typed on the command line (:func:`command_line_flags`); a config file (a
    run's config.json holds every field) is not warned about."""
    out = []
    if cfg.data in TOY_DATASETS:
        out += [f"--{k.replace('_', '-')}: no effect on 2-D toy data ({cfg.data}); ignored"
                for k in ("image_size", "channels", "data_format", "data_cache") if k in explicit]
    from pyfast_gan.losses import get_loss

    loss = get_loss(cfg.loss)
    if not loss.uses_gp:
        out += [f"--{k.replace('_', '-')}: no effect with --loss {cfg.loss} (it has no gradient penalty); ignored"
                for k in ("gp_weight", "lazy_gp", "compile_penalty") if k in explicit]
    if not loss.uses_clipping and "clip_value" in explicit:
        out.append(f"--clip-value: no effect with --loss {cfg.loss} (only wgan clips the critic); ignored")
    for k, owner in (("began_embed", "began"), ("began_gamma", "began"), ("began_lambda_k", "began"),
                     ("began_k0", "began"),
                     ("cogan_domain", "cogan"), ("data_b", "cogan")):
        if k in explicit and cfg.loss != owner:
            out.append(f"--{k.replace('_', '-')}: no effect without --loss {owner}; ignored")
    if cfg.loss == "cogan" and cfg.data_b and "cogan_domain" in explicit:
        out.append("--cogan-domain: no effect with --data-b (domain B is that data); ignored")
    return out


def validate(cfg: "TrainConfig") -> None:
    def bad(flag, msg):
        raise ValueError(f"--{flag}: {msg}")

    if cfg.loss not in LOSSES:
        bad("loss", f"unknown loss {cfg.loss!r} (choose from {', '.join(LOSSES)})")
    is_toy = cfg.data in TOY_DATASETS
    if not is_toy and cfg.data not in EMBEDDED_DATA:
        if not cfg.data:
            bad("data", "empty")
        if not os.path.exists(cfg.data):
            bad("data", f"path does not exist: {cfg.data!r} (expected "
                f"{', '.join(EMBEDDED_DATA + TOY_DATASETS)} or a path to images / MNIST / CIFAR-10)")
    need = LOSS_ARCH.get(cfg.loss)
    if need and is_toy:
        bad("loss", f"{cfg.loss} trains image models only, not 2-D toy data ({cfg.data!r})"
            + (": an auto-encoder critic for 2-D points has no structure to reconstruct"
               if cfg.loss == "began" else ""))
    if need and cfg.arch not in ("auto", need):
        bad("arch", f"--loss {cfg.loss} comes with its own networks: use --arch auto or {need}, not {cfg.arch!r}")
    if cfg.arch in LOSS_ARCH.values() and cfg.loss != cfg.arch:
        bad("arch", f"{cfg.arch} networks go with --loss {cfg.arch}, not {cfg.loss!r}")
    if cfg.loss == "cogan" and not cfg.data_b and cfg.data not in EMBEDDED_DATA:
        bad("data-b", "--loss cogan on a PATH needs the second domain's images: --data-b PATH")
    if cfg.data_b and not os.path.exists(cfg.data_b):
        bad("data-b", f"path does not exist: {cfg.data_b!r}")
    if cfg.lr_decay == "plateau" and cfg.loss != "began":
        bad("lr-decay", "plateau follows BEGAN's convergence measure: --loss began only")
    if cfg.began_embed < 0:
        bad("began-embed", f"must be >= 0 (0 = --z-dim), got {cfg.began_embed}")
    if not (math.isfinite(cfg.began_gamma) and 0 < cfg.began_gamma <= 1):
        bad("began-gamma", f"must be in (0, 1], got {cfg.began_gamma}")
    if not (math.isfinite(cfg.began_lambda_k) and cfg.began_lambda_k >= 0):
        bad("began-lambda-k", f"must be >= 0 and finite, got {cfg.began_lambda_k}")
    if not (math.isfinite(cfg.began_k0) and 0 <= cfg.began_k0 <= 1):
        bad("began-k0", f"must be in [0, 1], got {cfg.began_k0}")
    if is_toy and cfg.arch not in ("auto", "mlp"):
        bad("arch", f"toy data {cfg.data!r} needs the mlp models, not {cfg.arch!r}")
    if not is_toy and cfg.arch == "mlp":
        bad("arch", "mlp models are for the 2-D toy data only")
    if not is_toy and cfg.image_size:
        if cfg.image_size not in IMAGE_SIZES:
            bad("image-size", f"{cfg.image_size} is not supported by the "
                f"{'resnet' if cfg.arch == 'resnet' else 'dcgan'} models (choose from "
                f"{', '.join(map(str, IMAGE_SIZES))})")
    for name in ("steps", "batch_size", "n_critic", "base", "z_dim", "sample_every",
                 "checkpoint_every", "log_every", "n_samples", "max_nonfinite", "plateau_steps"):
        if getattr(cfg, name) < 1:
            bad(name.replace("_", "-"), f"must be >= 1, got {getattr(cfg, name)}")
    if cfg.image_size < 0:
        bad("image-size", f"must be >= 0, got {cfg.image_size}")
    for name in ("crop", "max_images"):
        if getattr(cfg, name) < 0:
            bad(name.replace("_", "-"), f"must be >= 0 (0 = off), got {getattr(cfg, name)}")
    if (cfg.crop or cfg.max_images) and (is_toy or cfg.data in EMBEDDED_DATA):
        bad("crop" if cfg.crop else "max-images", f"applies to a data PATH, not to {cfg.data!r}")
    if cfg.lazy_gp < 0:
        bad("lazy-gp", f"must be >= 0, got {cfg.lazy_gp}")
    if cfg.num_workers < 0:
        bad("num-workers", f"must be >= 0, got {cfg.num_workers}")
    # inf and nan fail every range check below (an inf lr would train to NaN and a NaN
    # penalty weight would switch the penalty off).
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        bad("lr", f"must be > 0 and finite, got {cfg.lr}")
    if not (math.isfinite(cfg.lr_g) and cfg.lr_g >= 0):
        bad("lr-g", f"must be >= 0 and finite (0 = same as --lr), got {cfg.lr_g}")
    if not all(0.0 <= b < 1.0 for b in cfg.betas):
        bad("betas", f"each must be in [0, 1), got {cfg.betas}")
    if not (math.isfinite(cfg.clip_value) and cfg.clip_value > 0):
        bad("clip-value", f"must be > 0 and finite, got {cfg.clip_value}")
    if not (math.isfinite(cfg.gp_weight) and cfg.gp_weight >= 0):
        bad("gp-weight", f"must be >= 0 and finite, got {cfg.gp_weight}")
    if not 0.0 <= cfg.ema < 1.0:
        bad("ema", f"must be in [0, 1), got {cfg.ema}")
    if not 0 <= cfg.seed < MAX_SEED:
        bad("seed", f"must be an integer in [0, 2**63 - 2**32), got {cfg.seed}")
    if cfg.eval_every < 0:
        bad("eval-every", f"must be >= 0, got {cfg.eval_every}")
    if cfg.eval_n < 2:
        bad("eval-n", f"must be >= 2, got {cfg.eval_n}")
    from pyfast_gan.metrics.evaluator import METRIC_GROUPS, applicable

    groups = [m for m in cfg.eval_metrics.replace(",", " ").split() if m]
    unknown = [m for m in groups if m not in METRIC_GROUPS + ("auto",)]
    if unknown or not groups:
        bad("eval-metrics", f"unknown group(s) {unknown or groups}: choose auto or from {', '.join(METRIC_GROUPS)}")
    misfit = [m for m in groups if m != "auto" and m not in applicable(cfg.data)]
    if misfit:
        bad("eval-metrics", f"{', '.join(misfit)} do not apply to {cfg.data!r} (it has {', '.join(applicable(cfg.data))})")
    if cfg.inception_weights and not os.path.isfile(cfg.inception_weights):
        bad("inception-weights", f"not a file: {cfg.inception_weights!r}")
    if cfg.resume and not os.path.exists(cfg.resume):
        bad("resume", f"not found: {cfg.resume!r}")
