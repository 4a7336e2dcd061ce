"""The compiled critic step's graph rewrite (pyfast_gan/step/graph_passes.py): the double
backward's dilated weight-gradient convolution becomes ``convolution_backward``, the same sum.

Each case traces the formula's convolution with fake tensors (as inductor sees it), runs the
pass, and compares the rewritten graph with the original on fresh random inputs."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyfast_gan.step import graph_passes
from pyfast_gan.step.graph_passes import CONV_WEIGHT_GRAD_PASS

aten = torch.ops.aten
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}  # relative to max |ref|


def _formula(stride, padding, given_transposed: bool):
    """The weight gradient of conv2d(X, stride, padding) for output gradient G, written as
    PyTorch's double-backward formula writes it."""
    def f(x, g):
        gt = g if given_transposed else g.permute(1, 0, 2, 3)
        return aten.convolution(x.permute(1, 0, 2, 3), gt, None, [1, 1], [padding] * 2, [stride] * 2,
                                False, [0, 0], 1)
    return f


def _count(gm, target):
    return sum(1 for n in gm.graph.nodes if n.target is target)


# (N, C_in, C_out, H, kernel, stride, padding), every output map at least 8x8 (the pass's
# MIN_OUTPUT_PIXELS); H=18 with k=3, s=2 leaves H + 2p - k odd, H=20 makes the formula's kernel
# (H + 2p - s*(Ho - 1)) one larger than the layer's
CASES = [(4, 3, 8, 16, 4, 2, 1), (2, 5, 6, 18, 3, 2, 1), (3, 4, 4, 11, 4, 1, 0), (2, 6, 3, 20, 3, 2, 0),
         (5, 8, 1, 11, 4, 1, 0)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("given_transposed", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_weight_grad_convolution_becomes_convolution_backward(case, given_transposed, channels_last, dtype):
    n, cin, cout, h, k, s, p = case
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(n, cin, h, h, dtype=dtype).contiguous(memory_format=fmt)
    ho = (h + 2 * p - k) // s + 1
    g = torch.randn(n, cout, ho, ho, dtype=dtype).contiguous(memory_format=fmt)
    g_arg = g.permute(1, 0, 2, 3) if given_transposed else g
    f = _formula(s, p, given_transposed)
    gm = make_fx(f, tracing_mode="fake")(x, g_arg)
    assert _count(gm, aten.convolution.default) == 1
    CONV_WEIGHT_GRAD_PASS(gm.graph)
    gm.recompile()
    assert _count(gm, aten.convolution.default) == 0
    assert _count(gm, aten.convolution_backward.default) == 1
    ref = f(x, g_arg)
    got = gm(x, g_arg)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    # the weight gradient computed by autograd in float64, for the layer's own kernel k
    xd, gd = x.double().requires_grad_(False), g.double()
    w = torch.zeros(cout, cin, k, k, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(xd, w, stride=s, padding=p).backward(gd)
    exact = w.grad.transpose(0, 1)
    top = exact.abs().max().item()
    for out in (got, ref):
        assert (out[:, :, :k, :k].double() - exact).abs().max().item() <= TOL[dtype] * top
    assert (got.double() - ref.double()).abs().max().item() <= 2 * TOL[dtype] * top


def test_other_convolutions_are_left_alone():
    """A dilated convolution of a layer (no batch transpose), a transposed convolution, a
    strided one, and the formula for a layer with a 4x4 output map (where oneDNN's kernel is
    the slower one) keep their node."""
    x, w, v = torch.randn(2, 4, 12, 12), torch.randn(5, 4, 3, 3), torch.randn(2, 3, 5, 5)
    x8, g4 = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    assert (4 * 4) < graph_passes.MIN_OUTPUT_PIXELS

    def f(x, w, v, x8, g4):
        a = aten.convolution(x, w, None, [1, 1], [2, 2], [2, 2], False, [0, 0], 1)
        b = aten.convolution(x, w.transpose(0, 1), None, [1, 1], [0, 0], [1, 1], True, [0, 0], 1)
        c = aten.convolution(x.permute(1, 0, 2, 3), v.permute(1, 0, 2, 3), None, [2, 2], [0, 0], [1, 1],
                             False, [0, 0], 1)
        d = _formula(2, 1, False)(x8, g4)
        return a, b, c, d
    gm = make_fx(f, tracing_mode="fake")(x, w, v, x8, g4)
    before = gm.code
    CONV_WEIGHT_GRAD_PASS(gm.graph)
    gm.recompile()
    assert gm.code == before
    assert _count(gm, aten.convolution_backward.default) == 0


def test_benchmark_times_the_same_gradient_both_ways():
    """benchmarks/bench_weight_grad_pass.py's two rows per layer compute one weight gradient."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import bench_weight_grad_pass

    rows = bench_weight_grad_pass.main(["--no-step", "--batch", "2", "--rounds", "1", "--iters", "1",
                                        "--dtypes", "bf16", "fp32"])
    assert len(rows) == 2 * 4 * 2  # dtypes x layers x (formula, convolution_backward)
    assert {r["impl"] for r in rows} == {"reference", "convolution_backward"}
    for r in rows:
        assert r["median_ms"] > 0
        assert r["max_rel_diff"] <= (2e-2 if r["dtype"] == "bf16" else 1e-5), r
