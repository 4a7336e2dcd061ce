"""The generator's moving average as users see it: batch-norm statistics measured for the
averaged weights (not copied from the current generator), the average as the default of
``sample`` and ``evaluate`` (``--no-ema`` for the raw one), and raw samples as a tensor."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pyfast_gan.models import EMA, build_models
from pyfast_gan.models.ema import BN_BATCH_SIZE, BN_BATCHES, recompute_batch_norm

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--base", "4", "--z-dim", "8", "--batch-size", "8", "--n-critic", "1", "--no-progress",
        "--data", "digits"]


def _bn_input_stats(G: nn.Module, z_dim: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Mean over the noise batches of each batch-norm input's per-channel mean and unbiased
    variance, measured with hooks on G in train mode: what the statistics of these weights are."""
    bns = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    seen: dict[nn.Module, list] = {m: [] for m in bns}
    hooks = [m.register_forward_hook(lambda m, i, o: seen[m].append(i[0].detach())) for m in bns]
    g = torch.Generator().manual_seed(seed)
    G.train()
    with torch.no_grad():
        for _ in range(BN_BATCHES):
            G(torch.randn(BN_BATCH_SIZE, z_dim, generator=g))
    for h in hooks:
        h.remove()
    out = []
    for m in bns:
        dims = [0] + list(range(2, seen[m][0].dim()))
        means = torch.stack([x.mean(dims) for x in seen[m]])
        vars_ = torch.stack([x.var(dims, unbiased=True) for x in seen[m]])
        out.append((means.mean(0), vars_.mean(0)))
    return out


