"""Likelihood of diffusion models against closed forms: a Gaussian toy whose optimal denoiser is known
exactly, each bound's terms against float64 formulas written here, Hutchinson's estimator against
the exact trace, and the dequantization offset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mnistgen.config import CFGConfig, DDPMConfig
from mnistgen.diffusion import likelihood as lk
from mnistgen.diffusion.ddpm import GaussianDiffusion
from mnistgen.diffusion.denoiser import Denoiser
from mnistgen.diffusion.logsnr import LogSNRDiffusion
from mnistgen import greylevels as gl
from mnistgen.errors import UserError

MU, S = 0.3, 0.5  # the toy's data: N(MU, S^2 I) in 4 dimensions, shaped (B, 1, 2, 2)


class OptimalEps(nn.Module):
    """E[eps | z] for Gaussian data, z = alpha x + sigma eps: sigma (z - alpha mu) / (alpha^2 s^2 + sigma^2),
    the log-SNR read back from the network's time by ``lam_of_time``."""

    def __init__(self, lam_of_time, s: float = S):
        super().__init__()
        self.lam_of_time, self.s = lam_of_time, s
        self.dummy = nn.Parameter(torch.zeros(()))  # a weight, as networks have

    def forward(self, z: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        lam = self.lam_of_time(time.double()).view(-1, 1, 1, 1)
        a2, s2 = torch.sigmoid(lam), torch.sigmoid(-lam)
        eps = s2.sqrt() * (z.double() - a2.sqrt() * MU) / (a2 * self.s**2 + s2)
        return (eps + 0 * self.dummy).float()


def ddpm_lam_of_time(process: GaussianDiffusion):
    """The DDPM's log-SNR at a (fractional) timestep, interpolated in float64 from the schedule's alpha_bar."""
    betas = np.linspace(process.config.beta_start, process.config.beta_end, process.T)
    ab = np.cumprod(1 - betas)
    table = np.log(ab / (1 - ab))

    def lam(time: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.interp(time.numpy(), np.arange(process.T), table))

    return lam


def cfg_lam_of_time(config: CFGConfig):
    return lambda time: config.lambda_max - time / 1000 * (config.lambda_max - config.lambda_min)


def toy_data(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return MU + S * torch.randn(n, 1, 2, 2, generator=g)


def exact_nll(x: torch.Tensor, mean: float = MU, var: float = S**2) -> torch.Tensor:
    x = x.double().flatten(1)
    return (0.5 * math.log(2 * math.pi * var) + (x - mean) ** 2 / (2 * var)).sum(1)


def ddpm_toy(timesteps: int) -> tuple[GaussianDiffusion, Denoiser]:
    """A DDPM whose betas shrink as 1/T so that alpha_bar_T stays put as T grows."""
    process = GaussianDiffusion(DDPMConfig(timesteps=timesteps, beta_start=0.1 / timesteps, beta_end=20 / timesteps))
    return process, Denoiser(OptimalEps(ddpm_lam_of_time(process)), "eps")


def test_ode_nll_of_the_gaussian_toy_is_exact_for_both_processes():
    x = toy_data(64)
    cfg = LogSNRDiffusion(CFGConfig())
    nll = lk.ode_nll(Denoiser(OptimalEps(cfg_lam_of_time(cfg.config)), "eps"), cfg, x, tolerance=1e-4, probes=1,
                     generator=torch.Generator().manual_seed(1)).nll
    per_dim = (nll.double() - exact_nll(x)).abs().max().item() / 4
    assert per_dim < 0.01, per_dim
    ddpm, denoiser = ddpm_toy(1000)
    lam_max = ddpm.log_snr_range()[1]
    a2 = 1 / (1 + math.exp(-lam_max))  # the ODE's density is the model's at lambda_max: N(alpha mu, alpha^2 s^2 + sigma^2)
    nll = lk.ode_nll(denoiser, ddpm, x, tolerance=1e-4, generator=torch.Generator().manual_seed(1)).nll
    exact = exact_nll(x, math.sqrt(a2) * MU, a2 * S**2 + 1 - a2)
    assert (nll.double() - exact).abs().max().item() / 4 < 0.01


def test_ode_nll_is_wrong_with_a_wrong_denoiser():
    """The check above can fail: a denoiser for another data variance gives another density."""
    x = toy_data(64)
    cfg = LogSNRDiffusion(CFGConfig())

    nll = lk.ode_nll(Denoiser(OptimalEps(cfg_lam_of_time(cfg.config), 2 * S), "eps"), cfg, x, tolerance=1e-4).nll
    assert (nll.double() - exact_nll(x, MU, 4 * S**2)).abs().max().item() / 4 < 0.01
    assert (nll.double() - exact_nll(x)).abs().mean().item() / 4 > 0.1


def test_continuous_vlb_of_the_gaussian_toy_is_tight():
    """With the optimal denoiser the bound's expectation is -log p(x) (its gap is the decoder's at
    lambda_max = 20 and the prior's at -20, both far below 0.01 nats per dimension)."""
    cfg = LogSNRDiffusion(CFGConfig())
    denoiser = Denoiser(OptimalEps(cfg_lam_of_time(cfg.config)), "eps")
    x = toy_data(200_000)  # each image's bound varies by a few nats (its noise draws): many images
    bound = lk.continuous_vlb(denoiser, cfg, x, strata=32, generator=torch.Generator().manual_seed(2), discrete=False)
    gap = (bound.total.double() - exact_nll(x)) / 4  # nats per dimension
    se = gap.std().item() / math.sqrt(len(gap))
    assert se < 0.004, se
    assert abs(gap.mean().item()) < 0.01
    assert bound.terms.shape == (200_000, 32) and torch.allclose(bound.terms.sum(1), bound.diffusion)


def test_ddpm_vlb_of_the_gaussian_toy_converges_as_t_grows():
    """The gap to -log p(x), per dimension, over 20,000 images (its standard error about 0.004):
    0.022 at T = 50, then within 0.01 of 0 at T = 1000 (betas scaled as 1/T)."""
    x = toy_data(20_000)
    gaps = []
    for T in (50, 200, 1000):
        process, denoiser = ddpm_toy(T)
        bound = lk.ddpm_vlb(denoiser, process, x, strata=T - 1, generator=torch.Generator().manual_seed(3),
                            discrete=False)
        gaps.append(((bound.total.double() - exact_nll(x)) / 4).mean().item())
    assert gaps[0] > 0.015 and abs(gaps[1]) < 0.015 and abs(gaps[2]) < 0.01, gaps
    assert gaps[0] - gaps[2] > 0.01, gaps


# -- each term against float64 formulas written here --------------------------------------------
def np_kl(mq, vq, mp, vp):
    return (0.5 * (np.log(vp) - np.log(vq) + (vq + (mq - mp) ** 2) / vp - 1)).reshape(len(mq), -1).sum(1)


def mass(a: float, b: float) -> float:
    """Phi(b) - Phi(a) in float64 from erfc, taken in the tail where it does not cancel."""
    if a > 0:  # both in the upper tail: Q(a) - Q(b)
        return 0.5 * (math.erfc(a / math.sqrt(2)) - math.erfc(b / math.sqrt(2)))
    return 0.5 * (math.erfc(-b / math.sqrt(2)) - math.erfc(-a / math.sqrt(2)))


def np_discretized_nll(x, mean, std):
    out = np.zeros(len(x))
    for i in range(len(x)):
        for xi, mi in zip(x[i].ravel(), mean[i].ravel()):
            a = -math.inf if xi <= -1 + 1 / 255 else (xi - 1 / 255 - mi) / std
            b = math.inf if xi >= 1 - 1 / 255 else (xi + 1 / 255 - mi) / std
            out[i] -= math.log(mass(a, b))
    return out


def test_gaussian_kl_and_discretized_likelihood_match_float64_formulas():
    g = torch.Generator().manual_seed(4)
    mq, mp = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 1, 4, 4, generator=g,
                                                                                        dtype=torch.float64)
    vq, vp = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64) + 0.1, torch.rand(3, 1, 1, 1, generator=g,
                                                                                           dtype=torch.float64) + 0.1
    np.testing.assert_allclose(lk.gaussian_kl(mq, vq, mp, vp).numpy(),
                               np_kl(mq.numpy(), vq.numpy(), mp.numpy(), np.broadcast_to(vp.numpy(), mq.shape)),
                               rtol=0, atol=1e-6)
    levels = torch.randint(0, 256, (3, 1, 4, 4), generator=g)
    x = (2 * levels / 255 - 1).double()
    x[0, 0, 0, :2] = torch.tensor([-1.0, 1.0], dtype=torch.float64)  # both edge bins
    mean = x + 0.01 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    for std in (0.003, 0.01, 0.1, 1.0):
        s = torch.full((), std, dtype=torch.float64)
        np.testing.assert_allclose(gl.discretized_nll(x, mean, s).numpy(),
                                   np_discretized_nll(x.numpy(), mean.numpy(), std), rtol=0, atol=1e-6)


