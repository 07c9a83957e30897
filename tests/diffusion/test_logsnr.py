import math

import pytest
import torch
from torch import nn

from mnistgen.config import CFGConfig
from tests.diffusion.sampling import sample
from mnistgen.diffusion.denoiser import Denoiser, Guided
from mnistgen.diffusion.logsnr import LogSNRDiffusion


@pytest.fixture(scope="module")
def process():
    return LogSNRDiffusion(CFGConfig())


def test_log_snr_endpoints_and_monotone(process):
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)
    lam = process.log_snr(u)
    assert lam[0].item() == pytest.approx(20.0, abs=1e-9) and lam[-1].item() == pytest.approx(-20.0, abs=1e-9)
    assert (lam[1:] < lam[:-1]).all()
    grid = process.lambda_grid(8)
    assert grid[0].item() == pytest.approx(-20.0) and grid[-1].item() == pytest.approx(20.0)


def test_alpha_sigma_are_variance_preserving(process):
    lam = torch.linspace(-20, 20, 101, dtype=torch.float64)
    alpha, sigma = process.alpha_sigma(lam)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(lam))
    torch.testing.assert_close((alpha**2 / sigma**2).log(), lam)


def _joint_conditioning(lam, lam_next, z, x):
    """q(z_lambda' | z_lambda, x) by conditioning the joint Gaussian of (z_lambda', z_lambda) given x, float64.
    z_lambda' = a' x + s' e, and z_lambda = (a / a') z_lambda' + noise, so Cov = (a / a') s'^2."""
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    a, a2 = math.sqrt(sig(lam)), math.sqrt(sig(lam_next))
    s2, s2_next = sig(-lam), sig(-lam_next)
    cov = a / a2 * s2_next
    mean = a2 * x + cov / s2 * (z - a * x)
    var = s2_next - cov**2 / s2
    transition = s2 - (a / a2) ** 2 * s2_next  # Var(z_lambda | z_lambda')
    return mean, var, transition


@pytest.mark.parametrize("lam, lam_next", [(-20.0, -19.5), (-3.0, 1.0), (0.0, 0.1), (5.0, 20.0)])
def test_posterior_and_transition_equal_gaussian_conditioning(process, lam, lam_next):
    z, x = 0.4, -0.6
    mean, var, transition = _joint_conditioning(lam, lam_next, z, x)
    L, L2 = torch.tensor(lam, dtype=torch.float64), torch.tensor(lam_next, dtype=torch.float64)
    post = process.q_posterior(torch.full((1, 1, 1, 1), z, dtype=torch.float64),
                               torch.full((1, 1, 1, 1), x, dtype=torch.float64), L, L2)
    assert post.mean.item() == pytest.approx(mean, rel=1e-9, abs=1e-12)
    assert post.variance.item() == pytest.approx(var, rel=1e-9, abs=1e-15)
    assert process.transition_variance(L, L2).item() == pytest.approx(transition, rel=1e-9, abs=1e-15)
    assert process.transition_variance(L, L2).item() > 0


def test_model_step_variance_interpolates(process):
    """(sigma~^2_{lambda'|lambda})^(1-v) (sigma^2_{lambda|lambda'})^v, both from the joint Gaussian."""
    lam, lam_next = -1.0, 0.5
    _, tilde, transition = _joint_conditioning(lam, lam_next, 0.0, 0.0)
    v = process.config.v
    z = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    step = process.p_step(z, torch.tensor(lam, dtype=torch.float64), torch.tensor(lam_next, dtype=torch.float64),
                          torch.zeros_like(z))
    assert step.variance.item() == pytest.approx(math.exp((1 - v) * math.log(tilde) + v * math.log(transition)))
    assert tilde < step.variance.item() < transition


class Recorder(nn.Module):
    """A conditional 'network' that returns a label-dependent constant and records the labels it saw."""

    null_label = 10

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, z, t, labels):
        self.seen.append(labels.clone())
        return z * 0 + labels.view(-1, 1, 1, 1).float()


def test_guidance_weight_zero_is_the_conditional_prediction(process):
    model = Recorder()
    z = torch.randn(3, 1, 2, 2)
    labels = torch.tensor([1, 2, 3])
    grid = process.grid(4)
    eps0 = Guided(Denoiser(model, "eps"), labels, 10, 0.0)(z, grid, 1).eps
    torch.testing.assert_close(eps0, labels.view(-1, 1, 1, 1).float().expand_as(z))
    eps2 = Guided(Denoiser(model, "eps"), labels, 10, 2.0)(z, grid, 1).eps
    torch.testing.assert_close(eps2, (3 * labels - 2 * 10).view(-1, 1, 1, 1).float().expand_as(z))
    assert len(model.seen) == 2 and model.seen[0].tolist() == [1, 2, 3, 10, 10, 10]  # one batched pass


def test_null_label_rate_in_training_and_never_at_sampling(process):
    model = Recorder()
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (20_000,), generator=g)
    process.loss(model, torch.zeros(20_000, 1, 1, 1), labels, g)
    rate = (model.seen[0] == 10).float().mean().item()
    assert rate == pytest.approx(0.1, abs=0.01)
    model.seen.clear()
    sample("ancestral", model, process, torch.zeros(4, 1, 1, 1), g, steps=3, labels=torch.arange(4), w=0.0)
    for seen in model.seen:  # conditional half carries the requested labels, untouched
        assert seen[:4].tolist() == [0, 1, 2, 3]


class Oracle(nn.Module):
    """Exact eps for a data set of one image x*: eps = (z - alpha x*) / sigma, whatever the label."""

    null_label = 10

    def __init__(self, process, target):
        super().__init__()
        self.process, self.target = process, target

    def forward(self, z, t, labels):
        c = self.process.config
        lam = c.lambda_max - t.double() / 1000.0 * (c.lambda_max - c.lambda_min)  # invert model_time
        alpha, sigma = self.process.alpha_sigma(lam)
        return ((z - alpha.view(-1, 1, 1, 1) * self.target) / sigma.view(-1, 1, 1, 1)).float()


@pytest.mark.parametrize("w", [0.0, 0.3, 4.0])
def test_guided_sampler_with_oracle_recovers_the_image(process, w):
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 1, 6, 6, generator=g).double() * 1.6 - 0.8
    z = torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64)
    out = sample("ancestral", Oracle(process, target), process, z, g, steps=64, labels=torch.tensor([1, 2, 3]), w=w)
    torch.testing.assert_close(out, target.expand(3, 1, 6, 6), atol=1e-3, rtol=0)
