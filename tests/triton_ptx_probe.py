"""Compile every Triton kernel of pyfast_gan for a Hopper GPU (sm_90) on a machine without
one, and print what its PTX holds, as JSON. Run by tests/test_triton_compiled.py in a fresh
interpreter with TRITON_INTERPRET=0 (under the interpreter triton.jit gives interpreted
functions, which do not compile). Triton compiles to PTX and runs ptxas without a device, so
this shows on a CPU machine how a GPU build rounds: FMA contraction, approximate division or
square root, and whether the kernels compile at all."""
from __future__ import annotations

import json
import re
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from pyfast_gan.kernels.triton import clip_weights as cw
from pyfast_gan.kernels.triton import gradient_norm_penalty as gnp
from pyfast_gan.kernels.triton import interpolate as itp
from pyfast_gan.kernels.triton import rmsprop_clip as rms

TARGET = GPUTarget("cuda", 90, 32)
FP = {"fp32": tl.float32, "fp64": tl.float64, "bf16": tl.bfloat16, "fp16": tl.float16}


def _cases():
    for dt in ("fp32", "fp64", "bf16"):
        acc = "fp64" if dt == "fp64" else "fp32"
        comp = FP[acc]
        yield f"sumsq[{dt}]", gnp._sumsq_kernel, {"g_ptr": f"*{dt}", "part_ptr": f"*{acc}", "M": "i64", "K": "i64",
                                                 "BLOCK": "constexpr", "FP64": "constexpr"}, \
            {"BLOCK": gnp.BLOCK, "FP64": acc == "fp64"}
        for mode in (0, 1, 2):
            yield f"finalize[{acc},mode={mode}]", gnp._finalize_kernel, {
                "part_ptr": f"*{acc}", "pen_ptr": f"*{acc}", "norm_ptr": f"*{acc}", "N": "i32", "K": "i32",
                "center_bits": "i64", "MODE": "constexpr", "BN": "constexpr", "KP": "constexpr",
                "COMPUTE": "constexpr"}, {"MODE": mode, "BN": 64, "KP": 64, "COMPUTE": comp}
            yield f"scale[{dt},mode={mode}]", gnp._scale_kernel, {
                "g_ptr": f"*{dt}", "out_ptr": f"*{dt}", "gp_ptr": f"*{acc}", "norm_ptr": f"*{acc}", "M": "i64",
                "K": "i64", "center_bits": "i64", "MODE": "constexpr", "BLOCK": "constexpr", "COMPUTE": "constexpr"}, \
                {"MODE": mode, "BLOCK": gnp.BLOCK, "COMPUTE": comp}
        for rand in (False, True):
            yield f"lerp[{dt},rand={rand}]", itp._lerp_kernel, {
                "r_ptr": f"*{dt}", "f_ptr": f"*{dt}", "o_ptr": f"*{dt}", "alpha_ptr": f"*{acc}", "seed_ptr": "*i64",
                "M": "i64", "K": "i64", "BLOCK": "constexpr", "RAND": "constexpr", "FP64": "constexpr"}, \
                {"BLOCK": itp.BLOCK, "RAND": rand, "FP64": acc == "fp64"}
        yield f"lerp_backward[{dt}]", itp._lerp_backward_kernel, {
            "g_ptr": f"*{dt}", "gr_ptr": f"*{dt}", "gf_ptr": f"*{dt}", "alpha_ptr": f"*{acc}", "M": "i64", "K": "i64",
            "BLOCK": "constexpr"}, {"BLOCK": itp.BLOCK}
        yield f"clip[{dt}]", cw._clip_kernel, {
            "addr_ptr": "*i64", "numel_ptr": "*i64", "chunk_tensor_ptr": "*i64", "chunk_start_ptr": "*i64",
            "bounds_ptr": f"*{acc}", "CHUNK": "constexpr", "BLOCK": "constexpr", "DTYPE": "constexpr",
            "COMPUTE": "constexpr"}, {"CHUNK": 16384, "BLOCK": 2048, "DTYPE": FP[dt], "COMPUTE": comp}
        for centered, momentum in ((False, False), (True, True)):
            yield f"rmsprop[{dt},centered={centered},momentum={momentum}]", rms._rmsprop_clip_kernel, {
                "addr_ptr": "*i64", "numel_ptr": "*i64", "chunk_tensor_ptr": "*i64", "chunk_start_ptr": "*i64",
                "hyper_ptr": f"*{acc}", "found_ptr": "*fp32", "n_tensors": "i32", "CHUNK": "constexpr",
                "BLOCK": "constexpr", "DTYPE": "constexpr", "COMPUTE": "constexpr", "CENTERED": "constexpr",
                "MOMENTUM": "constexpr", "USE_WD": "constexpr", "MAXIMIZE": "constexpr", "LERP_SMALL": "constexpr",
                "HAS_FOUND": "constexpr"}, {
                "CHUNK": 16384, "BLOCK": 2048, "DTYPE": FP[dt], "COMPUTE": comp, "CENTERED": centered,
                "MOMENTUM": momentum, "USE_WD": True, "MAXIMIZE": False, "LERP_SMALL": True, "HAS_FOUND": True}


def main() -> int:
    want = sys.argv[1:]
    out = {}
    for name, fn, sig, consts in _cases():
        if want and not any(w in name for w in want):
            continue
        try:
            ptx = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=TARGET).asm["ptx"]
        except Exception as e:  # noqa: BLE001 - reported, the test names the kernel
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
            continue
        body = [ln.strip() for ln in ptx.splitlines()]
        out[name] = {
            "fma_f32_f64": sum(bool(re.match(r"fma\.rn(\.ftz)?\.f(32|64)", ln)) for ln in body),
            "approx_div": sum(bool(re.match(r"div\.(full|approx)", ln)) for ln in body),
            "approx_sqrt": sum(bool(re.match(r"sqrt\.approx", ln)) for ln in body),
            "rn_div": sum(bool(re.match(r"div\.rn", ln)) for ln in body),
        }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
