"""bench_train.py's roofline on a CPU: every row reports its achieved GFLOP/s and its fraction of
a convolution peak measured on this machine for the row's precision and layout."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

pytestmark = pytest.mark.usefixtures("one_thread")
# a tiny WGAN-GP setting: rows in seconds
TINY = ["--losses", "wgan-gp", "--image-size", "32", "--base", "8", "--batch-size", "8", "--steps", "1",
        "--rounds", "1", "--dataset-size", "16", "--device", "cpu"]


def test_cpu_rows_report_achieved_gflops_and_fraction_of_the_measured_peak(capsys):
    import bench_train

    rows = bench_train.main([*TINY, "--configs", "naive", "reference", "channels_last"])
    assert "convolution peak (fp32 NCHW" in capsys.readouterr().out
    assert [r["config"] for r in rows] == [bench_train.LABELS[c] for c in ("naive", "reference", "channels_last")]
    for r in rows:
        assert r["gflop_s"] > 0 and r["peak_gflop_s"] > 0
        assert r["frac_peak"] == pytest.approx(r["gflop_s"] / r["peak_gflop_s"])
    assert [r["peak_of"] for r in rows] == ["fp32 NCHW", "fp32 NCHW", "fp32 channels_last"]
    # one measurement per (precision, layout), the same for every row that shares it
    assert rows[0]["peak_gflop_s"] == rows[1]["peak_gflop_s"]
    assert bench_train.measured_conv_peak("fp32", True) / 1e9 == rows[2]["peak_gflop_s"]


def test_rows_without_fast_turn_the_default_fast_off(monkeypatch):
    """The trainer's default is --fast auto (on where bf16 is native): a row that names only
    some switches must say --no-fast, or it would time --fast under another label."""
    import bench_train

    from pyfast_gan.train import parse_args, resolve

    monkeypatch.setenv("PYFAST_GAN_FAST", "on")  # as on a CPU with native bf16
    for config, flags in bench_train.FLAGS.items():
        cfg = resolve(*parse_args(["--data", "25gaussians", *flags]))
        assert (cfg.fast == "on") == ("--fast" in flags), config
        if "--fast" not in flags:
            assert cfg.compile is False and (cfg.amp == "bf16") == ("bf16" in flags), config


def test_every_row_gets_its_gflops_whichever_rows_run():
    """The useful FLOPs are counted even when the reference row is not among the rows run."""
    import bench_train

    rows = bench_train.main([*TINY, "--configs", "channels_last"])
    assert len(rows) == 1 and rows[0]["gflop_s"] > 0
    assert rows[0]["frac_peak"] == pytest.approx(rows[0]["gflop_s"] / rows[0]["peak_gflop_s"])
