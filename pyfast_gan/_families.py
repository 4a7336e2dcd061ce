"""The native op families: one table, read by ``setup.py`` (which runs this file without
importing the package, so it must stay free of torch and of package imports), by
``_native`` (which loads the libraries) and by the op modules (each names its family here).

Each family is one shared library, ``pyfast_gan/_C_<family>``, built from
``csrc/cpu/<op>.cpp`` (and ``csrc/cuda/<op>.cu`` when CUDA is built) of its ops, so a
family builds and loads on its own: a broken or missing one never hides the other. An op's
name here is the stem of its files: ``pyfast_gan/ops/<op>.py``, ``csrc/cpu/<op>.cpp``,
``csrc/cuda/<op>.cu``.
"""
from __future__ import annotations

FAMILIES: dict[str, tuple[str, ...]] = {
    "penalty": ("interpolate", "gradient_norm_penalty"),
    # clip_weights_, the fused RMSprop+clip step and the inf/NaN check of its gradients
    "clip": ("clip_weights", "rmsprop_clip", "any_nonfinite"),
}


def family_of(op: str) -> str:
    """The family whose library holds ``op``'s kernels."""
    for family, ops in FAMILIES.items():
        if op in ops:
            return family
    raise KeyError(f"{op!r} is in no native family; known ops: {[o for ops in FAMILIES.values() for o in ops]}")
