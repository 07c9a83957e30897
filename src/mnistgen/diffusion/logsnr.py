"""The continuous-time log-SNR process of classifier-free guidance (Ho & Salimans 2022, section 2, after VDM).

lambda is the log signal-to-noise ratio; alpha_lambda^2 = sigmoid(lambda), sigma_lambda^2 =
sigmoid(-lambda), z_lambda = alpha_lambda x + sigma_lambda eps. "lambda < lambda'" means
lambda' is the less noisy of the two. Like :class:`GaussianDiffusion`, the process does
not own the network, and nothing in it changes after construction.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mnistgen.config import CFGConfig
from mnistgen.diffusion import likelihood, parameterisation
from mnistgen.diffusion.broadcast import per_example
from mnistgen.diffusion.denoiser import Denoiser, Gaussian, Grid, Prediction
from mnistgen.diffusion.registry import POWERED_SPACINGS

MOST_STRATA = 10_000  # levels per image of the continuous bound's estimate


class LogSNRDiffusion:
    def __init__(self, config: CFGConfig = CFGConfig()):
        self.config = config
        self.b = math.atan(math.exp(-config.lambda_max / 2))
        self.a = math.atan(math.exp(-config.lambda_min / 2)) - self.b
        self.c = math.atan(math.exp(config.lambda_min / 2))  # pi/2 - a - b, computed without cancellation

    # -- schedule -----------------------------------------------------------------------
    def log_snr(self, u: torch.Tensor) -> torch.Tensor:
        """lambda(u) = -2 log tan(a u + b): lambda(0) = lambda_max, lambda(1) = lambda_min, decreasing in u.

        Accurate in float32 (MPS has no float64): near u = 1 the angle a u + b approaches pi/2 and
        its rounding error would dominate, so for u > 1/2 the same value is computed as
        2 log tan(a (1 - u) + c), c = pi/2 - a - b, using tan(pi/2 - x) = 1 / tan(x)."""
        near_zero = -2.0 * torch.log(torch.tan(self.a * u + self.b))
        near_one = 2.0 * torch.log(torch.tan(self.a * (1.0 - u) + self.c))
        return torch.where(u <= 0.5, near_zero, near_one)

    alpha_sigma = staticmethod(likelihood.alpha_sigma)  # alpha = sqrt(sigmoid(lambda)), sigma = sqrt(sigmoid(-lambda))

    def lambda_grid(self, steps: int, device: torch.device | str = "cpu", spacing: str = "time",
                    power: float = 1.0) -> torch.Tensor:
        """``steps + 1`` log-SNRs from lambda_min to lambda_max, float32 on ``device`` (computed on the
        host, moved once): at u_k = (1 - k/K)^power of the cosine schedule's time (``time``, the CFG
        sampler's path at power 1; ``trailing`` is the same grid: its last level, lambda_max, is the
        cleanest the network was trained on and no evaluation is spent there), or uniform in lambda
        (``log-snr``)."""
        if spacing in POWERED_SPACINGS:
            lam = self.log_snr(torch.tensor([(1.0 - i / steps) ** power for i in range(steps + 1)]))
        elif spacing == "log-snr" and power == 1.0:
            c = self.config
            lam = torch.linspace(c.lambda_min, c.lambda_max, steps + 1, dtype=torch.float64).float()
        else:
            raise ValueError(f"unknown grid spacing {spacing!r}" if spacing != "log-snr" else
                             f"the log-snr spacing takes no power (got {power})")
        return lam.to(device)

    def grid(self, steps: int, spacing: str = "time", device: torch.device | str = "cpu", power: float = 1.0) -> Grid:
        """The levels of :meth:`lambda_grid`: alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda); the
        last is lambda_max, the cleanest level the network was trained on."""
        lam = self.lambda_grid(steps, device, spacing, power)
        alpha, sigma = self.alpha_sigma(lam)
        return Grid(alpha=alpha, sigma=sigma, alpha_bar=torch.sigmoid(lam), one_minus_alpha_bar=torch.sigmoid(-lam),
                    log_snr=lam, time=self.model_time(lam),
                    labels=tuple(range(steps - 1, -1, -1)), process=self)

    def model_time(self, lam: torch.Tensor) -> torch.Tensor:
        """The network's time input: lambda mapped linearly onto [0, 1000] (0 = clean, 1000 = noise)."""
        c = self.config
        return 1000.0 * (c.lambda_max - lam.float()) / (c.lambda_max - c.lambda_min)

    time_at = model_time  # the network's time at any log-SNR (the same map as the grids')

    def log_snr_range(self) -> tuple[float, float]:
        """(lambda_min, lambda_max): the range the network was trained on."""
        return self.config.lambda_min, self.config.lambda_max

    # -- forward process, transitions and posterior ------------------------------------
    def q_sample(self, x: torch.Tensor, lam: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z_lambda = alpha_lambda x + sigma_lambda eps."""
        alpha, sigma = self.alpha_sigma(lam)
        return per_example(alpha, x) * x + per_example(sigma, x) * noise

    def transition_variance(self, lam: torch.Tensor, lam_next: torch.Tensor) -> torch.Tensor:
        """sigma^2_{lambda|lambda'} = (1 - e^{lambda - lambda'}) sigma_lambda^2 (variance of z_lambda given z_lambda')."""
        return -torch.expm1(lam - lam_next) * torch.sigmoid(-lam)

    def q_posterior(self, z: torch.Tensor, x: torch.Tensor, lam: torch.Tensor, lam_next: torch.Tensor) -> Gaussian:
        """q(z_lambda' | z_lambda, x): mean e^{lambda-lambda'} (alpha_lambda'/alpha_lambda) z_lambda
        + (1 - e^{lambda-lambda'}) alpha_lambda' x, variance (1 - e^{lambda-lambda'}) sigma_lambda'^2."""
        r = torch.exp(lam - lam_next)  # e^{lambda - lambda'} < 1
        alpha, _ = self.alpha_sigma(lam)
        alpha_next, sigma_next = self.alpha_sigma(lam_next)
        mean = per_example(r * alpha_next / alpha, z) * z + per_example((1 - r) * alpha_next, z) * x
        return Gaussian(mean, per_example(-torch.expm1(lam - lam_next) * sigma_next.pow(2), z).expand_as(z))

    def predict_x(self, z: torch.Tensor, lam: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_theta = (z_lambda - sigma_lambda eps) / alpha_lambda."""
        alpha, sigma = self.alpha_sigma(lam)
        return (z - per_example(sigma, z) * eps) / per_example(alpha, z)

    def p_step(self, z: torch.Tensor, lam: torch.Tensor, lam_next: torch.Tensor, eps: torch.Tensor,
               clip_x: bool = True) -> Gaussian:
        """Model step: the posterior mean with x replaced by x_theta, variance
        (sigma~^2_{lambda'|lambda})^(1-v) (sigma^2_{lambda|lambda'})^v."""
        return self.step_from_x(z, self.predict_x(z, lam, eps), lam, lam_next, clip_x)

    def step_from_x(self, z: torch.Tensor, x: torch.Tensor, lam: torch.Tensor, lam_next: torch.Tensor,
                    clip_x: bool = True) -> Gaussian:
        """:meth:`p_step` given x_theta itself."""
        if clip_x:
            x = x.clamp(-1.0, 1.0)
        posterior = self.q_posterior(z, x, lam, lam_next)
        v = self.config.v
        tilde = -torch.expm1(lam - lam_next) * torch.sigmoid(-lam_next)
        variance = tilde.pow(1 - v) * self.transition_variance(lam, lam_next).pow(v)
        return Gaussian(posterior.mean, per_example(variance, z).expand_as(z))

    def ancestral_step(self, x: torch.Tensor, prediction: Prediction, grid: Grid, i: int) -> Gaussian:
        """The ancestral sampler's step i of ``grid`` (the CFG paper's sampler): :meth:`step_from_x` with
        the denoiser's x_0, clipped to [-1, 1]."""
        return self.step_from_x(x, prediction.x0, grid.log_snr[i], grid.log_snr[i + 1])

    # -- likelihood ---------------------------------------------------------------------
    bound_method = "vlb-continuous"  # the continuous-time bound, as the evaluation's tables name it
    bound_axis = "log-SNR"  # what its integrand is drawn over

    def variational_bound(self, denoiser: Denoiser, x: torch.Tensor, strata: int,
                          generator: torch.Generator | None = None) -> likelihood.Bound:
        """The continuous-time bound on -log P(x) of Kingma et al. 2021 (:func:`likelihood.continuous_vlb`)."""
        return likelihood.continuous_vlb(denoiser, self, x, strata, generator)

    def most_strata(self) -> int:
        return MOST_STRATA

    # -- training -----------------------------------------------------------------------
    def drop_labels(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Replace each label by the null label (``num_labels``) independently with probability p_uncond."""
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < self.config.p_uncond
        return torch.where(drop, torch.full_like(labels, self.config.num_labels), labels)

    def loss(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """E_{u, eps} w(lambda) || eps - eps_theta(z_lambda(u), lambda(u), c~) ||^2 with c~ the label after dropout,
        or the squared error of v or x_0 for a network that predicts those (config.prediction); w as
        config.loss_weighting says (:func:`parameterisation.loss_weight`; uniform: the paper's loss)."""
        u = torch.rand(x.shape[0], generator=generator, device=x.device)
        lam = self.log_snr(u)  # (B,)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        c = self.drop_labels(labels, generator)
        alpha, sigma = self.alpha_sigma(lam)
        c_ = self.config
        weights = parameterisation.loss_weight(c_.prediction, c_.loss_weighting, lam.exp(), c_.min_snr_gamma)
        return parameterisation.regression_loss(model, self.q_sample(x, lam, noise), x, noise, per_example(alpha, x),
                                                per_example(sigma, x), self.model_time(lam), c_.prediction, weights, c)
