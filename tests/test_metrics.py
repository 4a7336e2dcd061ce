import math

import numpy as np
import pytest
import torch

from pyfast_gan.data import ToySampler
from pyfast_gan.metrics import feature_statistics, frechet_distance, mode_coverage


@pytest.mark.parametrize("name", ["8gaussians", "25gaussians"])
def test_mode_coverage_true_data_covers_all(name):
    s = ToySampler(name)
    x = s.sample(2500, torch.Generator().manual_seed(0))
    r = mode_coverage(x, s.modes, s.std)
    k = s.modes.shape[0]
    assert r["num_modes"] == k and r["covered"] == k
    assert r["high_quality_fraction"] > 0.97  # 3 std in 2-D holds ~98.9%
    assert sum(r["counts"]) <= 2500 and len(r["counts"]) == k


def test_mode_coverage_collapsed_sampler():
    s = ToySampler("25gaussians")
    g = torch.Generator().manual_seed(1)
    collapsed = s.modes[7] + torch.randn(1000, 2, generator=g) * s.std
    r = mode_coverage(collapsed, s.modes, s.std)
    assert r["covered"] == 1 and r["counts"][7] == sum(r["counts"])
    # Samples far from every mode are low quality and cover nothing.
    junk = torch.rand(1000, 2, generator=g) * 0.1 + 5.0
    r = mode_coverage(junk, s.modes, s.std)
    assert r["covered"] == 0 and r["high_quality_fraction"] == 0.0


def test_mode_coverage_partial_and_threshold():
    s = ToySampler("8gaussians")
    g = torch.Generator().manual_seed(2)
    # 5 modes with 200 samples each, 3 modes with 2 stray samples: below 10% of M/K.
    parts = [s.modes[i] + torch.randn(200, 2, generator=g) * s.std for i in range(5)]
    parts += [s.modes[i] + torch.randn(2, 2, generator=g) * s.std for i in range(5, 8)]
    x = torch.cat(parts)
    r = mode_coverage(x, s.modes, s.std)
    assert r["min_count"] == math.ceil(0.1 * x.shape[0] / 8)
    assert r["covered"] == 5
    assert mode_coverage(x, s.modes, s.std, min_fraction=0.0)["covered"] == 8
    # Samples displaced by 5 std count only with a looser threshold.
    shifted = x + torch.tensor([5 * s.std, 0.0])
    assert mode_coverage(shifted, s.modes, s.std)["high_quality_fraction"] < 0.05
    assert mode_coverage(shifted, s.modes, s.std, threshold_std=10.0)["covered"] == 5
    with pytest.raises(ValueError, match="modes"):
        mode_coverage(x, s.modes[:, :1], s.std)
    with pytest.raises(ValueError, match="std"):
        mode_coverage(x, s.modes, 0.0)


def test_frechet_diagonal_hand_computed():
    rng = np.random.default_rng(0)
    for d in (1, 4, 9):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
        want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
        got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-10)


def test_frechet_commuting_full_covariances_and_symmetry():
    # Same eigenvectors: sqrt(S1 S2) = Q diag(sqrt(a b)) Q^T, so the trace term is known.
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.2, 2, 6), rng.uniform(0.2, 2, 6)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert math.isclose(frechet_distance(mu1, s1, mu2, s2), want, rel_tol=1e-7)
    assert math.isclose(frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1), rel_tol=1e-7)


def test_frechet_identical_and_torch_inputs():
    f = torch.randn(500, 8, dtype=torch.float64) @ torch.randn(8, 8, dtype=torch.float64)
    mu, sigma = feature_statistics(f)
    assert mu.shape == (8,) and sigma.shape == (8, 8)
    np.testing.assert_allclose(mu, f.mean(0).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f.numpy().T), rtol=1e-12)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    assert abs(frechet_distance(torch.from_numpy(mu), torch.from_numpy(sigma), mu, sigma)) < 1e-6
    # Two samples of one distribution are close; a shifted one is far.
    g = torch.randn(500, 8, dtype=torch.float64) @ torch.randn(8, 8, dtype=torch.float64)
    mu2, sigma2 = feature_statistics(g + 3.0)
    assert frechet_distance(mu, sigma, mu2, sigma2) > 8 * 9.0 * 0.9


def test_frechet_singular_and_bad_shapes():
    # Rank-deficient covariances (fewer samples than dims) still give a finite value.
    f1 = np.random.default_rng(2).normal(size=(3, 10))
    f2 = np.random.default_rng(3).normal(size=(3, 10))
    with np.errstate(all="ignore"):
        v = frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    assert np.isfinite(v) and v > 0
    with pytest.raises(ValueError, match="mu1 and mu2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="sigma1"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="features"):
        feature_statistics(np.zeros((1, 3)))


def test_frechet_general_covariances_against_direct_scipy():
    """Non-commuting covariances: the trace of sqrtm(S1 S2) equals that of the symmetric form
    sqrtm(S1^1/2 S2 S1^1/2) (similar matrices), computed here directly with scipy."""
    import scipy.linalg

    rng = np.random.default_rng(4)
    for d in (2, 7, 32):
        a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
        s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        r1 = scipy.linalg.sqrtm(s1).real
        want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(r1 @ s2 @ r1).real)
        assert math.isclose(frechet_distance(mu1, s1, mu2, s2), want, rel_tol=1e-8)


def test_frechet_of_samples_converges_to_the_known_answer():
    """Features drawn from two known Gaussians: the distance of their sample statistics is
    the closed-form distance of the true parameters, up to sampling error."""
    rng = np.random.default_rng(5)
    d = 5
    a, b = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    f1 = mu1 + rng.normal(size=(200_000, d)) * np.sqrt(a)
    f2 = mu2 + rng.normal(size=(200_000, d)) * np.sqrt(b)
    got = frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    assert abs(got - want) < 0.02 * want
