"""--fast auto, the default: on where the device computes bf16 natively, off elsewhere, said in
the run's first lines; --fast / --no-fast / PYFAST_GAN_FAST; the embedded digits' WGAN-GP
recipe follows the choice."""
from __future__ import annotations

import pytest

from pyfast_gan.train import config as config_mod
from pyfast_gan.train import speed as speed_mod
from pyfast_gan.train.config import DIGITS_LOSS_DEFAULTS, fast_note, fast_settings, parse_args, resolve


def _resolve(argv, **kw):
    cfg, explicit = parse_args(argv)
    return resolve(cfg, explicit, cuda_available=False, **kw), explicit


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_native_bf16_and_says_why(monkeypatch, native):
    monkeypatch.delenv("PYFAST_GAN_FAST")
    monkeypatch.setattr(speed_mod, "cpu_has_fast_bf16", lambda: native)
    r, explicit = _resolve([])
    assert r.fast == ("on" if native else "off")
    recipe = DIGITS_LOSS_DEFAULTS[("wgan-gp", r.fast)]
    assert (r.base, r.lr, r.betas) == (recipe["base"], recipe["lr"], recipe["betas"])
    if native:  # the switches --fast picks for a CPU with bf16, bf16 included
        for k, v in fast_settings("cpu").items():
            assert getattr(r, k) == v, k
        assert r.amp == "bf16"
    else:
        assert (r.amp, r.compile, r.channels_last) == ("off", False, False)
    note = fast_note(r, explicit)
    assert note.startswith(f"--fast auto: {r.fast}, this CPU ")
    assert ("natively" in note) == native and ("no native bf16" in note) == (not native)


def test_flags_env_and_old_configs(monkeypatch):
    monkeypatch.setattr(speed_mod, "cpu_has_fast_bf16", lambda: False)
    r, explicit = _resolve(["--fast"])  # --fast alone forces the switches on
    assert r.fast == "on" and r.compile and fast_note(r, explicit) is None
    assert _resolve(["--fast", "off"])[0].fast == "off"
    assert _resolve(["--no-fast"])[0].fast == "off"
    monkeypatch.setenv("PYFAST_GAN_FAST", "on")
    r, explicit = _resolve([])
    assert r.fast == "on" and fast_note(r, explicit) is None  # the user's choice: nothing to say
    assert _resolve(["--no-fast"])[0].fast == "off"  # the flag wins over the variable
    monkeypatch.setenv("PYFAST_GAN_FAST", "sometimes")
    with pytest.raises(ValueError, match="PYFAST_GAN_FAST"):
        _resolve([])
    # a config file (or a run's config.json) from before auto: true/false
    assert config_mod._coerce("fast", True, "x") == "on" and config_mod._coerce("fast", False, "x") == "off"


def test_recipe_is_wgan_gp_on_embedded_digits_only(monkeypatch):
    monkeypatch.setenv("PYFAST_GAN_FAST", "on")
    r = _resolve(["--loss", "wgan"])[0]  # other losses keep their paper presets
    assert (r.optimizer, r.lr) == ("rmsprop", 5e-5) and r.base == 16
    r = _resolve(["--data", "8gaussians"])[0]  # toy data keeps its own defaults
    assert r.base == 128 and r.lr == 1e-3
    r = _resolve(["--base", "24", "--lr", "3e-4"])[0]  # flags win over the recipe
    assert (r.base, r.lr, r.betas) == (24, 3e-4, DIGITS_LOSS_DEFAULTS[("wgan-gp", "on")]["betas"])


def test_the_trainer_prints_the_choice(tmp_path, monkeypatch, capsys):
    from pyfast_gan.train import main

    monkeypatch.delenv("PYFAST_GAN_FAST")
    monkeypatch.setattr(speed_mod, "cpu_has_fast_bf16", lambda: False)
    assert main(["--data", "digits", "--steps", "1", "--base", "4", "--z-dim", "8", "--batch-size", "8",
                 "--n-critic", "1", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "--fast auto: off, this CPU has no native bf16" in err
