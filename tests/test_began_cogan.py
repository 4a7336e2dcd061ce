"""BEGAN and CoGAN: loss formulas, k_t update and clipping, weight sharing, pair
correspondence, unpaired domains, resume exactness and the command line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pyfast_gan.data import decode_all, digits_dataset
from pyfast_gan.data.cogan import TRANSFORMS, digit_domains, edges, negative
from pyfast_gan.step.objective import critic_scores
from pyfast_gan.step.step import GANStep, build_optimizers
from pyfast_gan.losses import BEGANLoss, get_loss
from pyfast_gan.metrics.cogan import correspondence_scores, pair_correspondence, shuffled
from pyfast_gan.models import build_models
from pyfast_gan.train import main
from pyfast_gan.train.plateau import PlateauDecay

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--base", "4", "--z-dim", "8", "--batch-size", "8", "--n-samples", "4", "--no-progress",
        "--log-every", "1", "--sample-every", "1000"]


def _digits(n=64):
    return decode_all(digits_dataset(32, 1))[:n].float() / 127.5 - 1


# ---- BEGAN ---------------------------------------------------------------------------------
def test_began_loss_formulas_hand_computed():
    loss = BEGANLoss()
    loss.k.fill_(0.25)
    r = torch.tensor([0.2, 0.4, 0.6], requires_grad=True)  # L(x) per sample
    f = torch.tensor([0.1, 0.3], requires_grad=True)       # L(G(z)) per sample
    c, cs = loss.critic(r, f)
    assert c.item() == pytest.approx(0.4 - 0.25 * 0.2)
    gr, gf = torch.autograd.grad(c, (r, f))
    torch.testing.assert_close(gr, torch.full((3,), 1 / 3))
    torch.testing.assert_close(gf, torch.full((2,), -0.25 / 2))
    assert cs["d_real"].item() == pytest.approx(0.4) and cs["d_fake"].item() == pytest.approx(0.2)
    g, gs = loss.generator(f)
    assert g.item() == pytest.approx(0.2) and gs["d_fake"].item() == pytest.approx(0.2)


def test_began_k_update_clipping_and_skips():
    loss = BEGANLoss(gamma=0.5, lambda_k=0.01)
    loss.k.fill_(0.5)
    no, yes = torch.tensor(0.0), torch.tensor(1.0)
    loss.after_critic({"d_real": torch.tensor(0.4)}, no)
    out = loss.after_generator({"d_fake": torch.tensor(0.1)}, no)
    # k = 0.5 + 0.01 * (0.5 * 0.4 - 0.1); M_global = 0.4 + |0.5 * 0.4 - 0.1|
    assert loss.k.item() == pytest.approx(0.501)
    assert out["k_t"].item() == pytest.approx(0.501) and out["m_global"].item() == pytest.approx(0.5)
    # a skipped critic step keeps the last applied L(x); a skipped generator step keeps k
    loss.after_critic({"d_real": torch.tensor(9.0)}, yes)
    assert loss.real.item() == pytest.approx(0.4)
    loss.after_generator({"d_fake": torch.tensor(-50.0)}, yes)
    assert loss.k.item() == pytest.approx(0.501)
    # clipped to [0, 1]
    big = BEGANLoss(lambda_k=1.0)
    big.after_critic({"d_real": torch.tensor(10.0)}, no)
    big.after_generator({"d_fake": torch.tensor(0.0)}, no)
    assert big.k.item() == 1.0
    big.after_generator({"d_fake": torch.tensor(100.0)}, no)
    assert big.k.item() == 0.0
    # state round trip
    other = BEGANLoss()
    other.load_state_dict(loss.state_dict())
    assert other.k.item() == loss.k.item() and other.real.item() == loss.real.item()


def test_began_critic_is_the_per_sample_reconstruction_error():
    G, D = build_models("began", image_size=32, channels=1, z_dim=8, base=4, embed=6)
    x = _digits(5)
    out = D(x)
    assert out.shape == (5,) and out.dtype == torch.float32
    torch.testing.assert_close(out, (x - D.reconstruct(x)).abs().mean(dim=(1, 2, 3)))
    assert D.encoder.fc.out_features == 6 and D.decoder.fc.in_features == 6
    kinds = {type(m).__name__ for m in D.modules()}
    assert {"ELU", "Upsample"} <= kinds and "BatchNorm2d" not in kinds
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.kernel_size == (3, 3) for m in convs)
    assert all(m.mode == "nearest" for m in D.modules() if isinstance(m, torch.nn.Upsample))
    assert G(torch.randn(3, 8)).shape == (3, 1, 32, 32)


def test_began_step_moves_k_by_the_formula():
    G, D = build_models("began", image_size=32, channels=1, z_dim=8, base=4)
    loss = get_loss("began", gamma=0.5, lambda_k=0.5)
    og, od, _ = build_optimizers(G, D, loss=loss, optimizer="adam", lr=1e-4, betas=(0.5, 0.999))
    step = GANStep(G, D, og, od, loss, z_dim=8)
    assert step.objective.loss_fn is loss and step.gen_objective.loss_fn is loss
    k0 = loss.k.clone()
    cs = step.critic_step(_digits(8))
    gs = step.generator_step(8)
    want = (k0 + 0.5 * (0.5 * cs["d_real"] - gs["g_d_fake"])).clamp(0, 1)
    torch.testing.assert_close(gs["k_t"], want)
    torch.testing.assert_close(gs["m_global"], cs["d_real"] + (0.5 * cs["d_real"] - gs["g_d_fake"]).abs())
    assert step.loss_state_dict()["k"].item() == pytest.approx(float(want))
    # a non-finite real batch is skipped and leaves the stored L(x) as it was
    before = loss.real.clone()
    bad = _digits(8)
    bad[0, 0, 0, 0] = float("nan")
    assert step.critic_step(bad)["skipped"].item() == 1.0
    torch.testing.assert_close(loss.real, before)


def test_plateau_decay_halves_on_a_stall():
    p = PlateauDecay(2, "cpu")
    for m in (1.0, 0.8):
        p.observe(torch.tensor(m))
    assert not p.end_window() and p.best == pytest.approx(0.9)
    p.observe(torch.tensor(0.5))
    p.observe(torch.tensor(float("nan")))  # a skipped step: not counted
    assert not p.end_window() and p.best == pytest.approx(0.5)
    p.observe(torch.tensor(0.7))
    assert p.end_window() and p.scale == 0.5
    q = PlateauDecay(2, "cpu")
    q.load_state_dict(p.state_dict())
    assert (q.best, q.scale) == (p.best, p.scale)


# ---- CoGAN ---------------------------------------------------------------------------------
def test_cogan_loss_is_the_mean_of_the_domains_gan_losses():
    sp = torch.nn.functional.softplus
    r = torch.tensor([1.0, -2.0, 0.5, 3.0])  # sample-major: A_0, B_0, A_1, B_1
    f = torch.tensor([-1.0, 0.0, 2.0, -0.5])
    c, _ = get_loss("cogan").critic(r, f)
    per_domain = [sp(-r[d::2]).mean() + sp(f[d::2]).mean() for d in (0, 1)]
    assert c.item() == pytest.approx(sum(per_domain).item() / 2, rel=1e-6)
    g, _ = get_loss("cogan").generator(f)
    assert g.item() == pytest.approx(sum(sp(-f[d::2]).mean() for d in (0, 1)).item() / 2, rel=1e-6)


def test_cogan_weights_are_shared_and_get_gradients_from_both_domains():
    G, D = build_models("cogan", image_size=32, channels=1, z_dim=8, base=4, critic_norm="batch")
    params = list(G.parameters())
    assert len(params) == len({id(p) for p in params})
    shared = next(G.shared.parameters())
    heads = (G.head_a[0].weight, G.head_b[0].weight)
    assert heads[0] is not heads[1]
    z = torch.randn(4, 8)
    grads = []
    for d in (0, 1):
        G.zero_grad()
        G(z)[:, d:d + 1].square().sum().backward()
        grads.append(shared.grad.clone())
        assert heads[d].grad.abs().sum() > 0
        assert heads[1 - d].grad is None or heads[1 - d].grad.abs().sum() == 0
    assert all(g.abs().sum() > 0 for g in grads)
    G.zero_grad()
    G(z).square().sum().backward()
    torch.testing.assert_close(shared.grad, grads[0] + grads[1], rtol=1e-4, atol=1e-6)

    x = torch.cat([_digits(4), negative(_digits(4))], dim=1)
    shared_d = list(D.shared.parameters())[0]
    for d, stem in ((0, D.stem_a), (1, D.stem_b)):
        D.zero_grad()
        D(x)[d::2].sum().backward()
        assert shared_d.grad.abs().sum() > 0 and stem.weight.grad.abs().sum() > 0
        other = D.stem_b if d == 0 else D.stem_a
        assert other.weight.grad is None or other.weight.grad.abs().sum() == 0


def test_cogan_scores_split_real_and_fake_in_one_forward():
    _, D = build_models("cogan", image_size=32, channels=1, z_dim=8, base=4, critic_norm="none")
    real = torch.cat([_digits(3), negative(_digits(3))], dim=1)
    fake = torch.rand(3, 2, 32, 32) * 2 - 1
    r, f = critic_scores(D, real, fake, concat=True)
    torch.testing.assert_close(r, D(real), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f, D(fake), rtol=1e-5, atol=1e-6)
    assert r.shape == (6,)


def test_correspondence_perfect_pairs_and_shuffled_baseline():
    a = _digits(200)
    for name, t in TRANSFORMS.items():
        assert pair_correspondence(a, t(a), t) == 1.0
        s = correspondence_scores(a, t(a), t, seed=1)
        assert s["paired"] == 1.0 and s["shuffled"] < 0.95
        # near chance: another random pairing gives about the same agreement
        other = pair_correspondence(a, t(a)[torch.randperm(200, generator=torch.Generator().manual_seed(5))], t)
        assert abs(s["shuffled"] - other) < 0.03, name
    p = shuffled(50, 3)
    assert sorted(p.tolist()) == list(range(50)) and not (p == torch.arange(50)).any()


def test_digit_domains_are_disjoint_halves_and_transformed():
    x = decode_all(digits_dataset(32, 1))
    a, b = digit_domains(x, "negative", seed=4)
    assert a.shape[0] + b.shape[0] == x.shape[0]
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(4))
    half = x.shape[0] // 2
    assert torch.equal(a, x[perm[:half].sort().values])
    assert torch.equal(b, 255 - x[perm[half:].sort().values])
    _, e = digit_domains(x, "edges", seed=4)
    assert set(e.unique().tolist()) == {0, 255}
    assert torch.equal(e, ((edges(x[perm[half:].sort().values].float() / 127.5 - 1) + 1) * 127.5).to(torch.uint8))


# ---- trainer -------------------------------------------------------------------------------
def _ck(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "latest.pt", weights_only=False)


def _same(a, b, where=""):
    if torch.is_tensor(a):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("args", [
    ["--loss", "began", "--began-lambda-k", "0.05", "--lr-decay", "plateau", "--plateau-steps", "3"],
    ["--loss", "cogan", "--cogan-domain", "edges"],
], ids=["began", "cogan"])
def test_resume_is_bitwise_exact(tmp_path, args):
    full, part = tmp_path / "full", tmp_path / "part"
    assert main([*args, *TINY, "--steps", "8", "--out", str(full)]) == 0
    assert main([*args, *TINY, "--steps", "4", "--out", str(part)]) == 0
    assert main(["--resume", str(part), "--steps", "8", "--no-progress"]) == 0
    ca, cb = _ck(full), _ck(part)
    assert ca["step"] == cb["step"] == 8
    for key in ("G", "D", "opt_g", "opt_d", "data", "loss_state", "plateau"):
        _same(ca[key], cb[key], key)
    if args[1] == "began":
        assert ca["loss_state"]["k"].item() > 0  # k moved, so its resume was tested
        assert ca["plateau"]["best"] < float("inf")
    else:
        assert ca["data"]["kind"] == "pair"


def test_began_cli_logs_k_and_m_global_and_plots(tmp_path):
    out = tmp_path / "b"
    assert main(["--loss", "began", *TINY, "--steps", "3", "--sample-every", "3", "--out", str(out)]) == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "loss_d" in r]
    assert len(train) == 3 and all(0 <= r["k_t"] <= 1 and r["m_global"] > 0 for r in train)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["arch"], cfg["lr"], cfg["n_critic"], cfg["began_gamma"]) == ("began", 1e-4, 1, 0.5)
    assert (out / "plots" / "losses.png").stat().st_size > 1000
    assert (out / "samples" / "step_000003.png").is_file()


def test_cogan_cli_sample_grid_shows_pairs(tmp_path):
    from PIL import Image

    out = tmp_path / "c"
    assert main(["--loss", "cogan", *TINY, "--steps", "2", "--sample-every", "2", "--out", str(out)]) == 0
    ck = _ck(out)
    assert ck["config"]["arch"] == "cogan" and ck["config"]["channels"] == 1
    img = Image.open(out / "samples" / "step_000002.png")
    assert img.mode == "L" and img.width > 2 * img.height  # 4 pairs = 8 images in one row of 16 slots


@pytest.mark.parametrize("loss", ["began", "cogan"])
def test_presets_fill_only_unset_fields_on_digits(loss):
    from pyfast_gan.losses import PRESETS
    from pyfast_gan.train.config import DIGITS_DEFAULTS, parse_args, resolve

    r = resolve(*parse_args(["--loss", loss, "--lr", "3e-3"]), cuda_available=False)
    assert r.lr == 3e-3
    for k, v in PRESETS[loss].items():
        if k != "lr" and k not in DIGITS_DEFAULTS:
            assert getattr(r, k) == (tuple(v) if isinstance(v, (list, tuple)) else v), (loss, k)


@pytest.mark.parametrize("argv,match", [
    (["--loss", "began", "--data", "8gaussians"], "image models only"),
    (["--loss", "began", "--arch", "dcgan"], "own networks"),
    (["--loss", "dcgan", "--arch", "cogan"], "go with --loss cogan"),
    (["--loss", "dcgan", "--lr-decay", "plateau"], "--loss began only"),
    (["--loss", "began", "--began-gamma", "0"], "--began-gamma"),
    (["--loss", "began", "--began-k0", "1.5"], "--began-k0"),
    (["--loss", "began", "--began-k0", "-0.1"], "--began-k0"),
    (["--loss", "began", "--began-k0", "nan"], "--began-k0"),
])
def test_bad_combinations_are_clear_errors(tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path / "x"), "--steps", "1", "--no-progress"])
    assert match in capsys.readouterr().err


def test_began_k0_starts_the_balance_term(tmp_path):
    """--began-k0: the first step's k_t is k_0 moved once by the formula (so k_0 was used,
    not 0), from the step's own logged L(x) and L(G(z_G))."""
    out = tmp_path / "k0"
    k0, gamma, lam = 0.3, 0.5, 0.01
    assert main(["--loss", "began", *TINY, "--steps", "2", "--log-every", "1", "--began-k0", str(k0),
                 "--began-lambda-k", str(lam), "--out", str(out)]) == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "loss_d" in x]
    first = recs[0]
    want = min(max(k0 + lam * (gamma * first["d_real"] - first["g_d_fake"]), 0.0), 1.0)
    assert first["k_t"] == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert abs(first["k_t"] - k0) < 0.05 and first["k_t"] > 0.2
    assert json.loads((out / "config.json").read_text())["began_k0"] == k0


