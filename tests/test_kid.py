import numpy as np
import pytest
import torch

from pyfast_gan.metrics.kid import kernel_inception_distance


def _kid_by_loops(x, y, degree=3, gamma=None, coef0=1.0):
    """Unbiased MMD^2 with the polynomial kernel, written out pair by pair."""
    m, d = len(x), len(x[0])
    gamma = 1.0 / d if gamma is None else gamma

    def k(a, b):
        return (gamma * sum(ai * bi for ai, bi in zip(a, b)) + coef0) ** degree

    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return kxx + kyy - 2 * kxy


@pytest.mark.parametrize("degree,gamma,coef0", [(3, None, 1.0), (2, 0.3, 0.5)])
def test_kid_matches_direct_formula(degree, gamma, coef0):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5))
    y = rng.normal(loc=0.5, size=(12, 5))
    # One subset of the whole set: a permutation, so MMD^2 equals the full-sample value.
    r = kernel_inception_distance(x, y, num_subsets=1, subset_size=100, degree=degree, gamma=gamma, coef0=coef0)
    expected = _kid_by_loops(x.tolist(), y.tolist(), degree, gamma, coef0)
    assert r["mean"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert r["std"] == 0.0 and r["num_subsets"] == 1 and r["subset_size"] == 12


def test_subsets_are_mean_of_subset_estimates_and_reproducible():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 4))
    y = rng.normal(loc=0.3, size=(20, 4))
    r = kernel_inception_distance(x, y, num_subsets=5, subset_size=8, seed=3)
    # Replay the documented draws: x rows then y rows, per subset, from Generator(seed).
    g = np.random.default_rng(3)
    vals = []
    for _ in range(5):
        xs = x[g.choice(30, 8, replace=False)]
        ys = y[g.choice(20, 8, replace=False)]
        vals.append(_kid_by_loops(xs.tolist(), ys.tolist()))
    assert r["mean"] == pytest.approx(np.mean(vals), rel=1e-12)
    assert r["std"] == pytest.approx(np.std(vals), rel=1e-9)
    assert r["subset_size"] == 8
    assert kernel_inception_distance(x, y, num_subsets=5, subset_size=8, seed=3) == r
    assert kernel_inception_distance(x, y, num_subsets=5, subset_size=8, seed=4)["mean"] != r["mean"]


def test_equal_distributions_near_zero_shifted_positive():
    rng = np.random.default_rng(2)
    d = 16
    real = rng.normal(size=(400, d))
    same = rng.normal(size=(400, d))
    shifted = rng.normal(loc=0.5, size=(400, d))
    kid_same = kernel_inception_distance(real, same, num_subsets=20, subset_size=200)
    kid_shift = kernel_inception_distance(real, shifted, num_subsets=20, subset_size=200)
    assert kid_shift["mean"] > 10 * kid_shift["std"] > 0
    assert abs(kid_same["mean"]) < 0.05 * kid_shift["mean"]
    # Torch tensors are accepted and computed in float64.
    kid_t = kernel_inception_distance(torch.from_numpy(real).float(), torch.from_numpy(shifted).float(),
                                      num_subsets=20, subset_size=200)
    assert kid_t["mean"] == pytest.approx(kid_shift["mean"], rel=1e-5)


def test_bad_inputs_raise():
    ok = np.zeros((5, 3))
    with pytest.raises(ValueError, match="feats_real"):
        kernel_inception_distance(np.zeros(5), ok)
    with pytest.raises(ValueError, match="feats_fake"):
        kernel_inception_distance(ok, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="dimensions differ"):
        kernel_inception_distance(ok, np.zeros((5, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        kernel_inception_distance(ok, np.full((5, 3), np.nan))
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(ok, ok, subset_size=1)
    with pytest.raises(ValueError, match="num_subsets"):
        kernel_inception_distance(ok, ok, num_subsets=0)