def test_the_far_tails_of_the_discretized_likelihood_stay_finite_in_float32():
    x = torch.tensor([[0.5, -0.5]]).view(1, 1, 1, 2)
    mean = torch.tensor([[-0.5, 0.5]]).view(1, 1, 1, 2)  # 100 and more standard deviations away
    nll = gl.discretized_nll(x, mean, torch.tensor(0.01))
    assert torch.isfinite(nll).all() and nll.item() > 1000
    # far in the upper tail (both bin edges where Phi rounds to 1 in float32): the flipped form is exact
    far = gl.discretized_nll(torch.tensor([0.0]).view(1, 1, 1, 1), torch.tensor([-0.07]).view(1, 1, 1, 1),
                                      torch.tensor(0.01))
    z_lo, z_hi = (0.0 - 1 / 255 + 0.07) / 0.01, (0.0 + 1 / 255 + 0.07) / 0.01
    exact = -math.log(0.5 * math.erfc(z_lo / math.sqrt(2)) - 0.5 * math.erfc(z_hi / math.sqrt(2)))
    assert far.item() == pytest.approx(exact, rel=1e-4)


def test_each_ddpm_term_matches_a_float64_computation_from_the_schedule():
    """L_{t-1}, L_0 and L_T of one image against the paper's formulas evaluated here in float64."""
    T = 50
    process, denoiser = ddpm_toy(T)
    x0 = torch.clamp(toy_data(2), -1, 1)
    betas = np.linspace(0.1 / T, 20 / T, T)
    alphas, ab = 1 - betas, np.cumprod(1 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    x = x0.double().numpy()
    for t in (1, 17, T - 1):
        g = torch.Generator().manual_seed(5)
        got = lk.ddpm_step_kl(denoiser, process, x0, torch.full((2,), t), g).double().detach().numpy()
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5)).double().numpy()
        xt = math.sqrt(ab[t]) * x + math.sqrt(1 - ab[t]) * noise
        lam = math.log(ab[t] / (1 - ab[t]))
        a2, s2 = 1 / (1 + math.exp(-lam)), 1 / (1 + math.exp(lam))
        eps = math.sqrt(s2) * (xt - math.sqrt(a2) * MU) / (a2 * S**2 + s2)
        mean_q = (math.sqrt(ab_prev[t]) * betas[t] * x + math.sqrt(alphas[t]) * (1 - ab_prev[t]) * xt) / (1 - ab[t])
        var_q = (1 - ab_prev[t]) / (1 - ab[t]) * betas[t]
        mean_p = (xt - betas[t] / math.sqrt(1 - ab[t]) * eps) / math.sqrt(alphas[t])
        want = np_kl(mean_q, np.full_like(x, var_q), mean_p, np.full_like(x, betas[t]))
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)
    prior = lk.ddpm_vlb(denoiser, process, x0, strata=3).prior.double().numpy()  # L_T at the last timestep
    np.testing.assert_allclose(prior, np_kl(math.sqrt(ab[-1]) * x, np.full_like(x, 1 - ab[-1]), 0 * x, 1 + 0 * x),
                               rtol=1e-4, atol=1e-6)  # float32: the KL is 1e-5 nats here
    # L_0: -log N(x_0; mu_theta(x_1, 1), beta_1) (a density here: continuous toy data) at a given x_1
    x1 = math.sqrt(ab[0]) * x + math.sqrt(1 - ab[0]) * 0.3
    lam = math.log(ab[0] / (1 - ab[0]))
    a2, s2 = 1 / (1 + math.exp(-lam)), 1 / (1 + math.exp(lam))
    eps = math.sqrt(s2) * (x1 - math.sqrt(a2) * MU) / (a2 * S**2 + s2)
    mean = (x1 - betas[0] / math.sqrt(1 - ab[0]) * eps) / math.sqrt(alphas[0])
    want = (0.5 * np.log(2 * np.pi * betas[0]) + (x - mean) ** 2 / (2 * betas[0])).reshape(2, -1).sum(1)
    x1_t = torch.from_numpy(x1).float()
    zero = torch.zeros(2, dtype=torch.long)
    step_mean, variance = process.p_step(x1_t, 0, -1, denoiser.eps_at(x1_t, *process.alpha_sigma(zero, x1_t),
                                                                       process.model_time(zero)))
    got = lk.decoder_nll(x0, step_mean, variance.sqrt(), discrete=False).double().detach().numpy()
    np.testing.assert_allclose(got, want, rtol=2e-4)


