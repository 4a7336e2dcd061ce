import copy

import pytest
import torch
from torch import nn

from pyfast_gan.models import (
    CRITIC_NORMS,
    EMA,
    DCGANCritic,
    DCGANGenerator,
    MLPCritic,
    MLPGenerator,
    ResNetCritic,
    ResNetGenerator,
    build_models,
    init_dcgan_weights,
)

SIZES = [32, 64, 96, 128]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_shapes_and_range(size, channels):
    G = DCGANGenerator(size, channels, z_dim=16, base=8)
    D = DCGANCritic(size, channels, base=8)
    z = torch.randn(3, 16) * 3  # large z pushes the tanh towards its limits
    x = G(z)
    assert x.shape == (3, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0
    out = D(x)
    assert out.shape == (3,) and torch.isfinite(out).all()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("channels", [1, 3])
def test_resnet_shapes_and_range(size, channels):
    G = ResNetGenerator(size, channels, z_dim=16, base=8)
    D = ResNetCritic(size, channels, base=8)
    x = G(torch.randn(2, 16))
    assert x.shape == (2, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    out = D(x)
    assert out.shape == (2,) and torch.isfinite(out).all()


def test_resnet_paper_shape_at_32():
    # gan_cifar_resnet.py: Linear(128 -> 4*4*128), three up blocks; critic: first block,
    # one down block, two plain blocks, Linear(128 -> 1).
    G, D = ResNetGenerator(), ResNetCritic()
    assert G.fc.in_features == 128 and G.fc.out_features == 4 * 4 * 128 and len(G.blocks) == 3
    assert len(D.blocks) == 4 and D.fc.in_features == 128
    assert [getattr(b, "down", True) for b in D.blocks] == [True, True, False, False]


@pytest.mark.parametrize("norm", CRITIC_NORMS)
@pytest.mark.parametrize("cls", [DCGANCritic, ResNetCritic])
def test_every_critic_norm(norm, cls):
    D = cls(32, 3, base=8, norm=norm)
    x = torch.randn(4, 3, 32, 32)
    out = D(x)
    assert out.shape == (4,)
    kinds = {type(m) for m in D.modules()}
    if norm == "batch":
        assert nn.BatchNorm2d in kinds
    else:
        assert nn.BatchNorm2d not in kinds
        if norm != "none":
            assert nn.GroupNorm in kinds
            # Per-sample norms: one sample's score must not depend on the rest of the batch,
            # which the gradient penalty needs.
            torch.testing.assert_close(D(x[:1]), out[:1], atol=1e-5, rtol=1e-5)
        else:
            assert nn.GroupNorm not in kinds


@pytest.mark.parametrize("norm", ["layer", "instance"])
def test_group_norms_normalise_as_named(norm):
    D = DCGANCritic(32, 3, base=8, norm=norm)
    gn = next(m for m in D.modules() if isinstance(m, nn.GroupNorm))
    x = torch.randn(2, gn.num_channels, 5, 7) * 3 + 1
    with torch.no_grad():
        gn.weight.fill_(1.0)
        gn.bias.zero_()
    y = gn(x)
    dims = (1, 2, 3) if norm == "layer" else (2, 3)
    mu = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    torch.testing.assert_close(y, (x - mu) / torch.sqrt(var + gn.eps), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("norm", ["layer", "instance"])
def test_critic_norm_double_backward(norm):
    # WGAN-GP differentiates the critic's input gradient: the norms need a correct double
    # backward. A small block keeps the numerical check cheap.
    D = DCGANCritic(32, 3, base=2, norm=norm)
    i = next(i for i, m in enumerate(D.net) if isinstance(m, nn.GroupNorm))
    block = nn.Sequential(D.net[i], nn.LeakyReLU(0.2)).double()
    x = torch.randn(2, block[0].num_channels, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(block, (x,), nondet_tol=0.0)


@pytest.mark.parametrize("norm", CRITIC_NORMS)
def test_resnet_critic_gradient_penalty_backward(norm):
    D = ResNetCritic(32, 3, base=8, norm=norm)
    x = torch.randn(3, 3, 32, 32, requires_grad=True)
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    gp = ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()
    gp.backward()
    # A bias feeding a ReLU changes the input gradient only through the (piecewise constant)
    # ReLU mask, and the output bias not at all: biases may get zero or no gradient.
    for name, p in D.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
        if name.endswith("weight") and p.dim() > 1:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_model_args():
    with pytest.raises(ValueError, match="image_size"):
        DCGANGenerator(48, 3)
    with pytest.raises(ValueError, match="channels"):
        DCGANCritic(32, 2)
    with pytest.raises(ValueError, match="norm"):
        DCGANCritic(32, 3, norm="spectral")
    with pytest.raises(ValueError, match="norm"):
        ResNetCritic(32, 3, norm="group")
    with pytest.raises(ValueError, match="image_size"):
        ResNetGenerator(100, 3)
    with pytest.raises(ValueError, match="hidden"):
        MLPCritic(hidden=0)


def test_dcgan_init_statistics():
    torch.manual_seed(1)
    G = DCGANGenerator(64, 3, z_dim=100, base=32)
    D = DCGANCritic(64, 3, base=32, norm="batch")
    conv_w = torch.cat(
        [m.weight.flatten() for M in (G, D) for m in M.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    )
    bn_w = torch.cat([m.weight for M in (G, D) for m in M.modules() if isinstance(m, nn.BatchNorm2d)])
    biases = [m.bias for M in (G, D) for m in M.modules() if getattr(m, "bias", None) is not None]
    assert conv_w.numel() > 100_000
    assert abs(conv_w.mean().item()) < 1e-3 and abs(conv_w.std().item() - 0.02) < 1e-3
    assert abs(bn_w.mean().item() - 1.0) < 0.01 and abs(bn_w.std().item() - 0.02) < 0.01
    assert biases and all((b == 0).all() for b in biases)
    # init_dcgan_weights also covers group norms and linear layers.
    m = nn.Sequential(nn.Linear(300, 400), nn.GroupNorm(1, 400))
    init_dcgan_weights(m)
    assert abs(m[0].weight.std().item() - 0.02) < 1e-3 and (m[0].bias == 0).all()
    assert abs(m[1].weight.mean().item() - 1.0) < 0.01 and 0.01 < m[1].weight.std().item() < 0.03


def test_models_channels_last_and_deterministic():
    G = DCGANGenerator(32, 3, z_dim=8, base=8)
    D = DCGANCritic(32, 3, base=8, norm="layer")
    z = torch.randn(4, 8)
    x = G(z)
    G2 = copy.deepcopy(G).to(memory_format=torch.channels_last)
    D2 = copy.deepcopy(D).to(memory_format=torch.channels_last)
    x2 = G2(z)
    torch.testing.assert_close(x2, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(D2(x.contiguous(memory_format=torch.channels_last)), D(x), atol=1e-5, rtol=1e-5)
    assert torch.equal(G(z), x)  # same input, same output (eval of BN stats aside)


def test_mlps():
    G, D = MLPGenerator(), MLPCritic()
    z = torch.randn(10, 2)
    assert G(z).shape == (10, 2) and D(G(z)).shape == (10,)
    # WGAN-GP toy: 3 hidden ReLU layers of 512.
    lin = [m for m in D.modules() if isinstance(m, nn.Linear)]
    assert [l.out_features for l in lin] == [512, 512, 512, 1]
    assert sum(isinstance(m, nn.ReLU) for m in G.modules()) == 3


def test_build_models():
    G, D = build_models("dcgan", image_size=64, channels=1, z_dim=32, base=8, critic_norm="layer")
    assert isinstance(G, DCGANGenerator) and isinstance(D, DCGANCritic) and D.norm == "layer"
    assert G(torch.randn(2, 32)).shape == (2, 1, 64, 64)
    G, D = build_models("resnet", image_size=32, channels=3, z_dim=16, base=8, critic_norm="none")
    assert isinstance(G, ResNetGenerator) and isinstance(D, ResNetCritic)
    G, D = build_models("mlp", z_dim=2, base=16)
    assert isinstance(G, MLPGenerator) and isinstance(D, MLPCritic)
    assert [m.out_features for m in D.modules() if isinstance(m, nn.Linear)] == [16, 16, 16, 1]
    with pytest.raises(ValueError, match="arch"):
        build_models("vit", image_size=32, channels=3)


def test_ema_skip_flag_freezes_the_average():
    model = nn.Linear(4, 3)
    ema = EMA(model, decay=0.9)
    before = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    ema.update(model, skip=torch.tensor(1.0))
    assert all(torch.equal(a, b) for a, b in zip(before, ema.module.parameters()))
    ema.update(model, skip=torch.tensor(0.0))
    for b, e, p in zip(before, ema.module.parameters(), model.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p.detach(), atol=1e-6, rtol=1e-6)


def test_ema_update_math():
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3))
    ema = EMA(model, decay=0.9)
    assert all(not p.requires_grad for p in ema.module.parameters())
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()
        model(torch.randn(6, 5))  # moves the batch-norm running stats
        ema.update(model)
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, model.parameters())]
    for e, p in zip(expected, ema.module.parameters()):
        torch.testing.assert_close(p, e, atol=1e-6, rtol=1e-6)
    for eb, b in zip(ema.module.buffers(), model.buffers()):
        assert torch.equal(eb, b)
    assert ema.num_updates == 3
    # The source model is untouched and the copy is independent.
    assert all(p.requires_grad for p in model.parameters())

    state = copy.deepcopy(ema.state_dict())
    ema2 = EMA(nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3)), decay=0.5)
    ema2.load_state_dict(state)
    assert ema2.decay == 0.9 and ema2.num_updates == 3
    for a, b in zip(ema2.module.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.5)


