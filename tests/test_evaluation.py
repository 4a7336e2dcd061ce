"""Sample-quality evaluation: the digits classifier and its scores, the Evaluator, the
``python -m pyfast_gan.evaluate`` CLI, the trainer's --eval-every and the comparison study."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pyfast_gan.data import ToySampler
from pyfast_gan.metrics.digits_classifier import (
    DigitsClassifier,
    cache_dir,
    classifier_scores,
    digits_with_labels,
    load_digits_classifier,
    split_indices,
    to_classifier_input,
)
from pyfast_gan.metrics.evaluator import Evaluator, applicable

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clf() -> DigitsClassifier:
    return load_digits_classifier(progress=False)  # trained once per session (conftest's cache)


# ---- the classifier ---------------------------------------------------------------------------
def test_classifier_accuracy_on_held_out_digits(clf):
    images, labels = digits_with_labels()
    tr, te = split_indices(labels)
    assert len(set(tr.tolist()) & set(te.tolist())) == 0 and len(tr) + len(te) == 1797
    # the split is stratified: every class is in the test part in proportion
    assert torch.bincount(labels[te], minlength=10).min() >= 30
    _, probs = clf.features_and_probs(images[te])
    acc = (probs.argmax(1) == labels[te]).double().mean().item()
    assert acc >= 0.95
    assert math.isclose(acc, clf.test_accuracy, abs_tol=1e-12)


@pytest.mark.slow
def test_classifier_cache_is_reused_and_a_corrupt_file_retrained(clf, capsys):
    files = list(cache_dir().glob("digits_classifier_*.pt"))
    assert len(files) == 1
    again = load_digits_classifier(progress=False)
    assert again.test_accuracy == clf.test_accuracy
    for a, b in zip(again.net.state_dict().values(), clf.net.state_dict().values()):
        assert torch.equal(a, b)
    saved = files[0].read_bytes()
    try:
        files[0].write_bytes(b"not a checkpoint")
        fresh = load_digits_classifier(progress=False)
        assert "ignoring unreadable classifier cache" in capsys.readouterr().err
        assert fresh.test_accuracy >= 0.95
    finally:
        files[0].write_bytes(saved)


def test_classifier_scores_on_real_digits_one_class_and_noise(clf):
    images, labels = digits_with_labels()
    _, te = split_indices(labels)
    real = clf.score(images[te])
    assert real["classes_covered"] == 10 and real["kl_uniform"] < 0.01 and real["is_score"] > 8.5
    assert real["cfid"] < 20
    threes = clf.score(images[labels == 3])
    assert threes["classes_covered"] == 1 and threes["kl_uniform"] > 2.0 and threes["is_score"] < 1.5
    assert threes["cfid"] > 10 * real["cfid"]
    noise = clf.score(torch.rand(300, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert noise["cfid"] > 10 * real["cfid"] and noise["is_score"] < 3


def test_classifier_scores_formulas_on_constructed_probabilities():
    k = 10
    feats = torch.randn(400, 4, dtype=torch.float64)
    mu, sigma = feats.mean(0).numpy(), np.cov(feats.numpy().T)
    # confident and balanced: IS = K, KL = 0, all classes
    onehot = torch.eye(k, dtype=torch.float64).repeat(40, 1)
    r = classifier_scores(feats, onehot, mu, sigma)
    assert math.isclose(r["is_score"], k, rel_tol=1e-12) and r["kl_uniform"] == pytest.approx(0, abs=1e-12)
    assert r["classes_covered"] == k and r["class_counts"] == [40] * k
    # uniform predictions: IS = 1
    r = classifier_scores(feats, torch.full((400, k), 1 / k, dtype=torch.float64), mu, sigma)
    assert math.isclose(r["is_score"], 1.0, rel_tol=1e-12)
    # two classes 300/100: KL from uniform = sum p log(p K); 3 samples of a third class are
    # below 10% of a uniform share (ceil(0.1 * 403 / 10) = 5) and do not count as covered
    p = torch.zeros(403, k, dtype=torch.float64)
    p[:300, 0] = 1
    p[300:400, 1] = 1
    p[400:, 2] = 1
    r = classifier_scores(torch.randn(403, 4, dtype=torch.float64), p, mu, sigma)
    h = np.array([300, 100, 3]) / 403
    assert r["kl_uniform"] == pytest.approx(float(np.sum(h * np.log(h * k))), rel=1e-12)
    assert r["classes_covered"] == 2
    # IS of hard labels = exp(H(marginal))
    assert r["is_score"] == pytest.approx(float(np.exp(-np.sum(h * np.log(h)))), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        classifier_scores(feats[:1], onehot[:1], mu, sigma)


def test_classifier_input_conversion():
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    y = to_classifier_input(x)
    assert y.shape == (3, 1, 32, 32) and y.min() >= -1 and y.max() <= 1
    flat = torch.full((2, 1, 32, 32), 0.25)
    assert torch.equal(to_classifier_input(flat), flat)
    with pytest.raises(ValueError, match="images"):
        to_classifier_input(torch.zeros(2, 2, 32, 32))


# ---- the Evaluator -------------------------------------------------------------------------------
class _ModeGenerator(torch.nn.Module):
    """Maps noise onto chosen modes of a toy mixture (with the mixture's own spread)."""

    def __init__(self, modes, std):
        super().__init__()
        self.modes, self.std = modes, std

    def forward(self, z):
        idx = (z[:, 0].abs() * 1000).long() % self.modes.shape[0]
        return self.modes[idx] + z * self.std


def test_evaluator_toy_modes_all_one_none():
    s = ToySampler("25gaussians")
    ev = Evaluator("25gaussians", n=2500, batch_size=700)
    assert ev.metrics == ("modes", "toy_fd")
    r = ev(_ModeGenerator(s.modes, s.std), 2)
    assert r["modes_covered"] == 25 and r["high_quality_fraction"] > 0.97 and r["n"] == 2500
    assert r["toy_fd"] < 0.02 and sum(r["mode_counts"]) <= 2500
    one = ev(_ModeGenerator(s.modes[12:13], s.std), 2)
    assert one["modes_covered"] == 1 and one["toy_fd"] > 0.5
    far = ev(_ModeGenerator(s.modes[:1] + 10.0, s.std), 2)
    assert far["modes_covered"] == 0 and far["high_quality_fraction"] == 0.0
    # the same generator twice: fixed noise, identical scores
    assert ev(_ModeGenerator(s.modes, s.std), 2)["toy_fd"] == r["toy_fd"]


def test_evaluator_does_not_touch_global_rng_or_training_mode():
    s = ToySampler("8gaussians")
    g = _ModeGenerator(s.modes, s.std).train()
    ev = Evaluator("8gaussians", n=100)
    before = torch.get_rng_state()
    ev(g, 2)
    assert torch.equal(before, torch.get_rng_state()) and g.training


def test_evaluator_metric_selection_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("PYFAST_GAN_INCEPTION_WEIGHTS", raising=False)
    assert applicable("swissroll") == ("toy_fd",) and applicable("/some/folder") == ("fid", "kid")
    with pytest.raises(ValueError, match="unknown metric"):
        Evaluator("8gaussians", metrics="modes,bogus")
    with pytest.raises(ValueError, match="do not apply"):
        Evaluator("digits", metrics=["modes"])
    with pytest.raises(ValueError, match="pt_inception-2015-12-05"):
        Evaluator("digits", metrics=["fid"])
    with pytest.raises(ValueError, match="n must be"):
        Evaluator("8gaussians", n=1)
    ev = Evaluator("digits", metrics="auto", n=50)
    assert ev.metrics == ("classifier",) and set(ev.skipped) == {"fid", "kid"}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 6 samples of 2048-d features
def test_evaluator_fid_kid_with_inception_weights(tmp_path):
    """FID/KID through the Evaluator with random Inception weights (the real ones cannot be
    downloaded here): a few tiny images, reference features cached and reused."""
    pytest.importorskip("pytorch_fid")
    from pyfast_gan.metrics.inception import build_fid_inception_v3

    torch.manual_seed(0)
    net = build_fid_inception_v3()
    weights = tmp_path / "inception.pth"
    torch.save(net.state_dict(), weights)
    real = (torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)

    class G(torch.nn.Module):
        def forward(self, z):
            return torch.tanh(z[:, :3, None, None].expand(-1, 3, 32, 32) + z[:, 3:4, None, None])

    ev = Evaluator("/data/folder", metrics=["fid", "kid"], real=real, n=6, batch_size=3,
                   inception_weights=str(weights))
    r = ev(G(), 4)
    assert r["fid"] > 0 and math.isfinite(r["fid"]) and math.isfinite(r["kid_mean"])
    stats = list((cache_dir() / "fid_stats").glob("*.npz"))
    assert len(stats) == 1
    ev2 = Evaluator("/data/folder", metrics=["fid", "kid"], real=real, n=6, batch_size=3,
                    inception_weights=str(weights))
    np.testing.assert_array_equal(ev2.real_features, ev.real_features.astype(np.float32).astype(np.float64))
    assert ev2(G(), 4)["fid"] == pytest.approx(r["fid"], rel=1e-4)


# ---- CLIs -----------------------------------------------------------------------------------------
TINY = ["--base", "4", "--z-dim", "8", "--batch-size", "8", "--n-critic", "1", "--no-progress"]


def _train(out: Path, *extra: str) -> Path:
    from pyfast_gan.train import main

    assert main(["--out", str(out), *extra]) == 0
    return out


def test_evaluate_cli_on_tiny_digits_and_toy_checkpoints(tmp_path, capsys):
    from pyfast_gan.evaluate import main

    run = _train(tmp_path / "d", "--steps", "3", *TINY)
    assert main(["--checkpoint", str(run), "--n", "300", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "cfid" in out and "classes_covered" in out and "wrote" in out
    rec = json.loads((run / "eval_step_000003.json").read_text())
    assert rec["step"] == 3 and rec["n"] == 300 and rec["loss"] == "wgan-gp" and rec["metrics"] == ["classifier"]
    assert sum(rec["class_counts"]) == 300 and 1 <= rec["classes_covered"] <= 10 and rec["cfid"] > 0
    # same seed, same numbers; another seed, other noise
    js = tmp_path / "again.json"
    assert main(["--checkpoint", str(run / "checkpoints" / "latest.pt"), "--n", "300", "--json", str(js),
                 "--no-progress"]) == 0
    assert json.loads(js.read_text())["cfid"] == rec["cfid"]
    assert main(["--checkpoint", str(run), "--n", "300", "--seed", "5", "--json", str(js), "--no-progress"]) == 0
    assert json.loads(js.read_text())["cfid"] != rec["cfid"]

    toy = _train(tmp_path / "t", "--data", "25gaussians", "--steps", "3", "--base", "8", "--batch-size", "16",
                 "--no-progress")
    assert main(["--checkpoint", str(toy), "--n", "500", "--metrics", "modes", "--no-progress"]) == 0
    rec = json.loads((toy / "eval_step_000003.json").read_text())
    assert rec["num_modes"] == 25 and 0 <= rec["modes_covered"] <= 25 and "toy_fd" not in rec


@pytest.mark.parametrize("argv, match", [
    (["--n", "1"], "--n must be"),
    (["--metrics", "modes"], "do not apply"),
    (["--metrics", "fid", "--inception-weights", "/nonexistent/w.pth"], "w.pth"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_evaluate_cli_errors(tmp_path, capsys, argv, match):
    from pyfast_gan.evaluate import main

    run = _train(tmp_path / "d", "--steps", "1", *TINY)
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(run), *argv])
    assert e.value.code == 2 and match in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "nothing")])
    assert "no checkpoint found" in capsys.readouterr().err


def test_train_eval_every_writes_records_and_keeps_the_run_identical(tmp_path):
    toy = ["--data", "8gaussians", "--steps", "6", "--base", "8", "--batch-size", "16", "--no-progress",
           "--n-critic", "2"]
    a = _train(tmp_path / "a", *toy, "--eval-every", "2", "--eval-n", "400")
    b = _train(tmp_path / "b", *toy)
    recs = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert all(r["eval"]["n"] == 400 and r["eval"]["num_modes"] == 8 for r in evals)
    assert (a / "plots" / "metrics.png").stat().st_size > 1000
    assert not (b / "plots" / "metrics.png").exists()
    # evaluating draws its own noise: the trained weights are bitwise those of a run without it
    ka = torch.load(a / "checkpoints" / "latest.pt", weights_only=False)
    kb = torch.load(b / "checkpoints" / "latest.pt", weights_only=False)
    for key in ("G", "D"):
        for x, y in zip(ka[key].values(), kb[key].values()):
            assert torch.equal(x, y)


def test_train_eval_on_digits_and_bad_eval_flags(tmp_path, capsys):
    from pyfast_gan.train import main

    run = _train(tmp_path / "d", "--steps", "2", *TINY, "--eval-every", "1", "--eval-n", "64")
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [r["step"] for r in evals] == [1, 2] and all("cfid" in r["eval"] for r in evals)
    for argv, match in ((["--eval-every", "-1"], "--eval-every"), (["--eval-n", "1"], "--eval-n"),
                        (["--eval-metrics", "modes"], "do not apply"),
                        (["--eval-metrics", "fidd"], "unknown group"),
                        (["--inception-weights", str(tmp_path / "none.pth")], "--inception-weights")):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "x"), "--steps", "1", *TINY, *argv])
        assert match in capsys.readouterr().err