def test_strata_cover_every_timestep_once_and_fewer_strata_estimate_the_same_sum():
    """strata = T - 1 puts each timestep in its own stratum (the full sum); 5 strata estimate the same
    sum without bias: their mean over many images agrees with it within the standard errors."""
    process, denoiser = ddpm_toy(40)
    x = toy_data(8)
    a = lk.ddpm_vlb(denoiser, process, x, strata=39, generator=torch.Generator().manual_seed(6))
    assert a.levels[0].tolist() == list(range(1, 40))
    half = lk.ddpm_vlb(denoiser, process, x, strata=5, generator=torch.Generator().manual_seed(6))
    assert half.terms.shape == (8, 5)
    runs = lk.timestep_runs(process, 5)
    assert runs[0][0] == 1 and runs[-1][1] == 39 and all(b + 1 == c for (_, b), (c, _) in zip(runs, runs[1:]))
    lengths = [b - a + 1 for a, b in runs]
    assert lengths[0] < lengths[-1]  # short runs where the log-SNR falls fastest (the first steps)
    many = toy_data(20_000, seed=1)
    full = lk.ddpm_vlb(denoiser, process, many, strata=39, generator=torch.Generator().manual_seed(7)).diffusion.double()
    five = lk.ddpm_vlb(denoiser, process, many, strata=5, generator=torch.Generator().manual_seed(8)).diffusion.double()
    se = (full - five).std().item() / math.sqrt(len(full))  # paired: the same images
    assert abs(full.mean().item() - five.mean().item()) < 3 * se, (full.mean().item(), five.mean().item(), se)
    assert five.var() > full.var()  # what stratifying fewer levels costs: variance, not bias


