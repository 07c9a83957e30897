"""The network's output parameterisation (eps, v, x_0): the loss in x_0 space and the samplers' conversion.

Every expectation is computed in x_0 space in float64 with the relations of Salimans & Ho 2022
(x_0 = alpha z - sigma v; x_0 = (z - sigma eps) / alpha), not with the module's formulas."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from mnistgen.config import CFGConfig, DDPMConfig
from mnistgen.diffusion.ddpm import GaussianDiffusion
from mnistgen.diffusion.denoiser import Denoiser
from mnistgen.diffusion.logsnr import LogSNRDiffusion
from tests.diffusion.sampling import sample

AB = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))  # float64, independent of the module's schedule


def _x0_hat(prediction, out, xt, ab):
    """The x_0 a network output implies at x_t (float64 NumPy)."""
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    return {"eps": (xt - sigma * out) / alpha, "v": alpha * xt - sigma * out, "x0": out}[prediction]


@pytest.mark.parametrize("weighting", ["uniform", "min-snr", "clamped-snr"])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_loss_is_the_x0_error_under_the_stated_weight(prediction, weighting):
    """The per-example loss is w(SNR) ||x_0 - x_0^||^2 with w = min(SNR, gamma) for min-SNR and
    clamp(SNR, 1, gamma) for clamped SNR whatever the network predicts, and w = SNR (eps), SNR + 1 (v)
    or 1 (x_0) for the plain squared error."""
    gamma = 5.0
    process = GaussianDiffusion(DDPMConfig(prediction=prediction, loss_weighting=weighting, min_snr_gamma=gamma))
    model = lambda x, t: 0.7 * x + 0.001 * t.view(-1, 1, 1, 1)  # noqa: E731
    x0 = torch.rand(512, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss = process.loss(model, x0, generator=torch.Generator().manual_seed(1)).item()
    g = torch.Generator().manual_seed(1)  # the same draws in the same order: t, then the noise
    t = torch.randint(0, 1000, (512,), generator=g).numpy()
    noise = torch.randn(x0.shape, generator=g).double().numpy()
    ab = AB[t].reshape(-1, 1, 1, 1)
    x = x0.double().numpy()
    xt = np.sqrt(ab) * x + np.sqrt(1 - ab) * noise
    out = 0.7 * xt + 0.001 * t.reshape(-1, 1, 1, 1)
    mse_x0 = ((x - _x0_hat(prediction, out, xt, ab)) ** 2).mean(axis=(1, 2, 3))
    snr = AB[t] / (1 - AB[t])
    weight = {"min-snr": np.minimum(snr, gamma), "clamped-snr": np.clip(snr, 1, gamma),
              "uniform": {"eps": snr, "v": snr + 1, "x0": np.ones_like(snr)}[prediction]}[weighting]
    assert loss == pytest.approx(np.mean(weight * mse_x0), rel=1e-4)


def _oracle(prediction, c):
    """The exact predictor for data that is always the image ``c``: it knows x_0 = c."""
    return _oracle_t(prediction, c, None)


def _oracle_t(prediction, c, process):
    """As :func:`_oracle`, on ``process``'s schedule (None: the study's T = 1000), recomputed in float64."""
    table = AB if process is None else np.cumprod(1 - np.linspace(1e-4, 0.02, process.T))
    def model(z, t):
        ab = torch.tensor(table, dtype=torch.float64)[t.long()].view(-1, 1, 1, 1)
        alpha, sigma = ab.sqrt(), (1 - ab).sqrt()
        eps = (z.double() - alpha * c) / sigma
        return {"eps": eps, "v": (alpha * z.double() - c) / sigma, "x0": c.expand_as(z)}[prediction].float()
    return model


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_samplers_see_the_same_eps_whatever_is_predicted(prediction):
    """With the exact predictor of a point mass, a v or x_0 network gives the eps network's samples
    (deterministic DDIM; the ancestral chain on a 100-step schedule), and DDIM lands on the point."""
    c = torch.linspace(-0.9, 0.9, 16, dtype=torch.float64).view(1, 1, 4, 4)
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    ref = GaussianDiffusion(DDPMConfig(prediction="eps"))
    other = GaussianDiffusion(DDPMConfig(prediction=prediction))
    a = sample("ddim", _oracle("eps", c), ref, noise, steps=20, eta=0.0)
    b = sample("ddim", _oracle(prediction, c), other, noise, steps=20, eta=0.0)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    torch.testing.assert_close(b, c.float().expand_as(b), atol=1e-3, rtol=0)
    process_small = [GaussianDiffusion(DDPMConfig(timesteps=100, prediction=p)) for p in ("eps", prediction)]
    chains = [sample("ancestral", _oracle_t(p, c, proc), proc, noise, torch.Generator().manual_seed(1))
              for p, proc in zip(("eps", prediction), process_small)]
    torch.testing.assert_close(chains[1], chains[0], atol=1e-4, rtol=0)
    xt = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    grid = other.grid(4)  # t = 999, 666, 333, 0
    for i in range(4):
        torch.testing.assert_close(Denoiser(_oracle(prediction, c), prediction)(xt, grid, i).eps,
                                   Denoiser(_oracle("eps", c), "eps")(xt, grid, i).eps, atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_cfg_loss_is_the_x0_error_under_the_plain_weight(prediction):
    """The CFG loss is the plain squared error of the target: SNR, SNR + 1 or 1 times the x_0 error,
    with SNR = e^lambda; lambda and the draws are redone here in float64."""
    process = LogSNRDiffusion(CFGConfig(prediction=prediction, p_uncond=0.0))
    model = lambda x, t, c: 0.6 * x + 0.0005 * t.view(-1, 1, 1, 1)  # noqa: E731
    model.null_label = 10
    x0 = torch.rand(256, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.zeros(256, dtype=torch.long)
    loss = process.loss(model, x0, labels, generator=torch.Generator().manual_seed(3)).item()
    g = torch.Generator().manual_seed(3)  # the same draws in the same order: u, then the noise
    u = torch.rand(256, generator=g).double().numpy()
    noise = torch.randn(x0.shape, generator=g).double().numpy()
    a, b = np.arctan(np.exp(-10.0)), np.arctan(np.exp(10.0)) - np.arctan(np.exp(-10.0))
    lam = -2 * np.log(np.tan(a + b * u))  # lambda(u), lambda_max = 20, lambda_min = -20
    ab = (1 / (1 + np.exp(-lam))).reshape(-1, 1, 1, 1)  # alpha^2 = sigmoid(lambda)
    x = x0.double().numpy()
    z = np.sqrt(ab) * x + np.sqrt(1 - ab) * noise
    out = 0.6 * z + 0.0005 * (1000 * (20 - lam) / 40).reshape(-1, 1, 1, 1)
    mse_x0 = ((x - _x0_hat(prediction, out, z, ab)) ** 2).mean(axis=(1, 2, 3))
    snr = np.exp(lam)
    weight = {"eps": snr, "v": snr + 1, "x0": np.ones_like(snr)}[prediction]
    assert loss == pytest.approx(np.mean(weight * mse_x0), rel=1e-3)


@pytest.mark.parametrize("prediction, extent", [("v", 20.0), ("x0", 8.0)])
def test_cfg_sampler_sees_the_same_guided_eps_whatever_is_predicted(prediction, extent):
    """Guidance combines eps whatever the network predicts: a v or x_0 network that is the exact conversion
    of an eps network gives the same guided samples (v over the default log-SNR range -20 .. 20; x_0 over
    -8 .. 8, since converting x_0 to eps divides by sigma, 4.5e-5 at lambda = 20)."""
    def eps_net(z, t, c):
        return 0.3 * z + 0.05 * c.view(-1, 1, 1, 1).float() + 0.0002 * t.view(-1, 1, 1, 1)
    def other_net(z, t, c):  # v = alpha eps - sigma x_0 and x_0 = (z - sigma eps) / alpha, from t -> lambda
        lam = (extent - 2 * extent * t.double() / 1000).view(-1, 1, 1, 1)  # model_time inverted
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        eps, zd = eps_net(z, t, c).double(), z.double()
        x0 = (zd - sigma * eps) / alpha
        return (alpha * eps - sigma * x0 if prediction == "v" else x0).float()
    for net in (eps_net, other_net):
        net.null_label = 10
    config = CFGConfig(lambda_min=-extent, lambda_max=extent)
    z = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 5, 9])
    runs = [sample("ancestral", net, LogSNRDiffusion(replace(config, prediction=p)), z,
                   torch.Generator().manual_seed(1), steps=16, labels=labels, w=0.5)
            for net, p in ((eps_net, "eps"), (other_net, prediction))]
    torch.testing.assert_close(runs[1], runs[0], atol=1e-4, rtol=1e-4)


def _cosine_bounds():
    lam = np.log(AB / (1 - AB))  # float64, decreasing in t
    b = np.arctan(np.exp(-lam[0] / 2))
    return lam, np.arctan(np.exp(-lam[-1] / 2)) - b, b


def test_cosine_timesteps_follow_the_truncated_cosine_log_snr():
    """t >= k exactly when lambda < lambda_{k-1}; under the cosine schedule truncated to [lambda_{T-1}, lambda_0]
    (lambda = -2 log tan(a u + b), u uniform) P(lambda < x) = 1 - (atan(exp(-x / 2)) - b) / a. Checked on
    the linear schedule's own log-SNRs, computed here in float64, to 5 binomial standard errors."""
    process = GaussianDiffusion(DDPMConfig(t_distribution="cosine"))
    t = process.sample_t(200_000, torch.device("cpu"), torch.Generator().manual_seed(0)).numpy()
    assert t.min() >= 0 and t.max() <= 999
    lam, a, b = _cosine_bounds()
    for k in (1, 2, 50, 150, 300, 500, 700, 900, 999):
        expected = 1 - (np.arctan(np.exp(-lam[k - 1] / 2)) - b) / a
        tolerance = 5 * np.sqrt(expected * (1 - expected) / len(t)) + 1e-4
        assert np.mean(t >= k) == pytest.approx(expected, abs=tolerance), k
    again = process.sample_t(200_000, torch.device("cpu"), torch.Generator().manual_seed(0)).numpy()
    assert np.array_equal(t, again)  # the generator drives every draw
    uniform = GaussianDiffusion(DDPMConfig()).sample_t(200_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert np.mean(uniform.numpy() >= 700) == pytest.approx(0.3, abs=0.005)  # DDPM algorithm 1


def test_cosine_timestep_is_the_first_step_at_or_below_the_quantile():
    """On a grid of u: lambda_t <= lambda(u) < lambda_{t-1} (to float32 rounding), the ends included."""
    process = GaussianDiffusion(DDPMConfig(t_distribution="cosine"))
    u = np.linspace(0, 1, 20_001)
    t = process.cosine_timestep(torch.tensor(u, dtype=torch.float32)).numpy()
    lam, a, b = _cosine_bounds()
    quantile = -2 * np.log(np.tan(a * u + b))
    tol = 1e-4 * np.maximum(1, np.abs(quantile))
    assert t[0] == 0 and t[-1] == 999
    assert np.all(lam[t] <= quantile + tol)
    inner = t > 0
    assert np.all(lam[t[inner] - 1] > quantile[inner] - tol[inner])
    assert 0 < np.mean(t == 0) < 0.002  # truncated: no pile-up of the tail on the end steps


def test_the_loss_draws_its_timesteps_from_the_distribution():
    """The loss sees exactly sample_t's timesteps (same generator, same first draw)."""
    process = GaussianDiffusion(DDPMConfig(t_distribution="cosine", prediction="v"))
    seen = []
    def model(x, t):
        seen.append(t.long())
        return torch.zeros_like(x)
    process.loss(model, torch.zeros(64, 1, 4, 4), generator=torch.Generator().manual_seed(5))
    expected = process.sample_t(64, torch.device("cpu"), torch.Generator().manual_seed(5))
    assert torch.equal(seen[0], expected)
