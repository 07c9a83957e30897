import math

import pytest
import torch
import torch.nn.functional as F

from mnistgen.models.vae import (kl_gaussian_gaussian_analytic, kl_gaussian_gaussian_mc, log_likelihood_bernoulli,
                                 log_likelihood_bernoulli_logits, log_likelihood_normal, log_mean_exp)


def test_bernoulli_matches_torch_bce_on_grey_levels():
    g = torch.Generator().manual_seed(0)
    mu = torch.rand(5, 1, 28, 28, generator=g).clamp(0.01, 0.99)
    target = torch.rand(5, 1, 28, 28, generator=g)  # grey levels, as in the study
    expected = -F.binary_cross_entropy(mu, target, reduction="none").sum((1, 2, 3))
    got = log_likelihood_bernoulli(mu, target)
    assert got.shape == (5,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(log_likelihood_bernoulli_logits(torch.logit(mu), target), expected, rtol=1e-5, atol=1e-3)


def test_normal_log_likelihood_matches_torch_distribution():
    g = torch.Generator().manual_seed(1)
    mu, logvar, z = torch.randn(3, 4, 7, generator=g).unbind(0)
    expected = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1)
    torch.testing.assert_close(log_likelihood_normal(mu, logvar, z), expected)


@pytest.mark.parametrize("scale", [1.0, 1000.0, -1000.0])
def test_log_mean_exp_is_stable_and_exact(scale):
    y = torch.tensor([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]]) + scale
    got = log_mean_exp(y)
    expected = torch.tensor([math.log((1 + math.e + math.e**2) / 3) + scale, 5.0 + scale])
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-4)


def test_log_mean_exp_single_huge_entry():
    y = torch.tensor([[1000.0, -1000.0]])
    torch.testing.assert_close(log_mean_exp(y), torch.tensor([1000.0 - math.log(2)]))


def test_analytic_kl_matches_monte_carlo_and_torch():
    g = torch.Generator().manual_seed(2)
    mu_q, logvar_q, mu_p, logvar_p = (0.5 * torch.randn(4, 3, 6, generator=g)).unbind(0)
    analytic = kl_gaussian_gaussian_analytic(mu_q, logvar_q, mu_p, logvar_p)
    q = torch.distributions.Normal(mu_q, (0.5 * logvar_q).exp())
    p = torch.distributions.Normal(mu_p, (0.5 * logvar_p).exp())
    torch.testing.assert_close(analytic, torch.distributions.kl_divergence(q, p).sum(1))
    mc = kl_gaussian_gaussian_mc(mu_q, logvar_q, mu_p, logvar_p, num_samples=200_000, generator=g)
    assert mc.shape == (3,)
    torch.testing.assert_close(mc, analytic, rtol=0.0, atol=0.03)


def test_kl_is_zero_for_equal_distributions_and_positive_otherwise():
    mu = torch.randn(2, 5)
    logvar = torch.randn(2, 5)
    torch.testing.assert_close(kl_gaussian_gaussian_analytic(mu, logvar, mu, logvar), torch.zeros(2))
    assert (kl_gaussian_gaussian_analytic(mu + 0.1, logvar, mu, logvar) > 0).all()
