import numpy as np
import pytest
import torch

from mnistgen.evaluation.fd import (FeatureStats, class_histogram, fd_infinity, fd_spread, feature_stats,
                                   frechet_distance)


def test_fd_of_identical_statistics_is_zero():
    g = torch.Generator().manual_seed(0)
    stats = feature_stats(torch.randn(500, 6, generator=g, dtype=torch.float64))
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-8)


def test_fd_matches_closed_form_for_commuting_covariances():
    """Diagonal covariances: FD = ||mu_a - mu_b||^2 + sum (sqrt(a_i) - sqrt(b_i))^2."""
    a_var, b_var = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64), torch.tensor([9.0, 1.0, 0.25],
                                                                                   dtype=torch.float64)
    a = FeatureStats(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.diag(a_var))
    b = FeatureStats(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), torch.diag(b_var))
    expected = 1 + 0 + 4 + ((a_var.sqrt() - b_var.sqrt()) ** 2).sum().item()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-10)


def test_fd_matches_scipy_free_reference_for_full_covariances():
    """General case against the textbook formula tr(A + B - 2 sqrtm(A B)) computed with numpy eig."""
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(2, 5, 5))
    A, B = m1 @ m1.T + np.eye(5), m2 @ m2.T + 0.5 * np.eye(5)
    eig = np.linalg.eigvals(A @ B)  # sqrtm(AB) has eigenvalues sqrt(eig(AB)), all real and positive
    expected = np.trace(A) + np.trace(B) - 2 * np.sqrt(eig.real.clip(min=0)).sum()
    a = FeatureStats(torch.zeros(5, dtype=torch.float64), torch.from_numpy(A))
    b = FeatureStats(torch.zeros(5, dtype=torch.float64), torch.from_numpy(B))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


def test_class_histogram_counts_all_ten_digits():
    assert class_histogram(torch.tensor([0, 0, 3, 9])) == [2, 0, 0, 1, 0, 0, 0, 0, 0, 1]


def _gaussian_case(g, n=2000, d=32):
    """Features N(0.1, 1.2^2 I) against the exact statistics of N(0, I): the true FD is
    d (0.1^2 + (1.2 - 1)^2); an FD from n samples is biased upwards by about tr(Sigma) / n."""
    reference = FeatureStats(torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64))
    return reference, d * (0.1**2 + 0.2**2), lambda: torch.randn(n, d, generator=g) * 1.2 + 0.1


def test_fd_infinity_removes_the_small_sample_bias():
    g = torch.Generator().manual_seed(0)
    reference, true, draw = _gaussian_case(g)
    sets = [draw() for _ in range(20)]
    finite = sum(frechet_distance(feature_stats(f), reference) for f in sets) / 20
    extrapolated = sum(fd_infinity(f, reference, generator=g) for f in sets) / 20
    assert finite - true > 0.1  # the bias FD_inf is there to remove
    assert abs(extrapolated - true) < 0.25 * (finite - true)
    assert fd_infinity(torch.randn(100, 32, generator=g), reference) is None  # too few to extrapolate


def test_bootstrap_std_matches_the_spread_over_independent_sample_sets():
    g = torch.Generator().manual_seed(1)
    reference, _, draw = _gaussian_case(g, n=1000)
    spread = torch.tensor([frechet_distance(feature_stats(draw()), reference) for _ in range(40)]).std().item()
    bootstrap = fd_spread(draw(), reference, generator=g)
    assert 0.6 * spread < bootstrap.std < 1.6 * spread and bootstrap.resamples == 100
