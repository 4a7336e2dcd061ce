"""Which device and which of the asked modes a run gets: the device from --device, the AMP
dtype the device and models can run (else fp32, with one message), and why --cuda-graphs cannot
capture a run's step (else None). :func:`pyfast_gan.train.run.build` asks each once; nothing
after it looks again."""
from __future__ import annotations

import copy

import torch

from .config import TrainConfig


def resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: CUDA is not available on this machine")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit


def keep_freed_memory() -> bool:
    """Have glibc keep the memory a CPU run frees for its next allocation instead of handing it
    back to the kernel. A training step frees and reallocates the same large activations
    every time, and each page the kernel hands out again costs a page fault: on the project's
    2-core VM a fresh 8 MB tensor took 717 faults and 1.6 ms to fill, a reused one 0 and
    0.4 ms, and a --fast WGAN-GP iteration (DCGAN-64) took 127,000 faults. Tensors larger than
    32 MB (glibc's ceiling for this setting) are still mapped fresh. The process keeps its peak
    memory for its lifetime. False where the C library is not glibc."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                    and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def usable_amp(cfg: TrainConfig, device: torch.device, G, D, say) -> str:
    """cfg.amp, or "off" (with one message) when the device cannot run it: a tiny forward and
    backward on copies, so no RNG, BN statistics or parameters of the real models change."""
    if cfg.amp == "off":
        return "off"
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        say("--amp bf16: this GPU has no bf16 support; running in fp32")
        return "off"
    try:
        g, d = copy.deepcopy(G), copy.deepcopy(D)
        with torch.autocast(device_type=device.type, dtype=dtype):
            out = d(g(torch.zeros(2, cfg.z_dim, device=device))).float().sum()
        out.backward()
    except Exception as e:  # noqa: BLE001 - any unsupported-op error means "cannot"
        say(f"--amp {cfg.amp}: autocast is not usable on {device.type} for these models "
            f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); running in fp32")
        return "off"
    return cfg.amp


def cuda_graphs_blocker(cfg: TrainConfig, device: torch.device, world: int, loss) -> str | None:
    """Why --cuda-graphs cannot be used for this run, or None."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device (running on {device.type})"
    if cfg.amp == "fp16":
        return "fp16 with GradScaler is not captured; use --amp bf16"
    if cfg.lazy_gp > 1:
        return "--lazy-gp changes the step from one critic iteration to the next"
    if world > 1:
        return "the multi-process gradient all-reduce is not captured"
    if cfg.lr_decay != "none" and cfg.optimizer == "rmsprop":
        return "--lr-decay with RMSprop is not captured (a graphed RMSprop step bakes in its lr)"
    if loss.stateful:
        return f"--loss {cfg.loss} keeps loss state (k_t) that the capture's warm-up would move"
    return None
