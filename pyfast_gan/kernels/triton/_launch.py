"""How the Triton ops launch their kernels: through ``torch.library.wrap_triton`` (so
torch.compile traces the launch into its graph), except where torch refuses it.

torch 2.11 accepts only compiled kernels in ``wrap_triton``; under Triton's interpreter
(``TRITON_INTERPRET=1``, the CPU test vehicle) ``triton.jit`` gives interpreted functions, which
torch 2.14 passes through and 2.11 rejects. There the kernel is launched directly: nothing
traces an interpreted launch into a compiled graph."""
from __future__ import annotations

import os

import triton
from torch.library import wrap_triton

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _wrap_takes_interpreted() -> bool:
    @triton.jit
    def _probe(x):
        pass

    try:
        wrap_triton(_probe)
    except RuntimeError:
        return False
    return True


_DIRECT = INTERPRETED and not _wrap_takes_interpreted()


def launch(kernel):
    """``wrap_triton(kernel)``, or ``kernel`` itself where torch would refuse it (above)."""
    return kernel if _DIRECT else wrap_triton(kernel)