@pytest.mark.slow
def test_compare_study_tiny_end_to_end_and_reuse(tmp_path):
    from pyfast_gan.experiments.compare import main

    out = tmp_path / "cmp"
    argv = ["compare", "--section", "main", "--data", "25gaussians", "--runs", "dcgan", "wgan-gp", "--steps", "4",
            "--eval-every", "2",
            "--eval-n", "200", "--final-n", "300", "--jobs", "2", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    report = (out / "README.md").read_text()
    res = json.loads((out / "results.json").read_text())
    rows = res["runs"]["25gaussians"]
    assert [r["run"] for r in rows] == ["dcgan", "wgan-gp"]
    assert [r["critic_steps"] for r in rows] == [4, 20] and all(r["steps"] == 4 for r in rows)
    assert all([h["step"] for h in r["history"]] == [2, 4] for r in rows)
    for r in rows:
        assert f"| {r['run']} | {r['loss']} |" in report
        assert f"{r['scores']['modes_covered']}/25" in report
    assert res["baselines"]["25gaussians"]["modes_covered"] == 25
    assert "python -m pyfast_gan.experiments compare --section main --data 25gaussians" in report
    for name in ("25gaussians_samples.png", "25gaussians_losses.png", "25gaussians_metric_vs_step.png"):
        assert (out / name).stat().st_size > 1000
    # finished runs are reused, not retrained
    mtime = os.path.getmtime(out / "runs" / "25gaussians" / "dcgan" / "checkpoints" / "latest.pt")
    assert main(argv) == 0
    assert os.path.getmtime(out / "runs" / "25gaussians" / "dcgan" / "checkpoints" / "latest.pt") == mtime


@pytest.mark.slow
def test_compare_extension_tiny_end_to_end(tmp_path):
    """The extension section alone: both BEGAN runs (the paper's settings and the one with
    flags), a CoGAN run; every BEGAN run gets its convergence panels and the flags of a run
    that departs from the paper are printed in the report."""
    from pyfast_gan.experiments.compare import main
    from pyfast_gan.experiments.runs import EXTENSION

    out = tmp_path / "ext"
    tuned = next(n for n, (loss, flags) in EXTENSION.items() if loss == "began" and flags)
    argv = ["compare", "--section", "extension", "--ext-runs", "began", tuned, "cogan-negative", "--steps", "3",
            "--eval-every", "3", "--eval-n", "200", "--final-n", "300", "--jobs", "2", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())["extension"]
    report = (out / "README.md").read_text()
    assert [r["run"] for r in res["runs"]] == ["began", tuned]
    assert [r["run"] for r in res["cogan"]] == ["cogan-negative"]
    for r in res["runs"]:
        assert r["steps"] == 3 and r["loss"] == "began"
        assert f"| {r['run']} | began | 3 |" in report
        assert 0.0 <= r["final_k"] <= 1.0 and r["final_m"] > 0
    # the tuned run really trained with its flags: its config says so, the paper run's does not
    cfgs = {n: json.loads((out / "runs" / "mnist" / n / "config.json").read_text()) for n in ("began", tuned)}
    assert all(c["data"] == "mnist" for c in cfgs.values()) and res["data"] == "mnist"  # --ext-data's default
    flags = EXTENSION[tuned][1]
    gamma = float(flags[flags.index("--began-gamma") + 1])
    assert cfgs[tuned]["began_gamma"] == gamma != cfgs["began"]["began_gamma"] == 0.5
    assert f"- {tuned}: `{' '.join(flags)}`" in report
    assert "- began: `" not in report  # the paper-settings run has no flags to list
    c = res["cogan"][0]["correspondence"]
    assert 0.0 <= c["shuffled"] <= 1.0 and 0.0 <= c["paired"] <= 1.0
    assert (out / "began_convergence.png").stat().st_size > 1000


def test_fast_verdict_compares_the_gap_with_the_seed_spread():
    from pyfast_gan.experiments.fast_vs_eager import verdict

    def rows(eager, fast):
        return [{"path": p, "scores": {"cfid": v}} for p, vs in (("eager", eager), ("fast", fast)) for v in vs]

    v = verdict(rows([100.0, 120.0], [105.0, 112.0]), "cfid")
    assert v["spread"] == {"eager": 20.0, "fast": 7.0} and v["gap"] == pytest.approx(1.5) and v["within"]
    v = verdict(rows([100.0, 104.0], [140.0, 141.0]), "cfid")
    assert v["gap"] == pytest.approx(38.5) and v["within"] is False
    assert verdict(rows([100.0], []), "cfid")["within"] is None  # nothing to compare


@pytest.mark.parametrize("argv,match", [
    (["--fast-seeds", "0", "0"], "--fast-seeds must be distinct seeds >= 0"),
    (["--fast-seeds", "-1", "2"], "--fast-seeds must be distinct seeds >= 0"),
    (["--section", "quick"], "invalid choice: 'quick'"),
    (["--ext-data", "25gaussians"], "invalid choice: '25gaussians'"),
])
def test_compare_refuses_bad_flags(argv, match, capsys):
    from pyfast_gan.experiments.compare import main

    with pytest.raises(SystemExit) as e:
        main(["compare", *argv, "--out", "/nonexistent/never-written"])
    assert e.value.code == 2 and match in capsys.readouterr().err


@pytest.mark.slow
def test_compare_fast_section_tiny_end_to_end(tmp_path):
    """--section fast: eager and --fast WGAN-GP on two seeds, the --fast runs really compiled,
    the verdict table in the report, the other sections kept from results.json."""
    from pyfast_gan.experiments.compare import main

    out = tmp_path / "fast"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"machine": {}, "data": [], "runs": {}, "baselines": {},
                                                  "figures": {}}))
    argv = ["compare", "--section", "fast", "--fast-seeds", "3", "4", "--seed", "3", "--steps", "2",
            "--eval-every", "2", "--eval-n", "64", "--final-n", "200", "--jobs", "2", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())["fast"]
    assert [(r["run"], r["path"], r["seed"]) for r in res["runs"]] == [
        ("wgan-gp", "eager", 3), ("wgan-gp-fast", "fast", 3), ("wgan-gp-seed4", "eager", 4),
        ("wgan-gp-fast-seed4", "fast", 4)]
    for r in res["runs"]:
        cfg = json.loads((out / "runs" / "mnist" / r["run"] / "config.json").read_text())
        assert (cfg["seed"], cfg["compile"], cfg["data"]) == (r["seed"], r["path"] == "fast", "mnist")
    report = (out / "README.md").read_text()
    assert "## --fast against eager WGAN-GP on real MNIST" in report
    assert "| cfid |" in report and set(res["verdict"]) == {"cfid", "is_score", "classes_covered", "kl_uniform"}
    assert (out / "mnist_fast_samples.png").stat().st_size > 1000


