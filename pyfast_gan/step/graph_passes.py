"""Rewrites of the compiled critic step's graphs that inductor does not make itself.

The WGAN-GP critic step differentiates each convolution twice: the penalty's input gradient is
a ``convolution_backward`` inside the forward graph, and the step's backward differentiates that
again. PyTorch's formula for the second derivative (``_convolution_double_backward``) writes the
weight gradient of that term as a convolution of the batch-transposed input with the
batch-transposed output gradient, dilated by the stride::

    convolution(X.permute(1, 0, 2, 3), G.permute(1, 0, 2, 3), stride=1, padding=p, dilation=s)

which is the weight gradient of ``conv2d(X, stride=s, padding=p)`` for the output gradient
``G``, transposed. oneDNN runs that dilated convolution (a 16x16 or 32x32 "kernel", the batch
as channels) 3-10x slower than its own weight-gradient kernel on the same operands, and the
two transposes cost a copy each (measured on a 2-core AMX Xeon, bf16 channels_last, DCGAN-64
critic at batch 64: 23.8 ms against 3.8 ms for the 64 -> 128 layer;
``benchmarks/bench_weight_grad_pass.py`` times both per layer and the compiled step with and
without the rewrite). :class:`ConvWeightGradPass`
puts ``convolution_backward`` (weight gradient only) back in its place: the same sum, taken by
the kernel made for it.
"""
from __future__ import annotations

import contextlib
import operator

import torch

try:
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
except ImportError:  # a torch without inductor's custom-pass interface: compile without the rewrite
    CustomGraphPass, get_hash_for_files = object, None

aten = torch.ops.aten
_BATCH_TRANSPOSE = [1, 0, 2, 3]
# Rewrite only layers whose output map has at least this many pixels. oneDNN's weight-gradient
# kernel wins from 8x8 up (bf16, batch 64, 2-core AMX Xeon: 2.0x at 8x8, 6.6x at 16x16, 10x at
# 32x32) and loses on smaller maps, where the formula's dilated kernel is small (0.92x at 6x6,
# 0.49x at 5x5, 0.29x at 4x4, 0.19x at 3x3): benchmarks/bench_weight_grad_pass.py.
MIN_OUTPUT_PIXELS = 64


def _batch_transposed(node) -> torch.fx.Node | None:
    """The tensor a ``permute(t, [1, 0, 2, 3])`` node transposes, else None."""
    if (isinstance(node, torch.fx.Node) and node.target is aten.permute.default
            and list(node.args[1]) == _BATCH_TRANSPOSE):
        return node.args[0]
    return None


def _as_weight_grad(node: torch.fx.Node) -> tuple | None:
    """``(X, G.permute(1, 0, 2, 3), stride, padding, kernel)`` when ``node`` is the dilated
    weight-gradient convolution of a 2-d convolution on the CPU with an output map of at least
    ``MIN_OUTPUT_PIXELS``, else None."""
    if node.op != "call_function" or node.target is not aten.convolution.default or len(node.args) != 9:
        return None
    inp, wt, bias, stride, padding, dilation, transposed, _, groups = node.args
    # the input's batch transpose marks the formula; the output gradient's transpose is often
    # made in the forward graph and saved, so it reaches this graph as an input
    x = _batch_transposed(inp)
    if x is None or not isinstance(wt, torch.fx.Node) or bias is not None or transposed or groups != 1 \
            or list(stride) != [1, 1]:
        return None
    out, gt = node.meta.get("val"), wt.meta.get("val")
    if out is None or gt is None or out.dim() != 4 or out.device.type != "cpu" \
            or gt.shape[2] * gt.shape[3] < MIN_OUTPUT_PIXELS:
        return None
    return x, wt, list(dilation), list(padding), list(out.shape[2:])


class ConvWeightGradPass(CustomGraphPass):
    """Post-grad pass: each dilated weight-gradient convolution (see the module docstring)
    becomes ``convolution_backward(G, X, W, ..., output_mask=[False, True, False])[1]``,
    transposed back to the shape the graph expects. ``W`` only gives the kernel's shape: for
    ``kh' = H + 2p - s*(Ho - 1)`` the convolution with kernel ``kh'``, stride ``s`` and padding
    ``p`` has exactly ``Ho`` output rows, so the two sums are the same terms, always (checked
    against the graph's own result in tests/test_graph_passes.py). CPU graphs only: the CUDA
    path keeps PyTorch's formula until it is measured on a GPU."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        for node in list(graph.nodes):
            found = _as_weight_grad(node)
            if found is None:
                continue
            x, gt, stride, padding, kernel = found
            xv = x.meta["val"]
            mode = getattr(xv, "fake_mode", None) or contextlib.nullcontext()
            with graph.inserting_before(node):
                g = _batch_transposed(gt)
                if g is None:  # [1, 0, 2, 3] is its own inverse
                    g = _call(graph, mode, aten.permute.default, gt, _BATCH_TRANSPOSE)
                w = _call(graph, mode, aten.empty.memory_format, [g.meta["val"].shape[1], xv.shape[1], *kernel],
                          dtype=xv.dtype, device=xv.device, memory_format=torch.channels_last)
                grads = _call(graph, mode, aten.convolution_backward.default, g, x, w, None, stride, padding,
                              [1, 1], False, [0, 0], 1, [False, True, False])
                gw = _call(graph, mode, operator.getitem, grads, 1)
                new = _call(graph, mode, aten.permute.default, gw, _BATCH_TRANSPOSE)
            node.replace_all_uses_with(new)
            graph.erase_node(node)

    def uuid(self):
        return get_hash_for_files((__file__,))


def _call(graph: torch.fx.Graph, mode, target, *args, **kwargs) -> torch.fx.Node:
    """A new ``target(*args, **kwargs)`` node with its value: ``target`` run on the arguments'
    (fake) values under ``mode`` (inductor's lowering reads shapes, strides and dtypes)."""
    node = graph.call_function(target, args, kwargs)
    vargs, vkwargs = torch.fx.node.map_arg((args, kwargs), lambda n: n.meta["val"])
    with mode:
        node.meta["val"] = target(*vargs, **vkwargs)
    return node


CONV_WEIGHT_GRAD_PASS = ConvWeightGradPass() if get_hash_for_files is not None else None