# ---- the critic's activation: nn.LeakyReLU eagerly, mask-free when compiled for the CPU ----


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_leaky_relu_is_nn_leaky_relu_eagerly(dtype):
    from pyfast_gan.models._common import LeakyReLU

    x = torch.randn(4, 8, 5, 5, dtype=dtype)
    for slope in (0.2, 0.01):
        assert torch.equal(LeakyReLU(slope)(x.clone()), nn.LeakyReLU(slope)(x.clone()))
        y = x.clone()
        LeakyReLU(slope, inplace=True)(y)
        assert torch.equal(y, nn.functional.leaky_relu(x, slope))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 4, 6, 6), (2, 16, 8, 8), (5, 7)])
def test_leaky_relu_compiled_matches_eager_to_the_double_backward(dtype, shape):
    """Values, input gradient and the gradient of that gradient's norm (the WGAN-GP critic's
    double backward) of the compiled activation against nn.LeakyReLU, within the dtype's
    tolerance; random inputs (no exact zeros, where the two slopes' mean is taken)."""
    from pyfast_gan.models._common import LeakyReLU
    from pyfast_gan.testing import tol

    torch._dynamo.reset()
    w = torch.randn(shape[-1], dtype=dtype)

    def value_and_penalty(act, x):
        y = act(x * w)
        (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        return y, g.square().sum()

    def run(fn, x):
        x = x.clone().requires_grad_()
        y, pen = fn(x)
        return y, pen, torch.autograd.grad(pen, x)[0]  # the backward through the input gradient

    x = torch.randn(shape, dtype=dtype)
    # as the trainer compiles its critic loss: dynamo traces the inner autograd.grad
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        got = run(torch.compile(lambda x: value_and_penalty(LeakyReLU(0.2), x), fullgraph=True), x)
    want = run(lambda x: value_and_penalty(nn.LeakyReLU(0.2), x), x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol(dtype))


def test_leaky_relu_compiled_float64_gradcheck():
    """float64 gradcheck of the compiled activation and of a penalty on its input gradient
    (what the WGAN-GP critic differentiates), both compiled as the trainer compiles them."""
    from pyfast_gan.models._common import LeakyReLU

    torch._dynamo.reset()
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    x = (x + 0.1 * x.sign()).requires_grad_()  # away from the kink at 0, where finite differences mislead

    def penalty(x):
        (g,) = torch.autograd.grad(LeakyReLU(0.2)(x * x).sum(), x, create_graph=True)
        return g.square().sum()

    assert torch.autograd.gradcheck(torch.compile(LeakyReLU(0.2)), (x,))
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        assert torch.autograd.gradcheck(torch.compile(penalty, fullgraph=True), (x,))


def test_compiled_critic_step_stores_no_bool_mask():
    """The DCGAN critic's forward and backward, compiled for the CPU, keep no bool tensor for
    the backward (inductor's CPU kernels write bool masks an order of magnitude slower than
    the arithmetic around them); with nn.LeakyReLU they do, so the check can fail."""
    from torch._inductor.utils import run_and_get_code

    def kernels_with_bool(D):
        torch._dynamo.reset()
        x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
        D = D.to(memory_format=torch.channels_last)

        def loss(x):  # a critic value and a penalty on its input gradient, as WGAN-GP's critic step
            with torch.autocast("cpu", torch.bfloat16):
                out = D(x).float()
            (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
            return out.mean() + g.square().sum()

        with torch._dynamo.config.patch(trace_autograd_ops=True):
            compiled = torch.compile(loss, fullgraph=True)
            _, codes = run_and_get_code(lambda: compiled(x).backward())
        return sum(code.count("bool*") for code in codes)

    torch.manual_seed(0)
    D = DCGANCritic(32, 3, base=8, norm="layer")
    plain = copy.deepcopy(D)
    for i, m in enumerate(plain.net):
        if type(m).__name__ == "LeakyReLU":
            plain.net[i] = nn.LeakyReLU(0.2, inplace=True)
    assert kernels_with_bool(plain) > 0  # the check sees masks where they exist
    assert kernels_with_bool(D) == 0


# ---- the critic's Conv2d: nn.Conv2d eagerly; im2col + GEMM for small bf16 layers when compiled ----


@pytest.mark.parametrize("k,stride,pad,size,bias", [(4, 2, 1, 8, False), (4, 2, 1, 9, True), (3, 1, 1, 5, True),
                                                     (4, 1, 0, 4, True), (2, 2, 0, 6, False)])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_conv2d_gemm_is_conv2d_to_the_double_backward(k, stride, pad, size, bias, layout):
    """float64: values against F.conv2d, gradcheck and gradgradcheck (the penalty differentiates
    the critic's input gradient)."""
    from pyfast_gan.models._common import conv2d_gemm

    mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 5, size, size, dtype=torch.float64).contiguous(memory_format=mf).requires_grad_()
    w = torch.randn(6, 5, k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True) if bias else None
    want = nn.functional.conv2d(x, w, b, stride, pad)
    got = conv2d_gemm(x, w, b, stride, pad)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    args = (x, w) if b is None else (x, w, b)
    f = (lambda x, w: conv2d_gemm(x, w, None, stride, pad)) if b is None else \
        (lambda x, w, b: conv2d_gemm(x, w, b, stride, pad))
    assert torch.autograd.gradcheck(f, args) and torch.autograd.gradgradcheck(f, args)


def test_conv2d_chooses_gemm_only_for_small_bf16_layers():
    from pyfast_gan.models._common import Conv2d

    small, wide = Conv2d(256, 512, 4, 2, 1), Conv2d(128, 256, 4, 2, 1)
    x8, x16 = torch.randn(2, 256, 8, 8), torch.randn(2, 128, 16, 16)
    assert not small.uses_gemm(x8)  # fp32 keeps the convolution
    with torch.autocast("cpu", torch.bfloat16):
        assert small.uses_gemm(x8)
        assert not wide.uses_gemm(x16)  # 8x8 output: oneDNN is faster there
        assert not small.uses_gemm(torch.randn(2, 256, 16, 16))
    assert Conv2d(256, 1, 4, 1, 0).uses_gemm(torch.randn(2, 256, 4, 4, dtype=torch.bfloat16))
    eager = Conv2d(256, 512, 4, 2, 1)
    plain = nn.Conv2d(256, 512, 4, 2, 1)
    plain.load_state_dict(eager.state_dict())
    with torch.autocast("cpu", torch.bfloat16):  # eagerly it is nn.Conv2d, bit for bit
        assert torch.equal(eager(x8), plain(x8))


def test_compiled_bf16_conv2d_runs_as_a_gemm_and_matches_eager():
    """Compiled under bf16 autocast, the small layer has no convolution left in its generated
    code (a matrix product instead), and its value, input gradient and the penalty's
    parameter gradients match the eager convolution within the bf16 tolerance."""
    from torch._inductor.utils import run_and_get_code

    from pyfast_gan.models._common import Conv2d
    from pyfast_gan.testing import tol

    torch.manual_seed(0)
    conv = Conv2d(256, 32, 4, 2, 1).to(memory_format=torch.channels_last)
    x = torch.randn(3, 256, 8, 8).contiguous(memory_format=torch.channels_last)

    def loss(x):
        with torch.autocast("cpu", torch.bfloat16):
            y = conv(x)
        (g,) = torch.autograd.grad(y.float().square().sum(), x, create_graph=True)
        return y, g.square().sum()

    def run(fn):
        conv.zero_grad()
        xx = x.clone().requires_grad_()
        y, pen = fn(xx)
        pen.backward()
        return y.float(), pen, conv.weight.grad.clone(), conv.bias.grad.clone()

    torch._dynamo.reset()
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled = torch.compile(loss, fullgraph=True)
        got, codes = run_and_get_code(lambda: run(compiled))
    code = "\n".join(codes)
    assert "convolution" not in code and "mm" in code
    want = run(loss)
    for a, b in zip(got, want):
        scale = b.abs().max().item()
        torch.testing.assert_close(a / scale, b / scale, **tol(torch.bfloat16))
