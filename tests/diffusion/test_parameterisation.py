"""The network's output parameterisation (eps, v, x_0): the loss in x_0 space and the samplers' conversion.

Every expectation is computed in x_0 space in float64 with the relations of Salimans & Ho 2022
(x_0 = alpha z - sigma v; x_0 = (z - sigma eps) / alpha), not with the module's formulas."""

import numpy as np
import pytest
import torch

from mnistgen.config import DDPMConfig
from mnistgen.diffusion import samplers
from mnistgen.diffusion.ddpm import GaussianDiffusion

AB = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))  # float64, independent of the module's schedule


def _x0_hat(prediction, out, xt, ab):
    """The x_0 a network output implies at x_t (float64 NumPy)."""
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    return {"eps": (xt - sigma * out) / alpha, "v": alpha * xt - sigma * out, "x0": out}[prediction]


@pytest.mark.parametrize("weighting", ["uniform", "min-snr"])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_loss_is_the_x0_error_under_the_stated_weight(prediction, weighting):
    """The per-example loss is w(SNR) ||x_0 - x_0^||^2 with w = min(SNR, gamma) for min-SNR whatever the
    network predicts, and w = SNR (eps), SNR + 1 (v) or 1 (x_0) for the plain squared error."""
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
    weight = np.minimum(snr, gamma) if weighting == "min-snr" else \
        {"eps": snr, "v": snr + 1, "x0": np.ones_like(snr)}[prediction]
    assert loss == pytest.approx(np.mean(weight * mse_x0), rel=1e-4)


def _oracle(prediction, c):
    """The exact predictor for data that is always the image ``c``: it knows x_0 = c."""
    def model(z, t):
        ab = torch.tensor(AB, dtype=torch.float64)[t.long()].view(-1, 1, 1, 1)
        alpha, sigma = ab.sqrt(), (1 - ab).sqrt()
        eps = (z.double() - alpha * c) / sigma
        return {"eps": eps, "v": (alpha * z.double() - c) / sigma, "x0": c.expand_as(z)}[prediction].float()
    return model


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_samplers_see_the_same_eps_whatever_is_predicted(prediction):
    """With the exact predictor of a point mass, a v or x_0 network gives the eps network's samples
    (deterministic DDIM and the ancestral chain), and DDIM lands on the point."""
    c = torch.linspace(-0.9, 0.9, 16, dtype=torch.float64).view(1, 1, 4, 4)
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    ref = GaussianDiffusion(DDPMConfig(prediction="eps"))
    other = GaussianDiffusion(DDPMConfig(prediction=prediction))
    a = samplers.ddim(_oracle("eps", c), ref, noise, steps=20, eta=0.0)
    b = samplers.ddim(_oracle(prediction, c), other, noise, steps=20, eta=0.0)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
    torch.testing.assert_close(b, c.float().expand_as(b), atol=1e-3, rtol=0)
    xt = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(other.eps(_oracle(prediction, c), xt, t), ref.eps(_oracle("eps", c), xt, t),
                               atol=2e-3, rtol=1e-4)
