"""The Triton kernels as a GPU build compiles them, checked on any machine: each kernel is
compiled for sm_90 (Triton runs its compiler and ptxas without a device; see
tests/triton_ptx_probe.py) and its PTX is read for the rounding the kernels promise. Under
TRITON_INTERPRET=1 the kernels run through numpy, which rounds every operation on its own, so
the CPU tests cannot see a contracted FMA or an approximate division; this can."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
PROBE = Path(__file__).with_name("triton_ptx_probe.py")


@pytest.fixture(scope="module")
def ptx():
    # the probe runs as a script: its folder, not the checkout, is first on sys.path
    env = {**os.environ, "TRITON_INTERPRET": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PROBE.parents[1]), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(PROBE)], env=env, capture_output=True, text=True, timeout=600,
                          cwd=PROBE.parents[1])
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr:
        pytest.skip(f"triton cannot compile for CUDA here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_kernel_compiles_for_hopper(ptx):
    assert len(ptx) >= 30  # every kernel, in fp32, fp64 and bf16 and each mode
    failed = {k: v["error"] for k, v in ptx.items() if "error" in v}
    assert not failed, failed


def test_no_approximate_division_or_square_root(ptx):
    """fp32 ``/`` and ``tl.sqrt`` are approximate in compiled Triton; the penalty backward's
    coefficient and RMSprop's update must divide as the CPU kernel and torch do."""
    for name, v in ptx.items():
        assert v["approx_div"] == 0 and v["approx_sqrt"] == 0, (name, v)
    assert all(v["rn_div"] > 0 for k, v in ptx.items() if k.startswith(("scale[", "rmsprop[")) and "mode=2" not in k)


def test_interpolation_and_penalty_products_are_not_contracted(ptx):
    """``a * x + (1 - a) * y`` is two rounded products and a rounded sum in the reference and
    the CPU/CUDA kernels; an FMA (Triton's default fusion) would round once fewer."""
    for name, v in ptx.items():
        if name.startswith(("lerp", "scale[", "finalize[")):
            assert v["fma_f32_f64"] == 0, (name, v)


def test_rmsprop_fmas_only_where_torch_contracts(ptx):
    """Per element the plain step has 3 written-out FMAs (weight decay, square_avg, weight)
    and the centered momentum step 5 (plus grad_avg's lerp and the variance); a contracted
    ``buf * momentum + g / avg`` would make it 6."""
    for dt in ("fp32", "fp64", "bf16"):
        plain = ptx[f"rmsprop[{dt},centered=False,momentum=False]"]["fma_f32_f64"]
        full = ptx[f"rmsprop[{dt},centered=True,momentum=True]"]["fma_f32_f64"]
        assert plain > 0 and full * 3 == plain * 5, (dt, plain, full)