def test_ema_batch_norm_statistics_belong_to_the_averaged_weights():
    torch.manual_seed(0)
    G, _ = build_models("dcgan", image_size=32, channels=1, z_dim=16, base=8, critic_norm="layer")
    ema = EMA(G, decay=0.5)
    with torch.no_grad():  # the current generator moves far from the average
        for p in G.parameters():
            p.mul_(3.0).add_(torch.randn_like(p))
    G.train()
    for _ in range(20):  # its running statistics follow its own activations
        G(torch.randn(64, 16))
    ema.update(G)
    bns = [m for m in ema.module.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    copied = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]

    rng = torch.get_rng_state()
    avg = ema.ready(16)
    assert avg is ema.module and not avg.training  # eval mode kept
    assert torch.equal(rng, torch.get_rng_state())  # the global RNG is not touched
    want = _bn_input_stats(copy_of(ema.module), 16, seed=ema.num_updates)
    for m, (mean, var), (cm, cv) in zip(bns, want, copied):
        torch.testing.assert_close(m.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.running_var, var, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(cm, mean, rtol=1e-2, atol=1e-3)  # the copied ones did not fit
    # once per update: a second call measures nothing new, the next update measures again
    bns[0].running_mean.add_(1.0)
    ema.ready(16)
    assert torch.allclose(bns[0].running_mean, want[0][0] + 1.0)
    ema.update(G)
    ema.ready(16)
    assert not torch.allclose(bns[0].running_mean, want[0][0] + 1.0)


def copy_of(m: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(m)


def test_recompute_batch_norm_leaves_a_model_without_batch_norm_alone():
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    before = [p.clone() for p in m.state_dict().values()]
    assert recompute_batch_norm(m, 4) is False
    assert all(torch.equal(a, b) for a, b in zip(before, m.state_dict().values()))


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory) -> Path:
    from pyfast_gan.train import main

    out = tmp_path_factory.mktemp("ema") / "run"
    assert main(["--out", str(out), "--steps", "3", "--ema", "0.9", *TINY]) == 0
    return out


def _sample(argv) -> int:
    from pyfast_gan.sample import main

    return main(argv)


def test_sample_uses_the_average_by_default_and_writes_raw_tensors(ema_run, tmp_path, capsys):
    npy, pt = tmp_path / "s.npy", tmp_path / "s.pt"
    assert _sample(["--checkpoint", str(ema_run), "--n", "10", "--out", str(npy)]) == 0
    assert "moving average" in capsys.readouterr().out
    x = np.load(npy)
    assert x.shape == (10, 1, 32, 32) and x.dtype == np.float32 and -1 <= x.min() <= x.max() <= 1
    assert _sample(["--checkpoint", str(ema_run), "--n", "10", "--out", str(pt), "--ema"]) == 0
    assert torch.equal(torch.load(pt), torch.from_numpy(x))  # --ema is the default
    assert _sample(["--checkpoint", str(ema_run), "--n", "10", "--out", str(pt), "--no-ema"]) == 0
    assert "raw generator" in capsys.readouterr().out
    raw = torch.load(pt)
    assert raw.shape == (10, 1, 32, 32) and not torch.equal(raw, torch.from_numpy(x))
    # the trainer's own average, with its statistics measured as sample measures them
    from pyfast_gan.artifacts import checkpoint as ckpt_mod

    ck = ckpt_mod.load(ckpt_mod.find_checkpoint(str(ema_run)))
    G, _ = build_models("dcgan", image_size=32, channels=1, z_dim=8, base=4, critic_norm=ck["config"]["critic_norm"])
    G.load_state_dict(ck["ema"]["module"])
    recompute_batch_norm(G, 8, seed=ck["ema"]["num_updates"])
    z = torch.randn(10, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(G.eval()(z), torch.from_numpy(x))
    assert not list(tmp_path.glob(".*tmp*"))  # no temporaries left


def test_sample_errors_and_a_run_without_average(ema_run, tmp_path, capsys):
    from pyfast_gan.train import main

    plain = tmp_path / "plain"
    assert main(["--out", str(plain), "--steps", "2", "--ema", "0", *TINY]) == 0
    capsys.readouterr()
    assert _sample(["--checkpoint", str(plain), "--n", "4", "--out", str(tmp_path / "a.pt")]) == 0
    assert "raw generator" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _sample(["--checkpoint", str(plain), "--n", "4", "--out", str(tmp_path / "b.pt"), "--ema"])
    assert "no EMA generator" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _sample(["--checkpoint", str(ema_run), "--n", "4", "--out", str(tmp_path / "c.xyz")])
    err = capsys.readouterr().err
    assert ".npy" in err and ".pt" in err


def test_evaluate_scores_the_average_by_default_and_says_so(ema_run, tmp_path, capsys):
    from pyfast_gan.evaluate import main

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["--checkpoint", str(ema_run), "--n", "200", "--json", str(a), "--no-progress"]) == 0
    assert "moving average" in capsys.readouterr().out
    assert main(["--checkpoint", str(ema_run), "--n", "200", "--json", str(b), "--no-ema", "--no-progress"]) == 0
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert (ra["generator"], ra["ema"], rb["generator"], rb["ema"]) == ("ema", True, "raw", False)
    assert ra["cfid"] != rb["cfid"]


def test_ema_rampup_decay_follows_the_update_count_and_survives_a_reload():
    torch.manual_seed(1)
    model = nn.Linear(4, 3)
    ema = EMA(model, decay=0.8, rampup=True)
    expected = [p.detach().clone() for p in model.parameters()]
    decays = []
    for n in range(40):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        skip = torch.tensor(1.0 if n == 7 else 0.0)
        ema.update(model, skip=skip)
        d = min(0.8, (1 + n) / (10 + n))  # capped from n = 35
        decays.append(d)
        if n != 7:  # a skipped step leaves the average alone (and still counts)
            expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
        if n == 19:  # the count travels with the state: a reloaded average goes on identically
            state = {**ema.state_dict(), "module": {k: v.clone() for k, v in ema.module.state_dict().items()}}
            again = EMA(nn.Linear(4, 3), decay=0.5)
            again.load_state_dict(state)
            assert again.rampup and float(again.count) == 20
            ema = again
    for e, p in zip(expected, ema.module.parameters()):
        torch.testing.assert_close(p, e, atol=1e-5, rtol=1e-5)
    assert decays[0] == pytest.approx(0.1) and decays[-1] == 0.8 and ema.num_updates == 40
    fixed = EMA(model, decay=0.95)  # off by default: the decay as given from the first update
    before = [p.clone() for p in fixed.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    fixed.update(model)
    for b, e, p in zip(before, fixed.module.parameters(), model.parameters()):
        torch.testing.assert_close(e, 0.95 * b + 0.05 * p.detach(), atol=1e-6, rtol=1e-6)


def test_best_checkpoint_holds_the_best_evaluation_and_is_read_like_latest(tmp_path, capsys):
    from pyfast_gan.artifacts import checkpoint as ckpt_mod
    from pyfast_gan.evaluate import main as evaluate_main
    from pyfast_gan.train import main

    out = tmp_path / "run"
    assert main(["--out", str(out), "--steps", "5", "--eval-every", "1", "--eval-n", "200", *TINY]) == 0
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval" in r]
    assert [r["step"] for r in evals] == [1, 2, 3, 4, 5]
    best = min(evals, key=lambda r: r["eval"]["cfid"])
    ck = ckpt_mod.load(out / "checkpoints" / "best.pt")
    assert ck["step"] == best["step"]
    assert ck["best"] == {"metric": "cfid", "value": best["eval"]["cfid"], "step": best["step"]}
    assert ckpt_mod.load(out / "checkpoints" / "latest.pt")["best"] == ck["best"]
    # sample and evaluate take it as they take latest.pt
    assert _sample(["--checkpoint", str(out / "checkpoints" / "best.pt"), "--n", "4",
                    "--out", str(tmp_path / "b.npy")]) == 0
    assert f"step {best['step']}" in capsys.readouterr().out
    js = tmp_path / "b.json"
    assert evaluate_main(["--checkpoint", str(out / "checkpoints" / "best.pt"), "--n", "200",
                          "--json", str(js), "--no-progress"]) == 0
    assert json.loads(js.read_text())["step"] == best["step"]
