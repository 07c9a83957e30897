"""Every sampler of the registry on both noise processes and both grid spacings: finite results
everywhere, and on the CFG model's log-SNR process the DDIM and DPM-Solver++(2M) loops against NumPy
float64 versions written from the papers' equations over the same levels and the same noise."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from mnistgen.config import CFGConfig, DDPMConfig
from mnistgen.diffusion.ddpm import GaussianDiffusion
from mnistgen.diffusion.logsnr import LogSNRDiffusion
from mnistgen.diffusion.registry import GRID_SPACINGS, SAMPLERS, SamplerSettings
from tests.diffusion.sampling import sample

SHAPE = (3, 1, 5, 5)
C = CFGConfig()


class Net(nn.Module):
    """A fixed nonlinear elementwise 'network' (its output read as eps): 0.8 x + 0.3 tanh(1.3 x + 0.7 t / 1000 - 0.2)."""

    null_label = 10

    def forward(self, x, t, labels=None):
        shift = 0.0 if labels is None else 0.05 * labels.view(-1, 1, 1, 1).float()
        return 0.8 * x + 0.3 * torch.tanh(1.3 * x + 0.7 * t.view(-1, 1, 1, 1) / 1000 - 0.2 + shift)


def _net_np(x, t):
    return 0.8 * x + 0.3 * np.tanh(1.3 * x + 0.7 * t / 1000 - 0.2)


def _noise():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))


def _draws(seed):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(SHAPE, generator=g).double().numpy()


@pytest.mark.parametrize("process", [GaussianDiffusion(DDPMConfig()), LogSNRDiffusion(C)], ids=["ddpm", "logsnr"])
@pytest.mark.parametrize("spacing", GRID_SPACINGS)
@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 10, 50, 256])
def test_every_sampler_gives_finite_samples(process, spacing, name, steps):
    """Guided at w = 1 on the log-SNR process (the CFG model), unconditional on the DDPM; the DDIM loop at
    eta = 1 too. The log-SNR grid's clean end has alpha_bar = 1 in float32: nothing may divide by 1 - alpha_bar."""
    options = {"eta": 1.0} if "eta" in SAMPLERS[name].options else {}
    guided = {"labels": torch.tensor([0, 4, 9]), "w": 1.0} if isinstance(process, LogSNRDiffusion) else {}
    out = sample(name, Net(), process, _noise(), torch.Generator().manual_seed(1), steps=steps, spacing=spacing,
                 **guided, **options)
    assert torch.isfinite(out).all(), (name, spacing, steps)


def _levels(steps, spacing, power=1.0):
    """The log-SNR process's grid in float64: lambda from lambda_min to lambda_max, at u = (1 - k/K)^power of
    the cosine schedule's time (time; trailing, the same grid here) or uniform in lambda; alpha^2 =
    sigmoid(lambda); the network's time 1000 (lambda_max - lambda) / (range)."""
    if spacing in ("time", "trailing"):
        b = math.atan(math.exp(-C.lambda_max / 2))
        a = math.atan(math.exp(-C.lambda_min / 2)) - b
        lam = -2 * np.log(np.tan(a * (1 - np.arange(steps + 1) / steps) ** power + b))
    else:
        lam = np.linspace(C.lambda_min, C.lambda_max, steps + 1)
    return lam, 1 / (1 + np.exp(-lam)), 1000 * (C.lambda_max - lam) / (C.lambda_max - C.lambda_min)


def _ddim_np(x, steps, spacing, eta, seed, power=1.0):
    """DDIM eq. 12 and 16 over the levels, x0 clipped and eps made consistent with it."""
    z = _draws(seed)
    lam, ab, time = _levels(steps, spacing, power)
    for i in range(steps):
        s2, s2_next = 1 / (1 + np.exp(lam[i])), 1 / (1 + np.exp(lam[i + 1]))  # 1 - alpha^2 = sigmoid(-lambda)
        eps = _net_np(x, time[i])
        x0 = np.clip((x - np.sqrt(s2) * eps) / np.sqrt(ab[i]), -1, 1)
        eps = (x - np.sqrt(ab[i]) * x0) / np.sqrt(s2)
        sigma = eta * np.sqrt(s2_next / s2 * (1 - ab[i] / ab[i + 1]))
        x = np.sqrt(ab[i + 1]) * x0 + np.sqrt(s2_next - sigma**2) * eps
        if i + 1 < steps:
            x = x + sigma * next(z)
    return x


def _dpm_np(x, steps, spacing, power=1.0):
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2) in lambda / 2 = log(alpha / sigma), every step onto the
    next level (the last is lambda_max, not sigma = 0)."""
    lam, ab, time = _levels(steps, spacing, power)
    half = lam / 2
    x0s, hs = [], []
    for i in range(steps):
        alpha, sigma = np.sqrt(ab[i]), np.sqrt(1 - ab[i])
        x0s.append(np.clip((x - sigma * _net_np(x, time[i])) / alpha, -1, 1))
        hs.append(half[i + 1] - half[i])
        r = None if i == 0 else hs[-2] / hs[-1]  # r_i = h_{i-1} / h_i
        d = x0s[-1] if i == 0 else (1 + 1 / (2 * r)) * x0s[-1] - 1 / (2 * r) * x0s[-2]
        sigma_next = 1 / np.sqrt(1 + np.exp(lam[i + 1]))
        x = sigma_next / sigma * x - np.sqrt(ab[i + 1]) * np.expm1(-hs[-1]) * d
    return x


GRIDS = [(spacing, 1.0) for spacing in GRID_SPACINGS] + [("time", 0.8), ("trailing", 0.6), ("trailing", 2.0)]


@pytest.mark.parametrize("spacing, power", GRIDS)
@pytest.mark.parametrize("steps, eta", [(10, 0.0), (32, 1.0), (50, 0.5)])
def test_ddim_on_the_log_snr_process_matches_numpy(spacing, power, steps, eta):
    out = sample("ddim", Net(), LogSNRDiffusion(C), _noise(), torch.Generator().manual_seed(3), steps=steps,
                 spacing=spacing, power=power, eta=eta)
    expected = _ddim_np(_noise().double().numpy(), steps, spacing, eta, 3, power)
    np.testing.assert_allclose(out.double().numpy(), expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("spacing, power", GRIDS)
@pytest.mark.parametrize("steps", [2, 10, 40])
def test_dpm_solver_on_the_log_snr_process_matches_numpy(spacing, power, steps):
    out = sample("dpm++2m", Net(), LogSNRDiffusion(C), _noise(), steps=steps, spacing=spacing, power=power)
    np.testing.assert_allclose(out.double().numpy(), _dpm_np(_noise().double().numpy(), steps, spacing, power),
                               atol=1e-3, rtol=0)


@pytest.mark.parametrize("process", [GaussianDiffusion(DDPMConfig()), LogSNRDiffusion(C)], ids=["ddpm", "logsnr"])
def test_draw_samples_on_the_settings_grid_and_power(process):
    """``samplers.draw`` (what every kind calls) builds the grid its settings name, power included: it
    matches the loop on that grid and differs from the grid at power 1."""
    from mnistgen.diffusion.samplers import draw

    settings = SamplerSettings("ddim", 6, 0.0, None, "trailing", 0.7)
    out = draw(Net(), process, _noise(), settings)
    torch.testing.assert_close(out, sample("ddim", Net(), process, _noise(), steps=6, spacing="trailing", power=0.7,
                                           eta=0.0))
    plain = draw(Net(), process, _noise(), SamplerSettings("ddim", 6, 0.0, None, "trailing", None))
    assert not torch.allclose(out, plain)