def test_evaluate_scores_a_cogan_checkpoint_as_the_trainer_does(tmp_path):
    """Each domain and the pair correspondence, with the numbers --eval-every logged (its noise
    seed is the run's + 13)."""
    from pyfast_gan.evaluate import main as evaluate_main
    from pyfast_gan.train import main as train_main

    run = tmp_path / "cogan"
    assert train_main(["--loss", "cogan", "--steps", "2", "--batch-size", "4", "--base", "8", "--n-critic", "1",
                       "--no-progress", "--image-size", "32", "--seed", "5", "--eval-every", "2", "--eval-n", "64",
                       "--eval-metrics", "classifier", "--out", str(run)]) == 0
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x][-1]["eval"]
    out = tmp_path / "eval.json"
    assert evaluate_main(["--checkpoint", str(run), "--n", "64", "--seed", "18", "--metrics", "classifier",
                          "--no-progress", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    for key in ("cfid", "b_cfid", "correspondence", "correspondence_shuffled"):
        assert key in logged and rec[key] == pytest.approx(logged[key], rel=1e-5), key
    assert 0.0 <= rec["correspondence_shuffled"] <= 1.0 and rec["n"] == rec["b_n"] == 64


# ---- the real-MNIST judge (--data mnist) ------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_clf() -> DigitsClassifier:
    return load_digits_classifier(progress=False, data="mnist")  # trained once per session (~30-90 s)


@pytest.mark.slow
def test_mnist_classifier_scores_98_percent_on_the_1000_digits_it_never_trains_on(mnist_clf):
    images, labels = digits_with_labels("mnist")
    tr, te = split_indices(labels)
    assert (len(tr), len(te)) == (4000, 1000) and not set(tr.tolist()) & set(te.tolist())
    assert torch.bincount(labels[te], minlength=10).tolist() == [100] * 10
    _, probs = mnist_clf.features_and_probs(images[te])
    acc = (probs.argmax(1) == labels[te]).double().mean().item()
    assert acc >= 0.98 and math.isclose(acc, mnist_clf.test_accuracy, abs_tol=1e-12)
    assert list(cache_dir().glob("mnist_classifier_*.pt"))
    # cfid's reference is the held-out digits: they score ~0 against it, the training ones do not
    real = mnist_clf.score(images[te])
    assert real["cfid"] < 1e-6 and real["classes_covered"] == 10 and real["kl_uniform"] < 0.01
    assert mnist_clf.score(images[tr[:1000]])["cfid"] > 1.0
    sevens = mnist_clf.score(images[labels == 7])
    assert sevens["classes_covered"] == 1 and sevens["kl_uniform"] > 2.0 and sevens["cfid"] > 10 * real["cfid"]


@pytest.mark.slow
def test_evaluate_scores_a_tiny_mnist_run_with_the_mnist_judge(tmp_path, mnist_clf, capsys):
    from pyfast_gan.evaluate import main

    run = _train(tmp_path / "m", "--data", "mnist", "--steps", "2", *TINY)
    assert main(["--checkpoint", str(run), "--n", "200", "--no-progress"]) == 0
    assert "cfid" in capsys.readouterr().out
    rec = json.loads((run / "eval_step_000002.json").read_text())
    assert rec["metrics"] == ["classifier"] and rec["classifier_test_accuracy"] == mnist_clf.test_accuracy
    assert sum(rec["class_counts"]) == 200 and rec["cfid"] > 0


def test_mnist_runs_are_judged_by_the_mnist_classifier(tmp_path, monkeypatch):
    """The wiring, without the training: an untrained network stands in for the judge (in a
    cache of its own, so the session's real judge is not replaced)."""
    import pyfast_gan.metrics.digits_classifier as dc

    trained = []

    def fake_train(data):
        trained.append(data)
        torch.manual_seed(0)
        return dc.DigitsNet().eval(), 0.5

    monkeypatch.setattr(dc, "train_digits_classifier", fake_train)
    monkeypatch.setenv("PYFAST_GAN_CACHE", str(tmp_path / "cache"))
    assert applicable("mnist") == applicable("digits") == ("classifier", "fid", "kid")
    ev = Evaluator("mnist", metrics="classifier", n=64, progress=False)
    assert trained == ["mnist"] and ev.classifier.data == "mnist"
    assert [p.name.split("_")[0] for p in (tmp_path / "cache").glob("*_classifier_*.pt")] == ["mnist"]
    # the reference is the 1,000 held-out digits' features
    images, labels = digits_with_labels("mnist")
    feats, _ = ev.classifier.features_and_probs(images[split_indices(labels)[1]])
    np.testing.assert_allclose(ev.classifier.ref_mu, feats.mean(0).numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="no digit classifier"):
        load_digits_classifier(data="cifar10")


def test_budget_steps_come_from_the_calibrated_seconds_per_step():
    from pyfast_gan.experiments.budget import cost_key, seconds_per_step, steps_for

    recs = [{"step": 5, "time": 2.0, "loss_d": 0.1}, {"step": 5, "eval": {}}, {"step": 10, "time": 2.5, "loss_d": 0.1},
            {"step": 45, "time": 6.0, "loss_d": 0.1}]
    assert seconds_per_step(recs) == pytest.approx(0.1)  # start-up before the first record left out
    with pytest.raises(RuntimeError, match="fewer than two records"):
        seconds_per_step(recs[:1])
    # the optimizer's settings do not change the cost; n_critic and the loss do
    assert cost_key("wgan-gp-paper") == cost_key("wgan-gp-lr4e-4") == "wgan-gp-nc5"
    assert cost_key("wgan-gp-nc2-lr4e-4") == "wgan-gp-nc2" and cost_key("wgan-nc1") == "wgan-nc1"
    rates = {"wgan-gp-nc5": 0.25, "wgan-gp-nc2": 0.1}
    assert steps_for("wgan-gp-paper", rates, 120) == 480 and steps_for("wgan-gp-nc2-lr4e-4", rates, 120) == 1200


def _budget_row(run, loss, seed, cfid, tracking=None, history=()):
    return {"run": run, "loss": loss, "seed": seed, "scores": {"cfid": cfid}, "tracking": tracking,
            "history": [{"step": s, "cfid": c} for s, c in history],
            "losses": [{"step": s, "time": float(s)} for s in range(0, 101, 10)]}


def test_budget_claims_verdicts_follow_the_numbers():
    from pyfast_gan.experiments.budget import claims, time_to_reach

    seeds = [0, 1, 2]
    best = {"dcgan": "dcgan-lr4e-4", "wgan": "wgan-paper", "wgan-gp": "wgan-gp-nc2-lr4e-4"}
    rows = []
    for s in seeds:
        rows += [_budget_row("dcgan-paper", "dcgan", s, 300 + s, tracking=0.2),
                 _budget_row("dcgan-lr4e-4", "dcgan", s, 200 + s, tracking=0.1,
                             history=[(50, 600), (100, 200 + s)]),
                 _budget_row("wgan-paper", "wgan", s, 500 + s, tracking=0.9),
                 _budget_row("wgan-nc1", "wgan", s, 400 + s, tracking=0.8),
                 _budget_row("wgan-gp-paper", "wgan-gp", s, 350 + s, tracking=0.95),
                 _budget_row("wgan-gp-nc2-lr4e-4", "wgan-gp", s, 50 + s, tracking=0.99,
                             history=[(20, 800), (30, 450), (100, 50 + s)])]
    c = {x["claim"]: x for x in claims(rows, best, seeds)}
    # WGAN-GP beats DCGAN at its best settings (51 < 201) but not at the paper ones (351 > 301)
    assert c["WGAN-GP beats DCGAN on sample quality"]["verdict"] == "holds at the best settings, not at the paper ones"
    assert "lower on 0/3 seeds" in c["WGAN-GP beats DCGAN on sample quality"]["numbers"]
    # WGAN's best (501) ends worst; WGAN-GP's best passed 500 at step 30 of 100
    slow = c["weight clipping learns slowly"]
    assert slow["verdict"] == "holds" and "wgan-gp-nc2-lr4e-4 reached WGAN's final cFID after a median 30%" in slow["numbers"]
    assert time_to_reach(rows[5], 450) == 30.0 and time_to_reach(rows[5], 10) is None
    # n_critic 5 (501) is worse than n_critic 1 (401): the claim does not hold here
    assert c["n_critic helps WGAN"]["verdict"] == "does not hold"
    assert c["the critic's value tracks quality"]["verdict"] == "holds"
    for r in rows:
        if r["loss"] == "wgan":
            r["tracking"] = 0.3
    assert c and claims(rows, best, seeds)[3]["verdict"] == "holds for WGAN-GP only"


@pytest.mark.slow
def test_compare_budget_section_tiny_end_to_end(tmp_path):
    """--section budget: calibration, the sweep, the finalists on a second seed, steps that
    follow the calibrated cost (more generator steps for the cheaper losses), the claims table."""
    from pyfast_gan.experiments.compare import main

    out = tmp_path / "budget"
    argv = ["compare", "--section", "budget", "--budget-s", "0.5", "--budget-calib-steps", "4", "--budget-seeds",
            "0", "1", "--budget-runs", "dcgan-paper", "wgan-paper", "wgan-nc1", "wgan-gp-paper", "--eval-n", "64",
            "--final-n", "200", "--jobs", "2", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())["budget"]
    assert sorted(res["rates"]) == ["dcgan-nc1", "wgan-gp-nc5", "wgan-nc1", "wgan-nc5"]
    assert all(v > 0 for v in res["rates"].values())
    runs = {(r["run"], r["seed"]): r for r in res["runs"]}
    assert set(runs) == {(n, s) for n in ("dcgan-paper", "wgan-paper", "wgan-nc1", "wgan-gp-paper") for s in (0, 1)}
    for (name, _), r in runs.items():
        key = f"{r['loss']}-nc{r['n_critic']}"
        assert r["steps"] == max(1, round(0.5 / res["rates"][key]))
    assert runs[("wgan-gp-paper", 0)]["n_critic"] == 5 and runs[("wgan-nc1", 0)]["n_critic"] == 1
    report = (out / "README.md").read_text()
    assert "## Equal training time" in report and "| weight clipping learns slowly |" in report
    assert [c["claim"] for c in res["claims"]] == ["WGAN-GP beats DCGAN on sample quality", "weight clipping learns slowly",
                                                   "n_critic helps WGAN", "the critic's value tracks quality"]
    assert (out / "mnist_budget_samples.png").stat().st_size > 1000
