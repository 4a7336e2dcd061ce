"""The drop-in gradient penalty inside a user's torch.compile: the README's critic
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


def small_critic():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Softplus(), torch.nn.Linear(16, 1))


def test_generator_inside_fullgraph_compile_says_pass_alpha():
    """Dynamo cannot pass a torch.Generator into a graph (torch.rand(generator=g) fails with
    "Failed to convert args/kwargs to proxy"), so generator= inside a fullgraph compile stops
    with a message that names the way that works: alpha drawn outside, passed as alpha=."""
    import torch._dynamo.config
    from torch._dynamo.exc import Unsupported

    import pyfast_gan

    critic = small_critic()

    def critic_step(real, fake, g):
        loss_d = critic(fake).mean() - critic(real).mean() + pyfast_gan.gradient_penalty(critic, real, fake,
                                                                                         generator=g)
        loss_d.backward()
        return loss_d.detach()

    with torch._dynamo.config.patch(trace_autograd_ops=True):
        torch._dynamo.reset()
        with pytest.raises(Unsupported, match=r"generator= cannot be used inside torch.compile .*draw alpha outside "
                                              r"the compiled function, alpha = torch.rand\(N, generator=g\), and "
                                              r"pass alpha=alpha"):
            torch.compile(critic_step, fullgraph=True, backend="aot_eager")(torch.randn(8, 2), torch.randn(8, 2),
                                                                             torch.Generator().manual_seed(1))
    # pyfast_gan.interpolate says the same.
    with pytest.raises(Unsupported, match="generator= cannot be used inside torch.compile"):
        torch.compile(lambda r, f, g: pyfast_gan.interpolate(r, f, generator=g)[0], fullgraph=True,
                      backend="aot_eager")(torch.randn(8, 2), torch.randn(8, 2), torch.Generator())
    torch._dynamo.reset()


def test_alpha_from_a_generator_in_a_fullgraph_compiled_step():
    """The README's way to use a torch.Generator in a compiled step: draw alpha outside and
    pass alpha=. One graph; the same loss and parameter gradients as the eager step with the
    same generator seed (the default weight and gp_weight= trace too)."""
    import torch._dynamo.config
    from torch._dynamo.testing import CompileCounterWithBackend

    import pyfast_gan

    critic = small_critic()
    eager_critic = copy.deepcopy(critic)

    def step_of(c):
        def critic_step(real, fake, alpha):
            loss_d = (c(fake).mean() - c(real).mean() + pyfast_gan.gradient_penalty(c, real, fake, alpha=alpha)
                      + pyfast_gan.gradient_penalty(c, real, fake, alpha=alpha, gp_weight=0.5))
            loss_d.backward()
            return loss_d.detach()
        return critic_step

    counter = CompileCounterWithBackend("aot_eager")
    real, fake = torch.randn(32, 2), torch.randn(32, 2)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        torch._dynamo.reset()
        compiled_step = torch.compile(step_of(critic), fullgraph=True, backend=counter)
        loss = compiled_step(real, fake, torch.rand(32, generator=torch.Generator().manual_seed(7)))
    torch._dynamo.reset()
    eager_loss = step_of(eager_critic)(real, fake, torch.rand(32, generator=torch.Generator().manual_seed(7)))
    assert counter.frame_count == 1
    t = tol(torch.float32)
    torch.testing.assert_close(loss, eager_loss, **t)
    for p, q in zip(critic.parameters(), eager_critic.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **t)