# -- Hutchinson's estimator --------------------------------------------------------------------
def test_hutchinson_matches_the_exact_trace_and_its_variance_falls_as_one_over_probes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 6), nn.Unflatten(1, (1, 2, 3)))
    x = torch.randn(1, 1, 2, 3)
    jac = torch.autograd.functional.jacobian(lambda z: net(z).flatten(), x).reshape(6, 6)
    exact = torch.trace(jac).item()
    g = torch.Generator().manual_seed(7)
    variances = {}
    for probes in (1, 4):
        draws = torch.stack([lk.hutchinson_trace(net, x, lk.rademacher(probes, x, g))[1] for _ in range(3000)])
        mean, se = draws.mean().item(), draws.std().item() / math.sqrt(len(draws))
        assert abs(mean - exact) < 3 * se, (probes, mean, exact, se)
        variances[probes] = draws.var().item()
    assert 3.0 < variances[1] / variances[4] < 5.3, variances
    # Rademacher probes: the variance is 2 sum_{i != j} J_ij^2-ish, never from the diagonal; check it is the closed form
    sym = (jac + jac.T) / 2
    closed = 2 * (sym.pow(2).sum() - sym.diag().pow(2).sum()).item()
    assert variances[1] == pytest.approx(closed, rel=0.1)


