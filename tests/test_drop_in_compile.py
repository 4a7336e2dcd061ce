"""The drop-in gradient penalty inside a user's torch.compile (issue 23): the README's critic
step, compiled with fullgraph=True, puts the project's kernels in the graph and matches the
same step run eagerly (fp32 tolerance table)."""
import copy
import functools

import pytest
import torch

from pyfast_gan import _native
from pyfast_gan.ops import gradient_norm_penalty
from pyfast_gan.step.objective import has_trace_autograd_ops
from pyfast_gan.testing import tol

pytestmark = [pytest.mark.skipif(not has_trace_autograd_ops(), reason="torch < 2.11: no trace_autograd_ops"),
              # scripts/compat.sh 2.11.0: "Unsupported Tensor.requires_grad_() call" in fullgraph
              pytest.mark.skipif(torch.__version__ < "2.12", reason="torch 2.11's dynamo refuses requires_grad_()"),
              pytest.mark.usefixtures("one_thread")]


def test_readme_compiled_critic_step_matches_eager(readme_example, monkeypatch):
    import torch._dynamo.config
    import torch._inductor.config
    from torch._inductor.compile_fx import compile_fx

    graphs = []

    def recording_inductor(gm, example_inputs):
        graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
        return compile_fx(gm, example_inputs)

    # The README's torch.compile call, with a backend that records dynamo's graph before
    # handing it to inductor; inductor draws random numbers as eager does, so alpha matches.
    # (The config modules' own patch(): monkeypatch's undo deletes their entries.)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=recording_inductor))
    with torch._inductor.config.patch(fallback_random=True), \
            torch._dynamo.config.patch(trace_autograd_ops=torch._dynamo.config.trace_autograd_ops):
        torch._dynamo.reset()
        ns = {}
        exec(readme_example("compiled_step = torch.compile(critic_step, fullgraph=True)"), ns)
        compare_with_eager(ns, graphs)


def compare_with_eager(ns, graphs):
    assert len(graphs) == 1  # one graph for the two steps: no graph break, no recompile
    ops = [t for t in graphs[0] if t.startswith("pyfast_gan.")]
    if _native.load(gradient_norm_penalty.FAMILY):
        assert ops == ["pyfast_gan.interpolate", "pyfast_gan.gradient_norm_penalty"], graphs[0]

    critic, compiled_step, step = ns["critic"], ns["compiled_step"], ns["critic_step"]
    critic.zero_grad(set_to_none=True)  # as in the README's loop: the graph was made for grad None
    eager_critic = copy.deepcopy(critic)
    real, fake = torch.randn(32, 2), torch.randn(32, 2)
    torch.manual_seed(5)
    loss = compiled_step(real, fake)
    ns["critic"] = eager_critic  # the eager step reads the global name
    torch.manual_seed(5)
    eager_loss = step(real, fake)
    assert len(graphs) == 1
    t = tol(torch.float32)
    torch.testing.assert_close(loss, eager_loss, **t)
    params = list(critic.parameters())
    # The last bias cancels out of the Wasserstein loss and the penalty: its gradient is 0.
    assert all(p.grad.abs().sum() > 0 for p in params[:-1])
    for p, q in zip(params, eager_critic.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **t)
