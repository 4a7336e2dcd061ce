"""The recipe search's bookkeeping (no training here): every candidate is a valid trainer command
line, medians per candidate and thread count, the pick among full-thread runs that fit."""
from __future__ import annotations

import pytest

from pyfast_gan.experiments import recipe


def _row(name, seed, wall, raw, ema, threads=2):
    score = lambda c: {"cfid": c, "classes_covered": 10, "kl_uniform": 0.01}  # noqa: E731
    return {"candidate": name, "seed": seed, "wall_s": wall, "threads": threads, "steps": 100,
            "raw": score(raw), "ema": score(ema)}


def test_every_candidate_is_a_trainer_command_line():
    from pyfast_gan.train import parse_args

    for name, flags in recipe.CANDIDATES.items():
        cfg, explicit = parse_args(["--seed", "0", "--ema", "0.999", *flags])
        assert cfg.ema > 0, name


def test_medians_and_the_pick_within_the_budget():
    rows = [_row("a", 0, 250, 20.0, 9.0), _row("a", 1, 290, 10.0, 7.0), _row("a", 2, 260, 30.0, 8.0),
            _row("b", 0, 350, 5.0, 4.0),                      # better, but over the budget
            _row("c", 0, 100, 1.0, 1.0, threads=1)]           # screened on one thread: not judged
    summ = recipe.summary(rows, threads=2)
    assert summ["a"]["wall_s"] == 260 and summ["a"]["raw"]["cfid"] == 20.0 and summ["a"]["ema"]["cfid"] == 8.0
    assert summ["c (1 thread)"]["full"] is False
    assert recipe.best(summ, 300) == ("a", "ema")
    text = recipe.report(rows, {"machine": "m", "threads": 2, "torch": "t", "commit": "c", "budget_s": 300,
                                "date": "d"})
    assert "Best within the budget: **a**, sampled from the moving average (median cFID 8.0" in text
    assert "| c (1 thread) | 0 | 1 | 100 | not timed |" in text and "| b | 0 | 2 | 350 | no |" in text