# -- dequantization ------------------------------------------------------------------------------
def test_uniform_noise_on_256_levels_under_a_uniform_model_is_8_bits_per_dimension():
    g = torch.Generator().manual_seed(8)
    levels = torch.randint(0, 256, (500, 1, 4, 4), generator=g)
    u = gl.dequantize(2 * levels / 255 - 1, g)
    low, high = -1 - 1 / 255, 1 + 1 / 255  # the dequantized support, the uniform model's
    assert u.min() >= low and u.max() <= high
    assert ((u + 1) / gl.bin_width()).round().long().eq(levels).all()  # each point stays in its level's bin
    dims = 16
    nll = dims * math.log(high - low)  # -log of the uniform density, per image
    bits = gl.bits_per_dim(nll + dims * gl.dequantization_nats(), dims)
    assert bits == pytest.approx(8.0, abs=1e-12)


def test_grey_levels_under_a_scale_far_wider_than_a_bin_stay_exact_in_float32():
    """At lambda = -20 the continuous bound's decoder has scale sigma / alpha = e^10: each bin is 4e-7
    scales wide, where F(high) - F(low) cancels in float32. The midpoint rule keeps it to float64's value."""
    g = torch.Generator().manual_seed(9)
    x = (2 * torch.randint(1, 255, (2, 1, 4, 4), generator=g) / 255 - 1).float()
    for scale in (math.exp(10), math.exp(7.5), math.exp(5), math.exp(2), 1.0):
        mean = x + scale * torch.randn(x.shape, generator=g)
        got = gl.discretized_nll(x, mean, torch.tensor(scale), "gaussian").double()
        assert torch.isfinite(got).all()
        if scale < math.exp(8):  # erfc's difference in float64 still holds 8 digits here: an independent reference
            want = np_discretized_nll(x.double().numpy(), mean.double().numpy(), scale)
            assert (np.abs(got.numpy() - want) / 16).max() < 1e-4, scale
        logistic = gl.discretized_nll(x, mean, torch.tensor(scale), "logistic").double()
        exact = gl.discretized_nll(x.double(), mean.double(), torch.tensor(scale, dtype=torch.float64), "logistic")
        assert torch.isfinite(logistic).all() and ((logistic - exact).abs() / 16).max().item() < 1e-4, scale


def test_the_ode_solver_stops_on_a_non_finite_state_and_after_its_most_evaluations():
    state = (torch.ones(2, 1, 2, 2), torch.zeros(2))
    with pytest.raises(UserError, match="not finite"):
        lk.bogacki_shampine(lambda lam, s: (s[0] * math.nan, s[1]), state, 0.0, -1.0, 1e-4)
    with pytest.raises(UserError, match="passed 30 evaluations"):  # a stiff rate at a tight tolerance
        lk.bogacki_shampine(lambda lam, s: (-1e4 * s[0], s[1]), state, 0.0, -1.0, 1e-6, most_calls=30)
    end, calls = lk.bogacki_shampine(lambda lam, s: (s[0], torch.ones_like(s[1])), state, 0.0, -1.0, 1e-6)
    assert torch.allclose(end[0], torch.full_like(end[0], math.exp(-1)), rtol=1e-5) and calls < 200  # x' = x
    assert torch.allclose(end[1], torch.full_like(end[1], -1.0))  # the integral of 1 from 0 to -1
