"""--fast: the speed switches it turns on for a device (:func:`fast_settings`), whether ``auto``
turns them on (:func:`fast_auto`: where the device computes bf16 natively), the default when the
user says nothing ($PYFAST_GAN_FAST, else auto) and the line that tells a new run what it got.
:func:`pyfast_gan.train.config.resolve` applies them."""
from __future__ import annotations

import os

FAST_CHOICES = ("auto", "on", "off")


def fast_note(cfg, explicit: set[str]) -> str | None:
    """The line that says what --fast a new run got and why, when the user did not choose."""
    if cfg.resume or "fast" in explicit or os.environ.get("PYFAST_GAN_FAST", "").strip():
        return None  # chosen by the user: the flag, or the variable
    device = cfg.device if cfg.device != "auto" else ("cuda" if _cuda() else "cpu")
    return f"--fast auto: {cfg.fast}, {fast_auto(device)[1]}" + (
        "" if cfg.fast == "on" else "; --fast on forces the speed switches, --no-fast turns them off")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def fast_default() -> str:
    """--fast when the command line and --config leave it out: $PYFAST_GAN_FAST, else auto."""
    v = os.environ.get("PYFAST_GAN_FAST", "auto").strip().lower() or "auto"
    if v not in FAST_CHOICES:
        raise ValueError(f"PYFAST_GAN_FAST={v!r}: choose from auto, on, off")
    return v


def fast_auto(device: str) -> tuple[bool, str]:
    """--fast auto's choice for a device and why: on where bf16 is native, where the switches pay
    for themselves (on a CPU without it bf16 is emulated and far slower than fp32)."""
    import torch

    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        if major >= 8:
            return True, f"this GPU (compute capability {major}.{minor}) computes bf16 natively"
        return False, f"this GPU (compute capability {major}.{minor}) has no native bf16"
    if cpu_has_fast_bf16():
        return True, "this CPU computes bf16 natively (AMX or AVX512-BF16)"
    return False, "this CPU has no native bf16 (no AMX, no AVX512-BF16)"


def fast_settings(device: str) -> dict:
    """The switches --fast turns on for a device (each falls back, once, if unusable)."""
    if device == "cuda":
        # The penalty kernels inside the compiled graph: not yet measured against inductor's
        # own formula on a GPU (benchmarks/bench_train.py has both rows).
        return dict(amp="bf16", channels_last=True, compile=True, compile_penalty="kernels",
                    cuda_graphs=True, impl="auto")
    # CPU: compiled with inductor's penalty formula, the fastest row of bench_train.py on the
    # project's 2-core AMD EPYC (WGAN-GP DCGAN-64, batch 64: 1.34x the seed's loop, against
    # 1.13-1.20x eager and 1.16x compiled with the penalty kernels; ~40 s of compilation,
    # reported apart); bf16 only where the CPU has native bf16 math (emulated bf16 ran far slower).
    out = dict(impl="auto", channels_last=True, compile=True, compile_penalty="reference")
    if cpu_has_fast_bf16():
        out["amp"] = "bf16"
    return out


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 instructions (AVX512-BF16 or AMX), where oneDNN
    runs bf16 convolutions and matmuls at least as fast as fp32; elsewhere bf16 is emulated
    and slower."""
    import torch

    try:
        if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:  # not Linux: trust oneDNN's own check only with AVX512 or better
        return torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX")
    return "avx512_bf16" in flags or "amx_bf16" in flags