@pytest.mark.slow
def test_began_compiled_step_reads_the_current_k():
    """--compile with BEGAN (about a minute of inductor compilation on 2 cores): both
    objectives compile, every critic loss is L(x) - k_t L(G(z_D)) with the k_t of that very
    step (k_t moves every step here, so a value frozen into the graph would show), and the
    k_t trajectory matches eager's within float reassociation."""
    from pyfast_gan.train.config import parse_args, resolve
    from pyfast_gan.train.run import build

    def run(*extra):
        cfg, explicit = parse_args(["--loss", "began", *TINY, "--began-k0", "0.2", "--began-lambda-k", "0.05",
                                    *extra])
        return build(resolve(cfg, explicit, cuda_available=False))

    trajectories = []
    for r in (run(), run("--compile")):
        B, ks = r.cfg.batch_size, []
        for _ in range(3):
            k_before = float(r.step.loss_fn.k)
            s = r.step.critic_step(r.batcher.next(B))
            assert float(s["loss_d"]) == pytest.approx(float(s["d_real"]) - k_before * float(s["d_fake"]),
                                                       rel=1e-5, abs=1e-6)
            r.step.generator_step(B)
            ks.append(float(r.step.loss_fn.k))
        assert len(set(ks)) == 3 and ks[0] != 0.2
        trajectories.append(ks)
    assert r.step.objective.mode == "compile", r.step.objective.fallback_reason
    assert trajectories[1] == pytest.approx(trajectories[0], abs=1e-4)
